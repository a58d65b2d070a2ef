"""Benchmark of SQLiteStore against its targets and its peers, measured in the same run.

    uv run python bench/store.py                      # N = 10K, 100K and 1M (about 10 minutes)
    uv run python bench/store.py --sizes 10000        # the CI smoke run

Data: a Gaussian mixture of 1,000 centroids on the unit sphere in 768 dimensions (fixed seed),
1% of rows tagged ``source_type = 'rare'`` for the filtered search. For each N it measures the
store's insert rate, search p50 (top-10, with and without a filter), open + first search and
peak RSS (in a fresh child process), and beside them: the memory-bandwidth bound (one numpy
sgemv over the same bytes), sqlite-vec's vec0 KNN, and a naive store that reads every BLOB per
query. Every figure is printed next to its target; the exit status is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `store` package; put the project root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT))

from bench.report import Target, report  # noqa: E402
from store.base import Record  # noqa: E402
from store.sqlite import SQLiteStore  # noqa: E402

F32 = npt.NDArray[np.float32]
CENTROIDS = 1000
BATCH = 1000
TOP_K = 10
CREATED = "2024-05-01T12:00:00.000Z"


# -- data -----------------------------------------------------------------------------------------


def clustered(n: int, dim: int, seed: int) -> F32:
    """`n` unit vectors from a mixture of CENTROIDS Gaussians around unit centroids."""
    centroids_rng = np.random.default_rng(12345)  # the same mixture for data and queries
    centroids = centroids_rng.standard_normal((CENTROIDS, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        rows = centroids[rng.integers(0, CENTROIDS, m)]
        rows += rng.standard_normal((m, dim)).astype(np.float32) * np.float32(0.5 / np.sqrt(dim))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        out[start : start + m] = rows
    return out


def source_type(i: int) -> str:
    return "rare" if i % 100 == 0 else ("page", "feed", "note")[i % 3]


def records(data: F32, start: int, stop: int) -> list[Record]:
    return [
        Record(
            f"doc{i:08d}",
            f"source-{i // 8}",
            source_type(i),
            f"chunk {i} of the benchmark corpus",
            data[i],
            CREATED,
            ["bench"],
        )
        for i in range(start, stop)
    ]


# -- measuring ------------------------------------------------------------------------------------


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def recall_hits(data: F32, query: F32, found: list[int], k: int) -> int:
    """How many of `found` belong in the exact top k: rows scoring at least the exact k-th
    score (in float64), so a tie at the k-th place counts whichever tied row was returned."""
    rough = data @ query  # float32 finds the neighbourhood of the k-th score...
    kth_rough = np.partition(rough, len(rough) - k)[len(rough) - k]
    near = np.flatnonzero(rough >= kth_rough - 1e-3)
    exact = data[near].astype(np.float64) @ query.astype(np.float64)  # ...float64 settles it
    kth = np.partition(exact, len(exact) - k)[len(exact) - k]
    wanted = {int(i) for i, s in zip(near, exact, strict=True) if s >= kth - 1e-9}
    return sum(1 for i in found if i in wanted)


@dataclass
class SizeResult:
    n: int
    figures: dict[str, float] = field(default_factory=dict)


async def measure_store(path: Path, data: F32, queries: F32, result: SizeResult) -> None:
    n = len(data)
    async with SQLiteStore(path) as store:
        await store.create_table("bench", dim=data.shape[1])
        # Only the store's insert is timed; building Records is the caller's work.
        spent = 0.0
        for start in range(0, n, BATCH):
            batch = records(data, start, min(n, start + BATCH))
            t0 = time.perf_counter()
            await store.insert("bench", batch)
            spent += time.perf_counter() - t0
        result.figures["insert_rows_s"] = n / spent

    # A fresh store, as after a restart, for the searches.
    async with SQLiteStore(path) as store:
        await store.search("bench", queries[0], TOP_K)  # loads the matrix
        plain, rare, hits = [], [], 0
        for q in queries:
            t0 = time.perf_counter()
            got = await store.search("bench", q, TOP_K)
            plain.append(time.perf_counter() - t0)
            hits += recall_hits(data, q, [int(r.id[3:]) for r in got], TOP_K)
            t0 = time.perf_counter()
            await store.search("bench", q, TOP_K, filter="source_type = 'rare'")
            rare.append(time.perf_counter() - t0)
        result.figures["search_p50_ms"] = p50_ms(plain)
        result.figures["filtered_p50_ms"] = p50_ms(rare)
        result.figures["recall_at_10"] = hits / (TOP_K * len(queries))


def measure_raw_sqlite_insert(directory: Path, data: F32, result: SizeResult) -> None:
    """The engine's own ceiling: sqlite3 inserting the same rows into the same schema, with the
    same pragmas, and nothing else (no normalising, no matrix, no rowid bookkeeping)."""
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    for pragma in ("page_size = 16384", "journal_mode = WAL", "synchronous = FULL"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(
        "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "source_id TEXT NOT NULL, source_type TEXT NOT NULL, text_chunk TEXT NOT NULL, "
        "embedding BLOB NOT NULL, created_at TEXT NOT NULL, tags TEXT NOT NULL)"
    )
    for column in ("source_id", "source_type", "created_at"):
        conn.execute(f"CREATE INDEX t_{column} ON t ({column})")
    spent = 0.0
    for start in range(0, len(data), BATCH):
        rows = [
            (
                r.id,
                r.source_id,
                r.source_type,
                r.text_chunk,
                r.embedding.tobytes(),
                r.created_at,
                '["bench"]',
            )
            for r in records(data, start, min(len(data), start + BATCH))
        ]
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO t (id, source_id, source_type, text_chunk, "
            "embedding, created_at, tags) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
        spent += time.perf_counter() - t0
    conn.close()
    result.figures["raw_sqlite_insert_rows_s"] = len(data) / spent


def measure_bandwidth_bound(data: F32, queries: F32, result: SizeResult) -> None:
    samples = []
    for q in queries:
        t0 = time.perf_counter()
        data @ q
        samples.append(time.perf_counter() - t0)
    result.figures["bound_p50_ms"] = p50_ms(samples)


def measure_naive(path: Path, dim: int, queries: F32, result: SizeResult, repeat: int) -> None:
    """A store that reads every BLOB from SQLite for each query, then does the same matmul."""
    conn = sqlite3.connect(path)

    def one(q: F32) -> None:
        rows = conn.execute("SELECT id, embedding FROM vectors_bench").fetchall()
        matrix = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(len(rows), dim)
        scores = matrix @ q / np.linalg.norm(matrix, axis=1)
        np.argpartition(-scores, TOP_K - 1)[:TOP_K]

    samples = []
    for q in queries[:repeat]:
        t0 = time.perf_counter()
        one(q)
        samples.append(time.perf_counter() - t0)
    conn.close()
    result.figures["naive_p50_ms"] = p50_ms(samples)


def measure_sqlite_vec(directory: Path, data: F32, queries: F32, result: SizeResult) -> None:
    """sqlite-vec's vec0 exact KNN (cosine) on the same vectors, loaded through apsw."""
    try:  # bench-only peers, imported here so the rest of the bench runs without them
        import apsw  # noqa: PLC0415
        import sqlite_vec  # noqa: PLC0415
    except ImportError as exc:  # the bench dependency group is missing
        print(f"  sqlite-vec peer skipped: {exc}")
        return
    conn = apsw.Connection(str(directory / "sqlite_vec.db"))
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.enable_load_extension(False)
    conn.execute(
        f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{data.shape[1]}] "
        "distance_metric=cosine)"
    )
    t0 = time.perf_counter()
    for start in range(0, len(data), BATCH):
        rows = [(i + 1, data[i].tobytes()) for i in range(start, min(len(data), start + BATCH))]
        with conn:
            conn.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)", rows)
    result.figures["vec_build_s"] = time.perf_counter() - t0
    sql = "SELECT rowid, distance FROM v WHERE embedding MATCH ? AND k = ?"
    conn.execute(sql, (queries[0].tobytes(), TOP_K)).fetchall()
    samples = []
    for q in queries:
        t0 = time.perf_counter()
        conn.execute(sql, (q.tobytes(), TOP_K)).fetchall()
        samples.append(time.perf_counter() - t0)
    conn.close()
    result.figures["sqlite_vec_p50_ms"] = p50_ms(samples)


def measure_open(path: Path, dim: int, query: F32, result: SizeResult) -> None:
    """Open + first search and peak RSS, in a child process that has done nothing else."""
    query_file = path.parent / "query.npy"
    np.save(query_file, query)
    out = subprocess.run(
        [sys.executable, __file__, "--child-open", str(path), "--query", str(query_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    child = json.loads(out.strip().splitlines()[-1])
    result.figures["open_first_search_s"] = child["open_first_search_s"]
    result.figures["peak_rss_mb"] = child["peak_rss_mb"]
    result.figures["raw_mb"] = len_bytes(result.n, dim) / 2**20


def len_bytes(n: int, dim: int) -> int:
    return n * dim * 4


async def child_open(path: Path, query_file: Path) -> None:
    query = np.load(query_file)
    t0 = time.perf_counter()
    async with SQLiteStore(path) as store:
        await store.search("bench", query, TOP_K)
        elapsed = time.perf_counter() - t0
        for _ in range(20):
            await store.search("bench", query, TOP_K)
            await store.search("bench", query, TOP_K, filter="source_type = 'rare'")
    print(json.dumps({"open_first_search_s": elapsed, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # noqa: PLC0415 - Unix-only, and only where /proc is missing

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# -- report ---------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:,.1f} {unit}".strip()


def targets() -> list[Target]:
    def ratio(f: dict[str, float], a: str, b: str) -> float | None:
        return f[a] / f[b] if a in f and b in f and f[b] > 0 else None

    def search_vs_bound(f: dict[str, float]) -> tuple[str, str, bool | None]:
        r = ratio(f, "search_p50_ms", "bound_p50_ms")
        shown = f"{f['search_p50_ms']:.2f} ms = {r:.2f}× bound ({f['bound_p50_ms']:.2f} ms)"
        return shown, "≤ 1.3× bound, ≈ 20 ms", None if r is None else r <= 1.3

    def vs_vec(f: dict[str, float]) -> tuple[str, str, bool | None]:
        r = ratio(f, "sqlite_vec_p50_ms", "search_p50_ms")
        if r is None:
            return "sqlite-vec not measured", "≥ 7× faster", None
        return f"{r:.1f}× faster (vec0 {f['sqlite_vec_p50_ms']:.1f} ms)", "≥ 7× faster", r >= 7

    def vs_naive(f: dict[str, float]) -> tuple[str, str, bool | None]:
        r = ratio(f, "naive_p50_ms", "search_p50_ms")
        if r is None:
            return "naive store not measured", "≥ 25× faster", None
        return f"{r:.1f}× faster (naive {f['naive_p50_ms']:.1f} ms)", "≥ 25× faster", r >= 25

    def value(key: str, unit: str, target: str, ok: Callable[[float], bool]) -> Any:
        return lambda f: (_fmt(f.get(key), unit), target, ok(f[key]) if key in f else None)

    def insert(f: dict[str, float]) -> tuple[str, str, bool | None]:
        rate = f["insert_rows_s"]
        shown = f"{rate:,.0f} rows/s"
        if "raw_sqlite_insert_rows_s" in f:
            raw = f["raw_sqlite_insert_rows_s"]
            shown += f" = {rate / raw:.0%} of raw sqlite3 ({raw:,.0f})"
        return shown, "≥ 20,000 rows/s", rate >= 20_000

    def rss(f: dict[str, float]) -> tuple[str, str, bool | None]:
        r = f["peak_rss_mb"] / f["raw_mb"]
        shown = f"{f['peak_rss_mb']:,.0f} MB = {r:.2f}× raw ({f['raw_mb']:,.0f} MB)"
        return shown, "≤ 2× the raw float32 bytes", r <= 2

    return [
        Target("search top-10 p50 vs bandwidth bound", 100_000, search_vs_bound),
        Target("vs sqlite-vec (vec0 KNN)", 100_000, vs_vec),
        Target("vs reading every BLOB per query", 100_000, vs_naive),
        Target(
            "search p50", 1_000_000, value("search_p50_ms", "ms", "≤ 200 ms", lambda v: v <= 200)
        ),
        Target(
            "search, filter matching 1%",
            100_000,
            value("filtered_p50_ms", "ms", "≤ 5 ms", lambda v: v <= 5),
        ),
        Target("insert throughput (batches of 1,000)", None, insert),
        Target(
            "open + first search",
            100_000,
            value("open_first_search_s", "s", "≤ 1.5 s", lambda v: v <= 1.5),
        ),
        Target("peak RSS", 100_000, rss),
        Target(
            "recall@10 against numpy exact",
            None,
            value("recall_at_10", "", "1.0 (exact search)", lambda v: v >= 1.0),
        ),
    ]


def print_report(results: list[SizeResult]) -> None:
    report(results, targets(), widths=(40, 48, 28))


# -- main -----------------------------------------------------------------------------------------


def sizes_arg(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def run(sizes: list[int], dim: int, queries_n: int, workdir: Path) -> list[SizeResult]:
    results = []
    for n in sizes:
        print(f"-- N = {n:,}: generating data", flush=True)
        data = clustered(n, dim, seed=1)
        queries = clustered(queries_n, dim, seed=2)
        directory = workdir / f"n{n}"
        shutil.rmtree(directory, ignore_errors=True)  # a reused --workdir starts clean
        directory.mkdir(parents=True)
        path = directory / "vectors.db"
        result = SizeResult(n)
        print("   store: insert and search", flush=True)
        anyio.run(measure_store, path, data, queries, result)
        measure_bandwidth_bound(data, queries, result)
        print("   peer: raw sqlite3 insert into the same schema", flush=True)
        measure_raw_sqlite_insert(directory, data, result)
        print("   open + first search, peak RSS (child process)", flush=True)
        measure_open(path, dim, queries[0], result)
        if n <= 100_000:
            print("   peers: naive store, sqlite-vec", flush=True)
            measure_naive(path, dim, queries, result, repeat=5)
            measure_sqlite_vec(directory, data, queries, result)
        results.append(result)
        print_report([result])
        del data
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=sizes_arg, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--workdir", type=Path, help="keep the databases here (default: temp)")
    parser.add_argument("--child-open", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--query", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_open:
        anyio.run(child_open, args.child_open, args.query)
        return 0
    print(
        f"bench/store.py: sizes {args.sizes}, dim {args.dim}, {args.queries} queries, "
        f"{os.cpu_count()} CPUs"
    )
    if args.workdir:
        results = run(args.sizes, args.dim, args.queries, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="satchel-bench-") as tmp:
            results = run(args.sizes, args.dim, args.queries, Path(tmp))
    print("\n== summary ==")
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
