"""`SQLiteStore`: the default vector store, one SQLite file searched at memory speed.

Records live in SQLite (WAL, ``synchronous=FULL``, every write ``BEGIN IMMEDIATE``); each
logical table is an SQL table ``vectors_<name>`` with the embedding as a little-endian float32
BLOB. Search never reads those BLOBs: each table's vectors are mirrored, unit-length, in a
`store.matrix.Matrix` loaded on first use and updated after every commit made through this
store. A filter first selects candidate rowids in SQL; the matrix then ranks exactly those.

Consistency without locking searches out: rowids only grow and an upsert gets a fresh rowid
(``INSERT OR REPLACE``), so a row with a given rowid never changes. Each table carries a write
`version`, bumped in the same transaction as the write and stamped on the matrix snapshot
built from it. A filtered search checks that the candidates it read come from the version of
its snapshot, and any search whose result rows vanished before it could read them retries on a
newer snapshot. So a search never sees half of a batch, yet only waits for a writer in those
rare races.

One process at a time should write a store file: the matrix mirrors only the writes made
through this object (the daemon holds a single-instance lock for that reason).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import aiosqlite
import anyio
import numpy as np
import numpy.typing as npt

from store import filter as filters
from store import sqlitedb
from store.base import (
    IndexStatus,
    InvalidQuery,
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
from store.matrix import Matrix, MatrixOutOfStep, TopK

__all__ = ["Change", "SQLiteStore"]

_log = logging.getLogger(__name__)

_Rowids = npt.NDArray[np.int64]
_SQL_CHUNK: Final = 500  # ids per IN (...) list; far below SQLite's variable limit
_COLUMNS: Final = "id, source_id, source_type, text_chunk, embedding, created_at, tags"

# The vector file's schema, as ordered named migrations (see store.sqlitedb.migrate).
MIGRATIONS: Final[tuple[sqlitedb.Migration, ...]] = (
    (
        "0001_tables",
        """
        CREATE TABLE satchel_tables (
            name TEXT PRIMARY KEY,
            dim INTEGER NOT NULL CHECK (dim > 0),
            version INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        """,
    ),
    (
        "0002_change_log",
        """
        CREATE TABLE satchel_changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            tbl TEXT NOT NULL,
            id TEXT,  -- a record written or deleted, or
            filter TEXT,  -- a delete_where's filter (logged for a store that cannot list ids)
            CHECK ((id IS NULL) != (filter IS NULL))
        );
        CREATE TABLE satchel_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
)
_CHANGE_LOG: Final = "change_log"  # the satchel_state key that turns the change log on


def _table_ddl(name: str) -> list[str]:
    t = f"vectors_{name}"
    return [
        f"""CREATE TABLE "{t}" (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            source_id TEXT NOT NULL,
            source_type TEXT NOT NULL,
            text_chunk TEXT NOT NULL,
            embedding BLOB NOT NULL,
            created_at TEXT NOT NULL,
            tags TEXT NOT NULL
        )""",
        # ':' cannot appear in a table name, so index names never collide with tables.
        f'CREATE INDEX "{t}:source_id" ON "{t}" (source_id)',
        f'CREATE INDEX "{t}:source_type" ON "{t}" (source_type)',
        f'CREATE INDEX "{t}:created_at" ON "{t}" (created_at)',
    ]


def _chunks(items: Sequence[Any], size: int = _SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Record:
    # Rows were validated by Record() on their way in; frombuffer over bytes is read-only.
    return Record.from_storage(
        id=row[0],
        source_id=row[1],
        source_type=row[2],
        text_chunk=row[3],
        embedding=np.frombuffer(row[4], dtype="<f4").astype(np.float32, copy=False),
        created_at=row[5],
        tags=tags_from_json(row[6]),
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One change-log entry: a record written or deleted (`id`), or a delete_where (`filter`)."""

    seq: int
    table: str
    id: str | None
    filter: str | None


@dataclass(slots=True)
class _Table:
    name: str
    dim: int
    sql: str  # quoted SQL table name
    matrix: Matrix | None = None  # loaded on first use


class SQLiteStore:
    """A `store.base.VectorStore` in one SQLite file, searched by an in-memory matrix.

    ``async with SQLiteStore(path) as store: ...``. The file and its directory are created if
    missing. See the module docstring for how searches stay consistent with writes.

    Table names are case-sensitive, but SQLite's are not: two names that differ only in case
    cannot both exist (the second raises `TableExists`), as on a case-insensitive file system.
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._tables: dict[str, _Table] = {}
        self._write_lock = anyio.Lock()
        self._compute = anyio.CapacityLimiter(2)
        self._closed = False
        self._logging = False  # whether writes append to the change log

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the file, apply pending schema migrations and read the table list."""
        if self._closed:
            raise StoreClosed("SQLite store")
        if self._writer is not None:
            return
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await sqlitedb.connect(self.path, busy_timeout_ms=self._busy_timeout_ms)
            try:
                await sqlitedb.migrate(self._writer, self.path, MIGRATIONS)
                self._reader = await sqlitedb.connect(
                    self.path, busy_timeout_ms=self._busy_timeout_ms
                )
                async with self._reader.execute("SELECT name, dim FROM satchel_tables") as cur:
                    for name, dim in await cur.fetchall():
                        self._tables[name] = _Table(name, dim, f'"vectors_{name}"')
                self._logging = await self.read_state(_CHANGE_LOG) is not None
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._close_connections()
                raise

    async def aclose(self) -> None:
        """Close both connections; idempotent. Waits for a write in progress to finish."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                if self._writer is not None:
                    # Fold the WAL into the main file so the next open reads one file, fast.
                    with contextlib.suppress(sqlite3.Error, ValueError):
                        await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await self._close_connections()
        self._tables.clear()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._reader = self._writer = None

    # -- helpers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, operation: str, table: str | None = None) -> Iterator[None]:
        """Translate SQLite's errors into StoreError naming the file, operation and table,
        chained; let our own errors and programming errors through."""
        try:
            yield
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            if self._closed:
                raise StoreClosed("SQLite store") from exc
            where = f" on table {table!r}" if table else ""
            raise StoreError(f"{self.path}: {operation}{where} failed: {exc}") from exc
        except ValueError as exc:
            # aiosqlite raises ValueError("no active connection") once closed.
            if self._closed or "no active connection" in str(exc):
                raise StoreClosed("SQLite store") from exc
            raise

    def _conns(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._closed or self._writer is None or self._reader is None:
            raise StoreClosed("SQLite store")
        return self._writer, self._reader

    def _table(self, name: str) -> _Table:
        self._conns()
        check_table_name(name)
        table = self._tables.get(name)
        if table is None:
            raise UnknownTable(name)
        return table

    async def _matrix(self, table: _Table, *, locked: bool = False) -> Matrix:
        """The table's current snapshot, loading it from SQLite when there is none.

        Loading holds the write lock so that no write lands mid-load; pass `locked` when the
        caller already holds it.
        """
        if table.matrix is not None:
            return table.matrix
        if locked:
            table.matrix = await self._load(table)
            return table.matrix
        async with self._write_lock:
            if table.matrix is None:
                table.matrix = await self._load(table)
            return table.matrix

    async def _load(self, table: _Table) -> Matrix:
        # One worker-thread call with its own read-only connection: reading 100K BLOBs through
        # aiosqlite's per-call thread hops was measurably slower, and the matrix is built as
        # the rows stream in, one chunk at a time, so memory stays near the final matrix.
        self._conns()
        return await anyio.to_thread.run_sync(
            _load_matrix, self.path, table.name, table.dim, limiter=self._compute
        )

    async def _bump_version(self, writer: aiosqlite.Connection, table: _Table) -> int:
        async with writer.execute(
            "UPDATE satchel_tables SET version = version + 1 WHERE name = ? RETURNING version",
            (table.name,),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None  # the table row exists while the table does
        return int(row[0])

    @contextlib.asynccontextmanager
    async def _write(
        self, operation: str, table: str | None
    ) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, with our errors; commits if the body returns.

        The wait for the write lock can be cancelled. Once the lock is held, everything up to
        the caller publishing its new snapshot is shielded: a cancelled caller never leaves a
        transaction half done, nor a committed one unpublished.
        """
        writer, _ = self._conns()
        with self._errors(operation, table):
            async with self._write_lock:
                writer, _ = self._conns()  # aclose() may have won the lock first
                with anyio.CancelScope(shield=True):
                    await writer.execute("BEGIN IMMEDIATE")
                    try:
                        yield writer
                    except BaseException:
                        # SQLite may already have rolled back (disk full, I/O error): a second
                        # ROLLBACK would fail and hide the real error.
                        if writer.in_transaction:
                            await writer.execute("ROLLBACK")
                        raise

    async def _publish(self, table: _Table, build: Callable[[], Matrix]) -> None:
        """Install the snapshot that mirrors a committed write.

        Called under the write lock, after COMMIT. If building it fails (out of memory), the
        table's snapshot is dropped so the next use reloads it from SQLite: the matrix never
        silently disagrees with the file. Compaction is only an optimisation and may fail alone.
        """
        try:
            matrix = build()
        except BaseException:
            table.matrix = None
            raise
        table.matrix = matrix
        if matrix.needs_compaction():
            try:
                table.matrix = await anyio.to_thread.run_sync(
                    matrix.compacted, limiter=self._compute
                )
            except Exception:
                _log.exception(
                    "table %r: compaction failed; keeping the uncompacted matrix", table.name
                )

    # -- the contract -------------------------------------------------------------------------

    async def create_table(self, name: str, *, dim: int) -> None:
        """See `VectorStore.create_table`."""
        self._conns()
        check_table_name(name)
        check_dim(dim)
        async with self._write("create_table", name) as writer:
            for existing in self._tables.values():
                if existing.name.lower() == name.lower():
                    raise TableExists(existing.name, existing.dim)
            for statement in _table_ddl(name):
                await writer.execute(statement)
            await writer.execute(
                "INSERT INTO satchel_tables (name, dim, created_at) VALUES (?, ?, ?)",
                (name, dim, sqlitedb.utc_now()),
            )
            await writer.execute("COMMIT")
            self._tables[name] = _Table(name, dim, f'"vectors_{name}"', Matrix.empty(dim))

    async def insert(self, table: str, records: Sequence[Record]) -> None:
        """See `VectorStore.insert`."""
        t = self._table(table)
        batch = insert_batch(table, t.dim, records)
        if not batch:
            return
        vectors = batch.embeddings
        stored = vectors.astype("<f4", copy=False)  # as little-endian BLOBs
        rows = list(
            zip(
                batch.ids,
                batch.source_ids,
                batch.source_types,
                batch.text_chunks,
                (vector.tobytes() for vector in stored),
                batch.created_at,
                batch.tags,
                strict=True,
            )
        )
        with self._errors("insert", table):
            await self._matrix(t)
        async with self._write("insert", table) as writer:
            replaced, fresh, version = await self._upsert_rows(writer, t, rows)
            await self._log(writer, t, [row[0] for row in rows])
            await writer.execute("COMMIT")
            matrix = t.matrix
            if matrix is None:  # dropped by a failed publish: reload, the lock is ours
                matrix = await self._matrix(t, locked=True)
            else:
                matrix = matrix.without(replaced, version) if len(replaced) else matrix
            await self._publish(t, lambda: matrix.appended(fresh, vectors, version))

    async def _upsert_rows(
        self, writer: aiosqlite.Connection, t: _Table, rows: list[tuple[Any, ...]]
    ) -> tuple[_Rowids, _Rowids, int]:
        """Within a write transaction: the rowids it replaced, the rowids it added, its version."""
        replaced: list[int] = []
        for ids in _chunks([row[0] for row in rows]):
            marks = ",".join("?" * len(ids))
            async with writer.execute(f"SELECT seq FROM {t.sql} WHERE id IN ({marks})", ids) as cur:
                replaced.extend(row[0] for row in await cur.fetchall())
        before = await sqlitedb.sequence(writer, f"vectors_{t.name}")
        await writer.executemany(
            f"INSERT OR REPLACE INTO {t.sql} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )
        # AUTOINCREMENT gives each new row the largest rowid ever used plus one, and this
        # transaction is the only writer: the rows got before+1 .. before+len(rows), in
        # order. Checked rather than assumed, because the matrix depends on it.
        after = await sqlitedb.sequence(writer, f"vectors_{t.name}")
        if after - before != len(rows):
            raise StoreError(
                f"{self.path}: table {t.name!r}: {len(rows)} rows took rowids "
                f"{before + 1}..{after} (was the file written by another process?)"
            )
        version = await self._bump_version(writer, t)
        return (
            np.sort(np.array(replaced, np.int64)),
            np.arange(before + 1, after + 1, dtype=np.int64),
            version,
        )

    async def search(
        self, table: str, vector: VectorLike, top_k: int, filter: str | None = None
    ) -> list[ScoredRecord]:
        """See `VectorStore.search`."""
        t = self._table(table)
        query = as_query_vector(table, t.dim, vector)
        k = check_top_k(top_k)
        where: tuple[str, list[str]] | None = None
        if filter is not None:
            where = filters.to_sqlite(filters.parse(filter))
        with self._errors("search", table):
            for _ in range(3):
                result = await self._search_once(t, query, k, where)
                if result is not None:
                    return result
                # A writer removed rows we ranked; its snapshot lands once it lets go.
                async with self._write_lock:
                    pass
            async with self._write_lock:  # no writer can move under us now
                result = await self._search_once(t, query, k, where, locked=True)
            if result is None:
                raise StoreError(f"table {table!r}: search could not settle on a snapshot")
            return result

    async def _search_once(
        self,
        t: _Table,
        query: Vector,
        k: int,
        where: tuple[str, list[str]] | None,
        *,
        locked: bool = False,
    ) -> list[ScoredRecord] | None:
        """One attempt; None when a concurrent write invalidated what it read."""
        matrix = await self._matrix(t, locked=locked)
        _, reader = self._conns()
        candidates = None
        if where is not None:
            sql, params = where
            # One statement, so the version and the candidates come from one snapshot.
            # (execute_fetchall: one thread hop where execute, fetch and close take three.)
            rows = list(
                await reader.execute_fetchall(
                    f"SELECT (SELECT version FROM satchel_tables WHERE name = ?), seq "
                    f"FROM {t.sql} WHERE {sql}",
                    [t.name, *params],
                )
            )
            if not rows:
                return []
            if rows[0][0] != matrix.version:
                return None
            candidates = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        if matrix.live == 0:
            return []
        try:
            top = await anyio.to_thread.run_sync(
                matrix.search, query, k, candidates, limiter=self._compute
            )
        except MatrixOutOfStep:
            _log.warning("table %r: in-memory matrix out of step with the file; reloading", t.name)
            if t.matrix is matrix:
                t.matrix = None
            return None
        return await self._fetch_ranked(t, top, k)

    async def _fetch_ranked(self, t: _Table, top: TopK, k: int) -> list[ScoredRecord] | None:
        """The records of a ranking, ties ordered by id and cut to k; None if any vanished."""
        _, reader = self._conns()
        scores = [_clamp(s) for s in top.scores.tolist()]
        seqs = top.rowids.tolist()
        if len(seqs) > k:
            # Rows tied exactly at the k-th score: their ids decide, so read just the ids.
            ids = await self._ids_of(reader, t, seqs)
            if ids is None:
                return None
            chosen = sorted(zip(scores, seqs, strict=True), key=lambda p: (-p[0], ids[p[1]]))[:k]
            scores, seqs = [p[0] for p in chosen], [p[1] for p in chosen]
        by_rowid: dict[int, Record] = {}
        for part in _chunks(seqs):
            marks = ",".join("?" * len(part))
            sql = f"SELECT seq, {_COLUMNS} FROM {t.sql} WHERE seq IN ({marks})"
            for row in await reader.execute_fetchall(sql, part):
                by_rowid[row[0]] = _record_from_row(row[1:])
        if len(by_rowid) != len(seqs):
            return None
        ranked = sorted(zip(scores, seqs, strict=True), key=lambda p: (-p[0], by_rowid[p[1]].id))
        return [by_rowid[seq].with_score(score) for score, seq in ranked]

    async def _ids_of(
        self, reader: aiosqlite.Connection, t: _Table, seqs: list[int]
    ) -> dict[int, str] | None:
        ids: dict[int, str] = {}
        for part in _chunks(seqs):
            marks = ",".join("?" * len(part))
            sql = f"SELECT seq, id FROM {t.sql} WHERE seq IN ({marks})"
            ids.update({row[0]: row[1] for row in await reader.execute_fetchall(sql, part)})
        return ids if len(ids) == len(seqs) else None

    async def get_by_ids(self, table: str, ids: Sequence[str]) -> list[Record]:
        """See `VectorStore.get_by_ids`."""
        t = self._table(table)
        if isinstance(ids, str):
            raise TypeError("get_by_ids() takes a sequence of ids, not one string")
        wanted = list(dict.fromkeys(ids))
        _, reader = self._conns()
        found: dict[str, Record] = {}
        with self._errors("get_by_ids", table):
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {_COLUMNS} FROM {t.sql} WHERE id IN ({marks})"
                for row in await reader.execute_fetchall(sql, chunk):
                    found[row[0]] = _record_from_row(row)
        return [found[i] for i in wanted if i in found]

    async def delete(self, table: str, id: str) -> bool:
        """See `VectorStore.delete`."""
        if not isinstance(id, str):
            raise TypeError(f"delete() takes one id string, got {type(id).__name__}")
        return await self._delete("delete", table, "id = ?", [id]) > 0

    async def delete_where(self, table: str, filter: str) -> int:
        """See `VectorStore.delete_where`."""
        self._table(table)
        sql, params = filters.to_sqlite(filters.parse(filter))
        return await self._delete("delete_where", table, sql, params)

    async def _delete(self, operation: str, table: str, where: str, params: list[str]) -> int:
        t = self._table(table)
        with self._errors(operation, table):
            await self._matrix(t)
        async with self._write(operation, table) as writer:
            async with writer.execute(
                f"DELETE FROM {t.sql} WHERE {where} RETURNING seq, id", params
            ) as cur:
                rows = list(await cur.fetchall())
            gone = np.sort(np.array([row[0] for row in rows], np.int64))
            if len(gone) == 0:
                await writer.execute("ROLLBACK")
                return 0
            version = await self._bump_version(writer, t)
            await self._log(writer, t, [row[1] for row in rows])
            await writer.execute("COMMIT")
            matrix = t.matrix or await self._matrix(t, locked=True)
            await self._publish(t, lambda: matrix.without(gone, version))
        return len(gone)

    async def export_all(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[Record]]:
        """See `VectorStore.export_all`. Keyset pagination by id: each batch is one query."""
        self._table(table)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidQuery(f"batch_size: expected a positive integer, got {batch_size!r}")
        after: str | None = None
        while True:
            batch = await self.records_after(table, after, batch_size)
            if not batch:
                return
            after = batch.ids[-1]
            yield list(batch)
            if len(batch) < batch_size:
                return

    async def records_after(self, table: str, after: str | None, limit: int) -> Columns:
        """Up to `limit` records with ids above `after` (from the first when None), by id:
        one keyset page, one query."""
        rows = await self._page("records_after", table, after, limit)
        return Columns.from_stored(rows, self._table(table).dim)

    async def digests(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every record's id and `content_digest`, in id order, `batch_size` at a time (keyset
        pages, as `export_all`), computed from the stored row without building records."""
        self._table(table)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidQuery(f"batch_size: expected a positive integer, got {batch_size!r}")
        after: str | None = None
        while True:
            rows = await self._page("digests", table, after, batch_size)
            if not rows:
                return
            after = rows[-1][0]
            yield [
                (
                    row[0],
                    content_digest(
                        id=row[0],
                        source_id=row[1],
                        source_type=row[2],
                        text_chunk=row[3],
                        embedding=row[4],  # stored as little-endian float32
                        created_at=row[5],
                        tags_json=row[6],
                    ),
                )
                for row in rows
            ]
            if len(rows) < batch_size:
                return

    async def _page(
        self, operation: str, table: str, after: str | None, limit: int
    ) -> list[sqlite3.Row]:
        """Up to `limit` rows (`_COLUMNS`) with ids above `after`, by id: one keyset query."""
        t = self._table(table)
        _, reader = self._conns()
        with self._errors(operation, table):
            args: list[object]
            if after is None:
                sql, args = f"SELECT {_COLUMNS} FROM {t.sql} ORDER BY id LIMIT ?", [limit]
            else:
                sql = f"SELECT {_COLUMNS} FROM {t.sql} WHERE id > ? ORDER BY id LIMIT ?"
                args = [after, limit]
            return list(await reader.execute_fetchall(sql, args))

    def tables(self) -> dict[str, int]:
        """The tables and their dimensions."""
        self._conns()
        return {name: table.dim for name, table in sorted(self._tables.items())}

    async def index_status(self, table: str) -> IndexStatus:
        """Always exact: every search compares against the whole in-memory matrix."""
        rows = await self.count(table)
        return IndexStatus(kind="exact", state="exact", rows=rows, unindexed_rows=rows)

    async def load_finished(self, table: str) -> None:
        """Nothing to do: the matrix is exact and needs no index (see `ServedStore`)."""
        self._table(table)

    async def preload(self, table: str) -> None:
        """Load the table's search matrix now rather than on the first search."""
        await self._matrix(self._table(table))

    async def count(self, table: str) -> int:
        """See `VectorStore.count`."""
        t = self._table(table)
        _, reader = self._conns()
        with self._errors("count", table):
            rows = list(await reader.execute_fetchall(f"SELECT COUNT(*) FROM {t.sql}"))
        return int(rows[0][0])

    # -- the change log and the migration's state (see store/migrate.py) -----------------------

    async def _log(self, writer: aiosqlite.Connection, t: _Table, ids: Sequence[str]) -> None:
        # In the write's own transaction: a change is logged exactly when it commits.
        if self._logging:
            await writer.executemany(
                "INSERT INTO satchel_changes (tbl, id) VALUES (?, ?)", [(t.name, i) for i in ids]
            )

    async def start_change_log(self) -> int:
        """From now on every write also logs its table and ids; returns the log's high-water
        mark (every change after it comes from a write that committed after this call)."""
        async with self._write("start_change_log", None) as writer:
            await writer.execute(
                "INSERT OR REPLACE INTO satchel_state (key, value) VALUES (?, 'on')",
                (_CHANGE_LOG,),
            )
            mark = await sqlitedb.sequence(writer, "satchel_changes")
            await writer.execute("COMMIT")
            self._logging = True
        return mark

    async def stop_change_log(self) -> None:
        """Stop logging and forget every logged change."""
        async with self._write("stop_change_log", None) as writer:
            await writer.execute("DELETE FROM satchel_state WHERE key = ?", (_CHANGE_LOG,))
            await writer.execute("DELETE FROM satchel_changes")
            await writer.execute("COMMIT")
            self._logging = False

    async def discard_records(self) -> None:
        """Delete every table's records (the tables stay), stop the change log and give the
        space back to the file system: the old copy of a migrated store, once rollback to it
        is no longer wanted. Never loads a search matrix."""
        async with self._write("discard_records", None) as writer:
            for t in self._tables.values():
                await writer.execute(f"DELETE FROM {t.sql}")
                await self._bump_version(writer, t)
            await writer.execute("DELETE FROM satchel_state WHERE key = ?", (_CHANGE_LOG,))
            await writer.execute("DELETE FROM satchel_changes")
            await writer.execute("COMMIT")
            self._logging = False
            for t in self._tables.values():
                t.matrix = None
            with self._errors("discard_records", None):
                await writer.execute("VACUUM")  # outside any transaction; under the write lock

    async def log_changes(
        self, table: str, ids: Sequence[str] = (), filter: str | None = None
    ) -> int:
        """Log changes made elsewhere (in the store that replaced this one), committed now:
        records by id, or a delete_where by its filter. Returns the last seq logged."""
        t = self._table(table)
        async with self._write("log_changes", table) as writer:
            if filter is not None:
                await writer.execute(
                    "INSERT INTO satchel_changes (tbl, filter) VALUES (?, ?)", (t.name, filter)
                )
            await writer.executemany(
                "INSERT INTO satchel_changes (tbl, id) VALUES (?, ?)", [(t.name, i) for i in ids]
            )
            last = await sqlitedb.sequence(writer, "satchel_changes")
            await writer.execute("COMMIT")
        return last

    async def changes_after(self, seq: int, limit: int) -> list[Change]:
        """Up to `limit` logged changes after `seq`, in order."""
        _, reader = self._conns()
        with self._errors("changes_after"):
            rows = await reader.execute_fetchall(
                "SELECT seq, tbl, id, filter FROM satchel_changes WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (seq, limit),
            )
        return [Change(int(r[0]), str(r[1]), r[2], r[3]) for r in rows]

    async def last_change(self) -> int:
        """The newest logged change's seq (0 when none ever was)."""
        _, reader = self._conns()
        with self._errors("last_change"):
            return await sqlitedb.sequence(reader, "satchel_changes")

    async def read_state(self, key: str) -> str | None:
        """A value kept in the file's own key-value table (committed with the data)."""
        _, reader = self._conns()
        with self._errors("read_state"):
            rows = list(
                await reader.execute_fetchall(
                    "SELECT value FROM satchel_state WHERE key = ?", (key,)
                )
            )
        return str(rows[0][0]) if rows else None

    async def write_state(self, key: str, value: str | None) -> None:
        """Set (or, with None, remove) a key of the file's key-value table, durably."""
        async with self._write("write_state", None) as writer:
            if value is None:
                await writer.execute("DELETE FROM satchel_state WHERE key = ?", (key,))
            else:
                await writer.execute(
                    "INSERT OR REPLACE INTO satchel_state (key, value) VALUES (?, ?)", (key, value)
                )
            await writer.execute("COMMIT")


def _load_matrix(path: Path, name: str, dim: int) -> Matrix:
    """Read a table's vectors and write version in one read transaction; build its matrix."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("BEGIN")  # one snapshot for the version and the rows
        row = conn.execute("SELECT version FROM satchel_tables WHERE name = ?", (name,)).fetchone()
        version = int(row[0]) if row else 0
        matrix = Matrix.empty(dim, version)
        cursor = conn.execute(f'SELECT seq, embedding FROM "vectors_{name}" ORDER BY seq')
        while rows := cursor.fetchmany(4096):
            rowids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            raw = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
            vectors = raw.reshape(len(rows), dim).astype(np.float32, copy=False)
            matrix = matrix.appended(rowids, vectors, version)
        conn.execute("COMMIT")
        return matrix
    finally:
        conn.close()


def _clamp(score: float) -> float:
    # Unit vectors in float32 can give a cosine a hair outside [-1, 1].
    return min(1.0, max(-1.0, score)) if math.isfinite(score) else score
