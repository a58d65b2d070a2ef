"""SQLiteStore specifics: error translation, SQLite's naming rules, the matrix's self-checks."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from store.base import Record, StoreError, TableExists
from store.sqlite import SQLiteStore
from tests.store.conftest import record

pytestmark = pytest.mark.anyio


async def test_a_locked_database_gives_store_errors_naming_the_operation(tmp_path: Path) -> None:
    path = tmp_path / "vectors.db"
    async with SQLiteStore(path, busy_timeout_ms=50) as store:
        await store.create_table("t", dim=2)
        await store.insert("t", [record("a", [1, 0])])
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the file
        try:
            with pytest.raises(StoreError, match="insert on table 't' failed: database is locked"):
                await store.insert("t", [record("b", [0, 1])])
            with pytest.raises(StoreError, match="delete on table 't' failed"):
                await store.delete("t", "a")
            with pytest.raises(StoreError, match="create_table on table 'u' failed"):
                await store.create_table("u", dim=2)
        finally:
            other.execute("ROLLBACK")
            other.close()
        # Nothing half-done: the store goes on as if the refused calls never happened.
        await store.insert("t", [record("b", [0, 1])])
        assert [r.id for r in await store.search("t", [0, 1], 5)] == ["b", "a"]
        await store.create_table("u", dim=2)


async def test_names_differing_only_in_case_are_one_table(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "v.db") as store:
        await store.create_table("t", dim=2)
        with pytest.raises(TableExists, match="'t' already exists"):
            await store.create_table("T", dim=2)


async def test_table_names_never_collide_with_index_names(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "v.db") as store:
        await store.create_table("a", dim=2)
        await store.create_table("a_source_id", dim=2)
        await store.create_table("b_created_at", dim=2)
        await store.create_table("b", dim=2)
        await store.insert("a_source_id", [record("x", [1, 0])])
        assert await store.count("a_source_id") == 1


async def test_a_matrix_out_of_step_with_the_file_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    async with SQLiteStore(path) as store:
        await store.create_table("t", dim=2)
        await store.insert("t", [record("a", [1, 0], source_type="page")])
        # A row the store's matrix never saw, written at the same table version (as a failed
        # publish would leave things): filtered search must notice and reload, not skip it.
        raw = sqlite3.connect(path, isolation_level=None)
        raw.execute(
            "INSERT INTO vectors_t (id, source_id, source_type, text_chunk, embedding, "
            "created_at, tags) VALUES ('b', 's', 'page', '', ?, '2024-05-01T12:00:00.000Z', '[]')",
            (np.array([0, 1], "<f4").tobytes(),),
        )
        raw.close()
        hits = await store.search("t", [0, 1], 5, filter="source_type = 'page'")
        assert [h.id for h in hits] == ["b", "a"]


@pytest.mark.parametrize("vector", [[1e-30, 0.0], [1e20, 1e20], [3e38, -3e38]])
async def test_extreme_magnitudes_keep_their_direction(tmp_path: Path, vector: list[float]) -> None:
    async with SQLiteStore(tmp_path / "v.db") as store:
        await store.create_table("t", dim=2)
        await store.insert("t", [record("x", vector), record("y", [-vector[0], -vector[1]])])
        [top, bottom] = await store.search("t", vector, 2)
        assert [top.id, bottom.id] == ["x", "y"]
        assert [top.score, bottom.score] == pytest.approx([1.0, -1.0])


async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    async with SQLiteStore(path) as store:
        await store.create_table("t", dim=2)
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO satchel_migrations VALUES ('9999_future', '2030-01-01T00:00:00Z')")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match=r"newer Satchel.*9999_future"):
        async with SQLiteStore(path):
            pass


def test_records_own_their_data() -> None:
    source = np.array([1.0, 2.0], np.float32)
    tags = ["a"]
    r = Record("id", "s", "page", "t", source, "2024-05-01T12:00:00Z", tags)
    source[0] = np.nan
    tags.append("b")
    assert r.embedding.tolist() == [1.0, 2.0]
    assert r.tags == ("a",)
    assert source.flags.writeable  # the caller's array is left as it was
    with pytest.raises(ValueError, match="read-only"):
        r.embedding[0] = 5.0
