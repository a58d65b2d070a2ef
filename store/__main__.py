"""The sidecar: ``python -m store serve --backend lance|sqlite --path PATH`` serves one store.

It binds its own socket on a loopback address (127.0.0.1 unless ``--host`` names another
loopback address; anything else is refused), opens the store (``--path`` is the SQLite file or
the LanceDB directory), serves `store.http.create_app` with uvicorn, and prints exactly one
line, ``READY port=PORT``, to stdout once connections are accepted. The bearer secret comes
from the environment variable ``SATCHEL_SIDECAR_SECRET`` (never from argv, which any local
user can read in the process list); without it the sidecar refuses to start.

A LanceDB store is maintained in the background: at start and every ``--maintain-every``
seconds (and at once when a client says a bulk load is over, `LanceStore.load_finished`)
each table gets a `LanceStore.maintain` pass (indexes, optimize, cleanup), logged to stderr.

SIGTERM or SIGINT stops accepting connections, lets requests in flight finish (for at most
``--grace`` seconds), closes the store and exits 0. This process owns its signals: uvicorn's
own handlers are switched off, because after shutdown they re-raise the signal, which would
turn a clean stop into death by SIGTERM; ours stay installed until the process exits, so a
repeated SIGTERM during teardown changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import anyio
import uvicorn

from store.base import StoreError
from store.http import ServedStore, bind_tcp, create_app

SECRET_ENV = "SATCHEL_SIDECAR_SECRET"  # noqa: S105 - the variable's name, not a secret
_log = logging.getLogger("store.sidecar")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling, announcing readiness on stdout."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # _serve owns the signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up; then the one readiness line."""
        await super().startup(sockets)
        if self.started and sockets:
            print(f"READY port={sockets[0].getsockname()[1]}", flush=True)


def _loopback(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise SystemExit(
            f"--host: expected a loopback IP address such as 127.0.0.1, got {host!r}"
        ) from None
    if not address.is_loopback:
        raise SystemExit(
            f"--host: {host} is not a loopback address; the sidecar serves only this machine"
        )
    return address


def _open_store(args: argparse.Namespace) -> ServedStore:
    path = Path(args.path)
    if args.backend == "lance":
        from store.lance import IndexPolicy, LanceStore  # noqa: PLC0415 - ~3.6 s: only if asked

        return LanceStore(path, IndexPolicy(ann_min_rows=args.ann_min_rows))
    from store.sqlite import SQLiteStore  # noqa: PLC0415

    return SQLiteStore(path)


async def _maintain(store: ServedStore, every: float) -> None:
    """Maintain each table when it is due, forever; failures are logged and tried again at the
    table's next pass."""
    maintain = getattr(store, "maintain", None)
    next_pass = getattr(store, "next_pass", None)
    if maintain is None or next_pass is None or every <= 0:
        return  # SQLite's matrix needs no upkeep
    due = list(store.tables())  # a pass at start too: a restart after a crash mid-build builds
    while True:
        for table in due:
            try:
                for line in await maintain(table):
                    _log.info("table %s: %s", table, line)
            except StoreError as exc:
                _log.error("table %s: maintenance failed (tried again later): %s", table, exc)
        due = await next_pass(every)


class _Stop:
    """Where a stop request goes: to the server once it exists, remembered until then."""

    def __init__(self) -> None:
        self.requested = False
        self.server: uvicorn.Server | None = None

    def __call__(self, why: str) -> None:
        if not self.requested:
            _log.info("%s: stopping", why)
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


async def _serve(args: argparse.Namespace, secret: str, sock: socket.socket, stop: _Stop) -> int:
    host, port = sock.getsockname()[:2]
    bracketed = f"[{host}]" if sock.family == socket.AF_INET6 else host
    allowed = {f"{bracketed}:{port}"} | ({f"localhost:{port}"} if host == "127.0.0.1" else set())
    async with _open_store(args) as store, anyio.create_task_group() as tg:
        # An index build cut short by the stop leaves no commit behind: it runs again later.
        tg.start_soon(_maintain, store, args.maintain_every)
        app = create_app(store, secret=secret, allowed_hosts=allowed)
        config = uvicorn.Config(
            app,
            # httptools' parser, not h11's pure-Python one: 0.3-1.5 ms less per request on
            # the 2-core machine (README, "where the hop goes"). The daemon's own server keeps h11.
            http="httptools",
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=args.grace,
        )
        stop.server = _Server(config)
        if not stop.requested:
            await stop.server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
        _log.info("closing the store")
    return 0


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected at least {low}, got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m store", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a store over HTTP on loopback")
    serve.add_argument("--backend", choices=["lance", "sqlite"], required=True)
    serve.add_argument("--path", required=True, help="the SQLite file or LanceDB directory")
    serve.add_argument("--host", default="127.0.0.1", help="a loopback address")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--grace", type=int, default=10, help="seconds for requests to finish")
    serve.add_argument(
        "--ann-min-rows",
        type=_at_least(1_000),
        default=10_000,
        help="LanceDB: rows from which a table gets an ANN index (below it, exact search)",
    )
    serve.add_argument(
        "--maintain-every",
        type=float,
        default=10.0,
        help="LanceDB: seconds between maintenance passes (0: none)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sidecar; the exit status."""
    args = _parser().parse_args(argv)
    secret = os.environ.pop(SECRET_ENV, "")  # popped: nothing this process starts inherits it
    if not secret:
        print(f"python -m store: set {SECRET_ENV} to the bearer secret", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        sock = bind_tcp(_loopback(args.host), args.port)
    except OSError as exc:
        print(f"python -m store: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    # Plain handlers, installed for the rest of the process's life: asyncio's would be removed
    # when the loop closes, and a second SIGTERM during teardown would then kill us (-15).
    stop = _Stop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _: stop(signal.Signals(signum).name))
    with sock:
        try:
            return anyio.run(_serve, args, secret, sock, stop)
        except StoreError as exc:
            print(f"python -m store: {exc}", file=sys.stderr)
            return 1
        finally:
            # Python resets handlers to the default while it finalises, except ignored ones:
            # a repeated SIGTERM in those last moments must not turn exit 0 into death by it.
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    raise SystemExit(main())
