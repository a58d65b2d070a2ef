"""The subscriptions: the catalog's ``feeds`` and ``feed_entries`` rows.

A feed row holds what polling politely needs (ETag, Last-Modified, when to look next, the
interval) and what the user needs to see (title, errors in a row, the last error, the last
success, how many entries it has delivered). ``feed_entries`` remembers, per feed, each entry's
identity and content hash, so an unchanged entry is never queued again and a changed one is.

Feed URLs are normalised (scheme and host lower-cased, fragment dropped) before they are
stored or looked up, so one feed is never subscribed twice under two spellings.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ingest.catalog import Catalog
from ingest.urls import InvalidURL, normalise_url

__all__ = ["EntryRow", "Feed", "FeedList", "InvalidFeedURL", "NotSubscribed", "normalise_feed_url"]

_COLUMNS: Final = (
    "id, url, title, site_url, etag, last_modified, next_check, interval_s, full_text, "
    "consecutive_errors, last_error, last_checked, last_success, entry_count, disabled, added_at, "
    "ttl_minutes"
)


class InvalidFeedURL(InvalidURL):
    """Not an http(s) URL a feed could live at; the message says why."""


class NotSubscribed(LookupError):  # noqa: N818
    """No feed at that URL is subscribed."""


def normalise_feed_url(url: str) -> str:
    """`url` in `ingest.urls`' canonical form (its query kept whole); raises `InvalidFeedURL`."""
    try:
        return normalise_url(url)
    except InvalidURL as exc:
        raise InvalidFeedURL(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Feed:
    """A ``feeds`` row. Times are Unix seconds; None where nothing happened yet."""

    id: int
    url: str
    title: str | None
    site_url: str | None
    etag: str | None
    last_modified: str | None
    next_check: float
    interval_s: float | None  # None: the configured interval
    full_text: bool | None  # None: the configured [feeds] full_text
    consecutive_errors: int
    last_error: str | None
    last_checked: float | None
    last_success: float | None
    entry_count: int
    disabled: bool
    added_at: float
    ttl_minutes: int | None  # the feed's own <ttl>, kept for the polls that end in a 304

    @classmethod
    def from_row(cls, row: Sequence[object]) -> Feed:
        values = list(row)
        values[8] = None if values[8] is None else bool(values[8])
        values[14] = bool(values[14])
        return cls(*values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One delivered entry: its identity in its feed, its source id and content hash."""

    key: str
    source_id: str
    content_hash: str


class FeedList:
    """The feeds in the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- reading ---------------------------------------------------------------------------------

    async def all(self) -> list[Feed]:
        """Every feed, in the order they were added."""
        rows = await self.catalog.conn.execute_fetchall(f"SELECT {_COLUMNS} FROM feeds ORDER BY id")
        return [Feed.from_row(row) for row in rows]

    async def get(self, url: str) -> Feed | None:
        """The feed at `url` (normalised first), if subscribed."""
        rows = await self.catalog.conn.execute_fetchall(
            f"SELECT {_COLUMNS} FROM feeds WHERE url = ?", (normalise_feed_url(url),)
        )
        return next((Feed.from_row(row) for row in rows), None)

    async def due(self, now: float, limit: int, exclude: Iterable[int] = ()) -> list[Feed]:
        """Enabled feeds whose next check has come, soonest first, except `exclude`'s ids."""
        skip = set(exclude)
        rows = await self.catalog.conn.execute_fetchall(
            f"SELECT {_COLUMNS} FROM feeds WHERE disabled = 0 AND next_check <= ? "
            "ORDER BY next_check LIMIT ?",
            (now, limit + len(skip)),
        )
        return [f for f in (Feed.from_row(row) for row in rows) if f.id not in skip][:limit]

    async def next_check(self, exclude: Iterable[int] = ()) -> float | None:
        """When the soonest enabled feed not in `exclude` (being polled) is due."""
        skip = sorted(exclude)
        rows = await self.catalog.conn.execute_fetchall(
            "SELECT min(next_check) FROM feeds WHERE disabled = 0 "
            f"AND id NOT IN ({','.join('?' * len(skip))})",
            skip,
        )
        value = next(iter(rows))[0]
        return None if value is None else float(value)

    async def entries(self, feed_id: int) -> dict[str, EntryRow]:
        """The entries the feed has delivered, by key."""
        rows = await self.catalog.conn.execute_fetchall(
            "SELECT key, source_id, content_hash FROM feed_entries WHERE feed_id = ?", (feed_id,)
        )
        return {row[0]: EntryRow(*row) for row in rows}

    # -- subscribing -----------------------------------------------------------------------------

    async def add(
        self, url: str, *, title: str | None = None, full_text: bool | None = None
    ) -> tuple[Feed, bool]:
        """Subscribe to `url`; return the feed and whether it is new (an existing one is left
        as it is). It is due at once."""
        added = await self.add_many([(url, title)], full_text=full_text)
        feed = await self.get(url)
        assert feed is not None
        return feed, bool(added)

    async def add_many(
        self, feeds: Sequence[tuple[str, str | None]], *, full_text: bool | None = None
    ) -> list[str]:
        """Subscribe to each (url, title) not yet subscribed, in one transaction; return the
        normalised URLs that were added. Raises `InvalidFeedURL` before adding any."""
        wanted = [(normalise_feed_url(url), title) for url, title in feeds]
        now = time.time()

        def add(conn: sqlite3.Connection) -> list[str]:
            added = []
            for url, title in wanted:
                cursor = conn.execute(
                    "INSERT INTO feeds (url, title, next_check, full_text, added_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (url) DO NOTHING",
                    (url, title, now, full_text, now),
                )
                if cursor.rowcount:
                    added.append(url)
            return added

        return await self.catalog.write(add)

    async def remove(self, url: str) -> tuple[Feed, list[str]] | None:
        """Unsubscribe; return the feed and the source ids of the entries it delivered."""
        feed = await self.get(url)
        if feed is None:
            return None

        def remove(conn: sqlite3.Connection) -> list[str]:
            sources = [
                row[0]
                for row in conn.execute(
                    "SELECT source_id FROM feed_entries WHERE feed_id = ?", (feed.id,)
                )
            ]
            conn.execute("DELETE FROM feed_entries WHERE feed_id = ?", (feed.id,))
            conn.execute("DELETE FROM feeds WHERE id = ?", (feed.id,))
            return sources

        return feed, await self.catalog.write(remove)

    async def select(self, urls: Sequence[str] | None = None) -> list[Feed]:
        """These feeds (every enabled one when None); `LookupError` names one not subscribed."""
        if urls is None:
            return [feed for feed in await self.all() if not feed.disabled]
        feeds = []
        for url in urls:
            feed = await self.get(url)
            if feed is None:
                raise NotSubscribed(f"{url}: not subscribed (see satchel feeds list)")
            feeds.append(feed)
        return feeds

    # -- recording polls -------------------------------------------------------------------------

    async def record_success(
        self,
        feed: Feed,
        *,
        next_check: float,
        etag: str | None,
        last_modified: str | None,
        title: str | None = None,
        site_url: str | None = None,
        parsed: bool = False,
        ttl_minutes: int | None = None,
        entries: Sequence[EntryRow] = (),
    ) -> None:
        """A poll succeeded (a 304 passes no title and no entries): errors reset, validators
        and new entries kept, next check set. A title the user gave is kept. A feed removed
        while it was being polled stays removed."""
        now = time.time()

        def record(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM feeds WHERE id = ?", (feed.id,)).fetchone() is None:
                return
            conn.executemany(
                "INSERT INTO feed_entries (feed_id, key, source_id, content_hash, seen_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (feed_id, key) DO UPDATE SET "
                "source_id = excluded.source_id, content_hash = excluded.content_hash, "
                "seen_at = excluded.seen_at",
                [(feed.id, e.key, e.source_id, e.content_hash, now) for e in entries],
            )
            conn.execute(
                "UPDATE feeds SET etag = ?, last_modified = ?, next_check = ?, "
                "consecutive_errors = 0, last_error = NULL, last_checked = ?, last_success = ?, "
                "title = coalesce(title, ?), site_url = coalesce(?, site_url), "
                "ttl_minutes = CASE WHEN ? THEN ? ELSE ttl_minutes END, "
                "entry_count = (SELECT count(*) FROM feed_entries WHERE feed_id = ?) "
                "WHERE id = ?",
                (
                    etag,
                    last_modified,
                    next_check,
                    now,
                    now,
                    title,
                    site_url,
                    parsed,  # a parsed feed (not a 304) says its ttl, or that it has none
                    ttl_minutes,
                    feed.id,
                    feed.id,
                ),
            )

        # A lost 304 or an unchanged feed is simply polled again; new entries are durable.
        await self.catalog.write(record, durable=bool(entries))

    async def record_error(self, feed: Feed, error: str, *, next_check: float) -> None:
        """A poll failed: one more error in a row, and when to try again."""
        now = time.time()

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE feeds SET consecutive_errors = consecutive_errors + 1, last_error = ?, "
                "last_checked = ?, next_check = ? WHERE id = ?",
                (error[:1000], now, next_check, feed.id),
            )

        await self.catalog.write(record, durable=False)
