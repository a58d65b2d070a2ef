"""The daemon process: the one owner of signals, start-up order and shutdown order.

`run(config)` does, in order:

1. takes the single-instance lock (``flock`` on ``run/satchel.lock``: the kernel drops it when
   the process dies, even by ``kill -9``, so a crash leaves no stale lock behind); a second
   daemon finding a healthy first one exits 0 saying so;
2. starts the signal task first, so SIGTERM/SIGINT are ours from then on;
3. opens the supervisor (reaping children an earlier crash left behind), the catalog and queue,
   the vector store, and the feed poller;
4. binds the socket and serves the API: from here on the daemon is ready;
5. in the background, chooses the embedder (Ollama, started on demand, or the built-in one) and
   starts the ingest workers.

On SIGTERM or SIGINT it stops accepting connections, tells the workers to claim nothing more
and waits up to ``shutdown_grace_seconds`` for the batches in hand (the rest are given back to
the queue), closes the stores, stops the children, and exits 0, logging each step.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import httpx

from daemon.api import create_app
from daemon.browser import BrowserApp
from daemon.config import Config, usable_socket_path
from daemon.core import EmbedderState, Satchel
from daemon.feeds import Feeds, fetch_settings
from daemon.migration import open_store
from daemon.ollama import OllamaError, OllamaManager, OllamaUnavailable
from daemon.server import UnixServer, bind_socket
from daemon.supervisor import Supervisor, SupervisorSettings
from ingest.catalog import Catalog
from ingest.embed import Embedder, HashEmbedder, OllamaEmbedder, OpenAIEmbedder, Prefixes
from ingest.feedlist import FeedList
from ingest.fetch import Fetcher
from ingest.pipeline import Pipeline, PipelineSettings
from ingest.queue import Queue, QueueSettings
from store import SQLiteStore
from store.http import bind_tcp
from store.migrate import RoutedStore

__all__ = ["AlreadyRunning", "run", "setup_logging"]

_log = logging.getLogger("daemon.main")


class AlreadyRunning(RuntimeError):  # noqa: N818
    """Another daemon holds the lock; the message says whether it answers."""

    def __init__(self, message: str, *, healthy: bool) -> None:
        super().__init__(message)
        self.healthy = healthy


# -- logging ----------------------------------------------------------------------------------


class _JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: Config, stream: IO[str] | None = None) -> None:
    """Structured logs to stderr and to a rotating file in the log directory."""
    log_dir = config.paths.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(config.daemon.log_level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
    to_file = logging.handlers.RotatingFileHandler(
        log_dir / "satchel.log",
        maxBytes=config.daemon.log_max_bytes,
        backupCount=config.daemon.log_backups,
        encoding="utf-8",
    )
    to_stderr = logging.StreamHandler(stream or sys.stderr)
    for handler in (to_file, to_stderr):
        handler.setFormatter(_JSONFormatter())
        root.addHandler(handler)
    for noisy in ("httpx", "httpcore", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- the single-instance lock -----------------------------------------------------------------


@contextlib.contextmanager
def _instance_lock(config: Config, socket_path: Path) -> Iterator[None]:
    run_dir = config.paths.run_dir
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = run_dir / "satchel.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            healthy = _answers(socket_path)
            state = "running and healthy" if healthy else "holding the lock but not answering"
            raise AlreadyRunning(
                f"another Satchel (pid {holder}) is {state} (socket {socket_path})",
                healthy=healthy,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _answers(socket_path: Path) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=3) as c:
            return c.get("http://satchel/health").status_code == 200
    except httpx.HTTPError:
        return False


# -- the embedder -----------------------------------------------------------------------------


async def _choose_embedder(
    config: Config, state: EmbedderState, supervisor: Supervisor, stack: contextlib.AsyncExitStack
) -> Embedder:
    """The configured embedder; for ``auto``, Ollama if it runs or can be started, else the
    built-in one with a warning."""
    settings = config.embedder
    prefixes = (
        Prefixes(settings.document_prefix or "", settings.query_prefix or "")
        if settings.document_prefix is not None or settings.query_prefix is not None
        else None
    )
    if settings.provider == "hash":
        state.provider, state.state = "hash", "ready"
        return HashEmbedder(settings.hash_dim)
    if settings.provider == "openai":
        key = os.environ.get(settings.api_key_env) or None
        state.provider, state.state = "openai", "ready"
        openai = OpenAIEmbedder(
            settings.openai_url,
            settings.model,
            api_key=key,
            batch_size=settings.batch_size,
            timeout=settings.request_timeout_seconds,
            prefixes=prefixes,
        )
        stack.push_async_callback(openai.aclose)
        return openai
    manager = await stack.enter_async_context(
        OllamaManager(
            url=settings.ollama_url,
            model=settings.model,
            supervisor=supervisor,
            binary=settings.ollama_binary,
            manage=settings.manage_ollama,
            startup_timeout=settings.startup_timeout_seconds,
            pull_timeout=settings.pull_timeout_seconds,
            request_timeout=settings.request_timeout_seconds,
            log_path=config.paths.log_dir / "ollama.log",
        )
    )
    state.provider = "ollama"
    state.detail = lambda: asdict(manager.status())
    try:
        await manager.ensure()
    except OllamaUnavailable as exc:
        if settings.provider == "ollama":
            state.state, state.warning = "failed", str(exc)
            _log.error("Ollama is unavailable: %s", exc)
            # Pinned to Ollama: jobs wait (the pipeline retries) rather than use another model.
        else:
            state.provider, state.state = "hash", "fallback"
            state.warning = (
                f"Ollama is not available ({exc}); using the built-in lexical embedder, "
                "which matches words, not meaning. Install Ollama for semantic search."
            )
            _log.warning("%s", state.warning)
            return HashEmbedder(settings.hash_dim)
    except OllamaError as exc:  # it runs, but the model could not be pulled or warmed up
        state.state, state.warning = "failed", f"Ollama: {exc}"
        _log.error("Ollama: %s; jobs wait until the model is available", exc)
    else:
        state.state = "ready"
    ollama = OllamaEmbedder(
        settings.ollama_url,
        settings.model,
        batch_size=settings.batch_size,
        timeout=settings.request_timeout_seconds,
        prefixes=prefixes,
    )
    stack.push_async_callback(ollama.aclose)
    return ollama


async def _ingest(
    config: Config, satchel: Satchel, supervisor: Supervisor, pipelines: list[Pipeline]
) -> None:
    """Choose the embedder, then run the ingest workers until cancelled or stopped."""
    async with contextlib.AsyncExitStack() as stack:
        embedder = await _choose_embedder(config, satchel.embedding, supervisor, stack)
        satchel.embedding.embedder = embedder
        satchel.embedding.model = embedder.model
        settings = config.ingest
        pipeline = Pipeline(
            satchel.queue,
            satchel.store,
            embedder,
            PipelineSettings(
                table=config.retrieval.table,
                chunk_tokens=settings.chunk_tokens,
                chunk_overlap=settings.chunk_overlap,
                workers=settings.workers,
                jobs_per_batch=settings.jobs_per_batch,
                embed_batch=settings.embed_batch,
                idle_poll_seconds=settings.idle_poll_seconds,
            ),
        )
        pipelines.append(pipeline)
        _log.info("ingest workers starting with embedder %s", embedder.model)
        await pipeline.run()


# -- the process ------------------------------------------------------------------------------


async def run(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the exit status."""
    socket_path = usable_socket_path(config.paths)
    started = time.monotonic()
    with _instance_lock(config, socket_path):
        _log.info("starting (pid %d, data in %s)", os.getpid(), config.paths.data_dir)
        data = config.paths.data_dir
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        sup = config.supervisor
        async with (
            Supervisor(
                config.paths.run_dir,
                SupervisorSettings(
                    ready_timeout=sup.ready_timeout_seconds,
                    restart_initial=sup.restart_initial_seconds,
                    restart_max=sup.restart_max_seconds,
                    degraded_after=sup.degraded_after_crashes,
                    degraded_window=sup.degraded_window_seconds,
                    stop_grace=sup.stop_grace_seconds,
                    health_interval=sup.health_interval_seconds,
                ),
            ) as supervisor,
            anyio.create_task_group() as tg,
        ):
            stop = anyio.Event()
            await tg.start(_signals, stop)
            for line in await supervisor.reap_leftovers():
                _log.warning("reaped a leftover child: %s", line)
            async with (
                Catalog(data / "satchel.db") as catalog,
                open_store(config, supervisor) as (store, migrations),
                Fetcher(fetch_settings(config)) as fetcher,
            ):
                ingest = config.ingest
                queue = Queue(
                    catalog,
                    QueueSettings(
                        lease_seconds=ingest.lease_seconds,
                        backoff_initial=ingest.backoff_initial_seconds,
                        backoff_max=ingest.backoff_max_seconds,
                        permanent_attempts=ingest.permanent_attempts,
                    ),
                )
                satchel = Satchel(
                    config,
                    store,
                    catalog,
                    queue,
                    children=lambda: [asdict(child) for child in supervisor.status()],
                    migrations=migrations,
                )
                feeds = satchel.feeds = Feeds(
                    config, FeedList(catalog), queue, fetcher, satchel.delete_source
                )
                server = UnixServer(
                    create_app(satchel),
                    bind_socket(socket_path),
                    grace=config.daemon.shutdown_grace_seconds,
                )
                servers = [server]
                if (browser := _browser_endpoint(config, satchel)) is not None:
                    servers.append(browser)
                async with anyio.create_task_group() as work:
                    served = anyio.Event()

                    async def serve_then_signal() -> None:
                        try:
                            async with anyio.create_task_group() as serving:
                                serving.start_soon(server.run_until_stopped)
                                if browser is not None:
                                    serving.start_soon(_serve_browser, browser, satchel)
                        finally:
                            served.set()

                    work.start_soon(serve_then_signal)
                    pipelines: list[Pipeline] = []
                    ingesting = anyio.Event()

                    async def ingest_then_signal() -> None:
                        try:
                            await _ingest(config, satchel, supervisor, pipelines)
                        except Exception as exc:
                            # Ingestion stops; the API goes on serving what is stored, and
                            # status says why (a table made by another model, say).
                            _log.exception("ingestion stopped: %s", exc)
                            satchel.embedding.state = "failed"
                            satchel.embedding.warning = f"ingestion stopped: {exc}"
                        finally:
                            ingesting.set()

                    async def preload(store: SQLiteStore) -> None:
                        try:
                            await store.preload(config.retrieval.table)
                        except Exception:  # the first search will load it, or say why not
                            _log.exception("could not preload %s", config.retrieval.table)

                    work.start_soon(ingest_then_signal)
                    # The feed poller is a producer: it stops first at shutdown (a poll cut
                    # short is redone; its entries are queued before the feed records them).
                    polling = anyio.CancelScope()

                    async def poll_feeds() -> None:
                        with polling:
                            await feeds.poller.run()

                    work.start_soon(poll_feeds)
                    if migrations is not None:
                        work.start_soon(migrations.run)
                    sqlite = store.active if isinstance(store, RoutedStore) else store
                    if (
                        isinstance(sqlite, SQLiteStore)
                        and config.retrieval.table in sqlite.tables()
                    ):
                        work.start_soon(preload, sqlite)
                    limit = config.daemon.startup_timeout_seconds
                    with anyio.fail_after(max(0.0, limit - (time.monotonic() - started))):
                        await server.ready.wait()
                    _log.info("ready in %.2f s: API on %s", time.monotonic() - started, socket_path)
                    await stop.wait()
                    _log.info("stopping the feed poller")
                    polling.cancel()
                    await _shutdown(config, servers, served, pipelines, ingesting)
                    await satchel.pairing.save_last_used()
                    work.cancel_scope.cancel()
                _log.info("closing the stores")
            tg.cancel_scope.cancel()  # the signal task
            _log.info("stopping children")
    _log.info("stopped")
    return 0


def _browser_endpoint(config: Config, satchel: Satchel) -> UnixServer | None:
    """The extension's endpoint on 127.0.0.1, or None (logged, and in status) if its port is
    taken: the rest of the daemon serves on without it."""
    port = config.browser.port
    try:
        sock = bind_tcp(ipaddress.IPv4Address("127.0.0.1"), port)  # never a wildcard
    except OSError as exc:
        why = f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc})"
        _log.error("browser endpoint: %s; set [browser] port to a free one", why)
        satchel.browser = {"state": "failed", "port": port, "error": why}
        return None
    bound = sock.getsockname()[1]
    satchel.browser = {"state": "listening", "port": bound}
    app = BrowserApp(satchel, satchel.pairing, config.browser, bound)
    _log.info("browser endpoint on http://127.0.0.1:%d", bound)
    return UnixServer(app, sock, grace=config.daemon.shutdown_grace_seconds, owner_only=False)


async def _serve_browser(browser: UnixServer, satchel: Satchel) -> None:
    """Serve the browser endpoint; if it fails, say so and leave the socket API serving."""
    try:
        await browser.run_until_stopped()
    except Exception as exc:
        _log.exception("browser endpoint stopped: %s", exc)
        satchel.browser = {**satchel.browser, "state": "failed", "error": f"stopped: {exc}"}


async def _signals(
    stop: anyio.Event, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()  # from here on, SIGTERM and SIGINT are ours
        async for signum in signals:
            if stop.is_set():
                _log.warning("%s again: already stopping", signal.Signals(signum).name)
                continue
            _log.info("%s: shutting down", signal.Signals(signum).name)
            stop.set()


async def _shutdown(
    config: Config,
    servers: list[UnixServer],
    served: anyio.Event,
    pipelines: list[Pipeline],
    ingesting: anyio.Event,
) -> None:
    grace = config.daemon.shutdown_grace_seconds
    deadline = time.monotonic() + grace
    _log.info("no longer accepting connections")
    for server in servers:
        server.stop()
    _log.info("stopping the ingest workers (up to %.0f s for the batches in hand)", grace)
    for pipeline in pipelines:
        pipeline.stop()
    if pipelines:
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as waited:
            await ingesting.wait()
        if waited.cancelled_caught:
            _log.warning("cut the ingest batches short: their jobs go back to the queue")
    else:
        _log.info("the embedder was still starting: nothing in flight")
    with anyio.move_on_after(max(0.1, deadline - time.monotonic())):
        await served.wait()
    # Requests still running (a long export, a slow fetch) must not outlive the stores that
    # close next: uvicorn's request tasks belong to no task group of ours, so cancel them here.
    lingering = [task for server in servers for task in server.server_state.tasks]
    for task in lingering:
        task.cancel()
    if lingering:
        _log.warning("cut %d requests short", len(lingering))
        with anyio.move_on_after(1.0):
            while any(server.server_state.tasks for server in servers):  # noqa: ASYNC110
                await anyio.sleep(0.01)
