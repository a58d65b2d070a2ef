"""`LanceStore`: a `VectorStore` on LanceDB, for collections that outgrow the SQLite store.

One LanceDB directory holds the store; each logical table is a LanceDB table with the seed's
Arrow schema for `context_vectors` (see `table_schema`) plus a `tag_list` column, because the
seed keeps tags as a JSON string which `tags CONTAINS 'x'` cannot test exactly; the filter
language's LanceDB rendering (`store.filter.to_lance`) tests `tag_list` instead. Only LanceDB's
async API is used. Upserts are one `merge_insert` on `id` each, so a batch commits whole as one
table version, and writes are serialised by one lock so concurrent batches never conflict.

Search is exact and on SQLiteStore's scale: LanceDB's flat cosine search (float32) picks a few
more candidates than asked for, which are rescored in float64 and ordered by score then id;
when candidates near the cut might hide more rows that tie with the k-th, the search widens and
asks again. Each answer comes whole from one query, that is from one table version, so a search
never observes half of a batch.

This module imports lancedb (~3.6 s, ~200 MB): only the sidecar process may import it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import anyio
import lancedb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
from lancedb.query import ColumnOrdering

from store import filter as filters
from store.base import (
    DimensionMismatch,
    InvalidQuery,
    InvalidTableName,
    Record,
    ScoredRecord,
    StoreClosed,
    StoreError,
    TableExists,
    UnknownTable,
    Vector,
    VectorLike,
    as_query_vector,
    check_dim,
    check_table_name,
    check_top_k,
    tags_from_json,
    tags_to_json,
)

__all__ = ["LanceStore", "table_schema"]

_IN_CHUNK: Final = 500  # ids per `id IN (...)` predicate
_EXTRA: Final = 8  # candidates fetched beyond k, so a tie at the k-th place is usually seen
_MAX_LIMIT: Final = 2**31 - 1  # LanceDB's limit is a 32-bit count
_ORDER_BY_ID: Final = [ColumnOrdering(column_name="id", ascending=True)]
_NAME = "LanceDB store"

_Matrix = npt.NDArray[np.float32]
_Scores = npt.NDArray[np.float64]


def table_schema(dim: int) -> pa.Schema:
    """The Arrow schema of a table of `dim`-dimensional records (the seed's, plus `tag_list`)."""
    return pa.schema(
        [
            pa.field("id", pa.utf8(), nullable=False),
            pa.field("source_id", pa.utf8(), nullable=False),
            pa.field("source_type", pa.utf8(), nullable=False),
            pa.field("text_chunk", pa.utf8(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("created_at", pa.utf8(), nullable=False),
            pa.field("tags", pa.utf8(), nullable=False),
            pa.field("tag_list", pa.list_(pa.utf8()), nullable=False),
        ]
    )


_COLUMNS: Final = list(table_schema(1).names)


def _margin(dim: int) -> float:
    # How far LanceDB's float32 score may sit from the exact one (SQLite's matrix uses the same
    # bound): a row outside the candidates can only reach the top k from within this margin.
    return max(1e-4, dim * 2.0**-24)


def _clamp(score: float) -> float:
    return min(1.0, max(-1.0, score)) if math.isfinite(score) else score


def _to_arrow(records: Sequence[Record], schema: pa.Schema, dim: int) -> pa.Table:
    vectors = np.stack([r.embedding for r in records]).astype(np.float32, copy=False)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim)
    columns: list[Any] = [
        pa.array([r.id for r in records], pa.utf8()),
        pa.array([r.source_id for r in records], pa.utf8()),
        pa.array([r.source_type for r in records], pa.utf8()),
        pa.array([r.text_chunk for r in records], pa.utf8()),
        embedding,
        pa.array([r.created_at for r in records], pa.utf8()),
        pa.array([tags_to_json(r.tags) for r in records], pa.utf8()),
        pa.array([list(r.tags) for r in records], pa.list_(pa.utf8())),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _read(rows: pa.Table, dim: int) -> tuple[list[Record], _Matrix]:
    """Rows read back from a table as records (validated on the way in) and their vectors."""
    flat = rows.column("embedding").combine_chunks().flatten()  # flatten() honours slicing
    vectors = np.array(flat.to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
    vectors.setflags(write=False)  # the records' embeddings are read-only views of it
    text = {name: rows.column(name).to_pylist() for name in _COLUMNS if name != "embedding"}
    records = [
        Record.from_storage(
            id=text["id"][i],
            source_id=text["source_id"][i],
            source_type=text["source_type"][i],
            text_chunk=text["text_chunk"][i],
            embedding=vectors[i],
            created_at=text["created_at"][i],
            tags=tags_from_json(text["tags"][i]),
        )
        for i in range(rows.num_rows)
    ]
    return records, vectors


def _exact_scores(vectors: _Matrix, query: Vector) -> _Scores:
    # Per-row float64 reductions: identical vectors get identical scores wherever they sit,
    # so ties are real ties, settled by id.
    wide = vectors.astype(np.float64)
    q = query.astype(np.float64)
    q = q / np.sqrt(np.sum(q * q))
    scores: _Scores = np.sum(wide * q, axis=1) / np.sqrt(np.sum(wide * wide, axis=1))
    return scores


def _close(resource: lancedb.AsyncConnection | lancedb.AsyncTable) -> None:
    # Closing only frees caches early; a failure to close loses nothing.
    with contextlib.suppress(Exception):
        resource.close()  # type: ignore[no-untyped-call]  # lancedb leaves close() unannotated


@dataclass(slots=True)
class _Table:
    name: str
    dim: int
    handle: lancedb.AsyncTable
    schema: pa.Schema


class LanceStore:
    """A `store.base.VectorStore` in one LanceDB directory, searched exactly by cosine.

    ``async with LanceStore(path) as store: ...``; the directory is created if missing. As in
    SQLiteStore, two table names that differ only in case cannot both exist. One process at a
    time should write a store directory: each table handle sees the writes made through it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: lancedb.AsyncConnection | None = None
        self._tables: dict[str, _Table] = {}
        self._write_lock = anyio.Lock()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect to the directory and open every table in it."""
        if self._closed:
            raise StoreClosed(_NAME)
        if self._db is not None:
            return
        with self._errors("open"):
            self.path.mkdir(parents=True, exist_ok=True)
            db = await lancedb.connect_async(self.path)
            try:
                names: list[str] = []
                page: str | None = None
                while True:
                    listing = await db.list_tables(page_token=page)
                    names.extend(listing.tables)
                    page = listing.page_token
                    if not page:
                        break
                for name in names:
                    try:
                        check_table_name(name)
                    except InvalidTableName:
                        continue  # a name this store could not have made: not ours
                    self._tables[name] = await self._describe(name, await db.open_table(name))
            except BaseException:
                self._close_handles()
                _close(db)
                raise
            self._db = db

    async def _describe(self, name: str, handle: lancedb.AsyncTable) -> _Table:
        schema = await handle.schema()
        if schema.names != _COLUMNS or not pa.types.is_fixed_size_list(
            embedding := schema.field("embedding").type
        ):
            raise StoreError(
                f"{self.path}: table {name!r} does not have a Satchel schema: expected columns "
                f"{', '.join(_COLUMNS)}, got {', '.join(schema.names)}"
            )
        return _Table(name, int(embedding.list_size), handle, schema)

    async def aclose(self) -> None:
        """Close every table and the connection; idempotent. Waits for a write in progress."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                self._close_handles()
                if self._db is not None:
                    _close(self._db)
                    self._db = None

    def _close_handles(self) -> None:
        for table in self._tables.values():
            _close(table.handle)
        self._tables.clear()

    # -- helpers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, operation: str, table: str | None = None) -> Iterator[None]:
        """Translate LanceDB's and Arrow's errors into StoreError naming the directory,
        operation and table, chained; let our own errors and programming errors through."""
        try:
            yield
        except StoreError:
            raise
        except (OSError, RuntimeError, ValueError, pa.ArrowException) as exc:
            # LanceDB reports I/O and closed handles as RuntimeError/OSError, bad input as
            # ValueError; ours were raised as StoreError before reaching it.
            if self._closed:
                raise StoreClosed(_NAME) from exc
            where = f" on table {table!r}" if table else ""
            raise StoreError(f"{self.path}: {operation}{where} failed: {exc}") from exc

    def _conn(self) -> lancedb.AsyncConnection:
        if self._closed or self._db is None:
            raise StoreClosed(_NAME)
        return self._db

    def _table(self, name: str) -> _Table:
        self._conn()
        check_table_name(name)
        table = self._tables.get(name)
        if table is None:
            raise UnknownTable(name)
        return table

    @contextlib.asynccontextmanager
    async def _writing(self, operation: str, table: str | None) -> AsyncIterator[None]:
        """Hold the write lock with our errors; once a write starts it finishes (shielded)."""
        self._conn()
        async with self._write_lock:
            self._conn()  # aclose() may have won the lock first
            with anyio.CancelScope(shield=True), self._errors(operation, table):
                yield

    # -- the contract -------------------------------------------------------------------------

    async def create_table(self, name: str, *, dim: int) -> None:
        """See `VectorStore.create_table`."""
        self._conn()
        check_table_name(name)
        check_dim(dim)
        async with self._writing("create_table", name):
            for existing in self._tables.values():
                if existing.name.lower() == name.lower():
                    raise TableExists(existing.name, existing.dim)
            schema = table_schema(dim)
            handle = await self._conn().create_table(name, schema=schema)
            self._tables[name] = _Table(name, dim, handle, schema)

    async def insert(self, table: str, records: Sequence[Record]) -> None:
        """See `VectorStore.insert`. One `merge_insert` on id: one commit, one version."""
        t = self._table(table)
        latest: dict[str, Record] = {}
        for record in records:
            if not isinstance(record, Record):
                raise TypeError(f"insert() takes Records, got {type(record).__name__}")
            if record.dim != t.dim:
                raise DimensionMismatch(table, t.dim, record.dim, what=f"record {record.id!r}")
            latest.pop(record.id, None)  # a repeated id keeps its last record
            latest[record.id] = record
        if not latest:
            return
        with self._errors("insert", table):
            data = _to_arrow(list(latest.values()), t.schema, t.dim)
        async with self._writing("insert", table):
            await (
                t.handle.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(data)
            )

    async def search(
        self, table: str, vector: VectorLike, top_k: int, filter: str | None = None
    ) -> list[ScoredRecord]:
        """See `VectorStore.search`."""
        t = self._table(table)
        query = as_query_vector(table, t.dim, vector)
        k = check_top_k(top_k)
        where = None if filter is None else filters.to_lance(filters.parse(filter))
        margin = _margin(t.dim)
        limit = min(k + _EXTRA, _MAX_LIMIT)
        with self._errors("search", table):
            while True:
                search = t.handle.vector_search(query).distance_type("cosine").limit(limit)
                if where is not None:
                    search = search.where(where)
                rows = await search.to_arrow()
                records, vectors = _read(rows, t.dim)
                exact = _exact_scores(vectors, query)
                if len(records) < limit or limit == _MAX_LIMIT:
                    break  # every matching row is a candidate
                kth = float(np.partition(exact, len(exact) - k)[len(exact) - k])
                distances = rows.column("_distance").to_numpy()
                if 1.0 - float(np.max(distances)) + margin < kth:
                    break  # no row beyond the candidates can reach or tie the k-th
                limit = min(limit * 4, _MAX_LIMIT)
        # The answer comes from the last query alone, which also proved it complete: one table
        # version, so never half of a batch, however many queries the ties took.
        ranked = sorted(zip(exact.tolist(), records, strict=True), key=lambda p: (-p[0], p[1].id))
        return [record.with_score(_clamp(score)) for score, record in ranked[:k]]

    async def get_by_ids(self, table: str, ids: Sequence[str]) -> list[Record]:
        """See `VectorStore.get_by_ids`."""
        t = self._table(table)
        if isinstance(ids, str):
            raise TypeError("get_by_ids() takes a sequence of ids, not one string")
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Record] = {}
        with self._errors("get_by_ids", table):
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = tuple(wanted[start : start + _IN_CHUNK])
                query = t.handle.query().where(filters.to_lance(filters.In("id", chunk)))
                records, _ = _read(await query.to_arrow(), t.dim)
                found.update((r.id, r) for r in records)
        return [found[i] for i in wanted if i in found]

    async def delete(self, table: str, id: str) -> bool:
        """See `VectorStore.delete`."""
        if not isinstance(id, str):
            raise TypeError(f"delete() takes one id string, got {type(id).__name__}")
        predicate = filters.to_lance(filters.Compare("id", "=", id))
        return await self._delete("delete", table, predicate) > 0

    async def delete_where(self, table: str, filter: str) -> int:
        """See `VectorStore.delete_where`."""
        self._table(table)
        return await self._delete("delete_where", table, filters.to_lance(filters.parse(filter)))

    async def _delete(self, operation: str, table: str, predicate: str) -> int:
        t = self._table(table)
        async with self._writing(operation, table):
            # Counted under the write lock, so the count is what the delete removes; and
            # deleting nothing would still commit an empty table version.
            gone = int(await t.handle.count_rows(predicate))
            if gone:
                await t.handle.delete(predicate)
        return gone

    async def export_all(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[Record]]:
        """See `VectorStore.export_all`. Keyset pagination by id: each batch is one query."""
        t = self._table(table)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidQuery(f"batch_size: expected a positive integer, got {batch_size!r}")
        after: str | None = None
        while True:
            t = self._table(table)
            with self._errors("export_all", table):
                query = t.handle.query().order_by(_ORDER_BY_ID).limit(batch_size)
                if after is not None:
                    query = query.where(filters.to_lance(filters.Compare("id", ">", after)))
                batch, _ = _read(await query.to_arrow(), t.dim)
            if not batch:
                return
            after = batch[-1].id
            yield batch
            if len(batch) < batch_size:
                return

    def tables(self) -> dict[str, int]:
        """The tables and their dimensions."""
        self._conn()
        return {name: table.dim for name, table in sorted(self._tables.items())}

    async def count(self, table: str) -> int:
        """See `VectorStore.count`."""
        t = self._table(table)
        with self._errors("count", table):
            return int(await t.handle.count_rows())
