"""The VectorStore contract, checked on every implementation (see conftest.OPENERS)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import anyio
import numpy as np
import pytest

from store.base import (
    MAX_DIM,
    DimensionMismatch,
    InvalidFilter,
    InvalidQuery,
    InvalidRecord,
    InvalidTableName,
    Record,
    StoreClosed,
    StoreError,
    TableExists,
    UnknownTable,
    VectorStore,
    content_digest,
    tags_to_json,
)
from store.filter import parse
from store.http import ServedStore
from tests.store.conftest import StoreOpener, random_records, record
from tests.store.model import assert_same_ranking, exact_search, matches

pytestmark = pytest.mark.anyio

DIM = 8


async def test_implements_the_protocol(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)


# -- tables -----------------------------------------------------------------------------------


async def test_new_table_is_empty(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    assert await store.count("t") == 0
    assert await store.search("t", np.ones(DIM), 5) == []
    assert [b async for b in store.export_all("t")] == []
    assert await store.get_by_ids("t", ["nope"]) == []


async def test_create_existing_table_fails_whatever_the_dimension(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    for dim in (DIM, DIM + 1):
        with pytest.raises(TableExists, match="'t' already exists") as info:
            await store.create_table("t", dim=dim)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "a-b", "a b", "t;DROP TABLE x", 'a"b', "x" * 65, "tâble", "t\x00", "ｔ"],
)
async def test_invalid_table_names_are_refused_everywhere(store: VectorStore, name: str) -> None:
    with pytest.raises(InvalidTableName, match="invalid table name"):
        await store.create_table(name, dim=DIM)
    with pytest.raises(InvalidTableName):
        await store.insert(name, [record("a", np.ones(DIM))])
    with pytest.raises(InvalidTableName):
        await store.search(name, np.ones(DIM), 1)
    with pytest.raises(InvalidTableName):
        await store.count(name)


async def test_longest_valid_table_name(store: VectorStore) -> None:
    name = "_" + "x" * 63
    await store.create_table(name, dim=2)
    await store.insert(name, [record("a", [1, 0])])
    assert await store.count(name) == 1


@pytest.mark.parametrize("dim", [0, -1, MAX_DIM + 1, True, 1.5, "8"])
async def test_invalid_dimension_is_refused(store: VectorStore, dim: object) -> None:
    with pytest.raises(InvalidQuery, match="dim"):
        await store.create_table("t", dim=dim)  # type: ignore[arg-type]


async def test_unknown_table_raises_on_every_method(store: VectorStore) -> None:
    calls = [
        store.insert("nope", [record("a", np.ones(DIM))]),
        store.search("nope", np.ones(DIM), 1),
        store.get_by_ids("nope", ["a"]),
        store.delete("nope", "a"),
        store.delete_where("nope", "id = 'a'"),
        store.count("nope"),
    ]
    for call in calls:
        with pytest.raises(UnknownTable, match="no table named 'nope'") as info:
            await call
        assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownTable):
        async for _ in store.export_all("nope"):
            pass


async def test_tables_are_independent(store: VectorStore) -> None:
    await store.create_table("a", dim=2)
    await store.create_table("b", dim=3)
    await store.insert("a", [record("x", [1, 0])])
    await store.insert("b", [record("x", [0, 0, 1]), record("y", [0, 1, 0])])
    assert (await store.count("a"), await store.count("b")) == (1, 2)
    assert [r.id for r in await store.search("b", [0, 1, 0], 1)] == ["y"]


# -- records ------------------------------------------------------------------------------------


async def test_round_trip_keeps_every_field_exactly(store: VectorStore) -> None:
    await store.create_table("t", dim=4)
    originals = [
        record(
            "ünï-文字-🦀",
            [0.1, -2.5, 3e-8, 1e6],
            source_id="https://example.org/a?b=c#d",
            source_type="page",
            text="line one\nline 'two' \"three\" -- ; DROP TABLE x; 中文 🦀 \t end",
            created_at="2024-05-01T14:30:15.123+02:00",
            tags=["a b", "ünï", "", "it's"],
        ),
        record("plain", [1, 2, 3, 4], text="", tags=[]),
        record("old", [1, 0, 0, 0], created_at="0999-05-01T12:00:00+00:00"),
    ]
    await store.insert("t", originals)
    got = await store.get_by_ids("t", ["plain", "ünï-文字-🦀", "old"])
    assert got == [originals[1], originals[0], originals[2]]
    assert got[1].created_at == "2024-05-01T12:30:15.123Z"  # normalised to UTC at creation
    assert got[2].created_at == "0999-05-01T12:00:00.000Z"  # four digits, so order holds
    assert got[1].embedding.dtype == np.float32


async def test_get_by_ids_keeps_request_order_skips_missing_and_repeats(
    store: VectorStore,
) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(1200, DIM)
    await store.insert("t", records)
    wanted = ["r000005", "missing", "r001100", "r000005", "r000000"]
    got = await store.get_by_ids("t", wanted)
    assert [r.id for r in got] == ["r000005", "r001100", "r000000"]
    many = [r.id for r in records[::-1]]  # more ids than one SQL chunk
    assert [r.id for r in await store.get_by_ids("t", many)] == many


async def test_insert_is_an_idempotent_upsert(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(50, DIM)
    await store.insert("t", records)
    before = await store.search("t", records[3].embedding, 10)
    await store.insert("t", records)
    assert await store.count("t") == 50
    assert await store.search("t", records[3].embedding, 10) == before

    changed = record(records[3].id, -records[3].embedding, text="changed", tags=["new"])
    await store.insert("t", [changed])
    assert await store.count("t") == 50
    assert await store.get_by_ids("t", [changed.id]) == [changed]
    hits = await store.search("t", records[3].embedding, 50)
    assert hits[-1].id == changed.id
    assert hits[-1].score == pytest.approx(-1.0, abs=1e-6)


async def test_repeated_id_in_one_batch_keeps_the_last(store: VectorStore) -> None:
    await store.create_table("t", dim=2)
    await store.insert("t", [record("a", [1, 0], text="first"), record("a", [0, 1], text="last")])
    assert await store.count("t") == 1
    [got] = await store.get_by_ids("t", ["a"])
    assert got.text_chunk == "last"
    [hit] = await store.search("t", [0, 1], 1)
    assert hit.id == "a"
    assert hit.score == pytest.approx(1.0)


async def test_empty_insert_is_a_no_op(store: VectorStore) -> None:
    await store.create_table("t", dim=2)
    await store.insert("t", [])
    assert await store.count("t") == 0


async def test_wrong_dimension_names_both_and_writes_nothing(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    batch = [record("ok", np.ones(DIM)), record("bad", np.ones(DIM + 3))]
    with pytest.raises(DimensionMismatch, match=rf"{DIM}-dimensional.*{DIM + 3} dimensions"):
        await store.insert("t", batch)
    assert await store.count("t") == 0
    with pytest.raises(DimensionMismatch, match="query vector"):
        await store.search("t", np.ones(DIM - 1), 1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": ""}, "id: must not be empty"),
        ({"id": 7}, "id: expected a string"),
        ({"text_chunk": None}, "text_chunk: expected a string"),
        ({"text_chunk": "bad \ud800 surrogate"}, "text_chunk: not valid Unicode"),
        ({"embedding": [1.0, float("nan")]}, "NaN"),
        ({"embedding": [0.0, 0.0]}, "all zeros"),
        ({"embedding": [[1.0, 2.0]]}, "1-D"),
        ({"embedding": ["a", "b"]}, "sequence of numbers"),
        ({"created_at": "2024-05-01"}, "RFC 3339"),
        ({"created_at": "2024-05-01T12:00:00"}, "with an offset"),
        ({"created_at": "yesterday"}, "RFC 3339"),
        ({"tags": "rust"}, "tags: expected a list"),
        ({"tags": {"a": 1}}, "tags: expected a list of strings, got dict"),
        ({"tags": ["ok", 3]}, r"tags\[\]: expected a string"),
        ({"text_chunk": "a\x00b"}, "text_chunk: contains a NUL"),
        ({"created_at": ["2024-05-01T12:00:00Z"]}, "created_at: expected an RFC 3339 string"),
        ({"created_at": "0001-01-01T00:00:00+01:00"}, "outside the years 1 to 9999"),
    ],
)
def test_invalid_records_are_refused_with_the_field_named(
    fields: dict[str, object], message: str
) -> None:
    base: dict[str, object] = {
        "id": "a",
        "source_id": "s",
        "source_type": "page",
        "text_chunk": "t",
        "embedding": [1.0, 0.0],
        "created_at": "2024-05-01T12:00:00Z",
        "tags": [],
    }
    with pytest.raises(InvalidRecord, match=message):
        Record(**{**base, **fields})  # type: ignore[arg-type]
    # Record.batch (the sidecar's bulk decoding) checks the same, and names the record.
    if fields.get("embedding") in ([[1.0, 2.0]], ["a", "b"]):
        return  # the shape of one vector: a batch's matrix is checked as a whole, below
    good = {k: v for k, v in base.items() if k != "embedding"}
    bad = {**good, "id": "b", **{k: v for k, v in fields.items() if k != "embedding"}}
    matrix: list[object] = [[1.0, 0.0], fields.get("embedding", [0.0, 1.0])]
    prefix = "record 'b': " if "id" not in fields else r"record .*: "
    with pytest.raises(InvalidRecord, match=prefix + ".*" + message):
        Record.batch([good, bad], matrix)  # type: ignore[arg-type]  # bad on purpose


def test_a_batch_equals_its_records_built_one_by_one() -> None:
    fields = [
        {"id": f"r{i}", "source_id": "s", "text_chunk": "ü", "created_at": "2024-05-01T14:00+02:00"}
        for i in range(3)
    ]
    # Square norms that overflow or underflow float32 are still finite, non-zero vectors.
    matrix = np.array([[1e30, 1e30], [1e-30, 0.0], [0.5, -2.0]], np.float32)
    batch = Record.batch(fields, matrix)
    one_by_one = [
        Record(**{"source_type": "", "text_chunk": "", **f}, embedding=v)
        for f, v in zip(fields, matrix, strict=True)
    ]
    assert batch == one_by_one
    assert batch[0].created_at == "2024-05-01T12:00:00.000Z"
    assert batch[0].tags == ()
    matrix[0, 0] = 7.0  # the batch owns a read-only copy
    assert batch[0].embedding[0] == np.float32(1e30)
    assert not batch[0].embedding.flags.writeable
    for wrong in ([[1.0, 0.0]], [[1.0, 0.0], [1.0]], np.ones((3, 0))):
        with pytest.raises(InvalidRecord, match="embeddings: expected"):
            Record.batch(fields, wrong)


async def test_insert_refuses_things_that_are_not_records(store: VectorStore) -> None:
    await store.create_table("t", dim=2)
    with pytest.raises(TypeError, match="Records"):
        await store.insert("t", [{"id": "a"}])  # type: ignore[list-item]


# -- search -------------------------------------------------------------------------------------


async def test_search_equals_exact_brute_force(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(3000, DIM, seed=1)
    for start in range(0, len(records), 1000):
        await store.insert("t", records[start : start + 1000])
    rng = np.random.default_rng(2)
    for _ in range(20):
        query = rng.standard_normal(DIM)
        got = await store.search("t", query, 10)
        assert_same_ranking(got, exact_search(records, query, len(records)), 10)


async def test_ties_are_broken_by_id(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    vector = np.linspace(1, 2, DIM)
    # Identical vectors score identically wherever they sit in memory; 1,001 rows puts some
    # of them in the remainder rows that BLAS handles with a different kernel.
    ids = [f"id{i:04d}" for i in range(1001)]
    rng = np.random.default_rng(3)
    shuffled = list(rng.permutation(ids))
    await store.insert("t", [record(i, vector) for i in shuffled])
    hits = await store.search("t", vector, 25)
    assert [h.id for h in hits] == ids[:25]
    assert len({h.score for h in hits}) == 1


async def test_top_k_beyond_the_count_returns_everything(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(7, DIM)
    await store.insert("t", records)
    query = np.ones(DIM)
    got = await store.search("t", query, 1000)
    assert_same_ranking(got, exact_search(records, query, 7), 7)


@pytest.mark.parametrize("top_k", [0, -1, True, 2.5, "3"])
async def test_bad_top_k_is_refused(store: VectorStore, top_k: object) -> None:
    await store.create_table("t", dim=2)
    with pytest.raises(InvalidQuery, match="top_k"):
        await store.search("t", [1, 0], top_k)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("vector", "message"),
    [([0.0, 0.0], "all zeros"), ([1.0, float("inf")], "NaN or infinity"), ([[1, 0]], "1-D")],
)
async def test_bad_query_vectors_are_refused(
    store: VectorStore, vector: object, message: str
) -> None:
    await store.create_table("t", dim=2)
    with pytest.raises(InvalidQuery, match=message):
        await store.search("t", vector, 1)  # type: ignore[arg-type]


async def test_scores_are_cosine_similarity_of_raw_vectors(store: VectorStore) -> None:
    await store.create_table("t", dim=2)
    await store.insert(
        "t", [record("same", [3, 0]), record("right", [0, 5]), record("opp", [-2, 0])]
    )
    hits = await store.search("t", [10, 0], 3)
    assert [(h.id, round(h.score, 6)) for h in hits] == [
        ("same", 1.0),
        ("right", 0.0),
        ("opp", -1.0),
    ]


FILTERS = [
    "id = 'r000010'",
    "id IN ('r000001', 'r000002', 'missing')",
    "source_id = 'source-3'",
    "source_id != 'source-3' AND source_type = 'feed'",
    "source_type IN ('page', 'note')",
    "source_type NOT IN ('page')",
    "text_chunk LIKE '%even'",
    "text_chunk LIKE 'chunk 1_ %'",
    "text_chunk NOT LIKE '%文字%'",
    "text_chunk LIKE '%ÜNÏ%'",  # case-sensitive: matches nothing
    "text_chunk LIKE 'CHUNK%'",  # case-sensitive: matches nothing
    "text_chunk LIKE 'Chunk 1%'",
    "text_chunk >= 'Chunk 5'",
    "created_at >= '2024-06-01'",
    "created_at < '2024-03-01T00:00:00.000Z' OR created_at > '2024-11-15'",
    "tags CONTAINS 'rust'",
    "tags CONTAINS 'rust' AND NOT tags CONTAINS 't0'",
    "tags CONTAINS 'nope'",
    "source_id IS NULL",
    "source_id IS NOT NULL AND (source_type = 'feed' OR tags CONTAINS 't2')",
]


@pytest.mark.parametrize("text", FILTERS)
async def test_filtered_search_is_exact_over_the_matching_rows(
    store: VectorStore, text: str
) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(600, DIM, seed=4)
    await store.insert("t", records)
    tree = parse(text)
    matching = [r for r in records if matches(tree, r)]
    query = np.random.default_rng(5).standard_normal(DIM)
    for k in (1, 10, 1000):
        got = await store.search("t", query, k, filter=text)
        assert_same_ranking(got, exact_search(matching, query, len(matching)), k)


async def test_invalid_filter_names_position_and_expectation(store: VectorStore) -> None:
    await store.create_table("t", dim=2)
    with pytest.raises(InvalidFilter, match=r"position 12: .*expected a string literal") as info:
        await store.search("t", [1, 0], 1, filter="source_id = 3")
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidFilter, match=r"unknown column 'sourceid'.*did you mean 'source_id'"):
        await store.search("t", [1, 0], 1, filter="sourceid = 'x'")


# -- deletes ------------------------------------------------------------------------------------


async def test_delete_by_id(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(20, DIM)
    await store.insert("t", records)
    assert await store.delete("t", records[0].id) is True
    assert await store.delete("t", records[0].id) is False
    assert await store.delete("t", "never-existed") is False
    assert await store.count("t") == 19
    hits = await store.search("t", records[0].embedding, 20)
    assert records[0].id not in {h.id for h in hits}
    assert_same_ranking(hits, exact_search(records[1:], records[0].embedding, 19), 19)


async def test_delete_where(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(300, DIM)
    await store.insert("t", records)
    gone = [r for r in records if r.source_type == "feed" or "rust" in r.tags]
    kept = [r for r in records if r not in gone]
    assert await store.delete_where("t", "source_type = 'feed' OR tags CONTAINS 'rust'") == len(
        gone
    )
    assert await store.delete_where("t", "source_type = 'feed'") == 0
    assert await store.count("t") == len(kept)
    query = np.ones(DIM)
    assert_same_ranking(await store.search("t", query, 300), exact_search(kept, query, 300), 300)
    with pytest.raises(InvalidFilter, match="expected a condition"):
        await store.delete_where("t", "")
    assert await store.count("t") == len(kept)


async def test_deleting_most_rows_then_inserting_again(store: VectorStore) -> None:
    # Enough deletes to make the in-memory matrix compact itself, then more writes.
    await store.create_table("t", dim=DIM)
    records = random_records(5000, DIM, seed=6)
    for start in range(0, 5000, 1000):
        await store.insert("t", records[start : start + 1000])
    survivors = [r for r in records if r.source_type == "note"]
    assert await store.delete_where("t", "source_type != 'note'") == 5000 - len(survivors)
    extra = random_records(500, DIM, seed=7, prefix="x")
    await store.insert("t", extra)
    everything = survivors + extra
    query = np.random.default_rng(8).standard_normal(DIM)
    got = await store.search("t", query, 50)
    assert_same_ranking(got, exact_search(everything, query, len(everything)), 50)
    assert await store.count("t") == len(everything)


# -- export, reopen, close ------------------------------------------------------------------------


async def test_export_streams_every_record_in_id_order(store: VectorStore) -> None:
    await store.create_table("t", dim=DIM)
    records = random_records(2500, DIM)
    await store.insert("t", list(reversed(records)))
    batches = [b async for b in store.export_all("t", batch_size=1000)]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    assert [r for b in batches for r in b] == sorted(records, key=lambda r: r.id)
    with pytest.raises(InvalidQuery, match="batch_size"):
        async for _ in store.export_all("t", batch_size=0):
            pass


def digest_of(record: Record) -> bytes:
    return content_digest(
        id=record.id,
        source_id=record.source_id,
        source_type=record.source_type,
        text_chunk=record.text_chunk,
        created_at=record.created_at,
        tags_json=tags_to_json(record.tags),
        embedding=record.embedding.astype("<f4").tobytes(),
    )


async def test_every_store_digests_the_same_records_alike(store: VectorStore) -> None:
    served = cast(ServedStore, store)  # every store here can serve behind the sidecar
    await store.create_table("t", dim=DIM)
    records = random_records(2500, DIM)
    await store.insert("t", list(reversed(records)))
    batches = [b async for b in served.digests("t", batch_size=1000)]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    ordered = sorted(records, key=lambda r: r.id)
    assert [d for b in batches for d in b] == [(r.id, digest_of(r)) for r in ordered]
    # Any field's change changes the digest.
    first = ordered[0]
    vector = first.embedding.copy()
    vector[DIM - 1] = np.nextafter(vector[DIM - 1], np.float32(np.inf))
    variants = [
        dataclasses.replace(first, source_id="other"),
        dataclasses.replace(first, source_type="other"),
        dataclasses.replace(first, text_chunk=first.text_chunk + " "),
        dataclasses.replace(first, created_at="2030-01-01T00:00:00Z"),
        dataclasses.replace(first, tags=[*first.tags, "x"]),
        dataclasses.replace(first, embedding=vector),
    ]
    seen = {digest_of(first)}
    for variant in variants:
        await store.insert("t", [variant])
        digests = [d async for b in served.digests("t") for d in b]
        assert digests[0] == (first.id, digest_of(variant))
        assert digests[1:] == [(r.id, digest_of(r)) for r in ordered[1:]]
        seen.add(digests[0][1])
    assert len(seen) == 1 + len(variants)
    with pytest.raises(UnknownTable):
        async for _ in served.digests("nope"):
            pass
    with pytest.raises(InvalidQuery, match="batch_size"):
        async for _ in served.digests("t", batch_size=0):
            pass


async def test_reopen_gives_identical_results(opener: StoreOpener, tmp_path: Path) -> None:
    records = random_records(1500, DIM, seed=9)
    queries = np.random.default_rng(10).standard_normal((5, DIM))
    async with opener(tmp_path) as store:
        await store.create_table("t", dim=DIM)
        await store.insert("t", records)
        await store.delete("t", records[0].id)
        before = [await store.search("t", q, 10, filter="source_type != 'note'") for q in queries]
        exported = [r async for b in store.export_all("t") for r in b]
    async with opener(tmp_path) as store:
        assert await store.count("t") == 1499
        assert [
            await store.search("t", q, 10, filter="source_type != 'note'") for q in queries
        ] == (before)
        assert [r async for b in store.export_all("t") for r in b] == exported
        with pytest.raises(TableExists):
            await store.create_table("t", dim=DIM)


async def test_closed_store_refuses_everything(opener: StoreOpener, tmp_path: Path) -> None:
    async with opener(tmp_path) as store:
        await store.create_table("t", dim=2)
    await store.aclose()  # a second close is fine
    calls = [
        store.create_table("u", dim=2),
        store.insert("t", [record("a", [1, 0])]),
        store.search("t", [1, 0], 1),
        store.get_by_ids("t", ["a"]),
        store.delete("t", "a"),
        store.delete_where("t", "id = 'a'"),
        store.count("t"),
    ]
    for call in calls:
        with pytest.raises(StoreClosed, match="closed") as info:
            await call
        assert isinstance(info.value, StoreError)
    with pytest.raises(StoreClosed):
        async for _ in store.export_all("t"):
            pass


# -- concurrency --------------------------------------------------------------------------------


async def test_searches_never_see_half_a_batch(store: VectorStore) -> None:
    """Each batch rewrites the same 200 ids with one generation's vectors and tag, and adds a
    new generation-only group; every search must see exactly one generation of each."""
    await store.create_table("t", dim=DIM)
    size = 200
    rng = np.random.default_rng(11)
    seen: list[set[str]] = []
    done = anyio.Event()

    def batch(gen: int) -> list[Record]:
        vectors = rng.standard_normal((size, DIM))
        shared = [
            record(f"s{i:03d}", vectors[i], source_id=f"gen{gen}", tags=[f"gen{gen}"])
            for i in range(size)
        ]
        fresh = [
            record(f"g{gen}-{i:03d}", vectors[i], source_id=f"group{gen}") for i in range(size)
        ]
        return shared + fresh

    async def writer() -> None:
        for gen in range(1, 15):
            await store.insert("t", batch(gen))
            if gen % 3 == 2:
                await store.delete_where("t", f"source_id = 'group{gen - 1}'")
        done.set()

    async def small_k_reader() -> None:
        # The argpartition path: results must be whole records of one generation or another.
        while not done.is_set():
            hits = await store.search("t", rng.standard_normal(DIM), 5, filter="id LIKE 's%'")
            assert len(hits) == 5
            assert len({h.id for h in hits}) == 5
            await anyio.lowlevel.checkpoint()

    async def reader(filtered: bool) -> None:
        while not done.is_set():
            query = rng.standard_normal(DIM)
            hits = await store.search(
                "t", query, 100 * size, filter="id LIKE 's%'" if filtered else None
            )
            shared = [h for h in hits if h.id.startswith("s")]
            if shared:
                assert len(shared) == size
                seen.append({h.source_id for h in shared})
            groups: dict[str, int] = {}
            for h in hits:
                if h.id.startswith("g"):
                    groups[h.source_id] = groups.get(h.source_id, 0) + 1
            assert all(count == size for count in groups.values()), groups
            await anyio.lowlevel.checkpoint()

    await store.insert("t", batch(0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(reader, False)
        tg.start_soon(reader, True)
        tg.start_soon(small_k_reader)
    assert all(len(generations) == 1 for generations in seen), seen
    # The readers really ran alongside the writer: they saw several generations go by.
    assert len(set().union(*seen)) > 1, seen
