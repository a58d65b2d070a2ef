"""Benchmark of feed polling through a real daemon, against the feeds issue's targets.

    uv run python bench/feeds.py            # 500 feeds x 20 entries (about a minute)
    uv run python bench/feeds.py --smoke    # the CI run: 50 feeds x 20 entries, same figures

A `satchel run` child process (the built-in 768-d hash embedder, the SQLite store) polls feeds
served by 25 feed-farm servers on loopback (its `allowed_hosts` lists them), 20 feeds per
server at full size, so per-server limits apply as they would across real hosts:

- every feed changed: the OPML-sized list imported through the API, then the time until every
  entry is searchable (the queue drained, each entry stored), and the daemon's RSS meanwhile;
- one cycle over the same feeds unchanged: every server answers 304 to the ETag it gave;
  ``POST /feeds/refresh`` wall time, and the daemon's CPU seconds over it (from /proc);
- the hostile feed: the quadratic-entity feed parsed in this process, time and peak memory.

Exit status 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT))

from bench.daemon import cpu_seconds, rss_mb  # noqa: E402
from bench.report import Target, report  # noqa: E402
from ingest.feedparse import parse_feed  # noqa: E402
from tests.daemon.daemon_proc import DaemonProcess  # noqa: E402
from tests.ingest.feedfarm import Farm, Served, farm, rss  # noqa: E402
from tests.ingest.test_feedparse import quadratic_feed  # noqa: E402

SERVERS = 25
ENTRIES = 20
WORDS = [
    "river",
    "lantern",
    "copper",
    "meadow",
    "falcon",
    "quartz",
    "harbour",
    "violet",
    "ember",
    "glacier",
]


@dataclass
class Result:
    n: int  # feeds
    figures: dict[str, float] = field(default_factory=dict)


def entry_text(feed: int, entry: int) -> str:
    """Distinct text per entry: a few hundred characters, like a feed summary."""
    words = [WORDS[(feed * 7 + entry * 3 + i) % len(WORDS)] for i in range(40)]
    return f"feed {feed} entry {entry} " + " ".join(words)


def serve_feeds(farms: list[Farm], feeds: int) -> list[str]:
    urls = []
    for i in range(feeds):
        server = farms[i % len(farms)]
        items = [(f"f{i}-e{j}", entry_text(i, j)) for j in range(ENTRIES)]
        server.routes[f"/feed{i}.xml"] = Served(rss(f"Feed {i}", items), etag=f'"f{i}-v1"')
        urls.append(server.url(f"/feed{i}.xml"))
    return urls


def measure(feeds: int) -> Result:
    result = Result(feeds)
    f = result.figures
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="satchel-bench-") as tmp:
        farms = [stack.enter_context(farm()) for _ in range(SERVERS)]
        urls = serve_feeds(farms, feeds)
        allowed = ", ".join(f'"127.0.0.1:{server.port}"' for server in farms)
        config = (
            '[embedder]\nprovider = "hash"\n\n[ingest]\nidle_poll_seconds = 1\n\n'
            f"[feeds]\nallowed_hosts = [{allowed}]\n"
        )
        daemon = DaemonProcess(Path(tmp) / "home", config).start()
        try:
            pid = daemon.proc.pid if daemon.proc else 0
            with daemon.http() as client:
                started = time.perf_counter()
                for start in range(0, len(urls), 1000):
                    body = {"feeds": [{"url": u} for u in urls[start : start + 1000]]}
                    client.post("/feeds/import", json=body).raise_for_status()
                expected = feeds * ENTRIES
                peak_rss = 0.0
                while True:
                    status = client.get("/status").json()
                    peak_rss = max(peak_rss, rss_mb(pid) or 0.0)
                    queue = status["queue"]
                    if queue["done"] >= expected and queue["pending"] == queue["in_flight"] == 0:
                        break
                    if time.perf_counter() - started > 600:
                        raise RuntimeError(f"not searchable after 600 s: {queue}")
                    time.sleep(0.1)
                f["changed_s"] = time.perf_counter() - started
                f["peak_rss_mb"] = peak_rss
                f["entries"] = float(queue["done"])
                probe = entry_text(feeds - 1, ENTRIES - 1)
                hits = client.post("/search", json={"query": probe, "top_k": 1}).json()
                found = hits["results"][0]["source_id"] if hits["results"] else ""
                f["probe_found"] = float(found.endswith(f"#guid:f{feeds - 1}-e{ENTRIES - 1}"))

                requests_before = sum(len(server.requests) for server in farms)
                cpu_before = cpu_seconds(pid)
                started = time.perf_counter()
                answer = client.post("/feeds/refresh", json={}, timeout=600).json()
                f["unchanged_s"] = time.perf_counter() - started
                cpu_after = cpu_seconds(pid)
                if cpu_before is not None and cpu_after is not None:
                    f["unchanged_cpu_s"] = cpu_after - cpu_before
                statuses = [r["status"] for r in answer["results"]]
                f["not_modified"] = float(statuses.count("not-modified"))
                f["requests"] = float(sum(len(s.requests) for s in farms) - requests_before)
                f["final_rss_mb"] = rss_mb(pid) or 0.0
        finally:
            daemon.stop()
    data = quadratic_feed()
    tracemalloc.start()
    started = time.perf_counter()
    parse_feed(data, "https://example.org/q.xml")
    f["quadratic_s"] = time.perf_counter() - started
    f["quadratic_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    f["quadratic_in_kb"] = len(data) / 1024
    return result


def targets() -> list[Target]:
    def unchanged(f: dict[str, float]) -> tuple[str, str, bool | None]:
        cpu = f.get("unchanged_cpu_s")
        shown = (
            f"{f['unchanged_s']:.2f} s wall, "
            + ("—" if cpu is None else f"{cpu:.2f} CPU-s")
            + f"; {f['not_modified']:.0f} 304s of {f['requests']:.0f} requests"
        )
        ok = f["unchanged_s"] <= 10 and (cpu is None or cpu <= 2)
        return shown, "≤ 10 s wall, ≤ 2 CPU-s", ok

    def changed(f: dict[str, float]) -> tuple[str, str, bool | None]:
        shown = (
            f"{f['changed_s']:.1f} s for {f['entries']:,.0f} entries "
            f"({f['entries'] / f['changed_s']:,.0f}/s); probe found: {bool(f['probe_found'])}"
        )
        return shown, "≤ 60 s", f["changed_s"] <= 60

    def rss(f: dict[str, float]) -> tuple[str, str, bool | None]:
        shown = f"peak {f['peak_rss_mb']:.0f} MB; after the 304 cycle {f['final_rss_mb']:.0f} MB"
        return shown, "reported, bounded", None

    def quadratic(f: dict[str, float]) -> tuple[str, str, bool | None]:
        shown = (
            f"{f['quadratic_in_kb']:.0f} KB in: {f['quadratic_s'] * 1000:.0f} ms, "
            f"peak {f['quadratic_peak_mb']:.1f} MB"
        )
        ok = f["quadratic_s"] < 1 and f["quadratic_peak_mb"] < 100
        return shown, "< 1 s, < 100 MB", ok

    return [
        Target("one cycle over N unchanged feeds (all 304)", 500, unchanged),
        Target("N changed feeds x 20 entries -> searchable", 500, changed),
        Target("daemon RSS during that", None, rss),
        Target("quadratic-entity feed parse", None, quadratic),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--feeds", type=int, default=500, help="feeds polled (default 500)")
    parser.add_argument("--smoke", action="store_true", help="50 feeds: for CI")
    args = parser.parse_args(argv)
    feeds = 50 if args.smoke else args.feeds
    print(f"bench/feeds.py: {feeds} feeds x {ENTRIES} entries on {SERVERS} servers", flush=True)
    result = measure(feeds)
    print("\n== summary ==")
    report([result], targets(), widths=(44, 60, 26))
    return 0


if __name__ == "__main__":
    sys.exit(main())
