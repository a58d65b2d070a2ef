"""A batch of records held column by column: `Columns`.

A bulk copy (the migration's: up to millions of rows, 1,000 a batch) used to spend most of its
CPU building, checking and taking apart one `Record` per row at each end of the sidecar wire.
`Columns` keeps a batch in the form the stores hold it, text columns, tags as their JSON arrays
and one float32 matrix, so SQLite's rows go over the wire and into a LanceDB table without a
Record in between. Copying 100K rows alone (no searcher, 2 cores) took 9.4 s of CPU across
the daemon and the sidecar with a Record per row, and 3.2 s with columns: ~21,000 rows/s became
~46,000.

It is a `Sequence[Record]`, so every `VectorStore.insert` takes it, and `LanceStore`,
`SQLiteStore` and `HTTPStore` use the columns as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from store.base import (
    MAX_DIM,
    DimensionMismatch,
    InvalidRecord,
    Record,
    StoreError,
    Vector,
    normalize_timestamp,
    tags_from_json,
    tags_to_json,
)

__all__ = ["Columns", "insert_batch"]

# The wire's column names, as `Record`'s fields; tags travel as their JSON arrays.
TEXT_COLUMNS = ("id", "source_id", "source_type", "text_chunk", "created_at", "tags")


@functools.lru_cache(maxsize=1024)  # a batch's records share a few tag lists
def _tags(text: str) -> tuple[str, ...]:
    return tags_from_json(text)


@dataclass(frozen=True, slots=True, eq=False)
class Columns(Sequence[Record]):
    """Records, one list per field and one read-only float32 matrix (row i is record i's
    embedding), every value already in its stored form: as valid and normalised as a
    `Record`'s, `tags` as `tags_to_json` writes them. Built by `from_records`, `from_stored`
    (a store's own rows) or `checked` (anything else, checked)."""

    ids: list[str]
    source_ids: list[str]
    source_types: list[str]
    text_chunks: list[str]
    created_at: list[str]
    tags: list[str]
    embeddings: Vector  # 2-D: len(ids) x dim

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def from_records(cls, records: Sequence[Record], dim: int) -> Columns:
        """The columns of valid records of dimension `dim`."""
        if isinstance(records, Columns):
            return records
        matrix = np.empty((len(records), dim), np.float32)
        for i, record in enumerate(records):
            matrix[i] = record.embedding
        matrix.setflags(write=False)
        return cls(
            [r.id for r in records],
            [r.source_id for r in records],
            [r.source_type for r in records],
            [r.text_chunk for r in records],
            [r.created_at for r in records],
            [tags_to_json(r.tags) for r in records],
            matrix,
        )

    @classmethod
    def from_stored(cls, rows: Sequence[Sequence[Any]], dim: int) -> Columns:
        """Rows as a store keeps them, validated on their way in: (id, source_id, source_type,
        text_chunk, embedding as little-endian float32 bytes, created_at, tags JSON)."""
        blob = b"".join(row[4] for row in rows)
        if len(blob) != len(rows) * dim * 4:
            bad = next(row[0] for row in rows if len(row[4]) != dim * 4)
            raise StoreError(f"record {bad!r}: stored embedding is not {dim} float32 values")
        matrix = np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)
        return cls(
            [row[0] for row in rows],
            [row[1] for row in rows],
            [row[2] for row in rows],
            [row[3] for row in rows],
            [row[5] for row in rows],
            [row[6] for row in rows],
            matrix.reshape(len(rows), dim),  # frombuffer over bytes: read-only
        )

    @classmethod
    def checked(cls, fields: Mapping[str, Any], embeddings: npt.ArrayLike) -> Columns:
        """Columns from a client: `fields` maps `TEXT_COLUMNS` to lists (`id` and `created_at`
        required, the others empty when missing; `tags` JSON arrays), row i of `embeddings`
        is record i's. Each record is checked as `Record.batch` checks it: columns already in
        their stored form (what another store sends) pass in a few column-wide passes, and
        anything else (a value to normalise, or an error to name) goes record by record
        through `Record.batch`, so an error names its record."""
        # A value beyond float32's range becomes inf here, and is refused below as not finite.
        try:
            with np.errstate(over="ignore"):
                matrix = _float32(embeddings)
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"embeddings: expected a matrix of numbers ({exc})") from None
        if matrix.ndim != 2:
            raise InvalidRecord(f"embeddings: expected a matrix, got shape {matrix.shape}")
        matrix.setflags(write=False)
        n = matrix.shape[0]
        columns: dict[str, list[Any]] = {}
        for name in TEXT_COLUMNS:
            value = fields.get(name)
            if value is None and name not in ("id", "created_at"):
                value = ["[]" if name == "tags" else ""] * n
            if not isinstance(value, list) or len(value) != n:
                got = f"{len(value)} values" if isinstance(value, list) else repr(value)[:80]
                raise InvalidRecord(f"column {name!r}: expected a list of {n} values, got {got}")
            columns[name] = value
        if _stored_form(columns, matrix):
            ids, source_ids, source_types, text_chunks, created_at, tags = (
                columns[name] for name in TEXT_COLUMNS
            )
            return cls(ids, source_ids, source_types, text_chunks, created_at, tags, matrix)
        items = [
            {
                "id": columns["id"][i],
                "source_id": columns["source_id"][i],
                "source_type": columns["source_type"][i],
                "text_chunk": columns["text_chunk"][i],
                "created_at": columns["created_at"][i],
                "tags": _tags_field(columns["id"][i], columns["tags"][i]),
            }
            for i in range(n)
        ]
        return cls.from_records(Record.batch(items, matrix), matrix.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> Columns: ...

    def __getitem__(self, index: int | slice) -> Record | Columns:
        if isinstance(index, slice):
            return Columns(
                self.ids[index],
                self.source_ids[index],
                self.source_types[index],
                self.text_chunks[index],
                self.created_at[index],
                self.tags[index],
                self.embeddings[index],
            )
        return Record.from_storage(
            id=self.ids[index],
            source_id=self.source_ids[index],
            source_type=self.source_types[index],
            text_chunk=self.text_chunks[index],
            embedding=self.embeddings[index],
            created_at=self.created_at[index],
            tags=_tags(self.tags[index]),
        )

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self.ids)))

    def tag_lists(self) -> list[list[str]]:
        """Each record's tags as a list (parsed once per distinct JSON array)."""
        parsed = {text: list(_tags(text)) for text in set(self.tags)}
        return [parsed[text] for text in self.tags]


def insert_batch(table: str, dim: int, records: Sequence[Record]) -> Columns:
    """What an insert of `records` into a `dim`-dimensional table writes, as `Columns`: each
    checked to be a `Record` of that dimension (TypeError, `DimensionMismatch`), a repeated id
    keeping its last record, in last place."""
    if isinstance(records, Columns):
        if len(records) and records.dim != dim:
            raise DimensionMismatch(table, dim, records.dim, what=f"record {records.ids[0]!r}")
        if len(set(records.ids)) == len(records.ids):
            return records
    latest: dict[str, Record] = {}
    for record in records:
        if not isinstance(record, Record):
            raise TypeError(f"insert() takes Records, got {type(record).__name__}")
        if record.dim != dim:
            raise DimensionMismatch(table, dim, record.dim, what=f"record {record.id!r}")
        latest.pop(record.id, None)
        latest[record.id] = record
    return Columns.from_records(list(latest.values()), dim)


def _float32(embeddings: npt.ArrayLike) -> Vector:
    """The matrix as float32: a private copy, unless it is read-only already (the wire's view
    of a request body, which its owner keeps unchanged)."""
    if isinstance(embeddings, np.ndarray) and not embeddings.flags.writeable:
        return np.asarray(embeddings, np.float32)
    return np.array(embeddings, np.float32)


def _stored_form(columns: Mapping[str, list[Any]], embeddings: Vector) -> bool:
    """Whether every value is valid and already normalised: what `Record.batch` would keep
    unchanged. False sends the batch the slow way, to be normalised or to have its first
    error named."""
    if not all(_plain_texts(columns[name]) for name in TEXT_COLUMNS) or "" in columns["id"]:
        return False
    try:
        if any(normalize_timestamp(value) != value for value in set(columns["created_at"])):
            return False
        for text in set(columns["tags"]):
            tags = _tags(text)
            if tags_to_json(tags) != text or not _plain_texts(list(tags)):
                return False
    except (InvalidRecord, ValueError, RecursionError):
        return False
    if not 0 < embeddings.shape[1] <= MAX_DIM:
        return False
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        norms = np.einsum("ij,ij->i", embeddings, embeddings)
    return bool(np.all(np.isfinite(norms) & (norms > 0)))


def _plain_texts(values: list[Any]) -> bool:
    """Strings all, without NUL, valid Unicode: what `Record` asks of its texts."""
    try:
        joined = "".join(values)
    except TypeError:  # a value that is not a string
        return False
    if joined.isascii():
        return "\x00" not in joined
    try:
        joined.encode("utf-8")  # a lone surrogate, which JSON can carry, does not encode
    except UnicodeEncodeError:
        return False
    return "\x00" not in joined


def _tags_field(id: object, value: object) -> tuple[str, ...]:
    """A record's tags for `Record.batch`, from their JSON array."""
    if not isinstance(value, str):
        raise InvalidRecord(
            f"record {id!r}: tags: expected a JSON array in a string, got {type(value).__name__}"
        )
    try:
        return tags_from_json(value)
    except (InvalidRecord, ValueError, RecursionError):
        raise InvalidRecord(
            f"record {id!r}: tags: expected a JSON array of strings, got {value!r}"
        ) from None
