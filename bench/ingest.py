"""Benchmark of the ingest pipeline against its targets.

    uv run python bench/ingest.py            # full size (about 2 minutes)
    uv run python bench/ingest.py --smoke    # the CI run: small, same figures

Figures, each beside its target:

- enqueue -> searchable with the built-in HashEmbedder into a SQLiteStore (chunks/s);
- the same through the Ollama stand-in, run as its own process, adding 20 ms to every request:
  batching must hide the latency;
- enqueue latency p50/p99 with 50 concurrent producers, alone and while the workers run;
- peak RSS while 10,000 queued documents drain, beside the peak for 1,000: memory must not
  grow with the queue length. Each runs in a fresh child process.

Exit status 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx  # noqa: E402

from ingest.catalog import Catalog  # noqa: E402
from ingest.documents import Document  # noqa: E402
from ingest.embed import Embedder, HashEmbedder, OllamaEmbedder  # noqa: E402
from ingest.pipeline import Pipeline, PipelineSettings  # noqa: E402
from ingest.queue import Queue  # noqa: E402
from store import SQLiteStore  # noqa: E402

TABLE = "context_vectors"
WORDS = ("vector", "search", "tokio", "runtime", "sourdough", "starter", "feed", "reader")


def document(n: int, paragraphs: int) -> Document:
    """A document of `paragraphs` paragraphs of ~120 words: about one 512-token chunk each."""
    body = "\n\n".join(
        f"Section {p} of document {n}. "
        + " ".join(f"{WORDS[(n + p + k) % len(WORDS)]}{k % 97}" for k in range(120))
        for p in range(paragraphs)
    )
    return Document(f"bench-{n}", "note", text=body)


@dataclass
class Run:
    chunks: int
    seconds: float
    enqueue_p50_ms: float = 0.0
    enqueue_p99_ms: float = 0.0


async def drain_run(directory: Path, embedder: Embedder, docs: int, paragraphs: int) -> Run:
    """Enqueue `docs` documents and time until every chunk is stored."""
    async with (
        Catalog(directory / "satchel.db") as catalog,
        SQLiteStore(directory / "vectors.db") as store,
    ):
        queue = Queue(catalog)
        pipeline = Pipeline(queue, store, embedder, PipelineSettings(idle_poll_seconds=0.05))
        await pipeline.prepare()
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            await tg.start(pipeline.run)
            # Producers with many documents at once (a feed poll, an import) enqueue them
            # together; the latency figure below measures one-at-a-time producers.
            for first in range(0, docs, 50):
                await queue.enqueue_many(
                    [document(n, paragraphs) for n in range(first, min(docs, first + 50))]
                )
            while (stats := await queue.stats()).pending or stats.in_flight:
                await anyio.sleep(0.05)
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
        return Run(await store.count(TABLE), elapsed)


async def enqueue_latency(
    directory: Path, producers: int, per_producer: int, with_workers: bool
) -> Run:
    """Per-enqueue latency with many concurrent producers, with or without workers running."""
    async with (
        Catalog(directory / "satchel.db") as catalog,
        SQLiteStore(directory / "vectors.db") as store,
    ):
        queue = Queue(catalog)
        pipeline = Pipeline(queue, store, HashEmbedder(), PipelineSettings(idle_poll_seconds=0.05))
        samples: list[float] = []

        async def produce(p: int) -> None:
            for i in range(per_producer):
                doc = document(p * per_producer + i, 1)
                t0 = time.perf_counter()
                await queue.enqueue(doc)
                samples.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            if with_workers:
                await tg.start(pipeline.run)
            async with anyio.create_task_group() as producers_group:
                for p in range(producers):
                    producers_group.start_soon(produce, p)
            tg.cancel_scope.cancel()
        samples.sort()
        return Run(
            0,
            time.perf_counter() - start,
            statistics.median(samples) * 1000,
            samples[int(len(samples) * 0.99) - 1] * 1000,
        )


def rss_child(docs: int) -> dict[str, float]:
    """Peak RSS of a fresh process that queues `docs` documents, then drains them."""
    out = subprocess.run(
        [sys.executable, __file__, "--child-rss", str(docs)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


async def child_rss(docs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        async with (
            Catalog(directory / "satchel.db") as catalog,
            SQLiteStore(directory / "vectors.db") as store,
        ):
            queue = Queue(catalog)
            for n in range(docs):  # the whole queue first: then it drains
                await queue.enqueue(document(n, 1))
            queued_rss = _rss_mb("VmRSS:")
            pipeline = Pipeline(
                queue, store, HashEmbedder(), PipelineSettings(idle_poll_seconds=0.05)
            )
            async with anyio.create_task_group() as tg:
                await tg.start(pipeline.run)
                while (stats := await queue.stats()).pending or stats.in_flight:
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            # The store's matrix legitimately holds every stored vector; what the queue costs
            # is the rest.
            vectors_mb = await store.count(TABLE) * 768 * 4 / 2**20
    peak = _rss_mb("VmHWM:")
    print(
        json.dumps(
            {
                "queued_rss_mb": queued_rss,
                "peak_rss_mb": peak,
                "vectors_mb": vectors_mb,
                "peak_less_vectors_mb": peak - vectors_mb,
            }
        )
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def standin_process(latency: float) -> Iterator[str]:
    """The Ollama stand-in in its own process (so it does not share our GIL); yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "STANDIN_MODELS": "nomic-embed-text:latest",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "tests.ollama_standin", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            server.stdout.readline()  # the readiness line
            url = f"http://127.0.0.1:{port}"
            httpx.post(f"{url}/_standin/faults", json={"latency": latency}).raise_for_status()
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)


async def with_standin(directory: Path, url: str, docs: int, paragraphs: int) -> Run:
    embedder = OllamaEmbedder(url)
    try:
        return await drain_run(directory, embedder, docs, paragraphs)
    finally:
        await embedder.aclose()


def line(label: str, measured: str, target: str, ok: bool | None) -> None:
    verdict = {True: "met", False: "MISSED", None: "—"}[ok]
    print(f"{label:48} {measured:44} {target:32} {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="small sizes, for CI")
    parser.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_rss:
        anyio.run(child_rss, args.child_rss)
        return 0
    docs, paragraphs, queue_sizes = (
        (300, 5, (200, 1000)) if args.smoke else (2000, 5, (1000, 10_000))
    )
    producers, per_producer = (50, 4) if args.smoke else (50, 40)
    print(f"bench/ingest.py: {docs} documents of ~{paragraphs} chunks, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "hash").mkdir()
        (root / "standin").mkdir()
        (root / "latency").mkdir()
        hashed = anyio.run(drain_run, root / "hash", HashEmbedder(processes=True), docs, paragraphs)
        with standin_process(latency=0.020) as url:
            standin = anyio.run(with_standin, root / "standin", url, docs, paragraphs)
        latency = anyio.run(enqueue_latency, root / "latency", producers, per_producer, False)
        (root / "latency-busy").mkdir()
        busy = anyio.run(enqueue_latency, root / "latency-busy", producers, per_producer, True)
    small, large = (rss_child(n) for n in queue_sizes)

    print(f"\n{'figure':48} {'measured':44} {'target':32} verdict")
    rate = hashed.chunks / hashed.seconds
    line(
        "enqueue -> searchable, HashEmbedder, SQLite",
        f"{rate:,.0f} chunks/s ({hashed.chunks:,} chunks)",
        "≥ 2,000 chunks/s",
        rate >= 2000,
    )
    rate = standin.chunks / standin.seconds
    line(
        "same via Ollama stand-in, +20 ms per request",
        f"{rate:,.0f} chunks/s ({standin.chunks:,} chunks)",
        "≥ 500 chunks/s",
        rate >= 500,
    )
    line(
        f"enqueue latency, {producers} concurrent producers",
        f"p50 {latency.enqueue_p50_ms:.1f} ms, p99 {latency.enqueue_p99_ms:.1f} ms",
        "p99 ≤ 10 ms",
        latency.enqueue_p99_ms <= 10,
    )
    line(
        "  the same while workers ingest",
        f"p50 {busy.enqueue_p50_ms:.1f} ms, p99 {busy.enqueue_p99_ms:.1f} ms",
        "p99 ≤ 10 ms",
        busy.enqueue_p99_ms <= 10,
    )
    growth = large["peak_less_vectors_mb"] - small["peak_less_vectors_mb"]
    line(
        f"peak RSS draining {queue_sizes[1]:,} vs {queue_sizes[0]:,} queued docs",
        f"{large['peak_rss_mb']:.0f} vs {small['peak_rss_mb']:.0f} MB; "
        f"{large['peak_less_vectors_mb']:.0f} vs {small['peak_less_vectors_mb']:.0f} MB "
        "without the stored vectors",
        "reported; not growing with queue",
        growth < 0.2 * small["peak_less_vectors_mb"],
    )
    raw = {
        "hash": vars(hashed),
        "standin": vars(standin),
        "latency": vars(latency),
        "latency_busy": vars(busy),
        "rss_small": small,
        "rss_large": large,
    }
    print(f"raw figures: {json.dumps(raw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
