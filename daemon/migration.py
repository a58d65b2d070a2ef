"""The daemon's side of the SQLite → LanceDB migration (the engine is `store.migrate`).

`Migrations` owns the `RoutedStore` the daemon serves from when ``backend = "auto"`` (or when a
pinned ``"lancedb"`` store came from a migration), and everything around it:

- the sidecar, started only when a migration needs it (a fresh migration first empties the
  daemon's own LanceDB directory: it may hold a rolled-back attempt), or at start-up when the
  store was migrated before;
- the triggers, with ``backend = "auto"`` only: a table above ``migrate_at_count`` rows, or a
  full window of ``latency_window`` searches of one table whose p95 is above
  ``migrate_at_p95_ms``. They fire once: a recorded migration (running, done, failed or rolled
  back) keeps them quiet, and after a rollback only ``satchel migrate`` starts another;
- the migration task, which resumes a recorded migration at start-up and retries with backoff
  while the sidecar cannot be reached. A failed verification stops it until ``satchel migrate``
  (resume) or ``satchel migrate --rollback`` (give up);
- the rollback window: ``rollback_days`` after cutover SQLite's copy is discarded, unless
  ``keep_sqlite`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import anyio

from daemon.config import Config
from daemon.stores import StoreUnavailable, open_sidecar
from daemon.supervisor import Supervisor
from store.base import StoreError
from store.http import ServedStore
from store.migrate import (
    MigrationError,
    MigrationSettings,
    MigrationState,
    Migrator,
    RoutedStore,
    load_state,
    save_state,
)
from store.sqlite import SQLiteStore

__all__ = ["Conflict", "Migrations", "open_store"]

_log = logging.getLogger("daemon.migration")

_COUNT_CHECK_S: Final = 1.0  # the count trigger counts at most this often
_RETRY_MAX_S: Final = 60.0
_DAY: Final = 86_400.0
_ROW_OVERHEAD: Final = 400  # bytes per row besides the vector, for the dry run's estimate


@contextlib.asynccontextmanager
async def open_store(
    config: Config, supervisor: Supervisor
) -> AsyncIterator[tuple[ServedStore, Migrations | None]]:
    """The store the daemon serves from, and the migration around it when there is one.

    ``"sqlite"``: the SQLite file alone, unless its data was migrated (then it refuses: the
    file is out of date). ``"lancedb"``: the sidecar alone, unless the data came there by a
    migration (then `Migrations`, so a rollback stays possible) or one is half done (refused).
    ``"auto"``: `Migrations`.
    """
    backend = config.retrieval.backend
    path = config.paths.data_dir / "vectors.db"
    if backend == "lancedb" and not path.exists():
        async with open_sidecar(config, supervisor) as sidecar:
            yield sidecar, None
        return
    async with SQLiteStore(path) as sqlite:
        state = await load_state(sqlite)
        live = state is not None and not state.rolled_back
        if backend == "sqlite" and live:
            assert state is not None
            where = (
                f"this data was moved to LanceDB ({_when(state.cutover_at)})"
                if state.phase == "done"
                else f"a migration to LanceDB is under way (phase {state.phase})"
            )
            raise StoreUnavailable(
                f'backend = "sqlite", but {where}: set backend = "auto" '
                "(and run `satchel migrate --rollback` to stay on SQLite)"
            )
        if backend == "sqlite":
            yield sqlite, None
            return
        if backend == "lancedb" and not live:
            rows = sum([await sqlite.count(name) for name in sqlite.tables()])
            if rows:
                _log.warning(
                    '%s holds %d records that LanceDB does not: backend = "auto" migrates them',
                    path,
                    rows,
                )
            async with open_sidecar(config, supervisor) as sidecar:
                yield sidecar, None
            return
        if backend == "lancedb" and state is not None and state.phase != "done":
            raise StoreUnavailable(
                f'backend = "lancedb", but a migration to it is half done (phase '
                f'{state.phase}): set backend = "auto" to finish it'
            )
        async with Migrations(config, supervisor, sqlite) as migrations:
            yield migrations.router, migrations


class Conflict(RuntimeError):  # noqa: N818 - reads as a fact
    """The migration cannot do that now (one is running, or there is nothing to roll back)."""


class Migrations:
    """``async with Migrations(config, supervisor, sqlite) as m:`` serve from ``m.router``,
    run ``m.run()`` as a task; see the module docstring."""

    def __init__(self, config: Config, supervisor: Supervisor, sqlite: SQLiteStore) -> None:
        self.config = config
        self.supervisor = supervisor
        self.sqlite = sqlite
        self.router = RoutedStore(sqlite, None, on_target=False)
        self._recorded: MigrationState | None = None
        self._migrator: Migrator | None = None  # the running migration's, for its progress
        self._sidecar: contextlib.AsyncExitStack | None = None
        self._latency: dict[str, deque[float]] = {}
        self._request: str | None = None  # the reason of a migration asked for, until it ends
        self._wake = anyio.Event()
        self._scope: anyio.CancelScope | None = None  # the running migration's
        self._fired = False
        self._discard_wake = anyio.Event()

    @property
    def state(self) -> MigrationState | None:
        """The recorded migration, live while one runs."""
        return self._migrator.state if self._migrator is not None else self._recorded

    @property
    def automatic(self) -> bool:
        return self.config.retrieval.backend == "auto"

    @property
    def lance_dir(self) -> Path:
        return self.config.paths.data_dir / "lance"

    def _settings(self) -> MigrationSettings:
        r = self.config.retrieval
        return MigrationSettings(
            batch=r.migration_batch,
            recall=r.migration_recall,
            ann_min_rows=r.ann_min_rows,
            slow_p95_ms=r.migrate_at_p95_ms,
        )

    # -- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> Migrations:
        self._recorded = state = await load_state(self.sqlite)
        if state is not None and state.rolled_back:
            await self.sqlite.stop_change_log()  # a rollback killed before it stopped the log
        elif state is not None and state.phase == "done":
            await self._attach()
            self.router.switch(on_target=True)
            self.router.log_target_writes = state.discarded_at is None
            if state.discarded_at is not None and any(
                [await self.sqlite.count(name) for name in self.sqlite.tables()]
            ):
                await self.sqlite.discard_records()  # a discard killed half-way
            _log.info("serving from LanceDB (migrated %s)", _when(state.cutover_at))
        elif state is not None:
            self._request = state.reason  # resumed by run()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._scope is not None:
            self._scope.cancel()
        await self._detach()

    async def _attach(self) -> None:
        """Start (or reach) the sidecar and make it the router's target."""
        if self.router.target is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            target = await stack.enter_async_context(open_sidecar(self.config, self.supervisor))
        except BaseException:
            await stack.aclose()
            raise
        self._sidecar = stack
        self.router.attach(target)

    async def _detach(self) -> None:
        if self._sidecar is not None:
            if not self.router.on_target:
                self.router.attach(None)
            stack, self._sidecar = self._sidecar, None
            await stack.aclose()

    # -- triggers ----------------------------------------------------------------------------

    def observe(self, table: str, search_ms: float) -> None:
        """One search of `table` took `search_ms` in the store (embedding excluded)."""
        if not self.automatic or self.state is not None or self._fired:
            return
        window = self._latency.setdefault(table, deque(maxlen=self.config.retrieval.latency_window))
        window.append(search_ms)
        if len(window) == window.maxlen:
            p95 = sorted(window)[int(0.95 * (len(window) - 1))]
            if p95 > self.config.retrieval.migrate_at_p95_ms:
                limit = self.config.retrieval.migrate_at_p95_ms
                self._fire(
                    f"table {table!r}: search p95 {p95:.0f} ms over the last {len(window)} "
                    f"searches is above migrate_at_p95_ms ({limit:g})"
                )

    async def _check_counts(self) -> None:
        limit = self.config.retrieval.migrate_at_count
        for name in self.sqlite.tables():
            rows = await self.sqlite.count(name)
            if rows > limit:
                self._fire(f"table {name!r} holds {rows} rows, above migrate_at_count ({limit})")
                return

    def _fire(self, reason: str) -> None:
        self._fired = True
        self._latency.clear()
        _log.info("migration triggered: %s", reason)
        self._request = reason
        self._wake.set()

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch the triggers, run the migrations asked for, discard SQLite's copy when its
        window ends. Runs until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_counts)
            tg.start_soon(self._discard_when_due)
            while True:
                if self._request is None:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    continue
                with anyio.CancelScope() as self._scope:
                    await self._migrate(self._request)
                self._scope = None
                self._request = None
                self._wake = anyio.Event()
                self._discard_wake.set()  # a cutover starts the rollback window

    async def _watch_counts(self) -> None:
        if not self.automatic:
            return
        while self.state is None and not self._fired:
            try:
                await self._check_counts()
            except StoreError as exc:
                _log.warning("could not count the tables for the migration trigger: %s", exc)
            await self.router.grown.wait()
            self.router.grown = anyio.Event()
            await anyio.sleep(_COUNT_CHECK_S)  # one count for a burst of writes

    async def _migrate(self, reason: str) -> None:
        wait = 1.0
        await self._record(reason)
        while True:
            try:
                if self._fresh() and not self.config.retrieval.lancedb_url:
                    await self._detach()
                    # Ours alone: a rolled-back attempt's files (the migration needs it empty).
                    await anyio.to_thread.run_sync(shutil.rmtree, self.lance_dir, True)
                await self._attach()
                self._migrator = Migrator(self.router, self._settings())
                state = await self._migrator.run(reason=reason)
                _log.info(
                    "migration done: %d rows, write pause %.0f ms",
                    state.copied,
                    state.pause_ms or 0.0,
                )
                return
            except MigrationError as exc:
                _log.error("migration stopped: %s (`satchel migrate` resumes it)", exc)
                return
            except (StoreError, StoreUnavailable) as exc:
                _log.warning("migration interrupted: %s; retrying in %.0f s", exc, wait)
                await anyio.sleep(wait)
                wait = min(wait * 2, _RETRY_MAX_S)
            finally:
                self._migrator = None
                with anyio.CancelScope(shield=True):
                    self._recorded = await load_state(self.sqlite)

    def _fresh(self) -> bool:
        """No migration has copied anything since the last rollback (or ever)."""
        state = self._recorded
        return state is None or state.rolled_back or state.phase == "mark"

    async def _record(self, reason: str) -> None:
        """Commit a new migration's intent, so a daemon killed before it got going resumes it."""
        if self._recorded is None or self._recorded.rolled_back:
            self._recorded = MigrationState(reason=reason)
            await save_state(self.sqlite, self._recorded)

    # -- what the API asks -------------------------------------------------------------------

    async def start(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Start (or resume) a migration by hand; with `dry_run`, only say what it would do."""
        blocker = self._blocker()
        if dry_run:
            return {**await self._plan(), "blocker": blocker}
        if blocker:
            raise Conflict(blocker)
        self._fired = True
        reason = "started by hand"
        await self._record(reason)  # before the 202: a crash now still resumes it
        self._request = reason
        self._wake.set()
        return self.report()

    def _blocker(self) -> str | None:
        state = self.state
        if self._request is not None:
            return "a migration is already running (`satchel migrate --status` shows it)"
        if state is not None and state.phase == "done" and not state.rolled_back:
            return f"already migrated to LanceDB ({_when(state.cutover_at)})"
        return None

    async def _plan(self) -> dict[str, Any]:
        tables = {
            name: {"rows": await self.sqlite.count(name), "dim": dim}
            for name, dim in self.sqlite.tables().items()
        }
        need = sum(t["rows"] * (t["dim"] * 4 + _ROW_OVERHEAD) for t in tables.values())
        data = self.config.paths.data_dir
        return {
            "dry_run": True,
            "tables": tables,
            "rows": sum(t["rows"] for t in tables.values()),
            "target": self.config.retrieval.lancedb_url or str(self.lance_dir),
            "batch": self.config.retrieval.migration_batch,
            "estimated_bytes": need,
            "free_bytes": shutil.disk_usage(data).free,
            "resumes": self.state is not None and not self.state.rolled_back,
        }

    async def rollback(self) -> dict[str, Any]:
        """Serve from SQLite again (see `Migrator.rollback`); the LanceDB copy is removed."""
        if self._scope is not None:
            self._scope.cancel()  # a migration short of cutover: given up below
            with anyio.fail_after(30):
                while self._scope is not None:  # noqa: ASYNC110 - its end sets no event of ours
                    await anyio.sleep(0.05)
        try:
            self._recorded = await Migrator(self.router).rollback()
        except MigrationError as exc:
            raise Conflict(str(exc)) from exc
        self._latency.clear()
        await self._detach()
        if not self.config.retrieval.lancedb_url:
            await anyio.to_thread.run_sync(shutil.rmtree, self.lance_dir, True)
        _log.info(
            "rolled back: serving from SQLite; automatic migration is off until `satchel migrate`"
        )
        return self.report()

    def report(self) -> dict[str, Any]:
        """What `status` and `satchel migrate --status` show."""
        state = self.state
        report: dict[str, Any] = {
            "automatic": self.automatic and state is None and not self._fired,
            "running": self._request is not None,
            "serving": "lancedb" if self.router.on_target else "sqlite",
        }
        if state is None:
            return {**report, "phase": None}
        report.update(
            phase="rolled back" if state.rolled_back else state.phase,
            reason=state.reason,
            started_at=state.started_at,
            copied=state.copied,
            total=state.total,
            rate=round(state.rate, 1),
            eta_s=None if (eta := state.eta_s()) is None else round(eta, 1),
            waiting=state.waiting,
            error=state.error,
            verify=state.verify,
            pause_ms=None if state.pause_ms is None else round(state.pause_ms, 1),
            cutover_at=state.cutover_at,
            rollback_until=self._rollback_until(state),
            discarded_at=state.discarded_at,
        )
        return report

    # -- the rollback window -----------------------------------------------------------------

    def _rollback_until(self, state: MigrationState) -> float | None:
        if state.phase != "done" or state.rolled_back or state.discarded_at is not None:
            return None
        if self.config.retrieval.keep_sqlite or state.cutover_at is None:
            return None  # no end: SQLite's copy is kept
        return state.cutover_at + self.config.retrieval.rollback_days * _DAY

    async def _discard_when_due(self) -> None:
        while True:
            until = None if self.state is None else self._rollback_until(self.state)
            if until is None:
                await self._discard_wake.wait()
                self._discard_wake = anyio.Event()
                continue
            with anyio.move_on_after(max(0.0, until - time.time())):
                await self._discard_wake.wait()
                self._discard_wake = anyio.Event()
                continue
            await self._discard()

    async def _discard(self) -> None:
        state = self.state
        assert state is not None
        state.discarded_at = time.time()
        async with self.router.paused():
            # Recorded first: a kill before the rows are gone finishes the job at start-up.
            await save_state(self.sqlite, state)
            self.router.log_target_writes = False
        await self.sqlite.discard_records()
        _log.info(
            "the rollback window (%g days) has ended: SQLite's copy is discarded",
            self.config.retrieval.rollback_days,
        )


def _when(at: float | None) -> str:
    return (
        "at an unknown time" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
    )
