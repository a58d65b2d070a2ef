"""The durable queue: acknowledged means committed, leases, supersession, backoff, stats."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from ingest.catalog import Catalog
from ingest.documents import Document
from ingest.queue import MAX_LOST, Queue
from tests.ingest.conftest import FAST

pytestmark = pytest.mark.anyio


class Clock:
    """A clock the test moves by hand, so lease expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def doc(source: str, text: str = "hello") -> Document:
    return Document(source, "note", text=text)


async def test_an_acknowledged_job_is_committed(catalog: Catalog, queue: Queue) -> None:
    job_id = await queue.enqueue(doc("a"))
    # Another connection (as after kill -9 and restart) sees the committed row.
    with sqlite3.connect(catalog.path) as other:
        row = other.execute("SELECT state, payload FROM jobs WHERE id = ?", (job_id,)).fetchone()
    other.close()
    assert row[0] == "pending"
    assert Document.from_json(row[1]) == doc("a")


async def test_concurrent_producers_share_commits_and_all_get_distinct_ids(
    catalog: Catalog, queue: Queue
) -> None:
    ids: list[int] = []

    async def produce(n: int) -> None:
        for i in range(20):
            ids.append(await queue.enqueue(doc(f"p{n}-{i}")))

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(produce, n)
    assert len(ids) == len(set(ids)) == 1000
    assert (await queue.stats()).pending == 1000


async def test_a_cancelled_producer_never_takes_an_equal_documents_place(queue: Queue) -> None:
    # B and A send equal documents and wait while another commit runs; A is cancelled and
    # must withdraw its own job, not B's (they compare equal), or B would wait forever.
    answered: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.enqueue_many, [doc(f"bulk-{i}") for i in range(3000)])
        await anyio.sleep(0.005)  # the bulk commit is under way in its thread
        tg.start_soon(lambda: _append(answered, queue.enqueue(doc("same"))))
        await anyio.lowlevel.checkpoint()
        with anyio.CancelScope() as doomed:
            doomed.cancel()
            await queue.enqueue(doc("same"))
        with anyio.fail_after(10):
            while not answered:
                await anyio.sleep(0.01)
    info = await queue.job(answered[0])
    assert info is not None
    assert info.state == "pending"


async def _append(into: list[int], job: Awaitable[int]) -> None:
    into.append(await job)


async def test_claims_come_in_order_with_a_lease(queue: Queue) -> None:
    first = await queue.enqueue(doc("a"))
    second = await queue.enqueue(doc("b"))
    job = await queue.claim()
    assert job is not None
    assert (job.id, job.source_id, job.attempts) == (first, "a", 1)
    assert Document.from_json(job.payload) == doc("a")
    job2 = await queue.claim()
    assert job2 is not None
    assert job2.id == second
    assert await queue.claim() is None
    stats = await queue.stats()
    assert (stats.pending, stats.in_flight) == (0, 2)


async def test_a_newer_document_supersedes_the_pending_one(queue: Queue) -> None:
    old = await queue.enqueue(doc("a", "old text"))
    new = await queue.enqueue(doc("a", "new text"))
    job = await queue.claim()
    assert job is not None
    assert job.id == new
    assert Document.from_json(job.payload).text == "new text"
    info = await queue.job(old)
    assert info is not None
    assert info.state == "superseded"


async def test_one_job_per_source_runs_at_a_time(queue: Queue) -> None:
    await queue.enqueue(doc("a", "v1"))
    running = await queue.claim()
    assert running is not None
    await queue.enqueue(doc("a", "v2"))  # arrives while v1 is being processed
    await queue.enqueue(doc("b"))
    job = await queue.claim()
    assert job is not None
    assert job.source_id == "b"  # a's v2 waits for v1 to finish
    assert await queue.claim() is None
    await queue.complete(running)
    job = await queue.claim()
    assert job is not None
    assert Document.from_json(job.payload).text == "v2"


async def test_a_job_whose_worker_died_is_claimed_again_after_its_lease(catalog: Catalog) -> None:
    clock = Clock()
    queue = Queue(catalog, FAST, clock=clock)
    job_id = await queue.enqueue(doc("a"))
    assert (await queue.claim()) is not None
    assert await queue.claim() is None  # leased
    clock.now += FAST.lease_seconds + 1  # the worker died and never renewed
    again = await queue.claim()
    assert again is not None
    assert (again.id, again.attempts) == (job_id, 2)


async def test_renewing_keeps_the_lease(catalog: Catalog) -> None:
    clock = Clock()
    queue = Queue(catalog, FAST, clock=clock)
    await queue.enqueue(doc("a"))
    job = await queue.claim()
    assert job is not None
    for _ in range(5):
        clock.now += FAST.lease_seconds * 0.6
        await queue.renew(job)
        assert await queue.claim() is None


async def test_a_job_that_keeps_losing_its_worker_is_failed(catalog: Catalog) -> None:
    clock = Clock()
    queue = Queue(catalog, FAST, clock=clock)
    job_id = await queue.enqueue(doc("crasher"))
    for _ in range(MAX_LOST):
        assert await queue.claim() is not None
        clock.now += FAST.lease_seconds + 1
    assert await queue.claim() is None
    info = await queue.job(job_id)
    assert info is not None
    assert info.state == "failed"
    assert "worker was lost" in (info.last_error or "")


async def test_retry_later_waits_out_the_delay(catalog: Catalog) -> None:
    clock = Clock()
    queue = Queue(catalog, FAST, clock=clock)
    await queue.enqueue(doc("a"))
    job = await queue.claim()
    assert job is not None
    await queue.retry_later(job, "embedder down", delay=10)
    assert await queue.claim() is None
    clock.now += 10
    job = await queue.claim()
    assert job is not None
    assert job.attempts == 2


async def test_release_gives_the_job_back_without_counting_an_attempt(queue: Queue) -> None:
    await queue.enqueue(doc("a"))
    job = await queue.claim()
    assert job is not None
    await queue.release(job)
    again = await queue.claim()
    assert again is not None
    assert again.attempts == 1


async def test_backoff_grows_and_is_capped(queue: Queue) -> None:
    delays = [queue.backoff(attempt) for attempt in range(1, 40)]
    assert all(0 < d <= FAST.backoff_max for d in delays)
    assert delays[0] <= FAST.backoff_initial
    assert min(delays[-5:]) >= FAST.backoff_max / 2


async def test_stats_report_depth_age_failures_and_why_the_queue_waits(catalog: Catalog) -> None:
    clock = Clock()
    queue = Queue(catalog, FAST, clock=clock)
    await queue.enqueue(doc("a"))
    await queue.enqueue(doc("b"))
    clock.now += 30
    job = await queue.claim()
    assert job is not None
    await queue.fail(job, "a: no text could be extracted")
    queue.waiting_reason = "Ollama at http://127.0.0.1:11434: cannot connect"
    stats = await queue.stats()
    assert (stats.pending, stats.in_flight, stats.failed) == (1, 0, 1)
    assert stats.oldest_pending_age == pytest.approx(30)
    assert stats.last_error == "a: no text could be extracted"
    assert stats.waiting_reason == "Ollama at http://127.0.0.1:11434: cannot connect"


async def test_finished_jobs_are_pruned(catalog: Catalog) -> None:
    clock = Clock()
    queue = Queue(catalog, FAST, clock=clock)
    await queue.enqueue(doc("a"))
    job = await queue.claim()
    assert job is not None
    await queue.complete(job)
    clock.now += 100
    assert await queue.prune(older_than=50) == 1
    assert await queue.job(job.id) is None


async def test_a_cancelled_enqueue_is_not_half_stored(tmp_path: Path) -> None:
    async with Catalog(tmp_path / "c.db") as catalog:
        queue = Queue(catalog, FAST)
        with anyio.move_on_after(0):  # cancelled before it could commit
            await queue.enqueue(doc("a"))
        await queue.enqueue(doc("b"))
        stats = await queue.stats()
        assert stats.pending in (1, 2)  # "a" may or may not have made it, but never in part
        with sqlite3.connect(catalog.path) as other:
            sources = [r[0] for r in other.execute("SELECT source_id FROM jobs ORDER BY id")]
        other.close()
        assert sources[-1] == "b"


async def test_a_job_that_lost_its_worker_is_retried_alone(catalog: Catalog) -> None:
    clock = Clock()
    queue = Queue(catalog, FAST, clock=clock)
    for source in "abcd":
        await queue.enqueue(doc(source))
    assert len(await queue.claim_many(2)) == 2  # a and b; then the worker dies
    clock.now += FAST.lease_seconds + 1
    first = await queue.claim_many(10)
    assert [j.source_id for j in first] == ["a"]  # lost once: alone
    second = await queue.claim_many(10)
    assert [j.source_id for j in second] == ["b"]
    third = await queue.claim_many(10)
    assert [j.source_id for j in third] == ["c", "d"]
