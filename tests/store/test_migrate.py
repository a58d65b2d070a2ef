"""The online migration SQLite → LanceDB (store/migrate.py) on real stores: a real SQLite file
and a real LanceDB directory, with a writer running through the router the whole time."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import numpy as np
import pytest

from store.base import Record, StoreError, VectorStore
from store.http import HTTPStore
from store.lance import IndexPolicy, LanceStore
from store.migrate import MigrationSettings, Migrator, RoutedStore, VerifyFailed, load_state
from store.sqlite import SQLiteStore
from tests.store.conftest import random_records, record
from tests.store.sidecar import running_sidecar

DIM = 8
TABLE = "context_vectors"
# Small tables stay below ann_min_rows (exact search: no index to wait for); a slow p95 of 0
# lets the cutover go ahead although LanceDB is slower than SQLite on a few rows.
SETTINGS = MigrationSettings(batch=100, bucket=50, sample=10, slow_p95_ms=0.0, poll_s=0.01)


@asynccontextmanager
async def stores(tmp_path: Path) -> AsyncIterator[RoutedStore]:
    """The router over the SQLite file and the LanceDB directory, as the recorded state says."""
    async with (
        SQLiteStore(tmp_path / "vectors.db") as sqlite,
        LanceStore(tmp_path / "lance") as lance,
    ):
        state = await load_state(sqlite)
        on_target = state is not None and state.phase == "done" and not state.rolled_back
        yield RoutedStore(sqlite, lance, on_target=on_target)


async def contents(store: VectorStore) -> dict[str, Record]:
    return {r.id: r for batch in [b async for b in store.export_all(TABLE)] for r in batch}


def same(got: dict[str, Record], want: dict[str, Record]) -> None:
    assert sorted(got) == sorted(want)
    different = [i for i in want if not got[i].same_as(want[i])]
    assert not different, different[:5]


class Writer:
    """Random inserts, upserts, deletes and delete-wheres through the router, with a model of
    what the table must hold afterwards."""

    def __init__(self, router: RoutedStore, model: dict[str, Record], seed: int) -> None:
        self.router = router
        self.model = model
        self.rng = random.Random(seed)
        self.next = 0

    async def step(self) -> None:
        rng, model = self.rng, self.model
        action = rng.random()
        if action < 0.45 or not model:
            self.next += 1
            batch = [
                record(
                    f"w{self.next:05d}-{j}",
                    np.random.default_rng(self.next * 10 + j).standard_normal(DIM),
                )
                for j in range(rng.randint(1, 5))
            ]
            await self.router.insert(TABLE, batch)
            model.update((r.id, r) for r in batch)
        elif action < 0.75:
            victim = model[rng.choice(sorted(model))]
            changed = dataclasses.replace(victim, text_chunk=f"upserted {rng.random()}")
            await self.router.insert(TABLE, [changed])
            model[changed.id] = changed
        elif action < 0.95:
            victim_id = rng.choice(sorted(model))
            assert await self.router.delete(TABLE, victim_id)
            del model[victim_id]
        else:
            source = f"source-{rng.randrange(7)}"
            await self.router.delete_where(
                TABLE, f"source_id = '{source}' AND source_type = 'note'"
            )
            for gone in [
                i for i, r in model.items() if r.source_id == source and r.source_type == "note"
            ]:
                del model[gone]


async def seeded(tmp_path: Path, n: int = 600) -> dict[str, Record]:
    initial = random_records(n, DIM, seed=3)
    async with SQLiteStore(tmp_path / "vectors.db") as sqlite:
        await sqlite.create_table(TABLE, dim=DIM)
        await sqlite.insert(TABLE, initial)
    return {r.id: r for r in initial}


@pytest.mark.anyio
async def test_the_change_log_records_each_write_in_its_transaction(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "v.db") as sqlite:
        await sqlite.create_table("t", dim=2)
        await sqlite.insert("t", [record("before", [1, 0])])
        assert await sqlite.changes_after(0, 100) == []  # off until started
        mark = await sqlite.start_change_log()
        await sqlite.insert("t", [record("a", [1, 0]), record("b", [0, 1])])
        await sqlite.delete("t", "before")
        await sqlite.delete_where("t", "id = 'b'")
        assert not await sqlite.delete("t", "nothing")  # a no-op logs nothing
    async with SQLiteStore(tmp_path / "v.db") as sqlite:  # still on after reopening
        await sqlite.insert("t", [record("c", [1, 1])])
        changes = await sqlite.changes_after(mark, 100)
        assert [(c.table, c.id) for c in changes] == [
            ("t", "a"),
            ("t", "b"),
            ("t", "before"),
            ("t", "b"),
            ("t", "c"),
        ]
        assert all(c.filter is None for c in changes)
        await sqlite.stop_change_log()
        await sqlite.insert("t", [record("d", [1, 1])])
        assert await sqlite.changes_after(0, 100) == []


@pytest.mark.anyio
async def test_a_migration_under_writes_moves_exactly_the_expected_set(tmp_path: Path) -> None:
    model = await seeded(tmp_path)
    async with stores(tmp_path) as router:
        writer = Writer(router, model, seed=1)
        migrator = Migrator(router, SETTINGS)
        done = anyio.Event()

        async def write_until_done() -> None:
            while not done.is_set():
                await writer.step()
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(write_until_done)
            state = await migrator.run()
            for _ in range(30):  # and some more, now on LanceDB
                await writer.step()
            done.set()
        assert router.on_target
        assert state.phase == "done"
        assert state.copied >= 600
        assert state.pause_ms is not None
        assert state.verify["recall"] >= SETTINGS.recall
        assert router.target is not None
        same(await contents(router.target), model)
    async with stores(tmp_path) as router:  # a restart comes up on LanceDB
        assert router.on_target
        same(await contents(router), model)


@pytest.mark.anyio
async def test_interrupted_at_random_moments_it_resumes_without_loss_or_duplicates(
    tmp_path: Path,
) -> None:
    model = await seeded(tmp_path, n=1500)
    rng = random.Random(5)
    interruptions = 0
    for attempt in range(100):
        async with stores(tmp_path) as router:
            if router.on_target:
                break
            writer = Writer(router, model, seed=attempt)
            for _ in range(rng.randint(0, 8)):
                await writer.step()
            # Cancelled anywhere (a write in a store finishes: both shield their writes).
            # Verify is one step that starts over, so the windows widen until it fits.
            with anyio.move_on_after(rng.uniform(0.0, 0.03 * (attempt + 1))) as scope:
                await Migrator(router, SETTINGS).run()
            interruptions += scope.cancelled_caught
    else:
        pytest.fail("the migration never finished")
    assert interruptions >= 5
    async with stores(tmp_path) as router:
        assert router.on_target
        assert router.target is not None
        same(await contents(router.target), model)
        lance_ids = [r.id async for b in router.target.export_all(TABLE) for r in b]
        assert len(lance_ids) == len(set(lance_ids))


@pytest.mark.anyio
async def test_an_altered_row_fails_verification_and_prevents_cutover(tmp_path: Path) -> None:
    await seeded(tmp_path, n=300)
    async with stores(tmp_path) as router:
        assert (await Migrator(router, SETTINGS).run(stop_before="verify")).phase == "verify"
        assert router.target is not None
        victim = (await router.target.get_by_ids(TABLE, ["r000123"]))[0]
        # Behind the router's back: the change log does not see it, only verification can.
        await router.target.insert(TABLE, [dataclasses.replace(victim, text_chunk="tampered")])
        with pytest.raises(
            VerifyFailed, match=r"bucket 2 \(ids 'r000100'..'r000150'\).*'r000123': content differs"
        ):
            await Migrator(router, SETTINGS).run()
        assert not router.on_target
        state = await load_state(router.sqlite)
        assert state is not None
        assert state.phase == "verify"
        assert "r000123" in (state.error or "")
    async with stores(tmp_path) as router:
        assert not router.on_target  # and a restart stays on SQLite


@pytest.mark.anyio
async def test_rollback_gives_sqlite_every_change_made_on_both_sides_of_cutover(
    tmp_path: Path,
) -> None:
    model = await seeded(tmp_path, n=300)
    async with stores(tmp_path) as router:
        writer = Writer(router, model, seed=9)
        for _ in range(20):
            await writer.step()  # before cutover, on SQLite
        await Migrator(router, SETTINGS).run()
        assert router.on_target
        for _ in range(60):
            await writer.step()  # after, on LanceDB
        await router.create_table("later", dim=2)  # a table born on LanceDB
        await router.insert("later", [record("x", [1, 0])])
        await router.delete_where(TABLE, "source_type = 'feed'")
        for gone in [i for i, r in model.items() if r.source_type == "feed"]:
            del model[gone]
        state = await Migrator(router, SETTINGS).rollback()
        assert state.rolled_back
        assert router.active is router.sqlite
        same(await contents(router.sqlite), model)
        assert [r.id for r in await router.sqlite.get_by_ids("later", ["x"])] == ["x"]
        await writer.step()  # SQLite serves writes again
        same(await contents(router), model)
    async with stores(tmp_path) as router:
        assert not router.on_target
        same(await contents(router.sqlite), model)
        assert await router.sqlite.changes_after(0, 10) == []  # the log is off and empty


@asynccontextmanager
async def served_by_a_sidecar(tmp_path: Path) -> AsyncIterator[tuple[RoutedStore, int]]:
    """A router serving from a real sidecar (with an empty TABLE), and the sidecar's pid."""
    async with (
        SQLiteStore(tmp_path / "vectors.db") as sqlite,
        running_sidecar("sqlite", tmp_path / "side.db") as sidecar,
        HTTPStore(sidecar.url, secret=sidecar.secret, timeout=60) as target,
    ):
        await target.create_table(TABLE, dim=DIM)
        yield RoutedStore(sqlite, target, on_target=True), sidecar.pid


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped with SIGSTOP (a search sent to it stays in flight) until the body
    sends SIGCONT, or ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.anyio
async def test_the_migration_gives_way_to_a_search_in_flight(tmp_path: Path) -> None:
    order: list[str] = []
    async with served_by_a_sidecar(tmp_path) as (router, pid):
        assert router.target is not None
        await router.target.insert(TABLE, random_records(10, DIM))
        await router.give_way(limit=60)  # nothing in flight: at once

        async def search() -> None:
            await router.search(TABLE, np.ones(DIM), 3)
            order.append("search answered")

        async def give_way() -> None:
            await router.give_way(limit=60)
            order.append("gave way")

        with frozen(pid):
            async with anyio.create_task_group() as tg:
                tg.start_soon(search)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(give_way)
                await anyio.wait_all_tasks_blocked()
                assert order == []  # the search is in flight, so the migration waits
                os.kill(pid, signal.SIGCONT)
    assert order == ["search answered", "gave way"]


@pytest.mark.anyio
async def test_under_searches_that_never_end_the_migration_keeps_half_its_time(
    tmp_path: Path,
) -> None:
    limit = 0.2
    gave_way: list[int] = []
    async with served_by_a_sidecar(tmp_path) as (router, pid):

        async def give_way(*numbers: int) -> None:
            for n in numbers:
                await router.give_way(limit=limit)
                gave_way.append(n)

        with frozen(pid):  # the search below stays in flight
            async with anyio.create_task_group() as tg:
                tg.start_soon(router.search, TABLE, np.ones(DIM), 3)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(give_way, 1, 2)
                await anyio.wait_all_tasks_blocked()
                assert gave_way == []  # waiting for the search
                while not gave_way:  # ...until the limit runs out
                    await anyio.sleep(0.01)
                await anyio.wait_all_tasks_blocked()
                assert gave_way == [1, 2]  # then the migration's turn: the next call goes on
                await anyio.sleep(limit)
                tg.start_soon(give_way, 3)
                await anyio.wait_all_tasks_blocked()
                assert gave_way == [1, 2]  # its turn is over: it waits again
                os.kill(pid, signal.SIGCONT)
    assert gave_way == [1, 2, 3]


# Tables of 2,000 rows and more get an ANN index: the index phase has a build to wait for.
INDEXED = dataclasses.replace(SETTINGS, ann_min_rows=1000)


@asynccontextmanager
async def migrated_until(
    tmp_path: Path, phase: str
) -> AsyncIterator[tuple[RoutedStore, LanceStore]]:
    """2,000 records migrated in-process under INDEXED settings, stopped before `phase`."""
    await seeded(tmp_path, n=2000)
    async with (
        SQLiteStore(tmp_path / "vectors.db") as sqlite,
        LanceStore(tmp_path / "lance", IndexPolicy(ann_min_rows=1000)) as lance,
    ):
        router = RoutedStore(sqlite, lance, on_target=False)
        assert (await Migrator(router, INDEXED).run(stop_before=phase)).phase == phase
        yield router, lance


class Told(LanceStore):
    """A LanceStore that notes each table's rows whenever it is told a load is over."""

    def __init__(self, path: Path, policy: IndexPolicy) -> None:
        super().__init__(path, policy)
        self.told: list[tuple[str, int]] = []

    async def load_finished(self, table: str) -> None:
        self.told.append((table, await self.count(table)))
        await super().load_finished(table)


@pytest.mark.anyio
async def test_the_copy_tells_the_target_that_each_table_is_loaded(tmp_path: Path) -> None:
    await seeded(tmp_path, n=2000)
    policy = IndexPolicy(ann_min_rows=1000, loading_rows=500)  # 2,000 rows at once: a load
    async with (
        SQLiteStore(tmp_path / "vectors.db") as sqlite,
        Told(tmp_path / "lance", policy) as lance,
    ):
        await sqlite.create_table("empty", dim=DIM)
        router = RoutedStore(sqlite, lance, on_target=False)
        await Migrator(router, INDEXED).run(stop_before="replay")
        assert lance.told == [(TABLE, 2000), ("empty", 0)]  # each once its copy is whole
        # Untold, the first pass would wait a pass to see whether the table is still growing.
        assert (await lance.maintain(TABLE))[-1].startswith("built IVF_RQ with 11 partitions")


@pytest.mark.anyio
async def test_the_index_phase_tells_a_restarted_target_again(tmp_path: Path) -> None:
    await seeded(tmp_path, n=2000)
    policy = IndexPolicy(ann_min_rows=1000, loading_rows=500)
    async with SQLiteStore(tmp_path / "vectors.db") as sqlite:
        async with Told(tmp_path / "lance", policy) as lance:
            await Migrator(RoutedStore(sqlite, lance, on_target=False), INDEXED).run(
                stop_before="index"
            )
        async with Told(tmp_path / "lance", policy) as restarted:  # it has forgotten
            assert (await restarted.maintain(TABLE))[-1].startswith("waiting: the table may")
            migrator = Migrator(RoutedStore(sqlite, restarted, on_target=False), INDEXED)
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(migrator.run, stop_before="verify"))
                with anyio.fail_after(60):
                    while not restarted.told:
                        await anyio.sleep(0.01)
                assert restarted.told == [(TABLE, 2000)]
                assert (await restarted.maintain(TABLE))[-1].startswith("built IVF_RQ")
            assert migrator.state.phase == "verify"


@pytest.mark.anyio
@pytest.mark.parametrize("then", ["restart", "a row lost from the target"])
async def test_verify_waits_for_rows_outside_the_index_to_be_folded_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, then: str
) -> None:
    caplog.set_level(logging.INFO, logger="store.migrate")
    async with migrated_until(tmp_path, "replay") as (router, lance):
        assert any(line.startswith("built IVF_RQ") for line in await lance.maintain(TABLE))
        # Written during the migration: replayed into LanceDB, outside its index.
        await router.insert(TABLE, random_records(1000, DIM, seed=4, prefix="late"))
        migrator = Migrator(router, INDEXED)
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(migrator.run, stop_before="verify"))
            with anyio.fail_after(60):
                while migrator.state.waiting is None:
                    await anyio.sleep(0.01)
            assert migrator.state.waiting == (f"index build: {TABLE} (1000 rows not yet indexed)")
            assert migrator.state.phase == "index"
            # Verify's content comparison runs while the build is awaited, not after it.
            with anyio.fail_after(60):
                while "counts" not in migrator.state.verify:
                    await anyio.sleep(0.01)
            assert migrator.state.phase == "index"
            assert migrator.state.verify == {"counts": {TABLE: [3000, 3000]}}
            # The sidecar's passes: the first finds the table loading, the second folds them in.
            assert (await lance.maintain(TABLE))[0].startswith("waiting: the table is loading")
            assert (await lance.maintain(TABLE))[-1].startswith("optimized")
        assert migrator.state.phase == "verify"
        assert migrator.state.waiting is None
        saved = migrator.state.samples[TABLE]  # the random sample, saved for a restart
        assert len(set(saved)) == INDEXED.sample
        assert sorted(saved) != [f"late{i:06d}" for i in range(INDEXED.sample)]  # first by id
        assert caplog.text.count("verified 3000 records") == 1
        resumed = Migrator(router, INDEXED)  # as after a restart
        if then == "restart":
            await resumed.run(stop_before="cutover")
            assert caplog.text.count("verified 3000 records") == 1  # not compared again
            assert resumed.state.verify["counts"] == {TABLE: [3000, 3000]}
            assert resumed.state.verify["recall"] >= INDEXED.recall
            assert {r.id for _, r in resumed._samples} == set(saved)
        else:
            # Behind the router's back, after the comparison: the counts tell, so verify
            # compares again and finds it.
            assert await lance.delete(TABLE, "r001234")
            with pytest.raises(VerifyFailed, match=r"'r001234': missing from the target"):
                await resumed.run(stop_before="cutover")
            assert "the counts changed since the comparison" in caplog.text


@pytest.mark.anyio
async def test_a_mismatch_seen_during_the_index_build_stops_the_migration_in_verify(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with migrated_until(tmp_path, "index") as (router, lance):
        victim = (await lance.get_by_ids(TABLE, ["r001234"]))[0]
        # Behind the router's back: the change log does not see it, only verification can.
        await lance.insert(TABLE, [dataclasses.replace(victim, source_id="tampered")])
        migrator = Migrator(router, INDEXED)
        failures: list[VerifyFailed] = []

        async def migrate() -> None:
            try:
                await migrator.run()
            except VerifyFailed as exc:
                failures.append(exc)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(migrate)
                # Seen while the index is awaited: logged, and the migration goes on to verify.
                while "compares again after the build" not in caplog.text:
                    await anyio.sleep(0.01)
                assert migrator.state.phase == "index"
                assert any(line.startswith("built IVF_RQ") for line in await lance.maintain(TABLE))
        assert [str(f) for f in failures] == [
            f"table {TABLE!r}: bucket 24 (ids 'r001200'..'r001250') differs: 1 record(s), "
            "first 'r001234': content differs"
        ]
        assert not router.on_target
        assert migrator.state.phase == "verify"
        assert "r001234" in (migrator.state.error or "")


@pytest.mark.anyio
async def test_a_sidecar_dying_mid_copy_raises_its_error_and_the_copy_resumes(
    tmp_path: Path,
) -> None:
    model = await seeded(tmp_path, n=3000)
    settings = dataclasses.replace(SETTINGS, batch=50)  # many batches: three in flight
    failure: BaseException | None = None
    async with SQLiteStore(tmp_path / "vectors.db") as sqlite:
        async with (
            running_sidecar("sqlite", tmp_path / "side.db", killed=True) as sidecar,
            HTTPStore(sidecar.url, secret=sidecar.secret, retries=0) as target,
        ):
            migrator = Migrator(RoutedStore(sqlite, target, on_target=False), settings)

            async def kill_while_copying() -> None:
                while sum(p.copied for p in migrator.state.tables.values()) < 500:
                    await anyio.sleep(0.001)
                os.kill(sidecar.pid, signal.SIGKILL)

            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_while_copying)
                try:
                    await migrator.run()
                except BaseException as exc:
                    failure = exc
        # The batches in flight failed together; the caller gets one StoreError, not a group.
        assert isinstance(failure, StoreError), repr(failure)
        state = await load_state(sqlite)
        assert state is not None
        assert state.phase == "copy"
        assert 500 <= state.tables[TABLE].copied < 3000
        async with (
            running_sidecar("sqlite", tmp_path / "side.db") as sidecar,
            HTTPStore(sidecar.url, secret=sidecar.secret) as target,
        ):
            router = RoutedStore(sqlite, target, on_target=False)
            assert (await Migrator(router, settings).run()).phase == "done"
            same(await contents(target), model)
            ids = [r.id async for b in target.export_all(TABLE) for r in b]
            assert len(ids) == len(set(ids)) == 3000


@pytest.mark.anyio
async def test_a_table_made_after_the_mark_and_left_empty_is_migrated(tmp_path: Path) -> None:
    await seeded(tmp_path, n=300)
    async with stores(tmp_path) as router:
        assert (await Migrator(router, SETTINGS).run(stop_before="copy")).phase == "copy"
        await router.create_table("empty", dim=3)  # no record, so nothing in the change log
        assert (await Migrator(router, SETTINGS).run()).phase == "done"
        assert router.target is not None
        assert router.target.tables()["empty"] == 3
        assert await router.target.count("empty") == 0
