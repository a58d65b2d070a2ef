"""Benchmark of the LanceDB sidecar against its targets and its peers, measured in the same run.

    uv run python bench/lance.py                       # N = 100K and 1M (about 40 minutes)
    uv run python bench/lance.py --smoke               # the CI smoke run (N = 5,000)

Data: bench/store.py's Gaussian mixture in 768 dimensions (fixed seed); 1% of rows have
``source_type = 'rare'`` for the filtered search. For each N, a real sidecar process
(``python -m store serve --backend lance``) is filled through `HTTPStore` in batches of 1,000,
then left to its own maintenance loop to build its indexes while searches keep running against
it. Then: search p50 and recall@10 (against numpy's exact top-10), the same with the 1% filter,
the sidecar's peak RSS, and the hop's cost: per search, the round trip minus the sidecar's
own time (its Server-Timing header); beside it, the p50 of the same searches run in-process
on the same directory after the sidecar stops. Beside them, on the same data and queries:
SQLiteStore's exact search and a faiss HNSW index. Every figure is printed next to its
target; the exit status is 0 whatever they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path, and this file would shadow
# LanceDB's own `lance` module; put the project root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from bench.report import Target, report  # noqa: E402
from bench.store import F32, clustered, p50_ms, recall_hits, records  # noqa: E402
from store.http import HTTPStore  # noqa: E402
from store.sqlite import SQLiteStore  # noqa: E402
from tests.store.sidecar import running_sidecar  # noqa: E402

TABLE = "context_vectors"
BATCH = 1000
TOP_K = 10
RARE = "source_type = 'rare'"


@dataclass
class SizeResult:
    n: int
    figures: dict[str, float] = field(default_factory=dict)


def row(record_id: str) -> int:
    return int(record_id.removeprefix("doc"))


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of a process, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def filtered_recall(data: F32, rare: np.ndarray, query: F32, found: list[int]) -> float:
    scores = data[rare].astype(np.float64) @ query.astype(np.float64)
    wanted = set(rare[np.argsort(-scores)[:TOP_K]].tolist())
    return len(wanted & set(found)) / TOP_K


async def timed_searches(
    store: Any,
    queries: F32,
    data: F32,
    *,
    filter: str | None = None,
    hops: list[float] | None = None,
) -> tuple[float, float]:
    """(p50 ms, mean recall@10) of `queries` against `store`; with `hops`, an `HTTPStore`'s
    round trip minus the sidecar's own time (its Server-Timing) is added there per search."""
    latencies, answers = [], []
    for q in queries:
        started = time.perf_counter()
        hits = await store.search(TABLE, q, TOP_K, filter=filter)
        latencies.append(time.perf_counter() - started)
        if hops is not None:
            if store.server_ms is None:
                raise RuntimeError("the sidecar's answer had no Server-Timing header")
            hops.append(latencies[-1] - store.server_ms / 1000)
        answers.append([row(h.id) for h in hits])
    # Recall once the clock has stopped: numpy's exact search is heavy, and BLAS threads still
    # spinning after it would take the cores from the next search.
    rare = np.arange(0, len(data), 100)
    recalls = [
        recall_hits(data, q, found, TOP_K) / TOP_K
        if filter is None
        else filtered_recall(data, rare, q, found)
        for q, found in zip(queries, answers, strict=True)
    ]
    return p50_ms(latencies), statistics.fmean(recalls)


async def measure_sidecar(
    directory: Path, data: F32, queries: F32, ann_min_rows: int, result: SizeResult
) -> None:
    n, dim = data.shape
    f = result.figures
    lance = directory / "lance"
    # Filled by a sidecar that does no maintenance, so the build below is measured alone.
    idle = ("--ann-min-rows", str(ann_min_rows), "--maintain-every", "0")
    async with (
        running_sidecar("lance", lance, args=idle) as sidecar,
        HTTPStore(sidecar.url, secret=sidecar.secret, timeout=600) as store,
    ):
        await store.create_table(TABLE, dim=dim)
        # Only the insert is timed: the caller's building of its 1,000 Records (about 12 ms
        # with their validation) is not the store's work, and it is what the daemon's pipeline
        # does anyway when it embeds.
        inserting = 0.0
        for start in range(0, n, BATCH):
            batch = records(data, start, min(n, start + BATCH))
            started = time.perf_counter()
            await store.insert(TABLE, batch)
            inserting += time.perf_counter() - started
        f["insert_rows_s"] = n / inserting

    busy = ("--ann-min-rows", str(ann_min_rows), "--maintain-every", "0.5")
    async with (
        running_sidecar("lance", lance, args=busy) as sidecar,
        HTTPStore(sidecar.url, secret=sidecar.secret, timeout=600) as store,
    ):
        print("   sidecar: waiting for its index while searching", flush=True)
        started = time.perf_counter()
        during: list[float] = []
        failures = 0
        i = 0
        while True:
            status = await store.index_status(TABLE)
            if status.kind == "IVF_RQ" and status.state == "indexed":
                break
            t0 = time.perf_counter()
            try:
                await store.search(TABLE, queries[i % len(queries)], TOP_K)
                during.append(time.perf_counter() - t0)
            except Exception as exc:
                failures += 1
                print(f"   search failed during the build: {exc}", flush=True)
            i += 1
        f["build_s"] = time.perf_counter() - started
        f["searches_during_build"] = len(during)
        f["failed_during_build"] = failures
        if during:
            f["p50_during_build_ms"] = p50_ms(during)
        # Then the compaction of the 1,000-row fragments: measure the settled table.
        quiet = 0
        while quiet < 3:
            await anyio.sleep(1)
            quiet = quiet + 1 if (await store.index_status(TABLE)).state == "indexed" else 0
        f["settled_s"] = time.perf_counter() - started

    # Searches against a sidecar as the daemon runs it: maintenance every 10 s, not every 0.5.
    steady = ("--ann-min-rows", str(ann_min_rows))
    async with (
        running_sidecar("lance", lance, args=steady) as sidecar,
        HTTPStore(sidecar.url, secret=sidecar.secret, timeout=600) as store,
    ):
        await timed_searches(store, queries[:5], data)  # warm the index's caches
        hops: list[float] = []
        f["search_p50_ms"], f["recall_at_10"] = await timed_searches(
            store, queries, data, hops=hops
        )
        f["hop_ms"] = p50_ms(hops)
        f["filtered_p50_ms"], f["filtered_recall"] = await timed_searches(
            store, queries, data, filter=RARE
        )
        f["sidecar_rss_mb"], f["sidecar_peak_rss_mb"] = rss_mb(sidecar.pid)

    # The hop measured the other way: the same searches in this process, on the directory the
    # sidecar left. It also takes in how two runs of the same searches differ.
    from store.lance import IndexPolicy, LanceStore  # noqa: PLC0415 - only here, ~3.6 s

    async with LanceStore(directory / "lance", IndexPolicy(ann_min_rows=ann_min_rows)) as local:
        await timed_searches(local, queries[:5], data)
        f["in_process_p50_ms"], _ = await timed_searches(local, queries, data)
    f["hop_vs_in_process_ms"] = f["search_p50_ms"] - f["in_process_p50_ms"]


async def measure_sqlite(directory: Path, data: F32, queries: F32, result: SizeResult) -> None:
    n = len(data)
    async with SQLiteStore(directory / "vectors.db") as store:
        await store.create_table(TABLE, dim=data.shape[1])
        for start in range(0, n, 10_000):
            await store.insert(TABLE, records(data, start, min(n, start + 10_000)))
        await store.preload(TABLE)
        f = result.figures
        f["sqlite_p50_ms"], f["sqlite_recall"] = await timed_searches(store, queries, data)
        f["sqlite_filtered_p50_ms"], _ = await timed_searches(store, queries, data, filter=RARE)


def measure_hnsw(data: F32, queries: F32, result: SizeResult) -> None:
    """faiss's HNSW (M 32, efConstruction 40, inner product on unit vectors = cosine)."""
    f = result.figures
    index = faiss.IndexHNSWFlat(data.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    started = time.perf_counter()
    index.add(data)
    f["hnsw_build_s"] = time.perf_counter() - started
    index.hnsw.efSearch = 64
    latencies, answers = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None, :], TOP_K)
        latencies.append(time.perf_counter() - t0)
        answers.append([int(i) for i in ids[0]])
    # After the clock stops, as in timed_searches.
    recalls = [
        recall_hits(data, q, a, TOP_K) / TOP_K for q, a in zip(queries, answers, strict=True)
    ]
    f["hnsw_p50_ms"], f["hnsw_recall"] = p50_ms(latencies), statistics.fmean(recalls)


# -- report ---------------------------------------------------------------------------------------


def targets() -> list[Target]:
    def search_at(limit: float, recall: float) -> Callable[..., tuple[str, str, bool | None]]:
        def check(f: dict[str, float]) -> tuple[str, str, bool | None]:
            p50, r = f["search_p50_ms"], f["recall_at_10"]
            return (
                f"{p50:.1f} ms at recall {r:.3f}",
                f"≤ {limit:g} ms at recall ≥ {recall}",
                (p50 <= limit and r >= recall),
            )

        return check

    def filtered(f: dict[str, float]) -> tuple[str, str, bool | None]:
        p50, r = f["filtered_p50_ms"], f["filtered_recall"]
        return f"{p50:.1f} ms at recall {r:.3f}", "≤ 25 ms, recall ≥ 0.95", p50 <= 25 and r >= 0.95

    def build(limit: float) -> Callable[..., tuple[str, str, bool | None]]:
        def check(f: dict[str, float]) -> tuple[str, str, bool | None]:
            available = f["failed_during_build"] == 0 and f["searches_during_build"] > 0
            shown = (
                f"{f['build_s']:.0f} s; {f['searches_during_build']:.0f} searches ran, "
                f"{f['failed_during_build']:.0f} failed"
            )
            return shown, f"≤ {limit:g} s, searches available", f["build_s"] <= limit and available

        return check

    def hop(f: dict[str, float]) -> tuple[str, str, bool | None]:
        shown = (
            f"{f['hop_ms']:.2f} ms per search; {f['hop_vs_in_process_ms']:.2f} ms between runs "
            f"({f['search_p50_ms']:.1f} vs {f['in_process_p50_ms']:.1f} in-process)"
        )
        return shown, "≤ 2 ms", f["hop_ms"] <= 2

    def insert(f: dict[str, float]) -> tuple[str, str, bool | None]:
        return f"{f['insert_rows_s']:,.0f} rows/s", "≥ 10,000 rows/s", f["insert_rows_s"] >= 10_000

    def rss(f: dict[str, float]) -> tuple[str, str, bool | None]:
        return (
            f"{f['sidecar_rss_mb']:,.0f} MB (peak {f['sidecar_peak_rss_mb']:,.0f})",
            "reported",
            None,
        )

    def sqlite(f: dict[str, float]) -> tuple[str, str, bool | None]:
        shown = f"{f['sqlite_p50_ms']:.1f} ms at recall {f['sqlite_recall']:.3f}"
        return shown + f"; filtered {f['sqlite_filtered_p50_ms']:.1f} ms", "peer", None

    def hnsw(f: dict[str, float]) -> tuple[str, str, bool | None]:
        shown = f"{f['hnsw_p50_ms']:.2f} ms at recall {f['hnsw_recall']:.3f}"
        return shown + f"; build {f['hnsw_build_s']:.0f} s", "peer", None

    return [
        Target("search p50, top-10", 100_000, search_at(8, 0.99)),
        Target("search p50, top-10", 1_000_000, search_at(15, 0.99)),
        Target("filtered search (1% match)", 1_000_000, filtered),
        Target("index build", 100_000, build(60)),
        Target("index build", 1_000_000, build(180)),
        Target("added latency of the sidecar hop, p50", None, hop),
        Target("insert through the sidecar, batches of 1,000", None, insert),
        Target("sidecar RSS", None, rss),
        Target("peer: SQLiteStore (exact)", None, sqlite),
        Target("peer: faiss HNSW (M 32, ef 64)", None, hnsw),
    ]


def print_report(results: list[SizeResult]) -> None:
    report(results, targets())


# -- main -----------------------------------------------------------------------------------------


def run(sizes: list[int], queries_n: int, ann_min_rows: int, workdir: Path) -> list[SizeResult]:
    results = []
    for n in sizes:
        print(f"-- N = {n:,}: generating data", flush=True)
        data = clustered(n, 768, seed=1)
        queries = clustered(queries_n, 768, seed=2)
        directory = workdir / f"n{n}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        result = SizeResult(n)
        print("   sidecar: insert, build, search", flush=True)
        anyio.run(measure_sidecar, directory, data, queries, ann_min_rows, result)
        shutil.rmtree(directory / "lance")
        print("   peer: SQLiteStore", flush=True)
        anyio.run(measure_sqlite, directory, data, queries, result)
        shutil.rmtree(directory)
        print("   peer: faiss HNSW", flush=True)
        measure_hnsw(data, queries, result)
        results.append(result)
        print_report([result])
        del data
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ann-min-rows", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="N = 5,000, 20 queries: for CI")
    parser.add_argument("--workdir", type=Path, help="where the stores go (default: temp)")
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.sizes.split(",") if part]
    if args.smoke:
        sizes, args.queries, args.ann_min_rows = [5_000], 20, 1_000
    print(
        f"bench/lance.py: sizes {sizes}, {args.queries} queries, ann_min_rows "
        f"{args.ann_min_rows}, {os.cpu_count()} CPUs"
    )
    if args.workdir:
        results = run(sizes, args.queries, args.ann_min_rows, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="satchel-bench-") as tmp:
            results = run(sizes, args.queries, args.ann_min_rows, Path(tmp))
    print("\n== summary ==")
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
