"""LanceStore's index lifecycle: exact below the threshold, IVF_RQ from there on, rows found
before they are indexed, builds beside reads and writes, rebuilds, optimize and cleanup, and
recovery from a damaged manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import lancedb
import numpy as np
import numpy.typing as npt
import pytest
from lancedb.index import IvfRq
from lancedb.query import AsyncVectorQuery

from store.base import IndexStatus, StoreError, UnknownTable
from store.lance import IndexPolicy, LanceStore, _filtered_probes, _partitions
from tests.store.conftest import clustered, record, records_of

pytestmark = pytest.mark.anyio

SMALL = IndexPolicy(ann_min_rows=1_000)


def exact_top(
    vectors: npt.NDArray[np.float32], query: npt.NDArray[np.float32], k: int, *, start: int = 0
) -> list[str]:
    """The ids of the `k` unit rows nearest `query`, the rows numbered from `start`."""
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    return [f"r{start + i:06d}" for i in np.argsort(-scores, kind="stable")[:k]]


async def test_a_small_table_stays_exact_and_gets_its_scalar_indexes(tmp_path: Path) -> None:
    async with LanceStore(tmp_path, SMALL) as store:
        await store.create_table("t", dim=8)
        assert await store.maintain("t") == []  # an empty table: nothing to index
        await store.insert("t", records_of(clustered(500, 8)))
        done = await store.maintain("t")
        assert sorted(done) == sorted(
            [
                "built the BTree index on id",
                "built the BTree index on source_id",
                "built the BTree index on created_at",
                "built the Bitmap index on source_type",
                "built the LabelList index on tag_list",
            ]
        )
        assert await store.index_status("t") == IndexStatus("exact", "exact", 500, 500)
        assert await store.maintain("t") == []  # nothing more is due


async def test_the_ann_index_is_built_at_the_threshold_and_answers_like_exact(
    tmp_path: Path,
) -> None:
    vectors = clustered(3_000, 32)
    async with LanceStore(tmp_path, SMALL) as store:
        await store.create_table("t", dim=32)
        await store.insert("t", records_of(vectors))
        done = await store.maintain("t")
        assert done[-1].startswith("built IVF_RQ with 14 partitions over 3000 rows")
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "indexed", 3_000, 0)
        recalls = []
        for q in clustered(20, 32, seed=1):
            hits = await store.search("t", q, 10)
            expected = exact_top(vectors, q, 10)
            recalls.append(len({h.id for h in hits} & set(expected)) / 10)
            for hit in hits:  # the scores are exact cosines, as SQLiteStore gives
                exact = float(vectors[int(hit.id[1:])].astype(np.float64) @ q.astype(np.float64))
                assert hit.score == pytest.approx(exact / np.linalg.norm(q), abs=1e-6)
        assert np.mean(recalls) >= 0.8  # a sanity bound: bench/lance.py measures recall at 768-d
    async with LanceStore(tmp_path, SMALL) as store:  # the index's name records its partitions
        assert (await store.index_status("t")).kind == "IVF_RQ"


async def test_rows_not_yet_indexed_are_found_and_then_folded_in(tmp_path: Path) -> None:
    vectors = clustered(3_400, 32)
    async with LanceStore(tmp_path, SMALL) as store:
        await store.create_table("t", dim=32)
        await store.insert("t", records_of(vectors[:3_000]))
        await store.maintain("t")
        await store.insert("t", records_of(vectors[3_000:], start=3_000))
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "indexed", 3_400, 400)
        for i in (3_000, 3_399):
            assert (await store.search("t", vectors[i], 1))[0].id == f"r{i:06d}"
        done = await store.maintain("t")  # 400 new rows are over 10% of 3,000
        assert [line.split(" in ")[0] for line in done] == [
            "rebuilt the scalar indexes",
            "optimized",
        ]
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "indexed", 3_400, 0)
        for i in (3_000, 3_399):
            assert (await store.search("t", vectors[i], 1))[0].id == f"r{i:06d}"


async def test_reads_and_writes_go_on_while_the_index_builds(tmp_path: Path) -> None:
    vectors = clustered(40_000, 96)
    written: list[str] = []
    # loading_rows above 40,000: the first pass builds rather than waiting to see a load.
    policy = IndexPolicy(ann_min_rows=30_000, loading_rows=50_000)
    async with LanceStore(tmp_path, policy) as store:
        await store.create_table("t", dim=96)
        for start in range(0, len(vectors), 10_000):
            await store.insert("t", records_of(vectors[start : start + 10_000], start=start))
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.maintain, "t")
            while (await store.index_status("t")).state != "building":
                await anyio.sleep(0.001)
            i = 0
            while (await store.index_status("t")).state == "building":
                new = records_of(clustered(10, 96, seed=100 + i), start=100_000 + 10 * i)
                await store.insert("t", new)
                hits = await store.search("t", new[0].embedding, 1)
                assert hits[0].id == new[0].id  # written during the build, found at once
                written.append(new[0].id)
                i += 1
        assert written, "the build ended before any write could run beside it"
        status = await store.index_status("t")
        assert (status.kind, status.state) == ("IVF_RQ", "indexed")
        assert status.rows == 40_000 + 10 * len(written)
        assert status.unindexed_rows > 0  # what was written during the build
        assert [r.id for r in await store.get_by_ids("t", written)] == written


async def test_an_outgrown_index_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    vectors = clustered(4_200, 16)
    async with LanceStore(tmp_path, SMALL) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors[:1_000]))
        assert (await store.maintain("t"))[-1].startswith("built IVF_RQ with 8 partitions")
        await store.insert("t", records_of(vectors[1_000:], start=1_000))
        # The table quadrupled since the last pass: it is loading, and the rebuild waits a pass
        assert await store.maintain("t") == [
            "waiting: the table is loading (1000 rows at the previous pass)"
        ]
        assert (await store.index_status("t")).state == "loading"
        # 4,200 rows want 16 partitions: twice what the index has, so it is rebuilt, not folded
        rebuilt, done = await store.maintain("t")
        assert rebuilt.startswith("rebuilt the scalar indexes")  # 3,200 rows were outside them
        assert done.startswith("built IVF_RQ with 16 partitions over 4200 rows")
        table = await (await lancedb.connect_async(tmp_path)).open_table("t")
        names = [index.name for index in await table.list_indices()]
        assert [n for n in names if n.startswith("embedding")] == ["embedding_ivf_rq_p16_r4200"]
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "indexed", 4_200, 0)
        assert (await store.search("t", vectors[4_100], 1))[0].id == "r004100"


async def test_an_index_named_before_the_rows_were_recorded_is_kept_and_outgrown(
    tmp_path: Path,
) -> None:
    vectors = clustered(4_200, 16)
    async with LanceStore(tmp_path, SMALL) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors[:1_000]))
    raw = await (await lancedb.connect_async(tmp_path)).open_table("t")
    config = IvfRq(distance_type="cosine", num_bits=4, num_partitions=8)
    await raw.create_index("embedding", config=config, name="embedding_ivf_rq_p8")
    async with LanceStore(tmp_path, SMALL) as store:
        # The name implies (4 x 8)^2 = 1,024 rows: the index serves and is not rebuilt at 1,000
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "indexed", 1_000, 0)
        assert [line for line in await store.maintain("t") if "IVF_RQ" in line] == []
        await store.insert("t", records_of(vectors[1_000:], start=1_000))
        await store.load_finished("t")
        assert (await store.maintain("t"))[-1].startswith("built IVF_RQ with 16 partitions")
    raw = await (await lancedb.connect_async(tmp_path)).open_table("t")
    names = [index.name for index in await raw.list_indices()]
    assert [n for n in names if n.startswith("embedding")] == ["embedding_ivf_rq_p16_r4200"]


def test_partitions_grow_as_the_square_root_of_the_rows_up_to_128() -> None:
    assert [_partitions(n) for n in (1_000, 10_000, 100_000, 262_144, 1_000_000)] == [
        8,
        25,
        79,
        128,
        128,
    ]


def test_a_filtered_search_probes_partitions_enough_to_hold_the_pool() -> None:
    # 128 partitions, a pool of 5,000 rows: exact up to 5,000 matches, then more probes the
    # sparser the matches, never fewer than an unfiltered search's 32 nor more than all.
    assert [_filtered_probes(128, m, 5_000) for m in (10, 5_000, 5_001)] == [None, None, 128]
    assert [_filtered_probes(128, m, 5_000) for m in (10_000, 20_000, 500_000)] == [64, 32, 32]
    assert _filtered_probes(79, 10_000, 5_000) == 40


async def test_a_table_that_keeps_loading_is_indexed_after_max_waits(tmp_path: Path) -> None:
    vectors = clustered(3_000, 16)
    async with LanceStore(tmp_path, IndexPolicy(ann_min_rows=1_000, max_waits=2)) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors[:500]))
        first = await store.maintain("t")  # below ann_min_rows: the scalar indexes only
        assert len(first) == 5
        assert all(line.startswith("built the ") for line in first)
        waited = []
        for start in (500, 1_000, 2_000):  # each pass finds the table grown by half or more
            await store.insert("t", records_of(vectors[start : start * 2], start=start))
            waited.append((await store.maintain("t"))[-1])
        assert waited[:2] == [
            "waiting: the table is loading (500 rows at the previous pass)",
            "waiting: the table is loading (1000 rows at the previous pass)",
        ]
        assert waited[2].startswith("built IVF_RQ with 14 partitions over 3000 rows")


async def test_a_big_table_growing_by_many_rows_is_loading_too(tmp_path: Path) -> None:
    vectors = clustered(3_400, 16)
    policy = IndexPolicy(ann_min_rows=1_000, loading_rows=300, optimize_growth=0.01)
    async with LanceStore(tmp_path, policy) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors[:3_000]))
        # First seen with more than loading_rows: perhaps loading, so the build waits a pass
        waited = (await store.maintain("t"))[-1]
        assert waited == "waiting: the table may be loading (3000 rows at the first pass)"
        assert (await store.maintain("t"))[-1].startswith("built IVF_RQ")
        await store.insert("t", records_of(vectors[3_000:3_200], start=3_000))
        # 200 rows: under 20% and under loading_rows, so the optimize is not put off
        assert (await store.maintain("t"))[-1].startswith("optimized")
        await store.insert("t", records_of(vectors[3_200:], start=3_200))
        await store.delete("t", "r000000")
        # 199 rows more than at the previous pass (200 added, 1 deleted): not loading either
        assert (await store.maintain("t"))[-1].startswith("optimized")
    policy = IndexPolicy(ann_min_rows=1_000, loading_rows=100, optimize_growth=0.01)
    async with LanceStore(tmp_path, policy) as store:
        await store.maintain("t")  # the first pass after opening: nothing to compare with
        await store.insert("t", records_of(clustered(150, 16, seed=3), start=9_000))
        # 150 of 3,549 rows is 4%, but more than loading_rows
        assert (await store.maintain("t")) == [
            "waiting: the table is loading (3399 rows at the previous pass)"
        ]


async def test_the_first_pass_over_a_big_table_waits_to_see_whether_it_is_loading(
    tmp_path: Path,
) -> None:
    vectors = clustered(3_000, 16)
    policy = IndexPolicy(ann_min_rows=1_000, loading_rows=2_000)
    async with LanceStore(tmp_path, policy) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors))
        # Never seen before and bigger than loading_rows: perhaps halfway through a load
        waited = (await store.maintain("t"))[-1]
        assert waited == "waiting: the table may be loading (3000 rows at the first pass)"
        assert (await store.maintain("t"))[-1].startswith("built IVF_RQ")
    async with LanceStore(tmp_path / "small", IndexPolicy(ann_min_rows=1_000)) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors))
        # Under loading_rows (20,000 by default): a small table is indexed at once
        assert (await store.maintain("t"))[-1].startswith("built IVF_RQ")


async def test_a_finished_load_is_indexed_at_the_next_pass_without_waiting(
    tmp_path: Path,
) -> None:
    vectors = clustered(6_000, 16)
    policy = IndexPolicy(ann_min_rows=1_000, loading_rows=500)
    async with LanceStore(tmp_path, policy) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors[:3_000]))
        await store.load_finished("t")
        # Over loading_rows at the first pass, which would wait a pass: the loader said it ended.
        assert (await store.maintain("t"))[-1].startswith("built IVF_RQ with 14 partitions")
        # Once: the next load is seen loading again, until it too is said to be over.
        await store.insert("t", records_of(vectors[3_000:], start=3_000))
        assert (await store.maintain("t")) == [
            "waiting: the table is loading (3000 rows at the previous pass)"
        ]
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "loading", 6_000, 3_000)
        await store.load_finished("t")
        assert (await store.maintain("t"))[-1].startswith("optimized")
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "indexed", 6_000, 0)
        with pytest.raises(UnknownTable):
            await store.load_finished("nope")


async def test_next_pass_brings_a_finished_load_forward_and_keeps_the_others_pace(
    tmp_path: Path,
) -> None:
    async with LanceStore(tmp_path, SMALL) as store:
        await store.create_table("a", dim=8)
        await store.create_table("b", dim=8)
        with anyio.fail_after(1):
            assert await store.next_pass(0.01) == ["a", "b"]  # its time is up: every table
        await store.load_finished("a")
        with anyio.fail_after(1):
            assert await store.next_pass(1) == ["a"]  # asked for: at once, that table only
        with anyio.move_on_after(0.2) as again:  # nothing asked now: the round is still due
            await store.next_pass(1)
        assert again.cancelled_caught
        with anyio.fail_after(5):  # the round keeps its time, not a new hour from now
            assert await store.next_pass(3600) == ["a", "b"]
        await store.load_finished("b")
        with anyio.fail_after(1):
            assert await store.next_pass(0.2) == ["b"]
        await anyio.sleep(0.3)  # b's pass outlasts the round's time (a build)
        with anyio.move_on_after(0.5) as after:  # so the round comes a whole interval later
            await store.next_pass(5)
        assert after.cancelled_caught


async def test_rows_piled_up_outside_the_scalar_indexes_are_folded_in_before_the_build(
    tmp_path: Path,
) -> None:
    vectors = clustered(3_000, 16)
    async with LanceStore(tmp_path, IndexPolicy(ann_min_rows=2_000)) as store:
        await store.create_table("t", dim=16)
        await store.insert("t", records_of(vectors[:500]))
        assert len(await store.maintain("t")) == 5  # the scalar indexes, over 500 rows
        for start in range(500, 3_000, 100):  # a bulk load
            await store.insert("t", records_of(vectors[start : start + 100], start=start))
        raw = await (await lancedb.connect_async(tmp_path)).open_table("t")
        stale = await raw.index_stats("id_idx")
        assert stale is not None
        assert stale.num_unindexed_rows == 2_500
        await store.maintain("t")  # the first pass after the load finds it still loading
        done = await store.maintain("t")
        # The scalar indexes first: upserts and deletes join on id while the build runs.
        assert [line.split(" in ")[0].split(":")[0] for line in done] == [
            "rebuilt the scalar indexes",
            "built IVF_RQ with 14 partitions over 3000 rows",
        ]
        fresh = await (await lancedb.connect_async(tmp_path)).open_table("t")
        for name in (
            "id_idx",
            "source_id_idx",
            "created_at_idx",
            "source_type_idx",
            "tag_list_idx",
        ):
            stats = await fresh.index_stats(name)
            assert stats is not None, name
            assert stats.num_unindexed_rows == 0, name
        assert await store.index_status("t") == IndexStatus("IVF_RQ", "indexed", 3_000, 0)
        await store.insert("t", records_of(vectors[:10]))  # an upsert joins through the index
        assert await store.count("t") == 3_000


async def test_optimize_compacts_small_fragments_and_removes_old_versions(tmp_path: Path) -> None:
    policy = IndexPolicy(ann_min_rows=1_000, max_small_fragments=4, retention_seconds=0.001)
    async with LanceStore(tmp_path, policy) as store:
        await store.create_table("t", dim=4)
        for i in range(10):  # ten upserts: ten fragments, ten versions
            await store.insert("t", [record(f"r{i}", [1, i, 0, 0])])
        await anyio.sleep(0.01)  # every version but the latest is now past retention
        done = (await store.maintain("t"))[-1]  # after the scalar indexes
        assert done.startswith("optimized")
        assert "10 fragments compacted into 1" in done
        assert int(done.split(", ")[1].split()[0]) >= 10  # old versions removed
        raw = await (await lancedb.connect_async(tmp_path)).open_table("t")
        assert len(await raw.list_versions()) <= 2  # type: ignore[no-untyped-call]  # the latest, and the compaction's own
        assert await store.count("t") == 10
        assert (await store.search("t", [1, 9, 0, 0], 1))[0].id == "r9"


def query_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """How each LanceDB vector query of the test goes, as it is built: "exact" (every row
    compared) or "nprobes N" (through the index)."""
    paths: list[str] = []
    nprobes, bypass = AsyncVectorQuery.nprobes, AsyncVectorQuery.bypass_vector_index

    def probing(query: AsyncVectorQuery, n: int) -> AsyncVectorQuery:
        paths.append(f"nprobes {n}")
        return nprobes(query, n)

    def exact(query: AsyncVectorQuery) -> AsyncVectorQuery:
        paths.append("exact")
        return bypass(query)

    monkeypatch.setattr(AsyncVectorQuery, "nprobes", probing)
    monkeypatch.setattr(AsyncVectorQuery, "bypass_vector_index", exact)
    return paths


async def test_selective_filters_are_answered_exactly_and_others_through_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = clustered(3_000, 32)
    feeds = [i for i in range(3_000) if i % 100 == 0]
    query = clustered(1, 32, seed=9)[0]
    expected = [f"r{i:06d}" for i in sorted(feeds, key=lambda i: -float(vectors[i] @ query))]
    for policy in (SMALL, IndexPolicy(ann_min_rows=1_000, filter_pool=0)):
        async with LanceStore(tmp_path / str(policy.filter_pool), policy) as store:
            await store.create_table("t", dim=32)
            await store.insert("t", records_of(vectors))
            await store.maintain("t")
            paths = query_paths(monkeypatch)
            hits = await store.search("t", query, 5, filter="source_type = 'feed'")
            monkeypatch.undo()
            if policy.filter_pool:
                assert paths == ["exact"]  # 30 rows match
                assert [h.id for h in hits] == expected[:5]
            else:
                assert paths == ["nprobes 14"]  # every one of the 14 partitions
                assert len(hits) == 5
                assert {h.id for h in hits} <= set(expected)


async def test_a_filter_whose_rows_lie_in_unprobed_partitions_is_answered_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 36,000 rows around +e0 and 4,000 around -e0: 50 partitions, of which a query at +e0
    # probes the 35 nearest (enough to hold 7 of the 10 matching rows, were they spread
    # evenly), none of them -e0's. Ten of the far rows match the filter.
    rng = np.random.default_rng(5)
    near = np.eye(8, dtype=np.float32)[0] + rng.normal(0, 0.3, (36_000, 8)).astype(np.float32)
    far = -np.eye(8, dtype=np.float32)[0] + rng.normal(0, 0.3, (4_000, 8)).astype(np.float32)
    vectors = np.concatenate([near, far])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [
        record(f"r{i:06d}", v, source_type="far" if i >= 39_990 else "page")
        for i, v in enumerate(vectors)
    ]
    query = np.eye(8, dtype=np.float32)[0]
    # filter_pool 0: the index would answer however few rows match.
    async with LanceStore(tmp_path, IndexPolicy(ann_min_rows=1_000, filter_pool=0)) as store:
        await store.create_table("t", dim=8)
        await store.insert("t", rows)
        await store.load_finished("t")  # else a first pass over 40,000 rows waits for more
        await store.maintain("t")
        assert (await store.index_status("t")).kind == "IVF_RQ"
        paths = query_paths(monkeypatch)
        hits = await store.search("t", query, 3, filter="source_type = 'far'")
    assert paths == ["nprobes 35", "exact"]  # the index found none of them
    assert [h.id for h in hits] == exact_top(vectors[39_990:], query, 3, start=39_990)


def damage_newest_manifest(table_dir: Path, content: bytes) -> Path:
    newest = min((table_dir / "_versions").glob("*.manifest"))  # V2 names: newest sorts first
    newest.write_bytes(content)
    return newest


@pytest.mark.parametrize("cut", ["empty", "truncated"])
async def test_a_damaged_newest_manifest_opens_the_version_before(
    tmp_path: Path, cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with LanceStore(tmp_path) as store:
        await store.create_table("t", dim=2)
        await store.insert("t", [record("a", [1, 0])])
        await store.insert("t", [record("b", [0, 1])])
    newest = min((tmp_path / "t.lance" / "_versions").glob("*.manifest"))
    whole = newest.read_bytes()
    damage_newest_manifest(tmp_path / "t.lance", b"" if cut == "empty" else whole[:-10])
    with caplog.at_level(logging.WARNING, logger="store.lance"):
        async with LanceStore(tmp_path) as store:
            assert [r.id for r in await store.get_by_ids("t", ["a", "b"])] == ["a"]
            await store.insert("t", [record("c", [1, 1])])  # and it takes writes again
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "table 't': its newest manifest was damaged (version 3" in warning
    assert "opened version 2, the last complete one" in warning
    assert [p.name.split(".")[0] for p in (tmp_path / "t.lance" / "_damaged").iterdir()] == [
        newest.name.split(".")[0]
    ]
    async with LanceStore(tmp_path) as store:
        assert await store.count("t") == 2


async def test_a_table_that_cannot_be_opened_fails_alone_with_a_precise_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with LanceStore(tmp_path) as store:
        await store.create_table("bad", dim=2)
        await store.create_table("good", dim=2)
        await store.insert("bad", [record("a", [1, 0])])
        await store.insert("good", [record("a", [1, 0])])
    # Complete in form (it ends with Lance's magic) but not a manifest: not ours to set aside.
    damage_newest_manifest(tmp_path / "bad.lance", b"not a manifest LANC")
    with caplog.at_level(logging.ERROR, logger="store.lance"):
        async with LanceStore(tmp_path) as store:
            assert store.tables() == {"good": 2}
            assert await store.count("good") == 1
            with pytest.raises(StoreError, match=r"table 'bad' cannot be opened: RuntimeError"):
                await store.search("bad", [1, 0], 1)
            with pytest.raises(StoreError, match="table 'bad' cannot be opened"):
                await store.create_table("BAD", dim=2)
    assert any("table 'bad' cannot be opened" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "bad.lance" / "_damaged").exists()
