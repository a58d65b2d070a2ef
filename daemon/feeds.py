"""The daemon's feed subscriptions: what ``satchel feeds ...`` and the ``/feeds`` API do.

`Feeds` wires the feed list (`ingest.feedlist`), the poller (`ingest.feeds`) and one guarded
fetcher built from ``[feeds]``; `daemon.main` runs its poller, `daemon.api` calls the rest.
Adding a URL fetches it first: a feed is subscribed as it is, a page is searched for the feeds
it announces (``<link rel="alternate">``), and anything else is refused with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon import __version__
from daemon.config import Config
from ingest.feedlist import Feed, FeedList, InvalidFeedURL, NotSubscribed, normalise_feed_url
from ingest.feedparse import NotAFeed
from ingest.feeds import (
    FEED_ACCEPT,
    Poller,
    PollerSettings,
    PollOutcome,
    discover_in_process,
    parse_fetched,
)
from ingest.fetch import HTML_TYPES, PROJECT_URL, Fetcher, FetchSettings
from ingest.opml import Subscription, write_opml
from ingest.queue import Queue

__all__ = ["Feeds", "NoFeedFound", "fetch_settings"]


class NoFeedFound(ValueError):  # noqa: N818 - reads as a fact
    """The URL is neither a feed nor a page announcing one."""


def fetch_settings(config: Config) -> FetchSettings:
    """The guarded fetcher's limits, from ``[feeds]`` (feeds and pages to add share them)."""
    feeds = config.feeds
    return FetchSettings(
        timeout=feeds.timeout_seconds,
        max_bytes=feeds.max_bytes,
        allowed_hosts=tuple(feeds.allowed_hosts),
        user_agent=f"Satchel/{__version__} (+{PROJECT_URL})",
    )


@dataclass(frozen=True, slots=True)
class Added:
    """What `Feeds.add` did."""

    feed: dict[str, Any]
    added: bool
    discovered: list[dict[str, str | None]]


class Feeds:
    """Subscriptions and their poller, over the daemon's catalog and queue."""

    def __init__(
        self,
        config: Config,
        feed_list: FeedList,
        queue: Queue,
        fetcher: Fetcher,
        delete_source: Callable[[str], Awaitable[int]],
    ) -> None:
        f = config.feeds
        self.settings = PollerSettings(
            interval=f.interval_minutes * 60.0,
            max_interval=f.max_interval_minutes * 60.0,
            per_host=f.per_host,
            full_text=f.full_text,
        )
        self.list = feed_list
        self.fetcher = fetcher
        self.poller = Poller(feed_list, queue, fetcher, self.settings)
        self._delete_source = delete_source

    # -- subscribing ---------------------------------------------------------------------------

    async def add(
        self,
        url: str,
        *,
        title: str | None = None,
        full_text: bool | None = None,
        discover: bool = True,
    ) -> Added:
        """Subscribe to `url`, or to the first feed the page at `url` announces."""
        existing = await self.list.get(url)  # raises InvalidFeedURL
        if existing is not None:
            return Added(self.describe(existing), False, [])
        found: list[tuple[str, str | None]] = []
        if discover:
            url, title, found = await self._discover(url, title)
            existing = await self.list.get(url)
            if existing is not None:
                return Added(self.describe(existing), False, _pairs(found))
        feed, added = await self.list.add(url, title=title, full_text=full_text)
        self.poller.wake()
        return Added(self.describe(feed), added, _pairs(found))

    async def _discover(
        self, url: str, title: str | None
    ) -> tuple[str, str | None, list[tuple[str, str | None]]]:
        page = await self.fetcher.get(url, {"Accept": f"{FEED_ACCEPT}, text/html;q=0.7"})
        kind = page.content_type.split(";")[0].strip().lower()
        looks_html = page.body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))
        limit = self.settings.parse_timeout
        if kind in HTML_TYPES or looks_html:
            found = await discover_in_process(page.text(), page.url, limit)
            if found:  # the feed's own title fills in at its first poll, unless one was given
                return found[0][0], title, found
        try:  # a feed, or a feed served as text/html (it happens)
            parsed = await parse_fetched(page, limit)
        except NotAFeed as exc:
            if kind in HTML_TYPES or looks_html:
                raise NoFeedFound(
                    f"url: {url} is a web page that announces no feed "
                    '(no <link rel="alternate" type="application/rss+xml"> or atom link)'
                ) from None
            raise NoFeedFound(f"url: {exc}") from None
        return url, title or parsed.title, []

    async def import_(self, subscriptions: list[Subscription]) -> dict[str, Any]:
        """Subscribe to each (no fetching); duplicates are counted, bad URLs reported."""
        valid: list[tuple[str, str | None]] = []
        invalid: list[dict[str, str]] = []
        for sub in subscriptions:
            try:
                normalise_feed_url(sub.url)
            except InvalidFeedURL as exc:
                invalid.append({"url": sub.url, "error": str(exc)})
                continue
            valid.append((sub.url, sub.title))
        added = await self.list.add_many(valid)
        self.poller.wake()
        return {"added": len(added), "duplicates": len(valid) - len(added), "invalid": invalid}

    async def remove(self, url: str, *, purge: bool) -> dict[str, Any]:
        """Unsubscribe; with `purge`, delete the entries it delivered too."""
        feed = await self.list.get(url)
        if feed is None:
            raise NotSubscribed(f"{url}: not subscribed (see satchel feeds list)")
        chunks = 0
        if purge:
            # Before the feed goes: if this is cut short, `rm --purge` can simply be run again.
            for entry in (await self.list.entries(feed.id)).values():
                try:
                    chunks += await self._delete_source(entry.source_id)
                except LookupError:  # not ingested yet: drop its queued job instead
                    await self.list.catalog.forget_source(entry.source_id)
        removed = await self.list.remove(url)
        entries = 0 if removed is None else len(removed[1])
        return {"removed": feed.url, "entries": entries, "purged_chunks": chunks}

    # -- reading ---------------------------------------------------------------------------------

    async def refresh(self, url: str | None) -> list[dict[str, Any]]:
        """Poll one feed, or all, now; their outcomes."""
        outcomes = await self.poller.refresh(None if url is None else [url])
        return [_outcome(o) for o in outcomes]

    async def all(self) -> list[dict[str, Any]]:
        """Every feed with its health."""
        return [self.describe(feed) for feed in await self.list.all()]

    async def opml(self) -> str:
        """Every subscription as OPML."""
        return write_opml([Subscription(f.url, f.title) for f in await self.list.all()])

    async def health(self) -> dict[str, Any]:
        """The summary `status` shows: counts, and the failing feeds with their errors."""
        feeds = await self.list.all()
        failing = [f for f in feeds if f.consecutive_errors and not f.disabled]
        return {
            "count": len(feeds),
            "failing": len(failing),
            "errors": [
                {"url": f.url, "consecutive_errors": f.consecutive_errors, "error": f.last_error}
                for f in sorted(failing, key=lambda f: -f.consecutive_errors)[:10]
            ],
        }

    def describe(self, feed: Feed) -> dict[str, Any]:
        """A feed as the API shows it."""
        interval = feed.interval_s or self.settings.interval
        return {
            "id": feed.id,
            "url": feed.url,
            "title": feed.title,
            "site_url": feed.site_url,
            "health": _health(feed, self.settings.errors_before_backoff),
            "interval_minutes": round(interval / 60, 1),
            "full_text": self.settings.full_text if feed.full_text is None else feed.full_text,
            "next_check": _time(feed.next_check),
            "last_checked": _time(feed.last_checked),
            "last_success": _time(feed.last_success),
            "consecutive_errors": feed.consecutive_errors,
            "last_error": feed.last_error,
            "entry_count": feed.entry_count,
            "disabled": feed.disabled,
            "etag": feed.etag,
            "last_modified": feed.last_modified,
        }


def _health(feed: Feed, backoff_after: int) -> str:
    if feed.disabled:
        return "disabled"
    if feed.consecutive_errors >= backoff_after:
        return "backing off"
    if feed.consecutive_errors:
        return "failing"
    return "ok" if feed.last_success is not None else "new"


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    return moment.replace("+00:00", "Z")


def _pairs(found: list[tuple[str, str | None]]) -> list[dict[str, str | None]]:
    return [{"url": url, "title": title} for url, title in found]


def _outcome(outcome: PollOutcome) -> dict[str, Any]:
    return {
        "url": outcome.url,
        "status": outcome.status,
        "entries": outcome.entries,
        "queued": outcome.queued,
        "error": outcome.error,
        "at": _time(time.time()),
    }
