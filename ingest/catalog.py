"""The catalog: the daemon's own SQLite file (separate from the vector file).

It holds what Satchel knows about its inputs rather than the vectors themselves:

- ``sources``: one row per source id (a page URL, a feed entry, a file): type, url, title,
  the hash of its extracted text, state, chunk count, first/last seen, last error.
- ``source_chunks``: which chunk ids a source produced last time, so that when the source
  changes, the chunks that vanished can be deleted from the vector store.
- ``vector_tables``: which embedding model (and dimension) made each vector table, so vectors
  of two models never mix in one table.
- ``jobs``: the durable ingest queue (see `ingest.queue`, which owns its rows).

`Catalog` owns the one connection to the file; the queue and the pipeline borrow it and
serialise their transactions through `Catalog.transaction()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

import aiosqlite
import anyio

from ingest.errors import ModelMismatch, QueueClosed
from store import sqlitedb

__all__ = ["Catalog", "Ingested", "SourceInfo", "TableModel"]

MIGRATIONS: Final[tuple[sqlitedb.Migration, ...]] = (
    (
        "0001_catalog",
        """
        CREATE TABLE sources (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            url TEXT,
            title TEXT,
            lang TEXT,
            content_hash TEXT,
            state TEXT NOT NULL CHECK (state IN ('pending', 'ok', 'failed')),
            chunk_count INTEGER NOT NULL DEFAULT 0,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            last_error TEXT
        );
        CREATE TABLE source_chunks (
            source_id TEXT NOT NULL,
            chunk_id TEXT NOT NULL,
            PRIMARY KEY (source_id, chunk_id)
        ) WITHOUT ROWID;
        CREATE TABLE vector_tables (
            name TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            source_id TEXT NOT NULL,
            payload TEXT,
            state TEXT NOT NULL
                CHECK (state IN ('pending', 'running', 'done', 'failed', 'superseded')),
            attempts INTEGER NOT NULL DEFAULT 0,
            lost INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            lease_until REAL,
            last_error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX jobs_ready ON jobs (state, id);
        CREATE INDEX jobs_source ON jobs (source_id, state)
        """,
    ),
)


_SOURCE_COLUMNS: Final = (
    "id, type, url, title, lang, content_hash, state, chunk_count, first_seen, last_seen, "
    "last_error"
)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """A `sources` row."""

    id: str
    type: str
    url: str | None
    title: str | None
    lang: str | None
    content_hash: str | None
    state: str
    chunk_count: int
    first_seen: str
    last_seen: str
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Ingested:
    """What ingesting one source produced, for `Catalog.record_sources`."""

    source_id: str
    source_type: str
    url: str | None
    title: str | None
    lang: str | None
    content_hash: str
    chunk_ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class TableModel:
    """Which model made a vector table."""

    name: str
    model: str
    dim: int


class Catalog:
    """The daemon's SQLite file. ``async with Catalog(path) as catalog: ...``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        self._closed = False
        self._durable = True  # sqlitedb.connect sets synchronous = FULL

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the file and bring its schema up to date."""
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Catalog rows are small: the default page size suits them.
        conn = await sqlitedb.connect(self.path, page_size=4096)
        try:
            await sqlitedb.migrate(conn, self.path, MIGRATIONS)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def aclose(self) -> None:
        """Close the connection; idempotent. Waits for a transaction in progress."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        """The connection, for reads that need no transaction."""
        if self._conn is None or self._closed:
            raise QueueClosed(f"the catalog {self.path} is closed")
        return self._conn

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, shielded so that a cancelled caller never leaves
        it half done; commits on success, rolls back on error.

        `durable` transactions are on disk when they commit (fsync). The others survive a killed
        process but may be lost with power: use them only for what a replay redoes harmlessly
        (claims, renewals, completions of idempotent work). In WAL mode the next durable commit
        flushes every earlier one too.
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                conn = self.conn
                if durable != self._durable:
                    await conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    self._durable = durable
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")

    # -- vector tables ------------------------------------------------------------------------

    async def bind_table(self, name: str, model: str, dim: int) -> TableModel:
        """Record that `model` makes `name`'s vectors, or check that it already does.

        Raises `ModelMismatch` naming the model the table expects.
        """
        async with self.transaction() as conn:
            async with conn.execute(
                "SELECT model, dim FROM vector_tables WHERE name = ?", (name,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                await conn.execute(
                    "INSERT INTO vector_tables (name, model, dim, created_at) VALUES (?, ?, ?, ?)",
                    (name, model, dim, sqlitedb.utc_now()),
                )
                return TableModel(name, model, dim)
        if (row[0], row[1]) != (model, dim):
            raise ModelMismatch(
                f"table {name!r} holds {row[1]}-dimensional vectors from model {row[0]!r}; "
                f"the embedder is {model!r} ({dim} dimensions). Configure {row[0]!r} again, "
                "or use another table"
            )
        return TableModel(name, model, dim)

    # -- sources ------------------------------------------------------------------------------

    async def source(self, source_id: str) -> SourceInfo | None:
        """A source's row, if known."""
        found = await self.sources_by_id([source_id])
        return found.get(source_id)

    async def sources_by_id(self, source_ids: Sequence[str]) -> dict[str, SourceInfo]:
        """The rows of those sources that are known, by id (one query per 500 ids)."""
        found: dict[str, SourceInfo] = {}
        for start in range(0, len(source_ids), 500):
            part = list(source_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = await self.conn.execute_fetchall(
                f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE id IN ({marks})", part
            )
            found.update({row[0]: SourceInfo(*row) for row in rows})
        return found

    async def sources(self, *, limit: int = 1000, after: str = "") -> list[SourceInfo]:
        """Sources in id order, `limit` at a time, starting after id `after`."""
        rows = await self.conn.execute_fetchall(
            f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [SourceInfo(*row) for row in rows]

    async def chunk_ids(self, source_id: str) -> set[str]:
        """The chunk ids the source produced when it was last ingested."""
        return (await self.chunk_ids_by_source([source_id])).get(source_id, set())

    async def chunk_ids_by_source(self, source_ids: Sequence[str]) -> dict[str, set[str]]:
        """The chunk ids each of these sources produced when last ingested."""
        found: dict[str, set[str]] = {}
        for start in range(0, len(source_ids), 500):
            part = list(source_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = await self.conn.execute_fetchall(
                f"SELECT source_id, chunk_id FROM source_chunks WHERE source_id IN ({marks})",
                part,
            )
            for source_id, chunk in rows:
                found.setdefault(source_id, set()).add(chunk)
        return found

    @staticmethod
    async def record_sources(conn: aiosqlite.Connection, ingested: Sequence[Ingested]) -> None:
        """Within a transaction: these sources were ingested and now have exactly these chunks.

        A few statements for the whole batch (each is a thread hop under the catalog's lock).
        """
        now = sqlitedb.utc_now()
        await conn.executemany(
            """
            INSERT INTO sources (id, type, url, title, lang, content_hash, state, chunk_count,
                                 first_seen, last_seen, last_error)
            VALUES (?, ?, ?, ?, ?, ?, 'ok', ?, ?, ?, NULL)
            ON CONFLICT (id) DO UPDATE SET
                type = excluded.type, url = excluded.url, title = excluded.title,
                lang = excluded.lang, content_hash = excluded.content_hash, state = 'ok',
                chunk_count = excluded.chunk_count, last_seen = excluded.last_seen,
                last_error = NULL
            """,
            [
                (
                    s.source_id,
                    s.source_type,
                    s.url,
                    s.title,
                    s.lang,
                    s.content_hash,
                    len(s.chunk_ids),
                    now,
                    now,
                )
                for s in ingested
            ],
        )
        await conn.executemany(
            "DELETE FROM source_chunks WHERE source_id = ?", [(s.source_id,) for s in ingested]
        )
        await conn.executemany(
            "INSERT INTO source_chunks (source_id, chunk_id) VALUES (?, ?)",
            [(s.source_id, chunk) for s in ingested for chunk in s.chunk_ids],
        )

    @staticmethod
    async def record_failure(
        conn: aiosqlite.Connection, *, source_id: str, source_type: str, error: str
    ) -> None:
        """Within a transaction: the source could not be ingested, for this reason."""
        now = sqlitedb.utc_now()
        await conn.execute(
            """
            INSERT INTO sources (id, type, state, first_seen, last_seen, last_error)
            VALUES (?, ?, 'failed', ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET state = 'failed', last_seen = excluded.last_seen,
                last_error = excluded.last_error
            """,
            (source_id, source_type, now, now, error),
        )
