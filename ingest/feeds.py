"""The feed poller: polls each subscription when it is due, politely, and queues what is new.

One poll of a feed:

1. a conditional GET through the guarded fetcher (`ingest.fetch`: no private addresses on
   any hop, bodies capped after decompression), with the feed's ETag and Last-Modified; a 304
   ends the poll there: no parsing, no embedding;
2. parsing in a worker process, bounded in time (`ingest.feedparse.parse_feed`);
3. entries whose identity and content hash the feed already delivered are skipped; the new and
   the changed become documents (source id ``feed:<feed url>#<entry key>``, so an updated
   entry replaces its chunks). With `full_text`, an entry that carries only a summary is
   fetched from its link through the same fetcher and extracted like any page;
4. the documents are queued (committed) before the feed's row records them, so a crash in
   between queues them again, harmlessly, rather than losing them.

Next check = the largest of the interval, the feed's ``<ttl>``, the server's ``Retry-After``
and ``Cache-Control: max-age``, plus up to `jitter` of it at random. From the third error in a
row the interval doubles per error up to `max_interval`; one success resets it.

Polls run concurrently: `concurrency` in all and `per_host` per server (host and port). A poll
waits for its server's turn before it takes one of the slots, so a slow or failing server holds
at most `per_host` slots, each for at most the fetch timeout, and never delays the others.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_process
from anyio.abc import TaskStatus

from ingest.documents import Document
from ingest.errors import InvalidDocument
from ingest.feedlist import EntryRow, Feed, FeedList
from ingest.feedparse import NotAFeed, ParsedEntry, ParsedFeed, discover_feeds, parse_feed
from ingest.fetch import HTML_TYPES, Fetched, Fetcher, FetchError, FetchFailed
from ingest.queue import Queue

__all__ = [
    "FEED_ACCEPT",
    "PollOutcome",
    "Poller",
    "PollerSettings",
    "discover_in_process",
    "parse_fetched",
]

_log = logging.getLogger(__name__)

FEED_ACCEPT: Final = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.5"
)
_PAGE_ACCEPT: Final = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
_MAX_AGE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.I)
_PAGE_TYPES: Final = (*HTML_TYPES, "")


@dataclass(frozen=True, slots=True)
class PollerSettings:
    """How feeds are polled; the daemon builds these from ``[feeds]``."""

    interval: float = 3600.0
    max_interval: float = 86400.0
    per_host: int = 2
    concurrency: int = 16
    full_text: bool = False
    parse_timeout: float = 10.0
    jitter: float = 0.1  # up to this fraction of the wait is added at random
    errors_before_backoff: int = 3


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll did, for `refresh` and the log."""

    url: str
    status: str  # "changed" | "unchanged" | "not-modified" | "error"
    entries: int = 0  # entries in the feed
    queued: int = 0  # new or changed entries queued
    error: str | None = None


class Poller:
    """Polls due feeds until cancelled (`run`); `refresh` polls some now and reports."""

    def __init__(
        self, feeds: FeedList, queue: Queue, fetcher: Fetcher, settings: PollerSettings
    ) -> None:
        self.feeds = feeds
        self.queue = queue
        self.fetcher = fetcher
        self.settings = settings
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._busy: set[int] = set()
        self._slots = anyio.CapacityLimiter(settings.concurrency)
        self._hosts: dict[str, anyio.CapacityLimiter] = {}
        self._host_polls: Counter[str] = Counter()  # polls the loop started, per server

    def wake(self) -> None:
        """Look for due feeds now (one was added or made due)."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Poll feeds as they fall due, forever."""
        async with anyio.create_task_group() as polls:
            task_status.started()
            while True:
                # A fresh event before looking, so a wake-up during the look is not missed.
                self._wake = anyio.Event()
                try:
                    wait = await self._start_due(polls)
                except Exception:  # the catalog failing, say: the daemon goes on; try later
                    _log.exception("the feed poller failed; trying again in a minute")
                    wait = 60.0
                if wait > 0:
                    with anyio.move_on_after(wait):
                        await self._wake.wait()

    async def _start_due(self, polls: anyio.abc.TaskGroup) -> float:
        """Start polls of due feeds (at most `per_host` per server, so one server's backlog
        never fills the slots); return how long to wait before looking again."""
        room = self.settings.concurrency - len(self._busy)
        waiting_on_a_server = False
        if room > 0:
            for feed in await self.feeds.due(time.time(), room + 200, self._busy):
                host = _server(feed.url)
                if self._host_polls[host] >= self.settings.per_host:
                    waiting_on_a_server = True  # its polls in flight will wake us
                    continue
                self._busy.add(feed.id)
                self._host_polls[host] += 1
                polls.start_soon(self._loop_poll, feed, host)
                room -= 1
                if room == 0:
                    break
        if room <= 0 or waiting_on_a_server:
            return 60.0  # a finished poll wakes us sooner
        soonest = await self.feeds.next_check(exclude=self._busy)
        return 60.0 if soonest is None else min(60.0, soonest - time.time())

    async def _loop_poll(self, feed: Feed, host: str) -> None:
        try:
            await self._poll_and_release(feed)
        finally:
            self._host_polls[host] -= 1

    async def refresh(self, urls: list[str] | None = None) -> list[PollOutcome]:
        """Poll these feeds (every enabled one when None) now, whether due or not; return their
        outcomes in order. A feed the loop is polling already is waited for, then polled."""
        feeds = await self.feeds.select(urls)
        outcomes: dict[int, PollOutcome] = {}

        async def one(feed: Feed) -> None:
            polled_meanwhile = False
            while feed.id in self._busy:
                polled_meanwhile = True
                await self._progress.wait()
            self._busy.add(feed.id)
            if polled_meanwhile:  # the loop just saved new validators and errors: read them
                feed = await self.feeds.get(feed.url) or feed
            outcomes[feed.id] = await self._poll_and_release(feed)

        async with anyio.create_task_group() as tg:
            for feed in feeds:
                tg.start_soon(one, feed)
        return [outcomes[feed.id] for feed in feeds]

    async def _poll_and_release(self, feed: Feed) -> PollOutcome:
        """Poll a feed marked busy, holding its server's limit and then one of the
        `concurrency` slots (in that order: feeds queued for a busy server hold no slot)."""
        try:
            async with self._host(feed.url), self._slots:
                outcome = await self.poll(feed)
        except Exception as exc:  # a bug must not stop the other feeds: log it, record it
            _log.exception("polling %s failed", feed.url)
            outcome = PollOutcome(feed.url, "error", error=f"internal error: {exc}")
            errors = feed.consecutive_errors + 1
            with contextlib.suppress(Exception):  # already logged; the catalog may be the bug
                await self.feeds.record_error(
                    feed, outcome.error or "", next_check=self._later(feed, errors=errors)
                )
        finally:
            self._busy.discard(feed.id)
            self._wake.set()
            self._progress.set()
            self._progress = anyio.Event()
        return outcome

    async def poll(self, feed: Feed) -> PollOutcome:
        """Poll one feed (see the module docstring) and record the result."""
        headers = {"Accept": FEED_ACCEPT}
        if feed.etag:
            headers["If-None-Match"] = feed.etag
        if feed.last_modified:
            headers["If-Modified-Since"] = feed.last_modified
        try:
            fetched = await self.fetcher.get(feed.url, headers)  # under _poll_and_release's limit
        except FetchError as exc:
            wait = exc.retry_after if isinstance(exc, FetchFailed) else None
            return await self._failed(feed, str(exc), retry_after=wait)
        if fetched.status == 304:
            await self.feeds.record_success(
                feed,
                next_check=self._next_check(feed, fetched, ttl_minutes=feed.ttl_minutes),
                etag=fetched.headers.get("etag") or feed.etag,
                last_modified=fetched.headers.get("last-modified") or feed.last_modified,
            )
            return PollOutcome(feed.url, "not-modified", entries=feed.entry_count)
        try:
            parsed = await parse_fetched(fetched, self.settings.parse_timeout)
        except NotAFeed as exc:
            return await self._failed(feed, str(exc))
        if parsed.warning:
            _log.info("%s: parsed despite %s", feed.url, parsed.warning)
        known = await self.feeds.entries(feed.id)
        fresh = [e for e in parsed.entries if _changed(known.get(e.key), e)]
        documents = [await self._document(feed, entry) for entry in fresh]
        kept = [doc for doc in documents if doc is not None]
        if kept:
            await self.queue.enqueue_many(kept)
        await self.feeds.record_success(
            feed,
            next_check=self._next_check(feed, fetched, ttl_minutes=parsed.ttl_minutes),
            etag=fetched.headers.get("etag"),
            last_modified=fetched.headers.get("last-modified"),
            title=parsed.title,
            site_url=parsed.site_url,
            parsed=True,
            ttl_minutes=parsed.ttl_minutes,
            # Skipped entries too: one too large is not tried again until it changes.
            entries=[EntryRow(e.key, _source_id(feed, e), e.content_hash) for e in fresh],
        )
        return PollOutcome(
            feed.url,
            "changed" if kept else "unchanged",
            entries=len(parsed.entries),
            queued=len(kept),
        )

    async def _document(self, feed: Feed, entry: ParsedEntry) -> Document | None:
        full_text = self.settings.full_text if feed.full_text is None else feed.full_text
        base = {
            "source_id": _source_id(feed, entry),
            "source_type": "feed",
            "url": entry.link,
            "title": entry.title,
            "published": entry.published,
            "tags": entry.tags,
        }
        try:
            if full_text and entry.summary_only and entry.link:
                page = await self._page(entry.link)
                if page is not None:
                    return Document(**base, html=page.text())  # type: ignore[arg-type]
            return Document(**base, text=entry.text)  # type: ignore[arg-type]
        except InvalidDocument as exc:  # too large, say: the other entries go on
            _log.warning("%s: skipped entry %s: %s", feed.url, entry.key, exc)
            return None

    async def _page(self, url: str) -> Fetched | None:
        """The entry's page, or None (with a log line) if it cannot be had: the summary is
        stored instead, and the entry is not lost."""
        try:
            # Pages have limits of their own: a poll holding its feed's server never waits for
            # another feed's server (two such polls could wait for each other forever).
            async with self._host("page:" + _server(url)):
                page = await self.fetcher.get(url, {"Accept": _PAGE_ACCEPT})
        except FetchError as exc:
            _log.info("full text: %s; keeping the summary", exc)
            return None
        kind = page.content_type.split(";")[0].strip().lower()
        if kind not in _PAGE_TYPES or not page.body:
            _log.info("full text: %s is %s, not a page; keeping the summary", url, kind)
            return None
        return page

    async def _failed(
        self, feed: Feed, error: str, *, retry_after: float | None = None
    ) -> PollOutcome:
        _log.info("feed poll failed: %s", error)
        errors = feed.consecutive_errors + 1
        await self.feeds.record_error(
            feed, error, next_check=self._later(feed, errors=errors, retry_after=retry_after)
        )
        return PollOutcome(feed.url, "error", entries=feed.entry_count, error=error)

    def _host(self, key: str) -> anyio.CapacityLimiter:
        host = _server(key) if "://" in key else key
        limiter = self._hosts.get(host)
        if limiter is None:
            limiter = self._hosts[host] = anyio.CapacityLimiter(self.settings.per_host)
        return limiter

    def _next_check(self, feed: Feed, fetched: Fetched, *, ttl_minutes: int | None = None) -> float:
        max_age = _MAX_AGE.search(fetched.headers.get("cache-control", ""))
        return self._later(
            feed,
            errors=0,
            ttl=None if ttl_minutes is None else ttl_minutes * 60.0,
            max_age=None if max_age is None else float(max_age.group(1)),
        )

    def _later(
        self,
        feed: Feed,
        *,
        errors: int | None = None,
        retry_after: float | None = None,
        ttl: float | None = None,
        max_age: float | None = None,
    ) -> float:
        """When to poll next (see the module docstring)."""
        s = self.settings
        interval = feed.interval_s or s.interval
        errors = feed.consecutive_errors if errors is None else errors
        if errors >= s.errors_before_backoff:
            interval *= 2.0 ** min(30, errors - s.errors_before_backoff + 1)
        wait = max([interval, *(v for v in (retry_after, ttl, max_age) if v is not None)])
        wait = min(wait, max(s.max_interval, feed.interval_s or s.interval))
        return time.time() + wait * (1.0 + random.uniform(0.0, s.jitter))  # noqa: S311


async def parse_fetched(fetched: Fetched, limit: float) -> ParsedFeed:
    """Parse a fetched feed in a worker process, killed if it takes over `limit` seconds.
    Raises `NotAFeed`, also for a parse that timed out or whose process died."""
    parsed: ParsedFeed = await _in_process(
        parse_feed, fetched.body, fetched.url, fetched.content_type, limit=limit, what=fetched.url
    )
    return parsed


async def discover_in_process(html: str, url: str, limit: float) -> list[tuple[str, str | None]]:
    """`discover_feeds` in a worker process, bounded like parsing (Python's HTMLParser is
    quadratic on some input: a hostile page must not hold the event loop)."""
    found: list[tuple[str, str | None]] = await _in_process(
        discover_feeds, html, url, limit=limit, what=url
    )
    return found


async def _in_process(function: Any, *args: Any, limit: float, what: str) -> Any:
    # The clock starts once a worker process is free: waiting for one is not the feed's fault.
    async with anyio.to_process.current_default_process_limiter():
        try:
            with anyio.fail_after(limit):
                return await anyio.to_process.run_sync(
                    # The default limiter is held above; this one only satisfies the call.
                    function,
                    *args,
                    cancellable=True,
                    limiter=anyio.CapacityLimiter(1),
                )
        except TimeoutError:
            raise NotAFeed(f"{what}: parsing took over {limit:g} s") from None
        except NotAFeed:
            raise
        except Exception as exc:  # the process died, or something unpicklable came back
            raise NotAFeed(f"{what}: the parser failed ({type(exc).__name__}: {exc})") from None


def _server(url: str) -> str:
    return urlsplit(url).netloc.lower()  # host and port: one server


def _changed(known: EntryRow | None, entry: ParsedEntry) -> bool:
    return known is None or known.content_hash != entry.content_hash


def _source_id(feed: Feed, entry: ParsedEntry) -> str:
    return f"feed:{feed.url}#{entry.key}"
