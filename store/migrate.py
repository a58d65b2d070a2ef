"""Moving every table from a `SQLiteStore` to another store (the LanceDB sidecar) while both
keep serving: checkpointed, verified, and reversible.

SQLite stays the system of record until cutover. The migration's state is one JSON value in
the SQLite file's own key-value table, written after each step, so a process killed at any
moment resumes where it stopped. Phases:

``mark``     turn on the SQLite change log (every write then logs its ids in its own
             transaction) and record the log's high-water mark;
``copy``     copy each table in keyset order (by id), `batch` records at a time; the checkpoint
             is the last id copied. A batch re-sent after a crash is an upsert: nothing doubles;
``replay``   bring the target up to date from the change log (see `replay`);
``index``    wait until the target has built its ANN indexes (replaying meanwhile, and
             running verify's content comparison once while the build goes on);
``verify``   compare both sides' content digests (each store computes its own) id by id in
             id order, per bucket of `bucket` ids (records changed meanwhile are in flight,
             not mismatches), unless the index phase already did and both sides' counts
             still agree; then run `sample` queries on both and require the target's top-10 to
             overlap the exact top-10 by `recall` (records written since the last replay are
             left out of both answers: the target gets them at the next replay).
             A mismatch stops the migration here and names the bucket. It comes after the
             index so that the sample queries measure the index that will serve;
``cutover``  wait while the target searches slower than SQLite (unless SQLite is slower than
             `slow_p95_ms` itself), replay what came in meanwhile, then pause writes (they
             wait, none is refused), replay the short tail, record the target as active,
             resume: see `RoutedStore.paused`;
``done``     the target serves; changes made to it are logged in SQLite for `rollback`.

`replay` reads each logged id's current record from the source and upserts it, or deletes it
from the target when the source no longer has it: replaying an entry twice is harmless, which
is what makes every phase safe to repeat after a crash.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import random
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from store.base import (
    IndexStatus,
    Record,
    ScoredRecord,
    StoreError,
    TableExists,
    VectorLike,
    VectorStore,
)
from store.columns import Columns
from store.filter import In, to_text
from store.http import ServedStore
from store.sqlite import Change, SQLiteStore

__all__ = [
    "MigrationError",
    "MigrationSettings",
    "MigrationState",
    "Migrator",
    "RoutedStore",
    "VerifyFailed",
    "load_state",
    "replay",
    "save_state",
]

log = logging.getLogger(__name__)

STATE_KEY: Final = "migration"
PHASES: Final = ("mark", "copy", "replay", "index", "verify", "cutover", "done")
_REPLAY_BATCH: Final = 1000
_T = TypeVar("_T")
_COPIES_IN_FLIGHT: Final = 3  # copy batches sent to the target at once (see Migrator._copy)
# Asked of both sides per sample query: the top 10 that verify compares, and room for records
# written meanwhile, which are left out (see Migrator._sample_queries).
_SAMPLE_K: Final = 20
_GIVE_WAY_S: Final = 0.1  # the longest the migration waits for searches in flight to end


class MigrationError(RuntimeError):
    """The migration cannot go on; the message says why."""


class VerifyFailed(MigrationError):  # noqa: N818 - reads as a fact
    """The target does not hold what the source holds; cutover is refused."""


@dataclass(frozen=True)
class MigrationSettings:
    batch: int = 1000  # records per copy batch
    bucket: int = 1000  # records per checksum bucket in verify
    sample: int = 20  # queries compared in verify, per table
    recall: float = 0.9  # the target's top-10 must overlap the exact top-10 this much
    ann_min_rows: int = 10_000  # from this many rows the target must be indexed
    unindexed: float = 0.2  # ... with at most this fraction of its rows not yet in the index
    slow_p95_ms: float = 200.0  # the source counts as slow above this (migrate_at_p95_ms)
    pause_limit_s: float = 2.0  # cutover's write pause is reported against this
    poll_s: float = 0.5  # how often the index phase and a waiting cutover replay the log
    remeasure_s: float = 60.0  # how often a waiting cutover runs the sample queries again


@dataclass
class TableProgress:
    dim: int
    total: int = 0  # rows in the source when the copy of this table began
    copied: int = 0
    after: str | None = None  # the last id copied
    done: bool = False


@dataclass
class MigrationState:
    phase: str = "mark"
    mark: int = 0  # the change log's high-water mark when the copy began
    replayed: int = 0  # changes up to this seq are in the target
    tables: dict[str, TableProgress] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    rate: float = 0.0  # rows copied per second, over the copy so far
    waiting: str | None = None  # why cutover is waiting, when it is
    error: str | None = None  # why the migration stopped, when it did
    verify: dict[str, Any] = field(default_factory=dict)  # counts, recall, p50/p95 per side
    samples: dict[str, list[str]] = field(default_factory=dict)  # sample query ids, per table
    pause_ms: float | None = None  # cutover's write pause
    cutover_at: float | None = None
    cutover_seq: int = 0  # changes after this seq were made to the target (for rollback)
    rolled_back: bool = False
    reason: str = "started by hand"  # what started it: a trigger, or by hand
    discarded_at: float | None = None  # when SQLite's copy was discarded (no rollback after)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MigrationState:
        raw = json.loads(text)
        raw["tables"] = {name: TableProgress(**t) for name, t in raw["tables"].items()}
        return cls(**raw)

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tables.values())

    @property
    def total(self) -> int:
        return sum(t.total for t in self.tables.values())

    def eta_s(self) -> float | None:
        """Seconds the copy still needs at its rate so far."""
        left = self.total - self.copied
        return left / self.rate if self.rate > 0 and self.phase == "copy" else None


async def load_state(source: SQLiteStore) -> MigrationState | None:
    """The migration recorded in the SQLite file, if one was ever started."""
    text = await source.read_state(STATE_KEY)
    return None if text is None else MigrationState.from_json(text)


async def save_state(source: SQLiteStore, state: MigrationState) -> None:
    """Record `state` in the SQLite file, durably."""
    await source.write_state(STATE_KEY, state.to_json())


async def replay(source: VectorStore, target: VectorStore, changes: Sequence[Change]) -> None:
    """Make the target agree with the source on every change's records, in log order.

    A run of id entries of one table is one lookup in the source, one upsert and one delete in
    the target; a filter entry (a delete_where made on a store that could not list its ids)
    is applied as it is. Idempotent: the source's current state is what gets copied.
    """
    run: list[str] = []
    run_table: str | None = None

    async def flush() -> None:
        if run_table is None or not run:
            return
        ids = list(dict.fromkeys(run))
        found = await source.get_by_ids(run_table, ids)
        if found:
            await target.insert(run_table, found)
        present = {r.id for r in found}
        missing = [i for i in ids if i not in present]
        for start in range(0, len(missing), 500):
            await target.delete_where(
                run_table, to_text(In("id", tuple(missing[start : start + 500])))
            )
        run.clear()

    for change in changes:
        if change.filter is not None:
            await flush()
            await target.delete_where(change.table, change.filter)
            continue
        if change.table != run_table:
            await flush()
            run_table = change.table
        assert change.id is not None
        run.append(change.id)
    await flush()


class RoutedStore:
    """The store the daemon serves from: SQLite before cutover, the target after.

    Every write passes one gate, which `paused` closes for the cutover and the rollback:
    writes then wait (none is refused) and go on, to whichever store is active, once it opens.
    After cutover each write is first logged in SQLite (ids, or a delete_where's filter), so
    `Migrator.rollback` can bring SQLite up to date.
    """

    def __init__(self, sqlite: SQLiteStore, target: ServedStore | None, *, on_target: bool) -> None:
        if on_target and target is None:
            raise ValueError("on_target needs a target store")
        self.sqlite = sqlite
        self.target = target
        self._on_target = on_target
        self._gate = anyio.Lock()
        self.log_target_writes = True  # off once SQLite's copy is discarded: nothing to roll back
        self.grown = anyio.Event()  # set by every insert, for whoever watches the tables grow
        self._searches = 0  # in flight
        self._no_searches = anyio.Event()
        self._no_searches.set()
        self._busy_until = -math.inf  # see give_way

    @property
    def active(self) -> ServedStore:
        """The store that answers now."""
        if self._on_target:
            assert self.target is not None
            return self.target
        return self.sqlite

    @property
    def on_target(self) -> bool:
        return self._on_target

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold every write back while the body runs (it may `switch`)."""
        async with self._gate:
            yield

    def switch(self, *, on_target: bool) -> None:
        """Make the target (or SQLite) the active store; call inside `paused`."""
        if on_target and self.target is None:
            raise ValueError("no target store to switch to")
        self._on_target = on_target

    def attach(self, target: ServedStore | None) -> None:
        """Set (or, with None, remove) the target store; SQLite must be active to remove it."""
        if target is None and self._on_target:
            raise ValueError("the target is serving: switch back to SQLite first")
        self.target = target

    async def __aenter__(self) -> RoutedStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closing is the owner's job: both stores are opened and closed by whoever made them."""

    # -- reads go to the active store --------------------------------------------------------

    async def search(
        self, table: str, vector: VectorLike, top_k: int, filter: str | None = None
    ) -> list[ScoredRecord]:
        if not self._searches:
            self._no_searches = anyio.Event()
        self._searches += 1
        try:
            return await self.active.search(table, vector, top_k, filter)
        finally:
            self._searches -= 1
            if not self._searches:
                self._no_searches.set()

    async def give_way(self, limit: float = _GIVE_WAY_S) -> None:
        """Wait (at most `limit` seconds) until no search is in flight. The migration calls it
        before each batch of its own work, so that on a small machine the searches it serves
        meanwhile go first. Under searches that leave no gap (at 1M rows SQLite's exact search
        takes 0.2-0.8 s), a wait that ran out is not repeated until `limit` has passed again:
        the migration then keeps at least half of the time. Waiting out every batch could
        cost the 1M copy and the 1M verify 100 s each (1,000 batches of 100 ms); before this
        rule they took 128 and 130 s, after it 126 and 97 s (bench/migrate.py)."""
        if anyio.current_time() < self._busy_until:
            return
        with anyio.move_on_after(limit) as waited:
            await self._no_searches.wait()
        if waited.cancelled_caught:
            self._busy_until = anyio.current_time() + limit

    async def get_by_ids(self, table: str, ids: Sequence[str]) -> list[Record]:
        return await self.active.get_by_ids(table, ids)

    def export_all(self, table: str, *, batch_size: int = 1000) -> AsyncIterator[list[Record]]:
        return self.active.export_all(table, batch_size=batch_size)

    def digests(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        return self.active.digests(table, batch_size=batch_size)

    async def count(self, table: str) -> int:
        return await self.active.count(table)

    def tables(self) -> dict[str, int]:
        return self.active.tables()

    async def index_status(self, table: str) -> IndexStatus:
        return await self.active.index_status(table)

    async def load_finished(self, table: str) -> None:
        await self.active.load_finished(table)

    # -- writes pass the gate ----------------------------------------------------------------

    async def create_table(self, name: str, *, dim: int) -> None:
        async with self._gate:
            if self._on_target and name not in self.sqlite.tables():
                # SQLite keeps every table, so the change log and a rollback have a home.
                await self.sqlite.create_table(name, dim=dim)
            await self.active.create_table(name, dim=dim)

    async def insert(self, table: str, records: Sequence[Record]) -> None:
        async with self._gate:
            self.grown.set()
            if self._on_target and self.log_target_writes and records:
                await self.sqlite.log_changes(table, [r.id for r in records])
            await self.active.insert(table, records)

    async def delete(self, table: str, id: str) -> bool:
        async with self._gate:
            if self._on_target and self.log_target_writes:
                await self.sqlite.log_changes(table, [id])
            return await self.active.delete(table, id)

    async def delete_where(self, table: str, filter: str) -> int:
        async with self._gate:
            if self._on_target and self.log_target_writes:
                await self.sqlite.log_changes(table, filter=filter)
            return await self.active.delete_where(table, filter)


class Migrator:
    """Runs (or resumes) the migration of `router`'s SQLite store to its target."""

    def __init__(self, router: RoutedStore, settings: MigrationSettings | None = None) -> None:
        self.router = router
        self.source = router.sqlite
        self.settings = settings or MigrationSettings()
        self.state = MigrationState()
        self._samples: list[tuple[str, Record]] = []  # verify's, measured again before cutover
        self._copy_clock = (0.0, 0)  # when this run's copy began, and the rows copied before

    @property
    def target(self) -> ServedStore:
        if self.router.target is None:
            raise MigrationError("no target store to migrate to")
        return self.router.target

    async def _save(self) -> None:
        await save_state(self.source, self.state)

    async def run(
        self, *, stop_before: str = "done", reason: str = "started by hand"
    ) -> MigrationState:
        """Go from wherever the recorded state is to ``done`` (or to `stop_before`); returns
        the state. A new migration (none recorded, or the last rolled back) records `reason`.

        Raises VerifyFailed (the state keeps the phase ``verify`` and the message) or another
        error from either store; running again resumes.
        """
        if stop_before not in PHASES:
            raise ValueError(f"stop_before: expected one of {', '.join(PHASES)}")
        recorded = await load_state(self.source)
        if recorded is not None and not recorded.rolled_back:
            self.state = recorded
        else:
            self.state = MigrationState(reason=reason)
        steps = {
            "mark": self._mark,
            "copy": self._copy,
            "replay": self._replay_phase,
            "index": self._index,
            "verify": self._verify,
            "cutover": self._cutover,
        }
        while PHASES.index(self.state.phase) < PHASES.index(stop_before):
            phase = self.state.phase
            try:
                await steps[phase]()
            except Exception as exc:
                self.state.error = f"{phase}: {exc}"
                await self._save()
                raise
            self.state.error = None
            self.state.phase = PHASES[PHASES.index(phase) + 1]
            await self._save()
            log.info("migration: %s done; next %s", phase, self.state.phase)
        return self.state

    # -- phases ------------------------------------------------------------------------------

    async def _mark(self) -> None:
        if isinstance(self.target, RoutedStore):
            raise MigrationError("the target cannot be another routed store")
        for name in self.target.tables():
            if await self.target.count(name):
                raise MigrationError(
                    f"the target already holds records (table {name!r}); a migration starts "
                    "from an empty target: remove its directory first"
                )
        self.state.mark = await self.source.start_change_log()
        self.state.replayed = self.state.mark
        self.state.tables = {
            name: TableProgress(dim, await self.source.count(name))
            for name, dim in self.source.tables().items()
        }

    async def _ensure_tables(self) -> None:
        for name, dim in self.source.tables().items():
            await self._ensure_table(name, dim)

    async def _ensure_table(self, name: str, dim: int) -> None:
        if name not in self.target.tables():
            with contextlib.suppress(TableExists):  # created before a crash
                await self.target.create_table(name, dim=dim)

    async def _copy(self) -> None:
        # The rate counts this run's rows: a resumed copy does not claim the earlier ones.
        self._copy_clock = (time.perf_counter(), self._copied())
        for name, progress in self.state.tables.items():
            await self._ensure_table(name, progress.dim)
            if not progress.done:
                await self._copy_table(name, progress)
            # Said for every table, copied now or before a restart: without it the sidecar
            # indexes a table only once it has seen it stop growing, 10-20 s later at 1M rows,
            # and the replay that comes next upserts against an `id` index that covers none of
            # the copied rows (bench/migrate.py).
            await self.target.load_finished(name)

    async def _copy_table(self, name: str, progress: TableProgress) -> None:
        # The stages overlap: the next batch is read from SQLite while up to three are on
        # their way into the target, so one is decoded there while another is written
        # (bench/migrate.py). Checkpoints still go in order: each after the one before.
        send, receive = anyio.create_memory_object_stream[Columns](1)
        slots = anyio.Semaphore(_COPIES_IN_FLIGHT)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_ahead, name, progress.after, send)
                previous: anyio.Event | None = None
                async with receive:
                    async for batch in receive:
                        await slots.acquire()
                        stored = anyio.Event()
                        tg.start_soon(self._store, name, progress, batch, (previous, stored), slots)
                        previous = stored
        except BaseExceptionGroup as group:
            # The tasks are this phase's own detail: callers get the error itself (a
            # StoreError from a sidecar that died, say), which they know how to retry, even
            # when the batches in flight failed together.
            raise _first_error(group) from None

    async def _store(
        self,
        name: str,
        progress: TableProgress,
        batch: Columns,
        order: tuple[anyio.Event | None, anyio.Event],
        slots: anyio.Semaphore,
    ) -> None:
        """Insert one batch, then (after the batch before it) checkpoint it."""
        previous, stored = order
        if batch:
            await self.router.give_way()
            await self.target.insert(name, batch)
        if previous is not None:
            await previous.wait()
        if batch:
            progress.after = batch.ids[-1]
            progress.copied += len(batch)
            started, copied = self._copy_clock
            elapsed = max(time.perf_counter() - started, 1e-9)
            self.state.rate = (self._copied() - copied) / elapsed
        progress.done = len(batch) < self.settings.batch
        await self._save()  # the checkpoint: the last id the target holds
        stored.set()
        slots.release()

    def _copied(self) -> int:
        return sum(progress.copied for progress in self.state.tables.values())

    async def _read_ahead(
        self, name: str, after: str | None, send: MemoryObjectSendStream[Columns]
    ) -> None:
        async with send:
            while True:
                await self.router.give_way()
                batch = await self.source.records_after(name, after, self.settings.batch)
                try:
                    await send.send(batch)
                except anyio.BrokenResourceError:
                    return  # the copy stopped (the target failed): its error is the one to see
                if len(batch) < self.settings.batch:
                    return
                after = batch.ids[-1]

    async def _catch_up(self) -> int:
        """Replay the change log up to its end as it is now (a busy writer cannot keep this
        from finishing); returns the last seq replayed."""
        end = await self.source.last_change()
        async for changes in self._logged(self.state.replayed, end):
            for change in changes:
                if change.table not in self.target.tables():
                    await self._ensure_table(change.table, self.source.tables()[change.table])
            await replay(self.source, self.target, changes)
            self.state.replayed = changes[-1].seq
            await self._save()
        return self.state.replayed

    async def _replay_phase(self) -> None:
        await self._catch_up()

    async def _verify(self) -> None:
        await self._ensure_tables()  # made since the comparison and still empty: no log
        if "counts" in self.state.verify and not await self._counts_hold():
            log.warning("migration: the counts changed since the comparison; comparing again")
            del self.state.verify["counts"]
        if "counts" not in self.state.verify:  # not compared during the index build
            await self._compare_contents()
        replayed = await self._catch_up()
        self.state.verify.update(await self._sample_queries(await self._sample_set(), replayed))
        if self.state.verify["recall"] < self.settings.recall:
            raise VerifyFailed(
                f"sample queries: the target's top-10 overlaps exact search by "
                f"{self.state.verify['recall']:.3f}, below the required {self.settings.recall}"
            )

    async def _compare_contents(self) -> None:
        """Verify's first half: both sides' digests, id by id. Records `counts` in the state
        and picks the sample queries; raises VerifyFailed naming the first differing bucket."""
        replayed = await self._catch_up()
        await self._ensure_tables()  # made after the mark and still empty: no log
        samples: list[tuple[str, Record]] = []
        compared = {name: await self._compare(name, samples) for name in self.source.tables()}
        in_flight = await self._changed_since(replayed)  # while or before the comparison read
        counts: dict[str, list[int]] = {}  # source, target: as the state's JSON holds them
        for name, (differing, buckets, seen) in compared.items():
            real = sorted(i for i in differing if (name, i) not in in_flight)
            counts[name] = [await self.source.count(name), await self.target.count(name)]
            if real:
                first = real[0]
                number, lo, hi = _bucket_of(buckets, first)
                raise VerifyFailed(
                    f"table {name!r}: bucket {number} (ids {lo!r}..{hi!r}) differs: "
                    f"{len(real)} record(s), first {first!r}: {differing[first]}"
                )
            log.info("migration: verified %d records of %r", seen, name)
        self._samples = samples
        self.state.samples = {}
        for name, record in samples:
            self.state.samples.setdefault(name, []).append(record.id)
        self.state.verify = {"counts": counts}
        await self._save()

    async def _counts_hold(self) -> bool:
        """Whether both sides' counts still agree, but for records changed since the replay:
        the comparison may be minutes old, and the target has been optimized and compacted
        since (rows lost or doubled there would show here)."""
        replayed = await self._catch_up()
        in_flight = await self._changed_since(replayed)
        for name in self.source.tables():
            source, target = await self.source.count(name), await self.target.count(name)
            if abs(source - target) > sum(1 for table, _ in in_flight if table == name):
                return False
        return True

    async def _sample_set(self) -> list[tuple[str, Record]]:
        """The records whose embeddings are the sample queries: the random ones the content
        comparison picked (read again after a restart; those deleted since are left out), or
        the first ones by id for a state saved before the ids were."""
        if not self._samples:
            for name in self.source.tables():
                picked = self.state.samples.get(name)
                found = await (
                    self.source.get_by_ids(name, picked)
                    if picked
                    else self.source.records_after(name, None, self.settings.sample)
                )
                self._samples.extend((name, record) for record in found)
        return self._samples

    async def _changed_since(self, seq: int) -> set[tuple[str, str | None]]:
        """(table, id) of every record written or deleted in the source after `seq`: the
        target may not have them yet."""
        end = await self.source.last_change()
        return {(c.table, c.id) async for batch in self._logged(seq, end) for c in batch}

    async def _logged(self, after: int, end: int) -> AsyncIterator[list[Change]]:
        """The change log's entries with seq in (after, end], a batch at a time. Bounded by
        `end`, so a busy writer (or a replay's own logged writes) cannot keep it going."""
        while after < end:
            changes = await self.source.changes_after(after, _REPLAY_BATCH)
            changes = [c for c in changes if c.seq <= end]
            if not changes:
                return
            yield changes
            after = changes[-1].seq

    async def _compare(
        self, name: str, samples: list[tuple[str, Record]]
    ) -> tuple[dict[str, str], list[str], int]:
        """Both sides' content digests in id order (each store computes its own: no record
        crosses the wire): the ids that differ (and how), the first id of each bucket of the
        source, and how many source records were seen. Adds a random sample of the source's
        records to `samples`."""
        rng = random.Random(len(name))  # noqa: S311 - sampling, not secrets
        differing: dict[str, str] = {}
        buckets: list[str] = []
        picked: list[str] = []
        seen = 0
        theirs = _each(self.target.digests(name))
        pending = await anext(theirs, None)
        async for batch in self.source.digests(name):
            await self.router.give_way()
            for mine in batch:
                record_id = mine[0]
                if seen % self.settings.bucket == 0:
                    buckets.append(record_id)
                seen += 1
                if len(picked) < self.settings.sample:
                    picked.append(record_id)
                elif (j := rng.randrange(seen)) < self.settings.sample:
                    picked[j] = record_id
                while pending is not None and pending[0] < record_id:
                    differing[pending[0]] = "only in the target"
                    pending = await anext(theirs, None)
                if pending is None or pending[0] != record_id:
                    differing[record_id] = "missing from the target"
                    continue
                if pending[1] != mine[1]:
                    differing[record_id] = "content differs"
                pending = await anext(theirs, None)
        while pending is not None:
            differing[pending[0]] = "only in the target"
            pending = await anext(theirs, None)
        samples.extend((name, record) for record in await self.source.get_by_ids(name, picked))
        return differing, buckets, seen

    async def _sample_queries(
        self, samples: list[tuple[str, Record]], replayed: int
    ) -> dict[str, Any]:
        """Recall of the target's top-10 against the source's exact top-10, and both sides'
        search times. Records written since the replay (`replayed`) are left out of both
        answers: writes go on meanwhile, and the target gets them only at the next replay."""
        answers: list[tuple[str, list[ScoredRecord], list[ScoredRecord]]] = []
        times: dict[str, list[float]] = {"source": [], "target": []}
        for name, record in dict(reversed(samples)).items():  # warm up: load SQLite's matrix
            await self.source.search(name, record.embedding, _SAMPLE_K)
            await self.target.search(name, record.embedding, _SAMPLE_K)
        for name, record in samples:
            await self.router.give_way()
            started = time.perf_counter()
            exact = await self.source.search(name, record.embedding, _SAMPLE_K)
            times["source"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            found = await self.target.search(name, record.embedding, _SAMPLE_K)
            times["target"].append((time.perf_counter() - started) * 1000)
            answers.append((name, exact, found))
        in_flight = await self._changed_since(replayed)
        overlaps: list[float] = []
        for name, exact, found in answers:
            want, got = (
                [r.id for r in hits if (name, r.id) not in in_flight][:10]
                for hits in (exact, found)
            )
            if want:
                overlaps.append(len(set(want) & set(got)) / len(want))
        figures: dict[str, Any] = {"recall": statistics.fmean(overlaps) if overlaps else 1.0}
        for side, samples_ms in times.items():
            figures[f"{side}_p50_ms"] = _percentile(samples_ms, 50)
            figures[f"{side}_p95_ms"] = _percentile(samples_ms, 95)
        return figures

    async def _index(self) -> None:
        compared = "counts" in self.state.verify
        while True:
            waiting = []
            for name in self.target.tables():
                status = await self.target.index_status(name)
                if status.rows < self.settings.ann_min_rows:
                    continue
                if status.state == "loading":
                    # Still waiting to see whether the copy is over: a sidecar restarted since
                    # the copy said so has forgotten (see _copy).
                    await self.target.load_finished(name)
                if status.kind == "exact" or status.state != "indexed":
                    waiting.append(f"{name} ({status.kind}, {status.state})")
                elif status.unindexed_rows > self.settings.unindexed * status.rows:
                    # An index built before the copy ended: rows outside it are compared
                    # exactly, so verify would measure a slow search. Wait for them to fold in.
                    waiting.append(f"{name} ({status.unindexed_rows} rows not yet indexed)")
            self.state.waiting = f"index build: {', '.join(waiting)}" if waiting else None
            if not waiting:
                return
            await self._save()
            await self._catch_up()
            if not compared:
                # Verify's content comparison needs only the copy and the replay: run it while
                # the target builds, off the critical path (at 1M rows it takes over a minute).
                # A mismatch is left for verify, which compares again and stops there.
                compared = True
                try:
                    await self._compare_contents()
                except (VerifyFailed, StoreError) as exc:  # a build's load can time a read out
                    log.warning("migration: %s (verify compares again after the build)", exc)
                continue  # the build may have ended meanwhile
            await anyio.sleep(self.settings.poll_s)

    async def _cutover(self) -> None:
        # A migration never makes search slower, unless SQLite is already too slow.
        while True:
            figures = self.state.verify
            slower = figures.get("target_p95_ms", 0.0) > figures.get("source_p95_ms", 0.0)
            if not slower or figures.get("source_p95_ms", 0.0) > self.settings.slow_p95_ms:
                break
            self.state.waiting = (
                f"cutover: the target's search p95 {figures['target_p95_ms']:.1f} ms is above "
                f"SQLite's {figures['source_p95_ms']:.1f} ms"
            )
            await self._save()
            with anyio.move_on_after(self.settings.remeasure_s):
                while True:  # keep the target current meanwhile: the final replay stays short
                    await anyio.sleep(self.settings.poll_s)
                    await self._catch_up()
            replayed = await self._catch_up()
            self.state.verify.update(await self._sample_queries(await self._sample_set(), replayed))
        self.state.waiting = None
        # Replay what was written during the sample queries (at 1M rows, ~20 s of writes)
        # before pausing: the pause then covers only the writes made during this pass.
        await self._catch_up()
        async with self.router.paused():
            started = time.perf_counter()
            await self._ensure_tables()  # made since verify and still empty: no log
            await self._catch_up()
            self.state.cutover_seq = await self.source.last_change()
            self.state.cutover_at = time.time()
            self.state.pause_ms = (time.perf_counter() - started) * 1000
            self.state.phase = "done"
            await self._save()  # committed before the flip: a restart comes up on the target
            self.router.switch(on_target=True)
        if self.state.pause_ms > self.settings.pause_limit_s * 1000:
            log.warning(
                "migration: the cutover paused writes for %.0f ms (limit %.0f ms)",
                self.state.pause_ms,
                self.settings.pause_limit_s * 1000,
            )

    async def rollback(self) -> MigrationState:
        """Serve from SQLite again: after cutover, first bring it up to date with the changes
        made since; before cutover (nothing to bring back), give the migration up. Either way
        the change log stops, and the next migration starts afresh. Call it while `run` is not
        running."""
        recorded = await load_state(self.source)
        if recorded is None or recorded.rolled_back:
            raise MigrationError("nothing to roll back: no migration was started since the last")
        if recorded.discarded_at is not None:
            raise MigrationError(
                "SQLite's copy was discarded when the rollback window ended "
                f"({time.strftime('%Y-%m-%d %H:%M', time.localtime(recorded.discarded_at))})"
            )
        self.state = recorded
        if recorded.phase != "done":
            self.state.rolled_back = True
            await self._save()
            await self.source.stop_change_log()
            return self.state
        async with self.router.paused():
            # Replaying into SQLite logs those writes too (its change log is on): stopping at
            # the end as it is now, the replay never chases its own entries.
            end = await self.source.last_change()
            async for changes in self._logged(self.state.cutover_seq, end):
                await replay(self.target, self.source, changes)
            self.state.rolled_back = True
            await self._save()
            await self.source.stop_change_log()
            self.router.switch(on_target=False)
        return self.state


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error a failed task group stands for: its first StoreError, else its first error
    that is not a cancellation, else the group itself."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    cancelled = anyio.get_cancelled_exc_class()
    real = [e for e in leaves if not isinstance(e, cancelled)]
    for exc in real:
        if isinstance(exc, StoreError):
            return exc
    return real[0] if real else group


async def _each(batches: AsyncIterator[list[_T]]) -> AsyncIterator[_T]:
    async for batch in batches:
        for item in batch:
            yield item


def _bucket_of(buckets: list[str], record_id: str) -> tuple[int, str, str]:
    """The bucket (number, first id, next bucket's first id or '…') an id falls in."""
    number = max(0, bisect.bisect_right(buckets, record_id) - 1)
    upper = buckets[number + 1] if number + 1 < len(buckets) else "…"
    return number, buckets[number] if buckets else "", upper


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
