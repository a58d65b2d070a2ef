"""Fixtures for the ingest tests: real SQLite files, a real Ollama stand-in over a socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from ingest.catalog import Catalog
from ingest.pipeline import Pipeline, PipelineSettings
from ingest.queue import Queue, QueueSettings, QueueStats
from store import SQLiteStore
from tests.ollama_standin import StandinState, running_standin

FAST = QueueSettings(lease_seconds=2.0, backoff_initial=0.05, backoff_max=0.3, permanent_attempts=3)


@pytest.fixture
def standin() -> Iterator[tuple[str, StandinState]]:
    """A running Ollama stand-in: its base URL and its state (faults, stats)."""
    with running_standin() as running:
        yield running


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[Catalog]:
    async with Catalog(tmp_path / "satchel.db") as c:
        yield c


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "vectors.db") as s:
        yield s


@pytest.fixture
def queue(catalog: Catalog) -> Queue:
    return Queue(catalog, FAST)


def settings(**overrides: object) -> PipelineSettings:
    """Pipeline settings shrunk for tests."""
    # Threads, not worker processes: processes start anew with every test's event loop.
    # test_pipeline runs one test with processes on.
    base: dict[str, object] = {
        "workers": 2,
        "idle_poll_seconds": 0.05,
        "chunk_tokens": 64,
        "cpu_processes": False,
    }
    return PipelineSettings(**{**base, **overrides})  # type: ignore[arg-type]


async def drain(pipeline: Pipeline, *, limit: float = 30.0) -> QueueStats:
    """Run the pipeline until nothing is pending or running; return the final stats."""
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        with anyio.fail_after(limit):
            while True:
                stats = await pipeline.queue.stats()
                if stats.pending == 0 and stats.in_flight == 0:
                    break
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    return stats
