"""Benchmark of the online migration SQLite -> LanceDB sidecar against its targets.

    uv run python bench/migrate.py                 # N = 100K and 1M (about 20 minutes)
    uv run python bench/migrate.py --smoke         # the CI smoke run (N = 12,000)

For each N: bench/store.py's Gaussian mixture in 768 dimensions goes into a `SQLiteStore`
(set-up, not timed); a real sidecar process (``python -m store serve --backend lance``, with
the daemon's maintenance cadence) is started; then the `Migrator` runs from mark to cutover
through a `RoutedStore`, as the daemon runs it, while a searcher (one search every 20 ms) and a
writer (one upsert every 20 ms) go through the same router. Printed beside the targets: the
copy rate, start -> cutover (index included), each phase's time, the cutover's write pause and
the longest any write waited, and the search p95 during the migration against the p95 before
it (the same searcher on SQLite alone). The cutover is not held back while LanceDB searches
slower than SQLite, as the daemon's would be (below `migrate_at_p95_ms`); the verification line
says whether it would have been. Exit status 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and would shadow packages.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import numpy as np  # noqa: E402

from bench.report import Check, Target, report  # noqa: E402
from bench.store import F32, clustered, records  # noqa: E402
from store.http import HTTPStore  # noqa: E402
from store.migrate import PHASES, MigrationSettings, Migrator, RoutedStore  # noqa: E402
from store.sqlite import SQLiteStore  # noqa: E402
from tests.store.sidecar import running_sidecar  # noqa: E402

TABLE = "context_vectors"
DIM = 768
PACE_S = 0.02  # the searcher's and the writer's interval


@dataclass
class SizeResult:
    n: int
    figures: dict[str, float] = field(default_factory=dict)


def p95(samples: list[float]) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, 95)) if samples else 0.0


async def fill(sqlite: SQLiteStore, data: F32) -> None:
    await sqlite.create_table(TABLE, dim=DIM)
    for start in range(0, len(data), 1000):
        await sqlite.insert(TABLE, records(data, start, min(len(data), start + 1000)))
    await sqlite.preload(TABLE)


async def searching(
    router: RoutedStore,
    queries: F32,
    times: list[float],
    stop: anyio.Event,
    starts: list[float] | None = None,
) -> None:
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        await router.search(TABLE, queries[i % len(queries)], 10)
        times.append(time.perf_counter() - started)
        if starts is not None:
            starts.append(started)
        i += 1
        await anyio.sleep(PACE_S)


async def writing(
    router: RoutedStore, data: F32, waits: list[float], added: list[str], stop: anyio.Event
) -> None:
    i = 0
    while not stop.is_set():
        # Upserts of existing rows, and new rows past the end: both kinds the log must carry.
        start = (i * 7919) % len(data)
        batch = records(data, start, start + 1)
        if i % 2:
            batch = [dataclasses.replace(batch[0], id=f"new{i:08d}")]
        started = time.perf_counter()
        await router.insert(TABLE, batch)
        waits.append(time.perf_counter() - started)
        if i % 2:
            added.append(batch[0].id)
        i += 1
        await anyio.sleep(PACE_S)


async def phases(migrator: Migrator, seen: dict[str, float], stop: anyio.Event) -> None:
    """When each phase began, as the migrator's live state shows it."""
    while not stop.is_set():
        seen.setdefault(migrator.state.phase, time.perf_counter())
        await anyio.sleep(0.05)


async def measure(directory: Path, data: F32, queries: F32, ann_min_rows: int) -> SizeResult:
    result = SizeResult(len(data))
    f = result.figures
    async with SQLiteStore(directory / "vectors.db") as sqlite:
        print("   filling SQLite", flush=True)
        await fill(sqlite, data)
        router = RoutedStore(sqlite, None, on_target=False)
        before: list[float] = []
        stop = anyio.Event()
        with anyio.move_on_after(min(20.0, 200 * PACE_S * 2)):
            await searching(router, queries, before, stop)
        f["search_p95_before_ms"] = p95(before)

        args = ("--ann-min-rows", str(ann_min_rows))  # the daemon's cadence: maintain every 10 s
        async with (
            running_sidecar("lance", directory / "lance", args=args) as sidecar,
            HTTPStore(sidecar.url, secret=sidecar.secret, timeout=600) as lance,
        ):
            router.attach(lance)
            # slow_p95_ms=0 lets the cutover go ahead although LanceDB may search slower than
            # SQLite (the daemon would wait): the figures below say whether it would have.
            settings = MigrationSettings(ann_min_rows=ann_min_rows, slow_p95_ms=0.0)
            migrator = Migrator(router, settings)
            during: list[float] = []
            during_at: list[float] = []
            waits: list[float] = []
            added: list[str] = []
            seen: dict[str, float] = {}
            print("   migrating, with a searcher and a writer", flush=True)
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                stop = anyio.Event()
                tg.start_soon(searching, router, queries, during, stop, during_at)
                tg.start_soon(writing, router, data, waits, added, stop)
                tg.start_soon(phases, migrator, seen, stop)
                state = await migrator.run()
                f["total_s"] = time.perf_counter() - started
                stop.set()
            seen["done"] = started + f["total_s"]
            order = [p for p in PHASES if p in seen]
            for phase, following in itertools.pairwise(order):
                f[f"{phase}_s"] = seen[following] - seen[phase]
            f["copy_rows_s"] = state.rate
            f["pause_ms"] = state.pause_ms or 0.0
            f["longest_write_ms"] = max(waits, default=0.0) * 1000
            f["writes"] = len(waits)
            f["search_p95_during_ms"] = p95(during)
            for phase, following in itertools.pairwise(order):  # where the slow searches were
                f[f"search_p95_{phase}_ms"] = p95(
                    [
                        t
                        for t, at in zip(during, during_at, strict=True)
                        if seen[phase] <= at < seen[following]
                    ]
                )
            f["searches_during"] = len(during)
            f["recall"] = state.verify.get("recall", 0.0)
            f["lance_p95_ms"] = state.verify.get("target_p95_ms", 0.0)
            f["sqlite_p95_ms"] = state.verify.get("source_p95_ms", 0.0)
            # Every row, and every row the writer added before or after the cutover, once.
            f["rows_after"] = float(await lance.count(TABLE))
            f["rows_match"] = float(f["rows_after"] == len(data) + len(added))
    return result


def targets() -> list[Target]:
    def copy(f: dict[str, float]) -> tuple[str, str, bool | None]:
        return f"{f['copy_rows_s']:,.0f} rows/s", "≥ 20,000 rows/s", f["copy_rows_s"] >= 20_000

    def total(limit: float) -> Check:
        def check(f: dict[str, float]) -> tuple[str, str, bool | None]:
            shown = f"{f['total_s']:.0f} s; " + ", ".join(
                f"{p} {f[f'{p}_s']:.0f}" for p in PHASES if f"{p}_s" in f
            )
            return shown, f"≤ {limit:g} s, index included", f["total_s"] <= limit

        return check

    def pause(f: dict[str, float]) -> tuple[str, str, bool | None]:
        shown = f"cutover {f['pause_ms']:.0f} ms; longest write {f['longest_write_ms']:.0f} ms"
        worst = max(f["pause_ms"], f["longest_write_ms"])
        return shown, "≤ 2,000 ms", worst <= 2000

    def search(f: dict[str, float]) -> tuple[str, str, bool | None]:
        ratio = f["search_p95_during_ms"] / max(f["search_p95_before_ms"], 1e-9)
        phases = ", ".join(
            f"{p} {f[f'search_p95_{p}_ms']:.0f}" for p in PHASES if f"search_p95_{p}_ms" in f
        )
        shown = (
            f"{f['search_p95_during_ms']:.1f} ms = {ratio:.2f}× before "
            f"({f['search_p95_before_ms']:.1f} ms; {f['searches_during']:.0f} searches; "
            f"by phase: {phases})"
        )
        return shown, "≤ 2× before", ratio <= 2

    def verified(f: dict[str, float]) -> tuple[str, str, bool | None]:
        held = f["lance_p95_ms"] > f["sqlite_p95_ms"]
        shown = (
            f"recall@10 {f['recall']:.3f}; p95 LanceDB {f['lance_p95_ms']:.1f} ms vs SQLite "
            f"{f['sqlite_p95_ms']:.1f} ms (the daemon {'would wait' if held else 'cuts over'}); "
            f"LanceDB holds every row: {bool(f['rows_match'])}"
        )
        return shown, "reported", None

    return [
        Target("copy rate through the sidecar", None, copy),
        Target("start -> cutover", 100_000, total(120)),
        Target("start -> cutover", 1_000_000, total(300)),
        Target("longest write pause", None, pause),
        Target("search p95 during the migration", None, search),
        Target("verification", None, verified),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--smoke", action="store_true", help="N = 12,000: for CI")
    parser.add_argument("--workdir", type=Path, help="where the stores go (default: temp)")
    args = parser.parse_args(argv)
    sizes = [12_000] if args.smoke else [int(s) for s in args.sizes.split(",") if s]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="satchel-bench-migrate-"))
    results = []
    try:
        for n in sizes:
            print(f"-- N = {n:,}: generating data", flush=True)
            data = clustered(n, DIM, seed=1)
            queries = clustered(50, DIM, seed=2)
            directory = workdir / f"n{n}"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            result = anyio.run(measure, directory, data, queries, 10_000)
            report([result], targets())
            results.append(result)
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n== summary ==")
    report(results, targets())
    return 0


if __name__ == "__main__":
    sys.exit(main())
