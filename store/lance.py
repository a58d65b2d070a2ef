"""`LanceStore`: a `VectorStore` on LanceDB, for collections that outgrow the SQLite store.

One LanceDB directory holds the store; each logical table is a LanceDB table with the seed's
Arrow schema for `context_vectors` (see `table_schema`) plus a `tag_list` column, because the
seed keeps tags as a JSON string which `tags CONTAINS 'x'` cannot test exactly; the filter
language's LanceDB rendering (`store.filter.to_lance`) tests `tag_list` instead. Only LanceDB's
async API is used. Upserts are one `merge_insert` on `id` each, so a batch commits whole as one
table version, and writes are serialised by one lock so concurrent batches never conflict.

Search is on SQLiteStore's scale: LanceDB's cosine search (float32) picks a few more candidates
than asked for, which are rescored in float64 and ordered by score then id; when candidates near
the cut might hide more rows that tie with the k-th, the search widens and asks again. Each
answer comes whole from one query, that is from one table version, so a search never observes
half of a batch.

Below `IndexPolicy.ann_min_rows` rows a table is searched exactly. `maintain()` (which the
sidecar runs every few seconds) takes it from there: scalar indexes for the filter columns, an
IVF_RQ index once the table is big enough (chosen by measurement: README, "Index lifecycle"),
rebuilt when the table has four times the rows it was built over, `optimize()` to fold new rows
into the indexes and compact fragments, and old versions cleaned up after a retention window;
builds and optimizes wait while a table is being loaded (a migration's copy). Builds run beside
reads and writes; rows not yet indexed are still found, by exact comparison.

A table whose newest manifest was left empty or cut short (a crash on a disk that never saw the
fsync) is opened at its previous version and the damaged file moved aside, with a warning; a
table that cannot be opened at all is reported as failed while the others serve on.

This module imports lancedb (~3.6 s, ~200 MB): only the sidecar process may import it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple, Self

import anyio
import lancedb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import Bitmap, BTree, IvfRq, LabelList
from lancedb.query import ColumnOrdering

from store import filter as filters
from store.base import (
    IndexStatus,
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
    content_digest,
    tags_from_json,
)
from store.columns import Columns, insert_batch
from store.idset import IdSet

__all__ = ["IndexPolicy", "LanceStore", "table_schema"]

log = logging.getLogger(__name__)

_IN_CHUNK: Final = 500  # ids per `id IN (...)` predicate
# Candidates fetched beyond k, so a tie at the k-th place is usually seen. Few: each one costs
# refine_factor full-vector reads when the index answers (bench/lance.py).
_EXTRA: Final = 4
_MAX_LIMIT: Final = 2**31 - 1  # LanceDB's limit is a 32-bit count
_ORDER_BY_ID: Final = [ColumnOrdering(column_name="id", ascending=True)]
_NAME = "LanceDB store"
# The IVF_RQ index's name records its partition count and the rows it was built over, so they
# survive restarts; a name without the rows (before the partitions were capped) implies them.
_VECTOR_INDEX: Final = re.compile(r"embedding_ivf_rq_p(?P<partitions>\d+)(?:_r(?P<rows>\d+))?")
# The filter columns' indexes, and id's for upserts, lookups and exports.
_SCALAR_INDEXES: Final[dict[str, type[BTree | Bitmap | LabelList]]] = {
    "id": BTree,
    "source_id": BTree,
    "created_at": BTree,
    "source_type": Bitmap,  # few distinct values
    "tag_list": LabelList,  # serves array_has(), the rendering of `tags CONTAINS`
}
_MANIFEST_MAGIC: Final = b"LANC"  # the last four bytes of every complete Lance manifest

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
# What a Record is read from: `tag_list` only serves filters (it repeats `tags`), and every
# column read costs: leaving it out of a search took 0.35 ms off 4.9 (100K rows, IVF_RQ).
_RECORD_COLUMNS: Final = [name for name in _COLUMNS if name != "tag_list"]
# What `content_digest` reads, the embedding last.
_DIGESTED: Final = [
    "id",
    "source_id",
    "source_type",
    "text_chunk",
    "created_at",
    "tags",
    "embedding",
]


def _margin(dim: int) -> float:
    # How far LanceDB's float32 score may sit from the exact one (SQLite's matrix uses the same
    # bound): a row outside the candidates can only reach the top k from within this margin.
    return max(1e-4, dim * 2.0**-24)


def _clamp(score: float) -> float:
    return min(1.0, max(-1.0, score)) if math.isfinite(score) else score


def _to_arrow(batch: Columns, schema: pa.Schema) -> pa.Table:
    flat = pa.array(batch.embeddings.reshape(-1), pa.float32())
    columns: list[Any] = [
        pa.array(batch.ids, pa.utf8()),
        pa.array(batch.source_ids, pa.utf8()),
        pa.array(batch.source_types, pa.utf8()),
        pa.array(batch.text_chunks, pa.utf8()),
        pa.FixedSizeListArray.from_arrays(flat, batch.dim),
        pa.array(batch.created_at, pa.utf8()),
        pa.array(batch.tags, pa.utf8()),
        pa.array(batch.tag_lists(), pa.list_(pa.utf8())),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _read(rows: pa.Table, dim: int) -> tuple[list[Record], _Matrix]:
    """Rows read back from a table as records (validated on the way in) and their vectors."""
    flat = rows.column("embedding").combine_chunks().flatten()  # flatten() honours slicing
    vectors = np.array(flat.to_numpy(zero_copy_only=False), np.float32).reshape(-1, dim)
    vectors.setflags(write=False)  # the records' embeddings are read-only views of it
    text = {name: rows.column(name).to_pylist() for name in _RECORD_COLUMNS if name != "embedding"}
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


class _VectorIndex(NamedTuple):
    name: str
    partitions: int
    rows: int  # the table's rows when it was built


def _vector_index(indices: Iterable[Any]) -> _VectorIndex | None:
    """The table's IVF_RQ index, if it has one."""
    found = []
    for index in indices:
        if match := _VECTOR_INDEX.fullmatch(index.name):
            partitions = int(match["partitions"])
            rows = int(match["rows"]) if match["rows"] else (4 * partitions) ** 2
            found.append(_VectorIndex(index.name, partitions, rows))
    return max(found, key=lambda i: i.rows, default=None)  # mid-rebuild: the newer one


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


@dataclass(frozen=True, slots=True)
class IndexPolicy:
    """When `LanceStore.maintain` indexes, optimizes and cleans up a table.

    The figures behind the defaults are in the README ("Index lifecycle").
    """

    ann_min_rows: int = 10_000  # below this, exact search is fast enough and needs no build
    optimize_growth: float = 0.10  # fold new rows in once they are this fraction of the indexed
    max_small_fragments: int = 32  # compact once this many small fragments have piled up
    retention_seconds: float = 3600.0  # versions older than this are deleted by optimize
    # A filtered search probes enough partitions to hold about this many of the matching rows;
    # a filter that matches fewer is answered exactly. On 1M clustered 768-d rows (128
    # partitions, 1% of rows matching), 5,000 rows in the probed partitions gave recall@10
    # 0.98-0.99 in 14-31 ms, 2,500 gave 0.93-0.97, and exact search took 20-111 ms (README,
    # "Filtered searches").
    filter_pool: int = 5_000
    # A table that grew by more than this fraction, or this many rows, since the previous pass
    # is being loaded (a migration's copy, an import): building or optimizing now would be
    # redone soon after. (A 1M-row copy at ~10,000 rows/s grows by 100,000 rows a pass, under
    # 20% from 500,000 rows on; the daemon's own ingest stays far below 20,000 rows a pass.)
    # At the first pass, with no previous one, a table of more than loading_rows may be loading.
    loading_growth: float = 0.2
    loading_rows: int = 20_000
    max_waits: int = 30  # passes a loading table waits at most, so a steady flood is indexed too
    refine_factor: int = 3  # candidates re-ranked with full vectors, per result asked for

    def __post_init__(self) -> None:
        if self.ann_min_rows < 1_000:
            # IVF training needs rows to learn partitions from; fewer make a poor index.
            raise ValueError(f"ann_min_rows: expected at least 1000, got {self.ann_min_rows}")
        for name in ("loading_growth", "loading_rows", "max_waits", "filter_pool"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected at least 0, got {getattr(self, name)}")
        if not self.retention_seconds >= 0.001:
            # Zero would delete the versions that searches in flight are reading.
            raise ValueError(
                f"retention_seconds: expected at least 0.001, got {self.retention_seconds}"
            )


def _partitions(rows: int) -> int:
    # sqrt(rows)/4 keeps partitions at a few thousand rows (~80 at 100K), up to 128. Fewer
    # partitions build faster, more make each probe cheaper, but LanceDB's fixed cost per query
    # and the refine step outweigh the probes: on 1M clustered 768-d rows, in-process with
    # nothing else running, 250 partitions built in 86 s and answered in 22.4 ms at recall@10
    # 1.000, 128 in 70 s and 20.1 ms at 0.996, 64 in 62 s and 22.4 ms at 0.997.
    return max(8, min(128, round(math.sqrt(rows) / 4)))


def _filtered_probes(partitions: int, matching: int, pool: int) -> int | None:
    """The partitions a filtered search probes: enough to hold about `pool` of the `matching`
    rows, as if the filter were blind to the vectors; or None: compare every matching row
    exactly, as when at most `pool` rows match. The sparser the matches, the farther a
    query's nearest matching rows lie, and the more partitions must be probed to reach them."""
    if matching <= pool:
        return None
    return min(partitions, max(_nprobes(partitions), math.ceil(partitions * pool / matching)))


def _nprobes(partitions: int) -> int:
    # A quarter of the partitions, at least 32. On 100K clustered 768-d rows (79 partitions),
    # recall@10 was 0.96 at 8 probes, 0.985 at 16 and 0.999 at 32, while the query's time hardly
    # moved (9.1, 10.2, 11.0 ms): LanceDB's fixed cost per query (about 3 ms for any query)
    # and the refine step's full-vector reads dominate, not the scan of 4-bit codes.
    return max(32, math.ceil(partitions / 4))


@dataclass(slots=True)
class _Table:
    name: str
    dim: int
    handle: lancedb.AsyncTable
    schema: pa.Schema
    index: _VectorIndex | None = None  # the IVF_RQ index, when there is one
    activity: str | None = None  # what maintenance is doing now: "building", "optimizing"
    error: str | None = None  # why the last maintenance failed
    maintaining: anyio.Lock = field(default_factory=anyio.Lock)
    known_ids: IdSet | None = None  # built on the first insert; see store/idset.py
    rows_seen: int | None = None  # by the previous maintenance pass
    waits: int = 0  # passes in a row that found the table loading
    loaded: bool = False  # a bulk load said it ended (load_finished): the next pass won't wait


class LanceStore:
    """A `store.base.VectorStore` in one LanceDB directory, searched exactly by cosine.

    ``async with LanceStore(path) as store: ...``; the directory is created if missing. As in
    SQLiteStore, two table names that differ only in case cannot both exist. One process at a
    time should write a store directory: each table handle sees the writes made through it.
    """

    def __init__(self, path: str | Path, policy: IndexPolicy | None = None) -> None:
        self.path = Path(path)
        self.policy = policy or IndexPolicy()
        self._db: lancedb.AsyncConnection | None = None
        self._tables: dict[str, _Table] = {}
        self._failed: dict[str, str] = {}  # tables that could not be opened, and why
        self._write_lock = anyio.Lock()
        # Maintenance's schedule (see next_pass): load_finished asks for passes out of turn.
        self._pass_due = anyio.Event()
        self._asked: set[str] = set()
        self._round_at: float | None = None  # when every table's next pass is due
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
                    handle = await self._open_table(db, name)
                    if handle is not None:
                        self._tables[name] = await self._describe(name, handle)
            except BaseException:
                self._close_handles()
                _close(db)
                raise
            self._db = db

    async def _open_table(
        self, db: lancedb.AsyncConnection, name: str
    ) -> lancedb.AsyncTable | None:
        """Open a table; if its newest manifest is damaged, at the version before. None (and
        the reason kept for every use of the table) when it cannot be opened at all: one bad
        table must not keep the others from being served, nor the sidecar from starting."""
        try:
            return await db.open_table(name)
        except (OSError, RuntimeError, ValueError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        moved = self._set_aside_damaged_manifest(name)
        if moved is not None:
            try:
                handle = await db.open_table(name)
            except (OSError, RuntimeError, ValueError) as exc:
                failure = f"{failure}; and after setting aside {moved}: {exc}"
            else:
                version = await handle.version()
                log.warning(
                    "%s: table %r: its newest manifest was damaged (%s); opened version %d, "
                    "the last complete one. The write that made the damaged version is lost.",
                    self.path,
                    name,
                    moved,
                    version,
                )
                return handle
        message = f"{self.path}: table {name!r} cannot be opened: {failure}"
        log.error("%s", message)
        self._failed[name] = message
        return None

    def _set_aside_damaged_manifest(self, name: str) -> str | None:
        """Move the table's newest manifest out of `_versions` if it is incomplete (empty, or
        cut short before Lance's closing magic); say what was moved. Anything else is left."""
        versions = self.path / f"{name}.lance" / "_versions"
        numbered: list[tuple[int, Path]] = []
        for entry in versions.glob("*.manifest"):
            if entry.stem.isdigit():
                n = int(entry.stem)
                # Lance's V2 naming stores u64::MAX - version, so the newest sorts first.
                numbered.append((2**64 - 1 - n if n >= 2**63 else n, entry))
        if not numbered:
            return None
        version, newest = max(numbered)
        with newest.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - len(_MANIFEST_MAGIC)))
            complete = size >= len(_MANIFEST_MAGIC) and f.read() == _MANIFEST_MAGIC
        if complete:
            return None
        aside = versions.parent / "_damaged"
        aside.mkdir(exist_ok=True)
        target = aside / f"{newest.name}.{time.strftime('%Y%m%dT%H%M%S')}"
        newest.rename(target)
        return f"version {version}, {size} bytes, moved to {target}"

    async def _describe(self, name: str, handle: lancedb.AsyncTable) -> _Table:
        schema = await handle.schema()
        if schema.names != _COLUMNS or not pa.types.is_fixed_size_list(
            embedding := schema.field("embedding").type
        ):
            raise StoreError(
                f"{self.path}: table {name!r} does not have a Satchel schema: expected columns "
                f"{', '.join(_COLUMNS)}, got {', '.join(schema.names)}"
            )
        table = _Table(name, int(embedding.list_size), handle, schema)
        table.index = _vector_index(await handle.list_indices())
        return table

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
        if name in self._failed:
            raise StoreError(self._failed[name])
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
            for failed, message in self._failed.items():
                if failed.lower() == name.lower():
                    raise StoreError(message)
            schema = table_schema(dim)
            handle = await self._conn().create_table(name, schema=schema)
            self._tables[name] = _Table(name, dim, handle, schema, known_ids=IdSet())

    async def insert(self, table: str, records: Sequence[Record]) -> None:
        """See `VectorStore.insert`. One commit, one version: an append or a `merge_insert`."""
        t = self._table(table)
        batch = insert_batch(table, t.dim, records)
        if not batch:
            return
        with self._errors("insert", table):
            data = _to_arrow(batch, t.schema)
        async with self._writing("insert", table):
            known = await self._known_ids(t)
            new = not known.may_contain_any(batch.ids)
            known.add(batch.ids)  # before the write: the set may over-state, never under-state
            if new:
                await t.handle.add(data)  # see store/idset.py: the common case, twice as fast
            else:
                await (
                    t.handle.merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(data)
                )

    async def _known_ids(self, t: _Table) -> IdSet:
        """The table's `IdSet`, read from its id column on the first write after opening."""
        if t.known_ids is None:
            ids = await t.handle.query().select(["id"]).to_arrow()
            t.known_ids = IdSet(ids.column("id").to_pylist())
        return t.known_ids

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
            probes = None if t.index is None else _nprobes(t.index.partitions)
            matching = None
            if t.index is not None and where is not None:
                matching = await t.handle.count_rows(where)  # the scalar indexes count them
                # The pool must hold the candidates asked for: a larger top_k needs more.
                pool = max(self.policy.filter_pool, limit)
                probes = _filtered_probes(t.index.partitions, matching, pool)
            while True:
                search = t.handle.vector_search(query).distance_type("cosine").limit(limit)
                if probes is None:
                    search = search.bypass_vector_index()
                else:
                    search = search.nprobes(probes)
                    search = search.refine_factor(self.policy.refine_factor)
                if where is not None:
                    search = search.where(where)
                rows = await search.select([*_RECORD_COLUMNS, "_distance"]).to_arrow()
                records, vectors = _read(rows, t.dim)
                exact = _exact_scores(vectors, query)
                if (
                    probes is not None
                    and matching is not None
                    and len(records) < min(limit, matching)
                ):
                    # The probed partitions held too few of the matching rows (a filter that
                    # picks out far-off clusters): compare them all.
                    probes = None
                    continue
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
                query = query.select(_RECORD_COLUMNS)
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
        """See `VectorStore.export_all`. One snapshot, the version current when the export
        starts: its ids are read and sorted once, then its rows fetched by row id,
        `batch_size` at a time. (A page query per batch, ``id > last ORDER BY id LIMIT n``,
        sorts the rest of the table every time: 30 s for 100K rows, quadratic beyond.)"""
        t = self._table(table)
        async for rows in self._snapshot("export_all", t, batch_size, _RECORD_COLUMNS):
            batch, _ = _read(rows, t.dim)
            yield batch

    async def digests(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every record's id and `content_digest`, in id order, `batch_size` at a time; one
        snapshot, read as `export_all` reads it, without building records."""
        t = self._table(table)
        async for rows in self._snapshot("digests", t, batch_size, _DIGESTED):
            flat = rows.column("embedding").combine_chunks().flatten()
            vectors = np.asarray(flat.to_numpy(zero_copy_only=False), "<f4").reshape(-1, t.dim)
            text = {name: rows.column(name).to_pylist() for name in _DIGESTED[:-1]}
            yield [
                (
                    text["id"][i],
                    content_digest(
                        id=text["id"][i],
                        source_id=text["source_id"][i],
                        source_type=text["source_type"][i],
                        text_chunk=text["text_chunk"][i],
                        created_at=text["created_at"][i],
                        tags_json=text["tags"][i],
                        embedding=vectors[i].tobytes(),
                    ),
                )
                for i in range(rows.num_rows)
            ]

    async def _snapshot(
        self, operation: str, t: _Table, batch_size: int, columns: list[str]
    ) -> AsyncIterator[pa.Table]:
        """`columns` of the table's current version in id order, `batch_size` rows at a time."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidQuery(f"batch_size: expected a positive integer, got {batch_size!r}")
        assert self._db is not None  # _table() raised if the store is closed
        with self._errors(operation, t.name):
            # Its own handle, checked out: row ids hold only within one version, and
            # maintenance may compact the table meanwhile.
            snapshot = await self._db.open_table(t.name)
        try:
            with self._errors(operation, t.name):
                await snapshot.checkout(await t.handle.version())
                ids = await snapshot.query().select(["id"]).with_row_id().to_arrow()
            order = pc.sort_indices(ids, sort_keys=[("id", "ascending")])
            row_ids = ids.column("_rowid").take(order).to_pylist()
            for start in range(0, len(row_ids), batch_size):
                with self._errors(operation, t.name):
                    chunk = row_ids[start : start + batch_size]
                    rows = await snapshot.take_row_ids(chunk).select(columns).to_arrow()
                yield rows.sort_by("id")
        finally:
            snapshot.close()  # type: ignore[no-untyped-call]

    # -- index lifecycle ------------------------------------------------------------------------

    async def maintain(self, table: str) -> list[str]:
        """One maintenance pass over `table`; returns what it did (empty: nothing was due).

        Builds missing scalar indexes; builds the IVF_RQ index once the table reaches
        `ann_min_rows`, and a new one when the table has outgrown it (4 times the rows); otherwise
        runs `optimize()` when new rows or small fragments have piled up. Before either, it
        rebuilds the scalar indexes if rows have piled up outside them, which is quick and keeps
        upserts and deletes fast. Everything but building missing scalar indexes waits while the
        table is loading (it grew by more than `IndexPolicy.loading_growth` or `loading_rows`
        since the previous pass, or, at the first pass since this store opened it, holds more
        than `loading_rows`), for at most `max_waits` passes or until `load_finished` says the
        load is over: an index built halfway through a bulk load would be rebuilt or refolded
        soon after. Builds run beside reads and writes.
        Passes on one table never overlap: a pass asked for while one runs returns at once. A
        failure is kept for `index_status` and raised as StoreError.
        """
        t = self._table(table)
        if t.maintaining.locked():
            return []
        async with t.maintaining:
            try:
                with self._errors("maintain", table):
                    done = await self._maintain(t)
            except StoreError as exc:
                t.error = str(exc)
                raise
            t.error = None
            return done

    async def load_finished(self, table: str) -> None:
        """Say that a bulk load into `table` (a migration's copy) is over: the next maintenance
        pass builds or optimizes what is due without waiting to see the table stop growing,
        and `next_pass` returns it at once so that the pass comes now.

        Without it the build of a migrated 1M-row table began 10-20 s after the copy ended
        (one pass to see the copy's last rows, one more to see no growth), and the replay
        right after the copy upserted against an `id` index that covered none of the rows.
        """
        self._table(table).loaded = True
        self._asked.add(table)
        self._pass_due.set()

    async def next_pass(self, seconds: float) -> list[str]:
        """Sleep until maintenance is due, and return the tables it is due for: every table
        once `seconds` have passed since the last such round, or, sooner, those that
        `load_finished` named. The other tables keep their pace: a pass judges whether a table
        is loading by its growth since the previous pass, which an early one would cut short.
        A round that fell due during out-of-turn passes comes `seconds` after them.
        """
        now = anyio.current_time()
        if self._round_at is None or self._round_at <= now:
            # A round that fell due while passes ran out of turn (a build can take minutes)
            # comes `seconds` after them, as after any round: straight after a migration's
            # build it would start compacting the copy's fragments (80-100 s at 1M) while the
            # migration waits for the index to be "indexed" rather than "optimizing".
            self._round_at = now + seconds
        with anyio.move_on_after(self._round_at - now):
            await self._pass_due.wait()
        self._pass_due = anyio.Event()
        asked, self._asked = self._asked, set()
        if anyio.current_time() >= self._round_at:
            self._round_at = None
            return list(self.tables())
        return sorted(asked)

    async def _maintain(self, t: _Table) -> list[str]:
        done: list[str] = []
        loaded, t.loaded = t.loaded, False  # before the count: it must include the whole load
        rows = int(await t.handle.count_rows())
        before, t.rows_seen = t.rows_seen, rows
        if not rows:
            return done
        existing = {index.name for index in await t.handle.list_indices()}
        for column, kind in _SCALAR_INDEXES.items():
            if f"{column}_idx" not in existing:
                await t.handle.create_index(column, config=kind())
                done.append(f"built the {kind.__name__} index on {column}")
        old = t.index
        # A new index once the table has four times the rows the old one learnt its partitions
        # from: the rows written since were only assigned to those partitions by optimize().
        build = rows >= self.policy.ann_min_rows and (old is None or rows >= 4 * old.rows)
        if not build and not await self._optimize_due(t):
            t.waits = 0
            return done
        if loaded:
            loading = False  # the loader said so: no need to wait and see
        elif before is None:
            # The first pass over this table: whether it is growing is unknown, and a big one
            # may be in the middle of a load (a migration's copy had 77,000 rows by the first
            # pass and built an index that was rebuilt at 1M). The next pass will tell.
            loading = rows > self.policy.loading_rows
        else:
            grown = rows - before
            loading = grown > min(self.policy.loading_rows, before * self.policy.loading_growth)
        if loading and t.waits < self.policy.max_waits:
            t.waits += 1
            done.append(
                f"waiting: the table may be loading ({rows} rows at the first pass)"
                if before is None
                else f"waiting: the table is loading ({before} rows at the previous pass)"
            )
            return done
        t.waits = 0
        done += await self._refresh_scalar_indexes(t)
        if build:
            started = time.monotonic()
            t.activity = "building"
            wanted = _partitions(rows)
            new = _VectorIndex(f"embedding_ivf_rq_p{wanted}_r{rows}", wanted, rows)
            try:
                config = IvfRq(distance_type="cosine", num_bits=4, num_partitions=wanted)
                await t.handle.create_index("embedding", config=config, name=new.name)
            finally:
                t.activity = None
            t.index = new  # searches use the new index from here on
            if old is not None:
                await t.handle.drop_index(old.name)
            done.append(
                f"built IVF_RQ with {wanted} partitions over {rows} rows "
                f"in {time.monotonic() - started:.1f} s"
            )
        else:
            started = time.monotonic()
            t.activity = "optimizing"
            try:
                stats = await self._optimize(t)
            finally:
                t.activity = None
            done.append(
                f"optimized in {time.monotonic() - started:.1f} s: "
                f"{stats.compaction.fragments_removed} fragments compacted into "
                f"{stats.compaction.fragments_added}, "
                f"{stats.prune.old_versions_removed} old versions removed"
            )
        return done

    async def _outgrown(self, t: _Table, index: str) -> bool:
        """Whether `index` leaves out more than `optimize_growth` of the rows it covers."""
        stats = await t.handle.index_stats(index)
        if stats is None:
            return False
        return stats.num_unindexed_rows > self.policy.optimize_growth * max(
            1, stats.num_indexed_rows
        )

    async def _optimize_due(self, t: _Table) -> bool:
        # Annotated as a dataclass, returned as a dict by lancedb 0.40: read it either way.
        stats: Any = await t.handle.stats()
        fragments = stats["fragment_stats"] if isinstance(stats, dict) else stats.fragment_stats
        small = (
            fragments["num_small_fragments"]
            if isinstance(fragments, dict)
            else (fragments.num_small_fragments)
        )
        if small > self.policy.max_small_fragments:
            return True
        return await self._outgrown(t, "id_idx" if t.index is None else t.index.name)

    async def _refresh_scalar_indexes(self, t: _Table) -> list[str]:
        """Before a build or optimize(): rebuild the scalar indexes if the rows outside the id
        index exceed `optimize_growth` of those in it (after a bulk load, or whenever an
        optimize() is due for the same reason).

        An upsert's join on `id` and a delete's predicate read every row outside the id index:
        at 300,000 rows with 250,000 of them outside it, an upsert of 100 rows took 1.3 s and a
        delete 43 ms; after a rebuild (0.1 s; all five 0.6-0.9 s; 6-9 s at 1M under load) 22 ms
        and 3 ms. `optimize()` folds them in too, but only with its compaction, which at 1M
        takes minutes. Best effort: a failure is logged, and the build or optimize goes on.
        """
        if not await self._outgrown(t, "id_idx"):
            return []
        started = time.monotonic()
        t.activity = "optimizing"
        try:
            for column, kind in _SCALAR_INDEXES.items():
                await t.handle.create_index(column, config=kind(), replace=True)
        except (RuntimeError, OSError, ValueError) as exc:  # what lancedb raises
            log.warning("table %s: rebuilding the scalar indexes failed: %s", t.name, exc)
            return [f"rebuilding the scalar indexes failed: {exc}"]
        finally:
            t.activity = None
        return [f"rebuilt the scalar indexes in {time.monotonic() - started:.1f} s"]

    async def _optimize(self, t: _Table) -> Any:
        cleanup = timedelta(seconds=self.policy.retention_seconds)
        try:
            return await t.handle.optimize(cleanup_older_than=cleanup)
        except RuntimeError as exc:
            # Compaction rewrites fragments, so a concurrent upsert of rows in them wins and
            # the compaction is refused. Under steady writes that could repeat forever: the
            # second try holds the write lock, so writes wait for it (reads go on).
            if "conflict" not in str(exc).lower():
                raise
        async with self._write_lock:
            self._conn()
            return await t.handle.optimize(cleanup_older_than=cleanup)

    async def index_status(self, table: str) -> IndexStatus:
        """How `table` is searched now: exactly, or by IVF_RQ with how many rows not yet in it."""
        t = self._table(table)
        with self._errors("index_status", table):
            rows = int(await t.handle.count_rows())
            unindexed = rows
            if t.index is not None:
                index = await t.handle.index_stats(t.index.name)
                unindexed = index.num_unindexed_rows if index is not None else rows
        kind = "exact" if t.index is None else "IVF_RQ"
        # "loading": the last pass put a due build or optimize off (see maintain).
        idle = "loading" if t.waits else ("exact" if t.index is None else "indexed")
        state = t.activity or idle
        return IndexStatus(kind, state, rows, unindexed, t.error)

    def tables(self) -> dict[str, int]:
        """The tables and their dimensions."""
        self._conn()
        return {name: table.dim for name, table in sorted(self._tables.items())}

    async def count(self, table: str) -> int:
        """See `VectorStore.count`."""
        t = self._table(table)
        with self._errors("count", table):
            return int(await t.handle.count_rows())
