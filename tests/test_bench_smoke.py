"""bench/store.py runs in CI at a smoke size and prints every figure beside its target.

Only that it runs and reports is checked here: figures are judged by a person reading them,
never by a timed assertion.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = os.environ.get("SATCHEL_BENCH_SMOKE_SIZE", "10000")


def run_bench(*args: str) -> str:
    """Run a benchmark script; its report, after checking that it exited 0."""
    result = subprocess.run(
        [sys.executable, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def summary(output: str, *figures: str) -> str:
    """The report's summary, after checking that it prints each of `figures`."""
    report = output.split("== summary ==")[1]
    for figure in figures:
        assert figure in report
    return report


def test_store_benchmark_smoke_run(tmp_path: Path) -> None:
    output = run_bench(
        "bench/store.py", "--sizes", SIZE, "--queries", "20", "--workdir", str(tmp_path)
    )
    report = summary(
        output,
        "search top-10 p50 vs bandwidth bound",
        "vs sqlite-vec (vec0 KNN)",
        "vs reading every BLOB per query",
        "search, filter matching 1%",
        "insert throughput (batches of 1,000)",
        "open + first search",
        "peak RSS",
    )
    # The store is exact: its top-10 must be numpy's exact top-10.
    assert '"recall_at_10": 1.0' in report
    print(report)  # shown with -s, and in CI logs on failure


def test_ingest_benchmark_smoke_run() -> None:
    output = run_bench("bench/ingest.py", "--smoke")
    for figure in (
        "enqueue -> searchable, HashEmbedder, SQLite",
        "same via Ollama stand-in, +20 ms per request",
        "enqueue latency, 50 concurrent producers",
        "peak RSS draining",
    ):
        assert figure in output
    print(output)


def test_daemon_benchmark_smoke_run() -> None:
    output = run_bench("bench/daemon.py", "--smoke")
    for figure in (
        "idle RSS, empty SQLite store",
        "CPU while idle",
        "start -> ready",
        "POST /search over the socket",
        "POST /documents ack, 50 clients",
    ):
        assert figure in output
    assert "lancedb/pyarrow loaded: no" in output  # the daemon never imports them
    print(output)


def test_lance_benchmark_smoke_run() -> None:
    output = run_bench("bench/lance.py", "--smoke")
    report = summary(
        output,
        "search p50, top-10",
        "filtered search (1% match)",
        "index build",
        "added latency of the sidecar hop, p50",
        "insert through the sidecar, batches of 1,000",
        "sidecar RSS",
        "peer: SQLiteStore (exact)",
        "peer: faiss HNSW",
    )
    assert '"failed_during_build": 0' in report  # searches stayed available
    print(report)


def test_migrate_benchmark_smoke_run() -> None:
    output = run_bench("bench/migrate.py", "--smoke")
    report = summary(
        output,
        "copy rate through the sidecar",
        "start -> cutover",
        "longest write pause",
        "search p95 during the migration",
        "verification",
    )
    assert "LanceDB holds every row: True" in report  # the writer's rows too, once
    print(report)


def test_feeds_benchmark_smoke_run() -> None:
    output = run_bench("bench/feeds.py", "--smoke")
    report = summary(
        output,
        "one cycle over N unchanged feeds (all 304)",
        "N changed feeds x 20 entries -> searchable",
        "daemon RSS during that",
        "quadratic-entity feed parse",
    )
    assert "probe found: True" in report  # the last entry of the last feed is searchable
    assert "50 304s of 50 requests" in report  # the unchanged cycle was all conditional
    print(report)


def test_pages_benchmark_smoke_run() -> None:
    output = run_bench("bench/pages.py", "--smoke")
    report = summary(
        output,
        "POST /pages ack, 1 MB pages, 20 concurrent",
        "peer: POST /documents on the Unix socket",
        "daemon RSS while 10 pages of 5 MiB arrive",
        "saved page -> searchable, 100 KB article",
    )
    assert "10 acked" in report  # every 5 MiB page was taken, none refused
    print(report)
