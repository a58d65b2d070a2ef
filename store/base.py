"""The vector-store contract: records, errors, the `VectorStore` protocol and vector helpers.

Everything that stores vectors for Satchel (the SQLite store, the LanceDB store, the HTTP client
of the sidecar) implements `VectorStore` and raises only the `StoreError` subclasses defined
here, so callers never see a backend's own exceptions. Records are validated when they are
built, so a bad record is refused before it reaches any backend.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_DIM",
    "DimensionMismatch",
    "IndexStatus",
    "InvalidFilter",
    "InvalidQuery",
    "InvalidRecord",
    "InvalidTableName",
    "Record",
    "ScoredRecord",
    "StoreClosed",
    "StoreError",
    "TableExists",
    "UnknownTable",
    "Vector",
    "VectorLike",
    "VectorStore",
    "as_query_vector",
    "check_dim",
    "check_table_name",
    "content_digest",
    "normalize_timestamp",
    "tags_from_json",
    "tags_to_json",
]

Vector = npt.NDArray[np.float32]
VectorLike = Sequence[float] | npt.NDArray[np.floating[Any]]
"""What a search accepts as its query: any 1-D float array or sequence of numbers."""

MAX_DIM = 65_536
"""Largest dimension a table may have; real embedding models stay far below it."""

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


# --------------------------------------------------------------------------------------------
# Errors: one root, each subclass also the builtin it refines.


class StoreError(Exception):
    """Root of every error a vector store raises on purpose."""


class UnknownTable(StoreError, KeyError):  # noqa: N818 - the contract's names read as facts
    """The named table does not exist."""

    def __init__(self, table: str) -> None:
        super().__init__(f"no table named {table!r}; create it first with create_table()")
        self.table = table

    def __str__(self) -> str:
        # KeyError would print the message quoted, like a dict key.
        return str(self.args[0])


class TableExists(StoreError, ValueError):  # noqa: N818
    """create_table() was asked for a name that is taken."""

    def __init__(self, table: str, dim: int) -> None:
        super().__init__(f"table {table!r} already exists (dimension {dim})")
        self.table = table
        self.dim = dim


class DimensionMismatch(StoreError, ValueError):  # noqa: N818
    """A vector's length differs from the table's dimension."""

    def __init__(self, table: str, expected: int, got: int, what: str = "vector") -> None:
        super().__init__(
            f"table {table!r} holds {expected}-dimensional vectors; got a {what} with {got} "
            "dimensions"
        )
        self.table = table
        self.expected = expected
        self.got = got


class InvalidTableName(StoreError, ValueError):  # noqa: N818
    """A table name that is not an identifier."""

    def __init__(self, name: object) -> None:
        super().__init__(
            f"invalid table name {name!r}: expected a letter or '_' followed by up to 63 "
            "letters, digits or '_'"
        )
        self.name = name


class InvalidRecord(StoreError, ValueError):  # noqa: N818
    """A record with a missing, mistyped or malformed field."""


class InvalidQuery(StoreError, ValueError):  # noqa: N818
    """A search argument out of range: top_k below 1, a non-finite or zero query vector."""


class InvalidFilter(StoreError, ValueError):  # noqa: N818
    """A filter that does not parse or names something it may not; says where and what."""

    def __init__(self, text: str, position: int, message: str) -> None:
        excerpt = text[max(0, position - 20) : position + 20]
        super().__init__(f"invalid filter at position {position}: {message} (near {excerpt!r})")
        self.text = text
        self.position = position
        self.message = message


class StoreClosed(StoreError, RuntimeError):  # noqa: N818
    """The store was closed; open a new one."""

    def __init__(self, what: str = "store") -> None:
        super().__init__(f"the {what} is closed")


# --------------------------------------------------------------------------------------------
# Records.


def normalize_timestamp(value: str) -> str:
    """Return an RFC 3339 timestamp as UTC with millisecond precision: ``2024-05-01T12:00:00.000Z``.

    One fixed width makes string order equal time order, so ``created_at >= '2024-05-01'``
    filters mean the same on every backend. The form is what JavaScript's toISOString() prints.
    """
    if not isinstance(value, str):
        raise InvalidRecord(f"created_at: expected an RFC 3339 string, got {type(value).__name__}")
    return _normalize_timestamp(value)


@functools.lru_cache(maxsize=4096)  # a batch's records usually share a few timestamps
def _normalize_timestamp(value: str) -> str:
    text = value.strip()
    try:
        # fromisoformat accepts more than RFC 3339 (e.g. a bare date); the 'T'/offset checks
        # below narrow it back to timestamps that carry their offset.
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or len(text) < 20:
        raise InvalidRecord(
            f"created_at: expected an RFC 3339 timestamp with an offset such as "
            f"'2024-05-01T12:00:00Z', got {value!r}"
        )
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRecord(
            f"created_at: {value!r} is outside the years 1 to 9999 in UTC"
        ) from None
    # The year by hand: strftime's %Y does not pad years before 1000 to four digits on Linux,
    # and "999-..." neither sorts with the rest nor parses again.
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


_TAGS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def tags_to_json(tags: Sequence[str]) -> str:
    """Encode tags the one way every backend stores them: a compact JSON array."""
    return _TAGS_ENCODER.encode(list(tags))


def tags_from_json(text: str) -> tuple[str, ...]:
    """Decode tags stored by `tags_to_json`."""
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InvalidRecord(f"tags: expected a JSON array of strings, got {text!r}")
    return tuple(value)


def content_digest(
    *,
    id: str,
    source_id: str,
    source_type: str,
    text_chunk: str,
    created_at: str,
    tags_json: str,
    embedding: bytes,
) -> bytes:
    """16 bytes that change with any field of a stored record, computed alike by every store
    from what it holds: `created_at` normalised, `tags_json` as `tags_to_json` writes it,
    `embedding` as little-endian float32 bytes. The migration's verification compares them
    (store/migrate.py). Records never hold NUL, so NUL separates the texts unambiguously."""
    digest = hashlib.blake2b(digest_size=16)
    texts = (id, source_id, source_type, text_chunk, created_at, tags_json)
    digest.update("\x00".join(texts).encode())
    digest.update(b"\x00")
    digest.update(embedding)
    return digest.digest()


def _check_text(name: str, value: object, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{name}: expected a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise InvalidRecord(f"{name}: must not be empty")
    if "\x00" in value:
        # SQLite's string functions (LIKE, GLOB) stop at NUL: refusing it keeps every backend's
        # filters in agreement.
        raise InvalidRecord(f"{name}: contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRecord(f"{name}: not valid Unicode text ({exc.reason})") from None
    return value


def _as_embedding(value: object) -> Vector:
    try:
        # A copy: the record owns its vector, whatever the caller later does to theirs.
        array = np.array(value, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"embedding: expected a sequence of numbers ({exc})") from None
    if array.ndim != 1 or array.size == 0:
        raise InvalidRecord(f"embedding: expected a non-empty 1-D vector, got shape {array.shape}")
    if array.size > MAX_DIM:
        raise InvalidRecord(f"embedding: {array.size} dimensions exceeds the limit of {MAX_DIM}")
    _check_finite_and_nonzero(array, "embedding")
    array.setflags(write=False)
    return array


def _check_finite_and_nonzero(array: npt.NDArray[np.float32], what: str) -> None:
    # One reduction for the usual case (a finite, non-zero square norm proves both), about 1 us
    # for 768 values; the exact checks run only when it is in doubt (NaN, infinity, overflow,
    # underflow) so each failure still gets its own message.
    with np.errstate(over="ignore", under="ignore"):
        norm = float(np.dot(array, array))
    if norm > 0.0 and math.isfinite(norm):
        return
    if not np.isfinite(array).all():
        raise InvalidRecord(f"{what}: contains NaN or infinity")
    if not array.any():
        raise InvalidRecord(f"{what}: all zeros; a zero vector has no direction to compare")


def _checked_fields(
    *,
    id: object,
    source_id: object,
    source_type: object,
    text_chunk: object,
    created_at: object,
    tags: object,
) -> tuple[str, str, str, str, str, tuple[str, ...]]:
    """A record's fields other than its embedding, checked (in this order) and normalised."""
    text = (
        _check_text("id", id, allow_empty=False),
        _check_text("source_id", source_id, allow_empty=True),
        _check_text("source_type", source_type, allow_empty=True),
        _check_text("text_chunk", text_chunk, allow_empty=True),
    )
    timestamp = normalize_timestamp(created_at)  # type: ignore[arg-type]  # it checks the type
    if isinstance(tags, str | bytes | Mapping) or not isinstance(tags, Iterable):
        raise InvalidRecord(f"tags: expected a list of strings, got {type(tags).__name__}")
    tag_tuple = tuple(tags)
    for tag in tag_tuple:
        _check_text("tags[]", tag, allow_empty=True)
    return (*text, timestamp, tag_tuple)


@dataclass(frozen=True, slots=True, eq=False)
class Record:
    """One chunk of text with its embedding: the seed's `context_vectors` row.

    Built records are valid and own their data: fields are type-checked (text must be valid
    Unicode without NUL), `embedding` becomes a private read-only float32 copy, `created_at` is
    normalised by `normalize_timestamp`, and `tags` becomes a tuple of strings (stored as a JSON
    array).
    """

    id: str
    source_id: str
    source_type: str
    text_chunk: str
    embedding: Vector
    created_at: str
    tags: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        *_, created_at, tags = _checked_fields(
            id=self.id,
            source_id=self.source_id,
            source_type=self.source_type,
            text_chunk=self.text_chunk,
            created_at=self.created_at,
            tags=self.tags,
        )
        object.__setattr__(self, "embedding", _as_embedding(self.embedding))
        object.__setattr__(self, "created_at", created_at)
        object.__setattr__(self, "tags", tags)

    @classmethod
    def batch(cls, fields: Sequence[dict[str, Any]], embeddings: npt.ArrayLike) -> list[Self]:
        """Records from their fields (``id``, ``source_id``, ``source_type``, ``text_chunk``,
        ``created_at``, ``tags``; the text ones may be missing, as empty) and one matrix whose
        row i is record i's embedding. Each is checked as `Record(...)` checks one, the matrix
        in one pass (for 1,000 x 768 ~1 ms rather than ~8 ms row by row) and before the other
        fields, so with several bad records the first reported may differ. An error names the
        record. The records' embeddings are read-only rows of one private copy."""
        try:
            matrix = np.array(embeddings, dtype=np.float32, copy=True)
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"embeddings: expected a matrix of numbers ({exc})") from None
        if matrix.ndim != 2 or matrix.shape[0] != len(fields) or matrix.shape[1] == 0:
            raise InvalidRecord(
                f"embeddings: expected {len(fields)} non-empty rows, got shape {matrix.shape}"
            )
        if matrix.shape[1] > MAX_DIM:
            raise InvalidRecord(
                f"embedding: {matrix.shape[1]} dimensions exceeds the limit of {MAX_DIM}"
            )
        with np.errstate(over="ignore", under="ignore"):  # see _check_finite_and_nonzero
            norms = np.einsum("ij,ij->i", matrix, matrix)
        for item in fields:
            if not isinstance(item, dict):
                raise InvalidRecord(f"record: expected an object, got {type(item).__name__}")
        for i in np.flatnonzero(~(np.isfinite(norms) & (norms > 0))).tolist():
            where = f"record {fields[i].get('id')!r}: embedding"
            _check_finite_and_nonzero(matrix[i], where)  # raises unless only the norm overflowed
        matrix.setflags(write=False)
        records = []
        for item, vector in zip(fields, matrix, strict=True):
            try:
                checked = _checked_fields(
                    id=item.get("id"),
                    source_id=item.get("source_id", ""),
                    source_type=item.get("source_type", ""),
                    text_chunk=item.get("text_chunk", ""),
                    created_at=item.get("created_at"),
                    tags=item.get("tags", ()),
                )
            except InvalidRecord as exc:
                raise InvalidRecord(f"record {item.get('id')!r}: {exc}") from None
            id, source_id, source_type, text_chunk, created_at, tags = checked
            records.append(
                cls.from_storage(
                    id=id,
                    source_id=source_id,
                    source_type=source_type,
                    text_chunk=text_chunk,
                    embedding=vector,
                    created_at=created_at,
                    tags=tags,
                )
            )
        return records

    @property
    def dim(self) -> int:
        """The embedding's dimension."""
        return int(self.embedding.shape[0])

    def same_as(self, other: Record) -> bool:
        """True when every field is equal, the embedding compared exactly."""
        return (
            self.id == other.id
            and self.source_id == other.source_id
            and self.source_type == other.source_type
            and self.text_chunk == other.text_chunk
            and self.created_at == other.created_at
            and tuple(self.tags) == tuple(other.tags)
            and np.array_equal(self.embedding, other.embedding)
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return type(self) is type(other) and self.same_as(other)

    __hash__ = None  # type: ignore[assignment]  # numpy arrays are not hashable

    @classmethod
    def from_storage(
        cls,
        *,
        id: str,
        source_id: str,
        source_type: str,
        text_chunk: str,
        embedding: Vector,
        created_at: str,
        tags: tuple[str, ...],
    ) -> Self:
        """Rebuild a record that a store validated on the way in, without validating again.

        Only for a backend's own reads: the fields must already be in their normalised form
        (`embedding` a read-only 1-D float32 array, `created_at` normalised, `tags` a tuple).
        """
        self = object.__new__(cls)
        for name, value in (
            ("id", id),
            ("source_id", source_id),
            ("source_type", source_type),
            ("text_chunk", text_chunk),
            ("embedding", embedding),
            ("created_at", created_at),
            ("tags", tags),
        ):
            object.__setattr__(self, name, value)
        return self

    def _fields(self) -> dict[str, Any]:
        """The record's own fields, already valid, for `from_storage`."""
        return {
            "id": self.id,
            "source_id": self.source_id,
            "source_type": self.source_type,
            "text_chunk": self.text_chunk,
            "embedding": self.embedding,
            "created_at": self.created_at,
            "tags": tuple(self.tags),
        }

    def with_score(self, score: float) -> ScoredRecord:
        """This record as a search result (no revalidation: this record is valid already)."""
        scored = ScoredRecord.from_storage(**self._fields())
        object.__setattr__(scored, "score", score)
        return scored


@dataclass(frozen=True, slots=True, eq=False)
class ScoredRecord(Record):
    """A search result: a record and its cosine similarity to the query (higher is closer)."""

    score: float = 0.0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoredRecord):
            return NotImplemented
        return self.same_as(other) and self.score == other.score

    __hash__ = None

    def record(self) -> Record:
        """The plain record, without its score."""
        return Record.from_storage(**self._fields())


# --------------------------------------------------------------------------------------------
# Argument checks every implementation shares.


def check_table_name(name: object) -> str:
    """Return `name` if it is a valid table name, else raise `InvalidTableName`."""
    if not isinstance(name, str) or _TABLE_NAME.fullmatch(name) is None:
        raise InvalidTableName(name)
    return name


def check_dim(dim: object) -> int:
    """Return `dim` if it is a valid table dimension, else raise `InvalidQuery`."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise InvalidQuery(f"dim: expected an integer from 1 to {MAX_DIM}, got {dim!r}")
    return dim


def check_top_k(top_k: object) -> int:
    """Return `top_k` if it is a positive integer, else raise `InvalidQuery`."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidQuery(f"top_k: expected a positive integer, got {top_k!r}")
    return top_k


def as_query_vector(table: str, dim: int, vector: object) -> Vector:
    """Validate a query vector against a table's dimension and return it unit-length, float32."""
    try:
        with np.errstate(over="ignore"):  # beyond float32's range: infinity, refused below
            array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidQuery(f"query vector: expected a sequence of numbers ({exc})") from None
    if array.ndim != 1:
        raise InvalidQuery(f"query vector: expected a 1-D vector, got shape {array.shape}")
    if array.shape[0] != dim:
        raise DimensionMismatch(table, dim, int(array.shape[0]), what="query vector")
    if not np.isfinite(array).all():
        raise InvalidQuery("query vector: contains NaN or infinity")
    norm = float(np.linalg.norm(array.astype(np.float64)))
    if norm == 0.0 or not math.isfinite(norm):
        raise InvalidQuery("query vector: all zeros; a zero vector has no direction to compare")
    return (array.astype(np.float64) / norm).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The protocol.


@dataclass(frozen=True, slots=True)
class IndexStatus:
    """How a table is searched, for ``status``: the same shape from every backend."""

    kind: str  # "exact" (every row compared) or the ANN index's type, such as "IVF_RQ"
    state: str  # "exact" or "indexed"; or "building", "optimizing" while maintenance runs
    rows: int
    unindexed_rows: int  # rows a search still compares exactly (all of them when kind is exact)
    error: str | None = None  # why the last maintenance failed, if it did


@runtime_checkable
class VectorStore(Protocol):
    """Named tables of `Record`s, each bound to one vector dimension, searchable by cosine.

    Lifecycle: an implementation is an async context manager; ``async with Store(...) as s``
    opens it and closing is `aclose()`, which is idempotent. After `aclose()` every other
    method raises `StoreClosed`.

    Concurrency: methods may be called concurrently from many tasks of one event loop. Writes
    are atomic per call (a batch is stored whole or not at all) and a search never observes half
    of a batch. Blocking work runs off the event loop. A store object belongs to the event loop
    that opened it; it is not for use from other threads.

    Every method validates its arguments first and raises, besides what is listed (and
    `TypeError` for an argument of the wrong type, which is a programming error):
    `InvalidTableName` for a table name that is not ``[A-Za-z_][A-Za-z0-9_]{0,63}``,
    `UnknownTable` for a table that does not exist, and `StoreClosed` after `aclose()`.
    Backend failures (I/O, a dead sidecar) surface as `StoreError` with the cause chained.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def create_table(self, name: str, *, dim: int) -> None:
        """Create an empty table for `dim`-dimensional vectors.

        Raises `TableExists` if the name is taken (whatever its dimension) and `InvalidQuery`
        for a dimension outside 1..MAX_DIM.
        """
        ...

    async def insert(self, table: str, records: Sequence[Record]) -> None:
        """Upsert `records` by id: new ids are added, existing ids are replaced whole.

        Idempotent: inserting the same records again leaves the table unchanged. Within one
        call a repeated id keeps its last record. Raises `DimensionMismatch` (naming both
        dimensions) if any embedding has the wrong length; then nothing is written.
        """
        ...

    async def search(
        self, table: str, vector: VectorLike, top_k: int, filter: str | None = None
    ) -> list[ScoredRecord]:
        """The `top_k` records most similar to `vector` by cosine similarity.

        Exact over every record that matches `filter` (see `store.filter`); results are in
        descending score, ties broken by ascending id. A `top_k` larger than the number of
        matching records returns all of them; an empty table returns []. Raises
        `InvalidQuery` (top_k < 1, a zero or non-finite vector), `DimensionMismatch`, and
        `InvalidFilter` (with the position and what was expected).
        """
        ...

    async def get_by_ids(self, table: str, ids: Sequence[str]) -> list[Record]:
        """The records with these ids, in the order asked, each once; missing ids are skipped."""
        ...

    async def delete(self, table: str, id: str) -> bool:
        """Delete one record by id; True if it existed. Idempotent."""
        ...

    async def delete_where(self, table: str, filter: str) -> int:
        """Delete every record matching `filter` (required, non-empty); returns how many."""
        ...

    def export_all(self, table: str, *, batch_size: int = 1000) -> AsyncIterator[list[Record]]:
        """Every record of the table in ascending id order, in batches of up to `batch_size`.

        Streams: memory stays bounded by one batch. Each batch is read consistently; writes
        made while an export runs may or may not appear in later batches. Raises as the other
        methods when iteration starts.
        """
        ...

    async def count(self, table: str) -> int:
        """How many records the table holds."""
        ...

    async def aclose(self) -> None:
        """Release everything; idempotent. Data already written stays written."""
        ...
