"""`Columns`: a batch held column by column checks what `Record.batch` checks, keeps what it
would keep, and reads back as the same records in every store."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from store.base import DimensionMismatch, InvalidRecord, Record, StoreError, tags_from_json
from store.columns import TEXT_COLUMNS, Columns, insert_batch
from store.lance import LanceStore
from store.sqlite import SQLiteStore
from tests.store.conftest import random_records, record

pytestmark = pytest.mark.anyio


def wire(records: list[Record]) -> tuple[dict[str, list[Any]], np.ndarray]:
    """Records as a client sends them: the columns of `columns_to_binary`, and the matrix."""
    columns = Columns.from_records(records, records[0].dim)
    fields = {
        "id": list(columns.ids),
        "source_id": list(columns.source_ids),
        "source_type": list(columns.source_types),
        "text_chunk": list(columns.text_chunks),
        "created_at": list(columns.created_at),
        "tags": list(columns.tags),
    }
    return fields, np.array(columns.embeddings)


def parsed_tags(text: str) -> tuple[str, ...]:
    """Tags as the stores read their JSON array; ValueError when they are not one."""
    try:
        return tags_from_json(text)
    except InvalidRecord as exc:
        raise ValueError(str(exc)) from None


def by_record_batch(fields: dict[str, list[Any]], matrix: np.ndarray) -> list[Record]:
    """What `Record.batch` makes of the same batch (tags parsed from their JSON arrays)."""
    items = [
        {
            **{name: fields[name][i] for name in TEXT_COLUMNS if name != "tags"},
            "tags": parsed_tags(fields["tags"][i]),
        }
        for i in range(len(matrix))
    ]
    return Record.batch(items, matrix)


def test_columns_read_back_as_the_records_they_were_made_of() -> None:
    records = [record("a", [1, 0], tags=["x", "y"]), record("b", [0.5, -2], text="ünï")]
    columns = Columns.from_records(records, 2)
    assert len(columns) == 2
    assert columns.dim == 2
    assert list(columns) == records
    assert columns[-1] == records[-1]
    assert list(columns[1:]) == records[1:]
    assert columns.tags == ['["x","y"]', "[]"]
    assert columns.tag_lists() == [["x", "y"], []]
    assert not columns.embeddings.flags.writeable


def test_a_batch_in_stored_form_is_kept_as_it_came() -> None:
    fields, matrix = wire(random_records(50, 4, seed=3))
    matrix.setflags(write=False)
    columns = Columns.checked(fields, matrix)
    assert columns.embeddings is matrix  # no per-record rebuild, no copy
    assert list(columns) == by_record_batch(fields, matrix)


def test_values_to_normalise_come_out_as_record_batch_makes_them() -> None:
    fields, matrix = wire([record("a", [1, 0]), record("b", [0, 1])])
    fields["created_at"][0] = "2024-05-01T14:00:00+02:00"
    fields["tags"][1] = '[ "x" ,"y"]'
    del fields["source_type"]  # a missing text column is empty, as a missing field is
    columns = Columns.checked(fields, matrix)
    assert columns.created_at[0] == "2024-05-01T12:00:00.000Z"
    assert columns.tags[1] == '["x","y"]'
    assert columns.source_types == ["", ""]
    # Norms that overflow float32 still belong to finite, non-zero vectors.
    big = np.array([[1e30, 1e30], [1e-30, 0.0]], np.float32)
    assert list(Columns.checked(fields, big).embeddings[0]) == [1e30, 1e30]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("id", "", "record '': id: must not be empty"),
        ("id", 7, "record 7: id: expected a string"),
        ("source_id", None, "record 'b': source_id: expected a string"),
        ("text_chunk", "a\x00b", "record 'b': text_chunk: contains a NUL"),
        ("source_type", "bad \ud800", "record 'b': source_type: not valid Unicode"),
        ("created_at", "2024-05-01", "record 'b': created_at: expected an RFC 3339"),
        ("tags", "not json", "record 'b': tags: expected a JSON array of strings"),
        ("tags", '["ok", 3]', "record 'b': tags: expected a JSON array of strings"),
        ("tags", '{"a": 1}', "record 'b': tags: expected a JSON array of strings"),
        ("tags", '["a\\u0000"]', r"record 'b': tags\[\]: contains a NUL"),
        ("tags", '"rust"', "record 'b': tags: expected a JSON array of strings"),
        ("tags", ["x"], "record 'b': tags: expected a JSON array in a string, got list"),
    ],
)
def test_a_bad_value_is_named_with_its_record(column: str, value: object, message: str) -> None:
    fields, matrix = wire([record("a", [1, 0]), record("b", [0, 1])])
    fields[column][1] = value
    with pytest.raises(InvalidRecord, match=message):
        Columns.checked(fields, matrix)


def test_the_matrix_becomes_a_private_float32_copy_unless_read_only() -> None:
    fields, matrix = wire([record("a", [1, 0]), record("b", [0, 1])])
    wide = matrix.astype(np.float64)
    columns = Columns.checked(fields, wide)
    assert columns.embeddings.dtype == np.float32
    wide[0, 0] = 9.0  # the caller's array stays the caller's, and writable
    assert columns.embeddings[0, 0] == 1.0
    assert not columns.embeddings.flags.writeable
    with pytest.raises(InvalidRecord, match="record 'a': embedding"):
        Columns.checked(fields, np.array([[1e39, 0], [0, 1]]))  # overflows float32
    for shape in ([1.0, 0.0], np.ones((2, 1, 2))):
        with pytest.raises(InvalidRecord, match="embeddings: expected a matrix"):
            Columns.checked(fields, shape)
    empty = Columns.checked({"id": [], "created_at": []}, np.zeros((0, 3), np.float32))
    assert len(empty) == 0


def test_a_stored_embedding_of_the_wrong_size_is_a_store_error() -> None:
    rows = [("a", "", "", "", b"\x00\x00\x80?", "2024-05-01T12:00:00.000Z", "[]")]
    assert list(Columns.from_stored(rows, 1)[0].embedding) == [1.0]
    with pytest.raises(StoreError, match="record 'b': stored embedding is not 1 float32"):
        Columns.from_stored([*rows, ("b", "", "", "", b"\x00", rows[0][5], "[]")], 1)


def test_bad_embeddings_and_ragged_columns_are_named() -> None:
    fields, matrix = wire([record("a", [1, 0]), record("b", [0, 1])])
    for row, message in (([np.nan, 1], "record 'b': embedding.*NaN"), ([0, 0], "all zeros")):
        bad = matrix.copy()
        bad[1] = row
        with pytest.raises(InvalidRecord, match=message):
            Columns.checked(fields, bad)
    with pytest.raises(InvalidRecord, match="column 'text_chunk': expected a list of 2 values"):
        Columns.checked({**fields, "text_chunk": ["only one"]}, matrix)
    with pytest.raises(InvalidRecord, match="column 'created_at': expected a list of 2 values"):
        Columns.checked({k: v for k, v in fields.items() if k != "created_at"}, matrix)


def test_columns_accept_and_refuse_exactly_what_record_batch_does() -> None:
    # Random batches, some with one value spoiled or left to normalise: the fast column-wide
    # checks must never let through what Record.batch refuses, nor keep a value it changes.
    rng = random.Random(11)
    spoilers: list[tuple[str, object]] = [
        ("id", ""),
        ("id", None),
        ("source_id", "x\x00"),
        ("text_chunk", "\udfff"),
        ("text_chunk", 3.5),
        ("created_at", "2024-05-01T12:00:00Z"),
        ("created_at", "2024-05-01T12:00:00.000+00:00"),
        ("created_at", "2024-13-01T12:00:00.000Z"),
        ("created_at", "0999-05-01T12:00:00.000Z"),
        ("tags", '["b","a"]'),
        ("tags", '["a",  "b"]'),
        ("tags", "[1]"),
        ("tags", "{}"),
        ("tags", '["\\ud800"]'),
        ("embedding", [np.inf, 0.0, 0.0]),
        ("embedding", [1e-30, 0.0, 0.0]),
    ]
    for trial in range(200):
        fields, matrix = wire(random_records(rng.randint(1, 6), 3, seed=trial))
        if trial % 4:
            column, value = rng.choice(spoilers)
            row = rng.randrange(len(matrix))
            if column == "embedding":
                matrix[row] = value
            else:
                fields[column][row] = value
        try:
            expected: list[Record] | str = by_record_batch(fields, matrix)
        except InvalidRecord as exc:
            expected = str(exc)
        except ValueError:  # tags that are not a JSON array of strings: Columns names the record
            expected = "tags"
        try:
            got: list[Record] | str = list(Columns.checked(fields, matrix))
        except InvalidRecord as exc:
            got = str(exc)
        if expected == "tags":
            assert isinstance(got, str), (trial, got)
            assert "tags" in got, (trial, got)
        else:
            assert got == expected, (trial, fields, matrix)


def test_an_insert_batch_keeps_a_repeated_ids_last_record_and_checks_dimensions() -> None:
    a1, b, a2 = record("a", [1, 0]), record("b", [0, 1]), record("a", [1, 1], text="new")
    for given in ([a1, b, a2], Columns.from_records([a1, b, a2], 2)):
        assert list(insert_batch("t", 2, given)) == [b, a2]
    unique = Columns.from_records([a1, b], 2)
    assert insert_batch("t", 2, unique) is unique
    with pytest.raises(DimensionMismatch, match="record 'a'"):
        insert_batch("t", 3, unique)
    with pytest.raises(DimensionMismatch, match="record 'c'"):
        insert_batch("t", 2, [a1, record("c", [1, 0, 0])])
    with pytest.raises(TypeError, match="Records"):
        insert_batch("t", 2, [{"id": "a"}])  # type: ignore[list-item]


@pytest.mark.parametrize("backend", ["sqlite", "lance"])
async def test_a_store_holds_the_same_whether_given_columns_or_records(
    backend: str, tmp_path: Path
) -> None:
    records = random_records(40, 4, seed=5)
    when = "2024-06-01T00:00:00+02:00"
    records[3] = record(records[3].id, [1, 2, 3, 4], tags=["x"], created_at=when)
    held = []
    for name, batch in (("records", records), ("columns", Columns.from_records(records, 4))):
        path = tmp_path / name
        store = SQLiteStore(path / "v.db") if backend == "sqlite" else LanceStore(path)
        async with store:
            await store.create_table("t", dim=4)
            await store.insert("t", batch)
            await store.insert("t", Columns.from_records(records[:5], 4))  # upserts
            held.append(await store.get_by_ids("t", [r.id for r in records]))
            nearest = await store.search("t", records[3].embedding, 1)
            assert [h.id for h in nearest] == [records[3].id]
    assert held[0] == held[1] == records
