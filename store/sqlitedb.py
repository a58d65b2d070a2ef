"""Opening Satchel's SQLite files: pragmas, and ordered named schema migrations.

Both the vector store and the daemon's catalog keep their data in SQLite. They open files the
same way: WAL, ``synchronous=FULL``, a busy timeout, and autocommit so that every transaction
is an explicit ``BEGIN IMMEDIATE``. Each file's schema evolves through a list of named
migrations applied in order, once, and recorded in the file itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from store.base import StoreError

__all__ = ["Migration", "connect", "migrate", "sequence", "utc_now"]

Migration = tuple[str, str]
"""(name, SQL script): statements separated by ';', run in one transaction."""


def utc_now() -> str:
    """The current time as an RFC 3339 UTC string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def connect(
    path: Path, *, busy_timeout_ms: int = 5000, page_size: int = 16384
) -> aiosqlite.Connection:
    """Open `path` (creating it) in WAL mode with ``synchronous=FULL``, in autocommit mode."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # Takes effect only on a new file, before WAL is switched on.
        await conn.execute(f"PRAGMA page_size = {int(page_size)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def sequence(conn: aiosqlite.Connection, table: str) -> int:
    """The largest rowid an AUTOINCREMENT table has ever used (0 before its first row).

    Within a write transaction, rows inserted next get the following rowids, in order: that is
    how a writer learns the ids of an executemany batch without reading them back.
    """
    rows = list(
        await conn.execute_fetchall("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
    )
    return int(rows[0][0]) if rows else 0


async def migrate(conn: aiosqlite.Connection, path: Path, migrations: Sequence[Migration]) -> None:
    """Apply the migrations this file lacks, in order, each recorded in `satchel_migrations`.

    A file that records a migration this code does not know was written by a newer Satchel: it
    is refused with a `StoreError` rather than misread.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS satchel_migrations "
            "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        async with conn.execute("SELECT name FROM satchel_migrations") as cur:
            applied = {row[0] for row in await cur.fetchall()}
        if unknown := applied - {name for name, _ in migrations}:
            raise StoreError(
                f"{path}: written by a newer Satchel (schema migrations "
                f"{', '.join(sorted(unknown))} are unknown to this version)"
            )
        for name, script in migrations:
            if name in applied:
                continue
            for statement in filter(str.strip, script.split(";")):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO satchel_migrations (name, applied_at) VALUES (?, ?)",
                (name, utc_now()),
            )
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
