"""`satchel feeds ...` against a real daemon polling a real feed farm on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.opml import Subscription, write_opml
from tests.daemon.daemon_proc import FAST_CONFIG, DaemonProcess
from tests.ingest.feedfarm import Farm, Served, atom, farm, rss


@pytest.fixture
def feeds_farm() -> Iterator[Farm]:
    with farm() as running:
        yield running


@pytest.fixture
def daemon(tmp_path: Path, feeds_farm: Farm) -> Iterator[DaemonProcess]:
    config = FAST_CONFIG + f'\n[feeds]\nallowed_hosts = ["127.0.0.1:{feeds_farm.port}"]\n'
    proc = DaemonProcess(tmp_path / "home", config).start()
    yield proc
    proc.stop()


def ok(daemon: DaemonProcess, *args: str) -> str:
    done = daemon.cli(*args)
    assert done.returncode == 0, f"satchel {' '.join(args)}: {done.stderr}"
    return done.stdout


def settled(daemon: DaemonProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = daemon.status()["queue"]
        if queue["pending"] == 0 and queue["in_flight"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"the queue did not drain: {daemon.status()['queue']}")


def test_subscribe_by_page_poll_search_export_and_remove(
    daemon: DaemonProcess, feeds_farm: Farm, tmp_path: Path
) -> None:
    feeds_farm.routes["/blog/"] = Served(
        b'<html><head><link rel="alternate" type="application/atom+xml" title="Blog" '
        b'href="/blog/atom.xml"><link rel="alternate" type="application/rss+xml" '
        b'href="/blog/rss.xml"></head><body>a blog</body></html>',
        kind="text/html",
    )
    feeds_farm.routes["/blog/atom.xml"] = Served(
        atom("The Blog", [("moth", "Moths navigate by the moon and lamps confuse them")]),
        kind="application/atom+xml",
        etag='"1"',
    )
    added = ok(daemon, "feeds", "add", feeds_farm.url("/blog/"))
    assert f"subscribed to {feeds_farm.url('/blog/atom.xml')}" in added
    assert "also announces" in added
    assert "rss.xml" in added
    again = ok(daemon, "feeds", "add", feeds_farm.url("/blog/atom.xml"))
    assert "already subscribed" in again

    # The daemon's poller picks the new feed up by itself.
    deadline = time.monotonic() + 30
    while "moth" not in ok(daemon, "search", "moths moon lamps", "-k", "1"):
        assert time.monotonic() < deadline, daemon.logs()
        time.sleep(0.2)
    [feed] = [json.loads(line) for line in ok(daemon, "feeds", "list", "--json").splitlines()]
    assert feed["title"] == "The Blog"
    assert feed["health"] == "ok"
    assert feed["entry_count"] == 1

    refreshed = ok(daemon, "feeds", "refresh", feeds_farm.url("/blog/atom.xml"))
    assert "not-modified" in refreshed  # the ETag came back: a 304

    exported = tmp_path / "feeds.opml"
    ok(daemon, "feeds", "export", str(exported))
    assert feeds_farm.url("/blog/atom.xml") in exported.read_text()

    removed = ok(daemon, "feeds", "rm", feeds_farm.url("/blog/atom.xml"), "--purge")
    assert "1 entries deleted" in removed
    assert "moth" not in ok(daemon, "search", "moths moon lamps", "-k", "1")
    assert ok(daemon, "feeds", "list").startswith("no feeds yet")
    # Parsing and extraction ran in worker processes (python -m daemon's main module is guarded).
    assert "parser process died" not in daemon.logs()
    assert "worker processes failed" not in daemon.logs()


def test_import_an_opml_file_and_see_failing_feeds_in_status(
    daemon: DaemonProcess, feeds_farm: Farm, tmp_path: Path
) -> None:
    subs = []
    for i in range(30):
        feeds_farm.routes[f"/f{i}.xml"] = Served(rss(f"Feed {i}", [(f"g{i}", f"gnu {i} grazes")]))
        subs.append(Subscription(feeds_farm.url(f"/f{i}.xml"), f"Feed {i}"))
    subs.append(Subscription(feeds_farm.url("/missing.xml"), "Missing"))  # answers 404
    subs.append(Subscription("ftp://example.org/feed", "Not http"))
    opml = tmp_path / "subs.opml"
    opml.write_text(write_opml(subs))
    imported = ok(daemon, "feeds", "import", str(opml))
    assert "imported 31 feeds (0 already subscribed, 1 invalid)" in imported
    assert "imported 0 feeds (31 already subscribed" in ok(daemon, "feeds", "import", str(opml))

    results = json.loads(ok(daemon, "feeds", "refresh", "--json"))
    by_status = {r["url"]: r["status"] for r in results}
    assert by_status[feeds_farm.url("/missing.xml")] == "error"
    assert sum(1 for s in by_status.values() if s in ("changed", "unchanged")) == 30
    settled(daemon)
    assert len(ok(daemon, "sources", "list").splitlines()) == 30

    status = daemon.status()["feeds"]
    assert (status["count"], status["failing"]) == (31, 1)
    assert "404" in status["errors"][0]["error"]
    text = ok(daemon, "status")
    assert "feeds: 31 subscribed, 1 failing" in text

    listed = ok(daemon, "feeds", "list")
    assert "last error:" in listed
    assert "404" in listed


def test_bad_input_is_refused_by_name(daemon: DaemonProcess, tmp_path: Path) -> None:
    cases = [
        (("feeds", "add", "ftp://example.org/x"), "not an http(s) URL"),
        (("feeds", "add", "http://127.0.0.1:9/feed"), "private or local address"),
        (("feeds", "rm", "https://example.org/never-added"), "not subscribed"),
        (("feeds", "refresh", "https://example.org/never-added"), "not subscribed"),
    ]
    for args, message in cases:
        done = daemon.cli(*args)
        assert done.returncode != 0, args
        assert message in done.stderr, (args, done.stderr)
    broken = tmp_path / "broken.opml"
    broken.write_text("<opml><body><outline xmlUrl='x'>")
    done = daemon.cli("feeds", "import", str(broken))
    assert done.returncode == 1
    assert "not an OPML file: not well-formed XML" in done.stderr
