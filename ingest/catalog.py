"""The catalog: the daemon's own SQLite file (separate from the vector file).

It holds what Satchel knows about its inputs rather than the vectors themselves:

- ``sources``: one row per source id (a page URL, a feed entry, a file): type, url, title,
  the hash of its extracted text, state, chunk count, first/last seen, last error.
- ``source_chunks``: which chunk ids a source produced last time, so that when the source
  changes, the chunks that vanished can be deleted from the vector store.
- ``vector_tables``: which embedding model (and dimension) made each vector table, so vectors
  of two models never mix in one table.
- ``jobs``: the durable ingest queue (see `ingest.queue`, which owns its rows).
- ``feeds`` and ``feed_entries``: subscriptions, their polling state, and which entries each
  has delivered (see `ingest.feedlist`, which owns their rows).

`Catalog` owns the connections to the file. Reads go through `Catalog.conn` (aiosqlite);
writes are plain functions of a `sqlite3.Connection` that `Catalog.write()` runs as one
transaction in a worker thread, one at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self, TypeVar

import aiosqlite
import anyio

from ingest.errors import ModelMismatch, QueueClosed
from store import sqlitedb

__all__ = ["Catalog", "Ingested", "SourceInfo", "TableModel"]

T = TypeVar("T")

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
    (
        "0002_feeds",
        """
        CREATE TABLE feeds (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            url TEXT NOT NULL UNIQUE,
            title TEXT,
            site_url TEXT,
            etag TEXT,
            last_modified TEXT,
            next_check REAL NOT NULL,
            interval_s REAL,
            full_text INTEGER,
            consecutive_errors INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            last_checked REAL,
            last_success REAL,
            entry_count INTEGER NOT NULL DEFAULT 0,
            disabled INTEGER NOT NULL DEFAULT 0,
            added_at REAL NOT NULL,
            ttl_minutes INTEGER
        );
        CREATE INDEX feeds_due ON feeds (disabled, next_check);
        CREATE TABLE feed_entries (
            feed_id INTEGER NOT NULL,
            key TEXT NOT NULL,
            source_id TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (feed_id, key)
        ) WITHOUT ROWID
        """,
    ),
    (
        # The browsers paired with the extension endpoint (daemon/pairing.py owns these rows):
        # only a hash of each token is kept; and the key the daemon proves itself with.
        "0003_browsers",
        """
        CREATE TABLE paired_browsers (
            origin TEXT PRIMARY KEY,
            token_sha256 TEXT NOT NULL,
            paired_at REAL NOT NULL,
            last_used REAL
        );
        CREATE TABLE daemon_identity (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            key BLOB NOT NULL
        )
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
        self._sync: sqlite3.Connection | None = None  # for `write`; used under `_lock` only
        self._lock = anyio.Lock()
        self._closed = False

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
            sync = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._sync = sync

    async def aclose(self) -> None:
        """Close the connection; idempotent. Waits for a transaction in progress."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._sync is not None:
                    self._sync.close()
                    self._sync = None
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        """The connection, for reads that need no transaction."""
        if self._conn is None or self._closed:
            raise QueueClosed(f"the catalog {self.path} is closed")
        return self._conn

    async def write(self, work: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run `work(conn)` in one ``BEGIN IMMEDIATE`` transaction in a worker thread; return
        its result. Commits when it returns, rolls back when it raises.

        Every write to the catalog goes through here, serialised by one lock: a whole
        transaction is one thread hop rather than one per statement, so the lock is held only as
        long as SQLite needs it. That matters most to `Queue.enqueue`, whose latency is every
        producer's latency.

        `durable` transactions are on disk when they commit (fsync). The others survive a killed
        process but may be lost with power: use them only for what a replay redoes harmlessly
        (claims, renewals, completions of idempotent work). In WAL mode the next durable commit
        flushes every earlier one too.
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._sync is None or self._closed:
                    raise QueueClosed(f"the catalog {self.path} is closed")
                result = await anyio.to_thread.run_sync(_transact, self._sync, work, durable)
        return result

    # -- vector tables ------------------------------------------------------------------------

    async def bind_table(self, name: str, model: str, dim: int) -> TableModel:
        """Record that `model` makes `name`'s vectors, or check that it already does.

        Raises `ModelMismatch` naming the model the table expects.
        """

        def bind(conn: sqlite3.Connection) -> tuple[str, int] | None:
            row = conn.execute("SELECT model, dim FROM vector_tables WHERE name = ?", (name,))
            found: tuple[str, int] | None = row.fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO vector_tables (name, model, dim, created_at) VALUES (?, ?, ?, ?)",
                    (name, model, dim, sqlitedb.utc_now()),
                )
            return found

        row = await self.write(bind)
        if row is None:
            return TableModel(name, model, dim)
        if (row[0], row[1]) != (model, dim):
            raise ModelMismatch(
                f"table {name!r} holds {row[1]}-dimensional vectors from model {row[0]!r}; "
                f"the embedder is {model!r} ({dim} dimensions). Configure {row[0]!r} again, "
                "or use another table"
            )
        return TableModel(name, model, dim)

    async def table_binding(self, name: str) -> TableModel | None:
        """Which model made the table's vectors, if it is bound."""
        rows = await self.conn.execute_fetchall(
            "SELECT model, dim FROM vector_tables WHERE name = ?", (name,)
        )
        for model, dim in rows:
            return TableModel(name, model, dim)
        return None

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

    async def forget_source(self, source_id: str) -> set[str] | None:
        """Drop the source's row and its pending jobs; return the chunk ids it had (for the
        caller to delete from the vector store), or None if the source is unknown."""

        def forget(conn: sqlite3.Connection) -> set[str] | None:
            chunks = {
                row[0]
                for row in conn.execute(
                    "SELECT chunk_id FROM source_chunks WHERE source_id = ?", (source_id,)
                )
            }
            known = conn.execute("DELETE FROM sources WHERE id = ?", (source_id,)).rowcount
            conn.execute("DELETE FROM source_chunks WHERE source_id = ?", (source_id,))
            # A queued version of the source would bring it back: it goes too.
            queued = conn.execute(
                "UPDATE jobs SET state = 'superseded', payload = NULL "
                "WHERE source_id = ? AND state = 'pending'",
                (source_id,),
            ).rowcount
            return chunks if known or queued else None

        return await self.write(forget)

    @staticmethod
    def record_sources(conn: sqlite3.Connection, ingested: Sequence[Ingested]) -> None:
        """Within a transaction: these sources were ingested and now have exactly these chunks."""
        now = sqlitedb.utc_now()
        conn.executemany(
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
        conn.executemany(
            "DELETE FROM source_chunks WHERE source_id = ?", [(s.source_id,) for s in ingested]
        )
        conn.executemany(
            "INSERT INTO source_chunks (source_id, chunk_id) VALUES (?, ?)",
            [(s.source_id, chunk) for s in ingested for chunk in s.chunk_ids],
        )

    @staticmethod
    def record_failure(
        conn: sqlite3.Connection, *, source_id: str, source_type: str, error: str
    ) -> None:
        """Within a transaction: the source could not be ingested, for this reason."""
        now = sqlitedb.utc_now()
        conn.execute(
            """
            INSERT INTO sources (id, type, state, first_seen, last_seen, last_error)
            VALUES (?, ?, 'failed', ?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET state = 'failed', last_seen = excluded.last_seen,
                last_error = excluded.last_error
            """,
            (source_id, source_type, now, now, error),
        )


def _transact(
    conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], durable: bool
) -> T:
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
