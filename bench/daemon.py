"""Benchmark of the daemon process against its targets.

    uv run python bench/daemon.py            # full size: 100K vectors, 60 s idle (about 3 min)
    uv run python bench/daemon.py --smoke    # the CI run: 5K vectors, 5 s idle, same figures

Each figure comes from a real `satchel run` child process with the built-in 768-d embedder and
the SQLite store, spoken to over its Unix socket:

- idle RSS with an empty store, and whether lancedb or pyarrow were imported;
- CPU seconds used while idle (from /proc, so Linux only; reported as "—" elsewhere);
- start -> ready (the socket answers /health) with N vectors in the store, and start -> first
  search answered, beside the store's own time to open and search the same file in-process;
- ``POST /search`` with a vector over the socket: p50 beside the store's own search time, as
  the daemon reports it in the same responses;
- ``POST /documents`` acknowledgement latency p99 with 50 concurrent clients.

Exit status 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import anyio.streams.buffered  # noqa: E402
import numpy as np  # noqa: E402

from store import Record, SQLiteStore  # noqa: E402
from tests.daemon.daemon_proc import DaemonProcess  # noqa: E402

TABLE = "context_vectors"
DIM = 768
CONFIG = """
[embedder]
provider = "hash"
hash_dim = 768

[ingest]
idle_poll_seconds = 5
"""


def rss_mb(pid: int) -> float | None:
    """Resident set size of `pid` in MB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def imported(pid: int, names: tuple[str, ...]) -> list[str]:
    """Which of these packages' shared objects the process has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return [name for name in names if f"/{name}/" in maps]


async def fill(home: Path, rows: int) -> None:
    """A store under `home` holding `rows` random unit vectors."""
    rng = np.random.default_rng(7)
    async with SQLiteStore(home / "data" / "vectors.db") as store:
        await store.create_table(TABLE, dim=DIM)
        for start in range(0, rows, 5000):
            count = min(5000, rows - start)
            vectors = rng.standard_normal((count, DIM), dtype=np.float32)
            await store.insert(
                TABLE,
                [
                    Record(
                        id=f"r{start + i:08d}",
                        source_id=f"s{(start + i) // 10}",
                        source_type="note",
                        text_chunk=f"chunk {start + i}",
                        embedding=vectors[i],
                        created_at="2026-01-01T00:00:00Z",
                    )
                    for i in range(count)
                ],
            )


async def store_figures(home: Path, queries: np.ndarray) -> tuple[float, float]:
    """The store's own open + first search, and its median search, in this process."""
    started = time.perf_counter()
    async with SQLiteStore(home / "data" / "vectors.db") as store:
        await store.search(TABLE, queries[0], 10)
        first = time.perf_counter() - started
        times = []
        for query in queries:
            t0 = time.perf_counter()
            await store.search(TABLE, query, 10)
            times.append(time.perf_counter() - t0)
    return first, statistics.median(times) * 1000


async def ack_latency(socket_path: Path, clients: int, per_client: int) -> list[float]:
    """Seconds from sending ``POST /documents`` to its 202, per request.

    Each client is one keep-alive connection speaking minimal HTTP/1.1 by hand: httpx costs
    about a millisecond of CPU a request, and with fifty clients on a two-core machine the
    client's own CPU would be most of what is measured.
    """
    samples: list[float] = []

    async def one(c: int) -> None:
        stream = await anyio.connect_unix(str(socket_path))
        async with stream:
            buffered = anyio.streams.buffered.BufferedByteReceiveStream(stream)
            for i in range(per_client):
                body = json.dumps({"content": f"note {c}-{i}: herons", "source_id": f"{c}-{i}"})
                request = (
                    "POST /documents HTTP/1.1\r\nHost: satchel\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}"
                ).encode()
                t0 = time.perf_counter()
                await stream.send(request)
                head = await buffered.receive_until(b"\r\n\r\n", 65536)
                samples.append(time.perf_counter() - t0)
                status = head.split(b" ", 2)[1]
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                answer = await buffered.receive_exactly(length)
                assert status == b"202", answer

    async with anyio.create_task_group() as tg:
        for c in range(clients):
            tg.start_soon(one, c)
    return samples


def line(label: str, measured: str, target: str, ok: bool | None) -> None:
    verdict = {True: "met", False: "MISSED", None: "—"}[ok]
    print(f"{label:44} {measured:52} {target:34} {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    parser.add_argument("--rows", type=int, help="vectors in the store (default 100000)")
    parser.add_argument("--idle", type=float, help="seconds of idle to measure (default 60)")
    args = parser.parse_args(argv)
    rows = args.rows or (5000 if args.smoke else 100_000)
    idle = args.idle or (5.0 if args.smoke else 60.0)
    searches = 30 if args.smoke else 200
    clients, per_client = (50, 4) if args.smoke else (50, 20)
    queries = np.random.default_rng(11).standard_normal((searches, DIM), dtype=np.float32)

    print(f"bench/daemon.py: {rows:,} vectors of {DIM} d, {idle:.0f} s idle, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="satchel-bench-") as tmp:
        # Idle figures: an empty store.
        empty = DaemonProcess(Path(tmp) / "empty", CONFIG).start()
        try:
            pid = empty.proc.pid if empty.proc else 0
            time.sleep(1.0)  # let start-up work settle
            cpu_before = cpu_seconds(pid)
            time.sleep(idle)
            cpu_after = cpu_seconds(pid)
            idle_rss = rss_mb(pid)
            heavy = imported(pid, ("lancedb", "pyarrow"))
        finally:
            empty.stop()

        # Start-up and search figures: a store of `rows` vectors.
        home = Path(tmp) / "full"
        (home / "data").mkdir(parents=True)
        anyio.run(fill, home, rows)
        store_first, store_p50 = anyio.run(store_figures, home, queries)
        daemon = DaemonProcess(home, CONFIG)
        started = time.perf_counter()
        daemon.start(wait=False)
        try:
            daemon.wait_ready(timeout=300)
            ready = time.perf_counter() - started
            with daemon.http() as client:
                body = {"vector": queries[0].tolist(), "top_k": 10}
                first = client.post("/search", json=body)
                first_search = time.perf_counter() - started
                assert first.status_code == 200, first.text
                wall, inside = [], []
                for query in queries:
                    t0 = time.perf_counter()
                    response = client.post("/search", json={"vector": query.tolist(), "top_k": 10})
                    wall.append((time.perf_counter() - t0) * 1000)
                    inside.append(response.json()["timing_ms"]["search"])
            acks = anyio.run(ack_latency, daemon.socket, clients, per_client)
        finally:
            daemon.stop()

    acks.sort()
    ack_p50 = statistics.median(acks) * 1000
    ack_p99 = acks[max(0, int(len(acks) * 0.99) - 1)] * 1000
    api_p50, inside_p50 = statistics.median(wall), statistics.median(inside)
    idle_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    scale = 60.0 / idle

    print(f"\n{'figure':44} {'measured':52} {'target':34} verdict")
    line(
        "idle RSS, empty SQLite store",
        f"{idle_rss:.0f} MB; lancedb/pyarrow loaded: {heavy or 'no'}" if idle_rss else "—",
        "≤ 120 MB, neither loaded",
        None if idle_rss is None else idle_rss <= 120 and not heavy,
    )
    line(
        f"CPU while idle ({idle:.0f} s, scaled to 60 s)",
        "—" if idle_cpu is None else f"{idle_cpu:.3f} CPU-s ({idle_cpu * scale:.3f} per 60 s)",
        "≤ 0.2 CPU-s per 60 s",
        None if idle_cpu is None else idle_cpu * scale <= 0.2,
    )
    line(
        f"start -> ready, {rows:,} vectors",
        f"{ready:.2f} s (first search answered at {first_search:.2f} s)",
        "≤ 1.5 s",
        ready <= 1.5,
    )
    line(
        "  peer: the store alone, open + first search",
        f"{store_first:.2f} s in-process",
        "—",
        None,
    )
    line(
        f"POST /search over the socket, {rows:,}",
        f"p50 {api_p50:.1f} ms vs store {inside_p50:.1f} ms "
        f"({api_p50 / inside_p50:.2f}x; in-process store {store_p50:.1f} ms)",
        "p50 ≤ 1.5x the store's search",
        api_p50 <= 1.5 * inside_p50,
    )
    line(
        f"POST /documents ack, {clients} clients",
        f"p50 {ack_p50:.1f} ms, p99 {ack_p99:.1f} ms ({len(acks)} requests)",
        "p99 ≤ 15 ms",
        ack_p99 <= 15,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
