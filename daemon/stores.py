"""The LanceDB sidecar, reached over HTTP (which store serves is `daemon.migration.open_store`'s
choice).

With an empty ``lancedb_url``, `open_sidecar` starts ``python -m store serve --backend
lance`` under the supervisor: on a port picked here (kept across restarts, so the client's URL
stays valid), with a fresh bearer secret in its environment, ready once ``/health`` answers with
that secret, restarted when it crashes, stopped after the store is closed. With ``lancedb_url``
set, the daemon talks to a sidecar someone else runs, with the secret from
``SATCHEL_SIDECAR_SECRET``, and never starts or stops it. Either way the daemon only speaks HTTP
to it and never imports lancedb or pyarrow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator

import httpx

from daemon.config import Config
from daemon.supervisor import ChildFailed, ChildSpec, Supervisor
from store.http import HTTPStore

__all__ = ["SECRET_ENV", "SIDECAR", "StoreUnavailable", "open_sidecar"]

SECRET_ENV = "SATCHEL_SIDECAR_SECRET"  # noqa: S105 - the variable's name, not a secret
SIDECAR = "lancedb"  # the supervised child's name
_READY_TIMEOUT = 120.0  # importing lancedb takes seconds, opening a big table more

_log = logging.getLogger("daemon.stores")


class StoreUnavailable(RuntimeError):  # noqa: N818 - reads as a fact, like store's errors
    """The configured store cannot be reached or started; the message says why."""


@contextlib.asynccontextmanager
async def open_sidecar(config: Config, supervisor: Supervisor) -> AsyncIterator[HTTPStore]:
    """The LanceDB sidecar, connected: ours (started, and stopped on exit), or the one at
    ``lancedb_url``."""
    url = config.retrieval.lancedb_url
    if url:
        secret = os.environ.get(SECRET_ENV, "")
        if not secret:
            raise StoreUnavailable(
                f"[retrieval] lancedb_url is {url}: set {SECRET_ENV} to that sidecar's secret"
            )
        async with _connected(url, secret) as store:
            yield store
        return
    port = _free_port()
    secret = secrets.token_urlsafe(32)
    url = f"http://127.0.0.1:{port}"
    try:
        await supervisor.start(_sidecar_spec(config, port, secret, url))
    except ChildFailed as exc:
        log = config.paths.log_dir / "lancedb-sidecar.log"
        raise StoreUnavailable(
            f"the LanceDB sidecar did not start: {exc} (its log: {log})"
        ) from exc
    try:
        async with _connected(url, secret) as store:
            yield store
    finally:
        await supervisor.stop(SIDECAR)  # after the store is closed: its last writes are done


@contextlib.asynccontextmanager
async def _connected(url: str, secret: str) -> AsyncIterator[HTTPStore]:
    store = HTTPStore(url, secret=secret)
    try:
        await store.open()
    except Exception as exc:
        raise StoreUnavailable(f"the LanceDB sidecar at {url} does not answer: {exc}") from exc
    try:
        yield store
    finally:
        await store.aclose()


def _free_port() -> int:
    # The port stays ours in practice: the kernel hands out ephemeral ports in turn, and the
    # sidecar binds it (SO_REUSEADDR) within a second. If another program takes it anyway, the
    # health check fails (it needs our secret) and the start fails with a message.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sidecar_spec(config: Config, port: int, secret: str, url: str) -> ChildSpec:
    argv = [
        sys.executable,
        "-m",
        "store",
        "serve",
        "--backend",
        "lance",
        "--path",
        str(config.paths.data_dir / "lance"),
        "--port",
        str(port),
        "--ann-min-rows",
        str(config.retrieval.ann_min_rows),
        "--grace",
        str(int(config.daemon.shutdown_grace_seconds)),
    ]

    async def ready() -> bool:
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
            response = await client.get(
                f"{url}/health", headers={"Authorization": f"Bearer {secret}"}
            )
        return response.status_code == 200

    return ChildSpec(
        name=SIDECAR,
        argv=argv,
        ready=ready,
        env={**os.environ, SECRET_ENV: secret},
        log_path=config.paths.log_dir / "lancedb-sidecar.log",
        ready_timeout=_READY_TIMEOUT,
    )
