"""The feed poller against a real feed farm on loopback, into a real queue, pipeline and store.

After each poll the pipeline runs with the built-in embedder, and what the store holds is
checked exactly: the right entries and nothing else.
"""

from __future__ import annotations

import gzip
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from ingest.catalog import Catalog
from ingest.embed import HashEmbedder
from ingest.feedlist import FeedList, InvalidFeedURL, normalise_feed_url
from ingest.feeds import Poller, PollerSettings, PollOutcome
from ingest.fetch import Fetcher, FetchSettings
from ingest.opml import Subscription, read_opml, write_opml
from ingest.pipeline import Pipeline
from ingest.queue import Queue
from store import SQLiteStore
from tests.ingest.conftest import drain, settings
from tests.ingest.feedfarm import Farm, Served, atom, farm, rss
from tests.ingest.test_feedparse import (
    ATOM03,
    ATOM10,
    BILLION_LAUGHS,
    RSS091,
    RSS092,
    RSS10,
    RSS20,
    quadratic_feed,
    xxe_feed,
)

pytestmark = pytest.mark.anyio

SETTINGS = PollerSettings(interval=3600.0, max_interval=86400.0, parse_timeout=30.0)


@pytest.fixture
def feeds_farm() -> Iterator[Farm]:
    with farm() as running:
        yield running


@pytest.fixture
async def fetcher(feeds_farm: Farm) -> AsyncIterator[Fetcher]:
    allowed = (f"127.0.0.1:{feeds_farm.port}",)
    async with Fetcher(
        FetchSettings(timeout=5.0, max_bytes=2 * 1024 * 1024, allowed_hosts=allowed)
    ) as f:
        yield f


@pytest.fixture
def feed_list(catalog: Catalog) -> FeedList:
    return FeedList(catalog)


@pytest.fixture
def poller(feed_list: FeedList, queue: Queue, fetcher: Fetcher) -> Poller:
    return Poller(feed_list, queue, fetcher, SETTINGS)


async def stored(queue: Queue, store: SQLiteStore) -> dict[str, str]:
    """Run the pipeline until the queue is empty; return each feed source's stored text."""
    await drain(Pipeline(queue, store, HashEmbedder(64), settings(chunk_tokens=512)))
    texts: dict[str, list[str]] = {}
    if "context_vectors" in store.tables():
        async for batch in store.export_all("context_vectors"):
            for record in batch:
                texts.setdefault(record.source_id, []).append(record.text_chunk)
    return {source: "\n".join(chunks) for source, chunks in texts.items()}


async def subscribe(feed_list: FeedList, farm: Farm, path: str, served: Served) -> str:
    farm.routes[path] = served
    feed, added = await feed_list.add(farm.url(path))
    assert added
    return feed.url


async def test_entries_become_searchable_and_updates_replace_them(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm, queue: Queue, store: SQLiteStore
) -> None:
    url = await subscribe(
        feed_list, feeds_farm, "/news.xml", Served(rss("News", [("a", "apples"), ("b", "bees")]))
    )
    [outcome] = await poller.refresh()
    assert outcome == PollOutcome(url, "changed", entries=2, queued=2)
    texts = await stored(queue, store)
    assert set(texts) == {f"feed:{url}#guid:a", f"feed:{url}#guid:b"}
    assert "apples" in texts[f"feed:{url}#guid:a"]

    # b changes, c is new, a is the same: two documents, and b's old text is gone.
    feeds_farm.routes["/news.xml"] = Served(
        rss("News", [("a", "apples"), ("b", "wasps"), ("c", "cherries")])
    )
    [outcome] = await poller.refresh([url])
    assert (outcome.status, outcome.queued) == ("changed", 2)
    texts = await stored(queue, store)
    assert set(texts) == {f"feed:{url}#guid:{g}" for g in "abc"}
    assert "wasps" in texts[f"feed:{url}#guid:b"]
    assert "bees" not in texts[f"feed:{url}#guid:b"]

    [outcome] = await poller.refresh([url])  # nothing changed: nothing queued
    assert (outcome.status, outcome.queued) == ("unchanged", 0)
    feed = await feed_list.get(url)
    assert feed is not None
    assert (feed.title, feed.site_url, feed.entry_count) == ("News", "https://example.org/", 3)
    assert feed.last_success is not None
    assert feed.consecutive_errors == 0


async def test_an_entry_carries_link_title_time_and_tags_into_the_store(  # noqa: PLR0917
    poller: Poller,
    feed_list: FeedList,
    feeds_farm: Farm,
    queue: Queue,
    store: SQLiteStore,
    catalog: Catalog,
) -> None:
    url = await subscribe(
        feed_list,
        feeds_farm,
        "/atom",
        Served(atom("A", [("x", "xylophones")]), kind="application/atom+xml"),
    )
    await poller.refresh()
    await stored(queue, store)
    source = await catalog.source(f"feed:{url}#guid:urn:x")
    assert source is not None
    assert (source.type, source.url, source.title) == ("feed", "https://example.org/x", "x title")
    [record] = [r async for batch in store.export_all("context_vectors") for r in batch]
    assert "By Ann" in record.text_chunk
    assert record.source_type == "feed"


async def test_a_304_does_no_parsing_and_queues_nothing(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm, queue: Queue
) -> None:
    served = Served(
        rss("E", [("a", "one")]),
        etag='"v1"',
        headers={"Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"},
    )
    url = await subscribe(feed_list, feeds_farm, "/etag.xml", served)
    await poller.refresh()
    jobs = (await queue.stats()).pending
    [outcome] = await poller.refresh()
    assert outcome.status == "not-modified"
    assert (await queue.stats()).pending == jobs
    second = feeds_farm.asked("/etag.xml")[1]
    assert second["if-none-match"] == '"v1"'
    assert second["if-modified-since"] == "Mon, 02 Nov 2026 10:00:00 GMT"
    assert second["user-agent"].startswith("Satchel")
    assert "application/rss+xml" in second["accept"]
    feed = await feed_list.get(url)
    assert feed is not None
    assert feed.etag == '"v1"'


async def test_429_waits_as_long_as_retry_after_asks(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm
) -> None:
    served = Served(b"slow down", status=429, headers={"Retry-After": "7200"})
    url = await subscribe(feed_list, feeds_farm, "/busy.xml", served)
    before = time.time()
    [outcome] = await poller.refresh()
    assert outcome.status == "error"
    assert outcome.error is not None
    assert "429" in outcome.error
    feed = await feed_list.get(url)
    assert feed is not None
    assert feed.consecutive_errors == 1
    assert feed.next_check >= before + 7200  # more than the hour's interval


async def test_ttl_and_max_age_push_the_next_check_out(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm
) -> None:
    ttl = await subscribe(
        feed_list, feeds_farm, "/ttl.xml", Served(rss("T", [("a", "x")], ttl=180))
    )
    cached = await subscribe(
        feed_list,
        feeds_farm,
        "/cached.xml",
        Served(rss("C", [("a", "x")]), headers={"Cache-Control": "public, max-age=14400"}),
    )
    before = time.time()
    await poller.refresh()
    by_url = {feed.url: feed for feed in await feed_list.all()}
    assert by_url[ttl].next_check >= before + 180 * 60
    assert by_url[cached].next_check >= before + 14400
    assert by_url[cached].next_check <= time.time() + 14400 * (1 + SETTINGS.jitter)


async def test_errors_back_off_after_three_and_one_success_resets(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm
) -> None:
    url = await subscribe(feed_list, feeds_farm, "/flaky.xml", Served(b"oops", status=500))
    waits = []
    for _ in range(5):
        before = time.time()
        await poller.refresh([url])
        feed = await feed_list.get(url)
        assert feed is not None
        waits.append((feed.next_check - before) / SETTINGS.interval)
    assert [round(w) for w in waits[:2]] == [1, 1]  # one or two errors: the usual interval
    assert waits[2] >= 2  # the third doubles it...
    assert waits[4] >= 8  # ...and so on
    failing = await feed_list.get(url)
    assert failing is not None
    assert failing.last_error is not None
    assert "500" in failing.last_error
    feeds_farm.routes["/flaky.xml"] = Served(rss("F", [("a", "fine")]))
    await poller.refresh([url])
    feed = await feed_list.get(url)
    assert feed is not None
    assert (feed.consecutive_errors, feed.last_error) == (0, None)


async def test_backoff_stops_at_the_maximum_interval(
    feed_list: FeedList, queue: Queue, fetcher: Fetcher, feeds_farm: Farm
) -> None:
    poller = Poller(feed_list, queue, fetcher, replace(SETTINGS, max_interval=5000.0))
    url = await subscribe(feed_list, feeds_farm, "/down.xml", Served(b"", status=503))
    for _ in range(8):
        await poller.refresh([url])
    feed = await feed_list.get(url)
    assert feed is not None
    assert feed.consecutive_errors == 8
    assert feed.next_check <= time.time() + 5000 * (1 + SETTINGS.jitter)


async def test_a_redirect_chain_is_followed_but_not_to_another_local_port(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm, queue: Queue, store: SQLiteStore
) -> None:
    feeds_farm.routes["/hop2"] = Served(status=301, headers={"Location": "/final.xml"})
    feeds_farm.routes["/final.xml"] = Served(rss("R", [("r", "redirected")]))
    good = await subscribe(
        feed_list, feeds_farm, "/hop1", Served(status=302, headers={"Location": "/hop2"})
    )
    # 127.0.0.1:<farm port> is allowed; 127.0.0.1:11434 (Ollama's port) is not.
    bad = await subscribe(
        feed_list,
        feeds_farm,
        "/evil",
        Served(status=302, headers={"Location": "http://127.0.0.1:11434/api/tags"}),
    )
    outcomes = {o.url: o for o in await poller.refresh()}
    assert outcomes[good].status == "changed"
    assert outcomes[bad].status == "error"
    assert "private or local address" in (outcomes[bad].error or "")
    assert set(await stored(queue, store)) == {f"feed:{good}#guid:r"}


async def test_a_gzip_bomb_stops_at_the_cap(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm, queue: Queue
) -> None:
    bomb = gzip.compress(b"<rss>" + b" " * (64 * 1024 * 1024))  # 64 MiB in 64 KiB
    served = Served(bomb, headers={"Content-Encoding": "gzip"})
    url = await subscribe(feed_list, feeds_farm, "/bomb.xml", served)
    tracemalloc.start()
    try:
        [outcome] = await poller.refresh()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # the 2 MiB cap and a step of decompression, not 64 MiB
    assert outcome.status == "error"
    assert "larger than 2097152 bytes" in (outcome.error or "")
    assert (await queue.stats()).pending == 0
    assert (await feed_list.get(url)) is not None


async def test_hostile_xml_is_polled_without_expansion(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm, queue: Queue, store: SQLiteStore
) -> None:
    url = await subscribe(feed_list, feeds_farm, "/lol.xml", Served(BILLION_LAUGHS))
    [outcome] = await poller.refresh()
    assert outcome.status == "changed"
    [text] = (await stored(queue, store)).values()
    assert "after the laughs" in text
    assert "lollol" not in text
    assert url


async def test_a_parse_past_its_time_limit_is_stopped(
    feed_list: FeedList, queue: Queue, fetcher: Fetcher, feeds_farm: Farm
) -> None:
    # Parsing runs in a worker process, so it can be killed: a 1,000-entry feed cannot be
    # parsed in a millisecond, and the poll says so instead of waiting.
    poller = Poller(feed_list, queue, fetcher, replace(SETTINGS, parse_timeout=0.001))
    items = [(f"e{i}", "text " * 50) for i in range(1000)]
    await subscribe(feed_list, feeds_farm, "/big.xml", Served(rss("Big", items)))
    [outcome] = await poller.refresh()
    assert outcome.status == "error"
    assert "parsing took over 0.001 s" in (outcome.error or "")
    assert (await queue.stats()).pending == 0


async def test_a_megabyte_feed_of_a_thousand_entries(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm, queue: Queue, store: SQLiteStore
) -> None:
    items = [(f"e{i}", f"entry {i} " + "words " * 150) for i in range(1000)]
    body = rss("Big", items)
    assert len(body) > 1_000_000
    url = await subscribe(feed_list, feeds_farm, "/big.xml", Served(body))
    [outcome] = await poller.refresh()
    assert (outcome.status, outcome.entries, outcome.queued) == ("changed", 1000, 1000)
    texts = await stored(queue, store)
    assert set(texts) == {f"feed:{url}#guid:e{i}" for i in range(1000)}
    [outcome] = await poller.refresh()
    assert (outcome.status, outcome.queued) == ("unchanged", 0)


async def test_full_text_fetches_the_page_of_a_summary_only_entry(
    feed_list: FeedList, queue: Queue, fetcher: Fetcher, feeds_farm: Farm, store: SQLiteStore
) -> None:
    poller = Poller(feed_list, queue, fetcher, replace(SETTINGS, full_text=True))
    article = (
        "<html><body><article><h1>Story</h1>"
        + "<p>The whole story is here, told at length.</p>" * 20
    )
    feeds_farm.routes["/story.html"] = Served(
        article.encode() + b"</article></body></html>", kind="text/html"
    )
    feed = rss("S", [("s", "just a teaser")]).replace(
        b"https://example.org/s", feeds_farm.url("/story.html").encode()
    )
    url = await subscribe(feed_list, feeds_farm, "/s.xml", Served(feed))
    await poller.refresh()
    [text] = (await stored(queue, store)).values()
    assert "The whole story is here" in text
    assert url


async def test_full_text_keeps_the_summary_when_the_page_fails(
    feed_list: FeedList, queue: Queue, fetcher: Fetcher, feeds_farm: Farm, store: SQLiteStore
) -> None:
    poller = Poller(feed_list, queue, fetcher, replace(SETTINGS, full_text=True))
    teaser = rss("S", [("s", "just a teaser")])
    gone = teaser.replace(b"https://example.org/s", feeds_farm.url("/gone.html").encode())
    await subscribe(feed_list, feeds_farm, "/s.xml", Served(gone))
    await poller.refresh()  # the page answers 404
    [text] = (await stored(queue, store)).values()
    assert "just a teaser" in text


async def test_one_slow_server_does_not_delay_another(
    catalog: Catalog, queue: Queue, feeds_farm: Farm
) -> None:
    with farm() as fast:
        allowed = (f"127.0.0.1:{feeds_farm.port}", f"127.0.0.1:{fast.port}")
        async with Fetcher(FetchSettings(timeout=5.0, allowed_hosts=allowed)) as fetcher:
            feed_list = FeedList(catalog)
            poller = Poller(feed_list, queue, fetcher, replace(SETTINGS, per_host=2))
            for i in range(6):
                await subscribe(
                    feed_list, feeds_farm, f"/slow{i}", Served(rss("S", [("a", "x")]), delay=0.5)
                )
            for i in range(6):
                await subscribe(feed_list, fast, f"/fast{i}", Served(rss("F", [("a", "x")])))
            outcomes = await poller.refresh()
    assert {o.status for o in outcomes} == {"changed"}
    assert feeds_farm.most_active <= 2  # the per-host limit held
    # Six slow feeds, two at a time, half a second each: the slow server's last request comes
    # a second after its first; the fast server was served meanwhile, not after it.
    assert fast.last_request < feeds_farm.last_request


async def test_an_opml_file_of_300_feeds_is_polled_by_the_running_poller(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm, queue: Queue, store: SQLiteStore
) -> None:
    subs = [Subscription(feeds_farm.url(f"/f{i}.xml"), f"Feed {i}") for i in range(300)]
    for i in range(300):
        feeds_farm.routes[f"/f{i}.xml"] = Served(rss(f"Feed {i}", [(f"{i}-a", f"alpha {i}")]))
    parsed = read_opml(write_opml(subs).encode())
    added = await feed_list.add_many([(s.url, s.title) for s in parsed])
    assert len(added) == 300
    assert await feed_list.add_many([(s.url, s.title) for s in parsed[:10]]) == []  # duplicates
    async with anyio.create_task_group() as tg:
        await tg.start(poller.run)
        with anyio.fail_after(120):
            while any(f.last_success is None for f in await feed_list.all()):
                await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    texts = await stored(queue, store)
    assert len(texts) == 300
    assert all(f.consecutive_errors == 0 for f in await feed_list.all())
    assert feeds_farm.most_active <= SETTINGS.per_host


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTPS://Example.ORG/Feed?x=1#frag", "https://example.org/Feed?x=1"),
        ("http://user:pw@example.org:8080", "http://example.org:8080/"),
        ("http://[::1]:80/f", "http://[::1]/f"),  # the default port is no part of a name
    ],
)
def test_feed_urls_are_normalised(url: str, normal: str) -> None:
    assert normalise_feed_url(url) == normal


@pytest.mark.parametrize(
    "url", ["", "ftp://example.org/f", "file:///etc/passwd", "https://", "http://a b/", "x" * 3000]
)
def test_bad_feed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidFeedURL, match="url: "):
        normalise_feed_url(url)


async def test_gzip_bodies_are_read(poller: Poller, feed_list: FeedList, feeds_farm: Farm) -> None:
    await subscribe(
        feed_list, feeds_farm, "/gz.xml", Served(rss("G", [("g", "zipped")]), gzip=True)
    )
    [outcome] = await poller.refresh()
    assert (outcome.status, outcome.queued) == ("changed", 1)
    assert gzip  # the farm compresses; the fetcher decompresses


async def test_the_farm_serves_every_format_and_each_poll_stores_just_its_entries(  # noqa: PLR0917
    poller: Poller,
    feed_list: FeedList,
    feeds_farm: Farm,
    queue: Queue,
    store: SQLiteStore,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    malformed = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>Broken</title>'
        b"<item><guid>m1</guid><title>Kept & unescaped</title><description>broken body"
    )
    misencoded = (
        b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>L</title>'
        b"<item><guid>l1</guid><title>R\xe9sum\xe9</title><description>latin-1 bytes</description>"
        b"</item></channel></rss>"
    )
    feeds = {
        "/rss091": (RSS091, "A café opened today."),
        "/rss092": (RSS092, "Only a description, no title."),
        "/rss10": (RSS10, "Resource description text."),
        "/rss20": (RSS20, "Hello world"),
        "/atom03": (ATOM03, "Zero three body"),
        "/atom10": (ATOM10, "Long body."),
        "/malformed": (malformed, "Kept & unescaped"),  # the unclosed body is lost
        "/misencoded": (misencoded, "latin-1 bytes"),
        "/quadratic": (quadratic_feed(), "q"),
        "/xxe": (xxe_feed(str(secret)), "leak"),
    }
    urls = {}
    for path, (body, _) in feeds.items():
        urls[path] = await subscribe(feed_list, feeds_farm, path, Served(body))
    outcomes = {o.url: o for o in await poller.refresh()}
    assert {o.status for o in outcomes.values()} == {"changed"}, outcomes
    texts = await stored(queue, store)
    for path, (_, expected) in feeds.items():
        mine = [text for source, text in texts.items() if source.startswith(f"feed:{urls[path]}#")]
        assert len(mine) == 1, (path, mine)  # one entry each, and nothing else
        assert expected in mine[0], (path, mine[0])
    assert len(texts) == len(feeds)
    everything = "".join(texts.values())
    assert "TOP-SECRET" not in everything
    assert "x" * 1000 not in everything


async def test_a_feeds_ttl_still_counts_after_a_304(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm
) -> None:
    served = Served(rss("T", [("a", "x")], ttl=240), etag='"t1"')
    url = await subscribe(feed_list, feeds_farm, "/ttl304.xml", served)
    await poller.refresh()
    before = time.time()
    [outcome] = await poller.refresh()
    assert outcome.status == "not-modified"
    feed = await feed_list.get(url)
    assert feed is not None
    assert feed.ttl_minutes == 240
    assert feed.next_check >= before + 240 * 60


async def test_a_title_the_user_gave_is_kept(
    poller: Poller, feed_list: FeedList, feeds_farm: Farm
) -> None:
    feeds_farm.routes["/named.xml"] = Served(rss("The feed's own title", [("a", "x")]))
    feed, _ = await feed_list.add(feeds_farm.url("/named.xml"), title="My name for it")
    await poller.refresh()
    polled = await feed_list.get(feed.url)
    assert polled is not None
    assert polled.title == "My name for it"
