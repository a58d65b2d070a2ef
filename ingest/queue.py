"""The durable ingest queue: jobs live in the catalog's SQLite file.

Lifecycle of a job::

    enqueue ──► pending ──claim──► running ──complete──► done
                  ▲  │               │ lease expires: claimable again
                  │  └─ superseded   ├─ retry_later (transient): pending, after a backoff
                  └──────────────────┤
                                     └─ fail (permanent, after a few attempts): failed

- `enqueue` returns a job id only after the job's row is committed, so an acknowledged
  document survives ``kill -9``. Concurrent enqueues share transactions (group commit): whoever
  holds the commit lock writes every pending job at once, so fifty producers pay for one fsync,
  not fifty.
- A newer document for a source supersedes that source's pending job (only the latest content
  matters). At most one job per source runs at a time, so an older version never lands after a
  newer one.
- Workers `claim` jobs with a lease and `renew` it while they work. A job whose worker died is
  claimed again, alone, when its lease runs out; one that has lost its worker `MAX_LOST` times
  (it kills the process, say) is failed with that message rather than retried forever.
- Memory stays bounded however long the queue: payloads stay in SQLite until a worker claims
  them, one job at a time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiosqlite
import anyio

from ingest.catalog import Catalog
from ingest.documents import Document
from ingest.errors import IngestError
from store import sqlitedb

__all__ = ["Job", "JobInfo", "Queue", "QueueSettings", "QueueStats"]

MAX_LOST: Final = 5
"""The default of `QueueSettings.max_lost`."""


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Timings and limits; every one is configurable so that tests can shrink them."""

    lease_seconds: float = 120.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    permanent_attempts: int = 3
    max_lost: int = MAX_LOST  # times a job may lose its worker before it is failed
    max_batch: int = 500  # jobs per group-commit transaction


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job: what a worker needs to process it."""

    id: int
    source_id: str
    payload: str
    attempts: int  # including this one


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job's state, for `GET /jobs/{id}`."""

    id: int
    source_id: str
    state: str
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the daemon's status shows about ingestion."""

    pending: int
    in_flight: int
    failed: int
    done: int
    oldest_pending_age: float | None
    last_error: str | None
    waiting_reason: str | None


@dataclass(slots=True)
class _Waiter:
    source_id: str
    payload: str
    job_id: int | None = None
    error: BaseException | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


class Queue:
    """The jobs table of a `Catalog`, as a durable work queue (see the module docstring)."""

    def __init__(
        self,
        catalog: Catalog,
        settings: QueueSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.settings = settings or QueueSettings()
        self._clock = clock
        self._pending: list[_Waiter] = []
        self._commit_lock = anyio.Lock()
        self._work = anyio.Event()
        self.waiting_reason: str | None = None

    # -- producers ----------------------------------------------------------------------------

    async def enqueue(self, document: Document) -> int:
        """Store a job for `document`; return its id once the job row is committed."""
        [job_id] = await self.enqueue_many([document])
        return job_id

    async def enqueue_many(self, documents: Sequence[Document]) -> list[int]:
        """Store jobs for `documents` (a feed poll, an import); return their ids once committed.

        Not atomic as a whole: a crash may keep an acknowledged prefix of a very long list.
        """
        waiters = [_Waiter(d.source_id, d.to_json()) for d in documents]
        self._pending.extend(waiters)
        try:
            while any(w.job_id is None and w.error is None for w in waiters):
                async with self._commit_lock:
                    if any(w.job_id is None and w.error is None for w in waiters):
                        await self._commit_pending()
        except BaseException:
            for waiter in waiters:  # cancelled before anyone took them: they never were
                if waiter in self._pending:
                    self._pending.remove(waiter)
            raise
        for waiter in waiters:
            if waiter.error is not None:
                raise IngestError(f"could not store the job: {waiter.error}") from waiter.error
        return [w.job_id for w in waiters if w.job_id is not None]

    async def _commit_pending(self) -> None:
        batch = self._pending[: self.settings.max_batch]
        del self._pending[: len(batch)]
        now = self._clock()
        try:
            async with self.catalog.transaction() as conn:
                # A handful of statements per batch, not per job: each is a thread hop, and
                # the catalog's lock is held meanwhile.
                # The newest content wins: an older pending job for the source is moot.
                await conn.executemany(
                    "UPDATE jobs SET state = 'superseded', payload = NULL, updated_at = ? "
                    "WHERE source_id = ? AND state = 'pending'",
                    [(now, waiter.source_id) for waiter in batch],
                )
                before = await sqlitedb.sequence(conn, "jobs")
                await conn.executemany(
                    "INSERT INTO jobs (source_id, payload, state, created_at, updated_at) "
                    "VALUES (?, ?, 'pending', ?, ?)",
                    [(waiter.source_id, waiter.payload, now, now) for waiter in batch],
                )
                # AUTOINCREMENT numbers the rows of this transaction, the only writer, in order.
                if await sqlitedb.sequence(conn, "jobs") != before + len(batch):
                    raise IngestError(f"{self.catalog.path}: job ids were not allocated in order")
                for offset, waiter in enumerate(batch, start=1):
                    waiter.job_id = before + offset
        except BaseException as exc:
            for waiter in batch:
                waiter.job_id = None
                waiter.error = exc
            raise
        self._wake()

    def _wake(self) -> None:
        self._work.set()
        self._work = anyio.Event()

    # -- workers ------------------------------------------------------------------------------

    async def wait_for_work(self, patience: float) -> None:
        """Return when a job may have become claimable, or after `patience` seconds (a job in
        backoff becomes claimable without anyone saying so)."""
        with anyio.move_on_after(patience):
            await self._work.wait()

    async def claim(self) -> Job | None:
        """The oldest claimable job, now leased to the caller; None when there is none."""
        jobs = await self.claim_many(1)
        return jobs[0] if jobs else None

    async def claim_many(self, limit: int) -> list[Job]:
        """Up to `limit` claimable jobs, oldest first, at most one per source, leased together."""
        now = self._clock()
        async with self.catalog.transaction(durable=False) as conn:  # a lost claim is replayed
            lost = await self._fail_lost_jobs(conn, now)
            rows = await conn.execute_fetchall(
                """
                SELECT id, source_id, payload, attempts, state FROM jobs AS j
                WHERE ((state = 'pending' AND not_before <= ?)
                       OR (state = 'running' AND lease_until < ?))
                  AND NOT EXISTS (
                      SELECT 1 FROM jobs AS other
                      WHERE other.source_id = j.source_id AND other.state = 'running'
                        AND other.lease_until >= ? AND other.id != j.id)
                ORDER BY id LIMIT ?
                """,
                (now, now, now, limit * 2),
            )
            jobs: list[Job] = []
            lost_flags: list[int] = []
            sources: set[str] = set()
            for job_id, source_id, payload, attempts, state in rows:
                if source_id in sources or len(jobs) == limit:
                    continue  # the source's older job is in this batch already
                was_lost = state == "running"
                if was_lost and jobs:
                    continue  # a job that lost its worker goes alone (below), next time
                sources.add(source_id)
                jobs.append(Job(job_id, source_id, payload, attempts + 1))
                lost_flags.append(int(was_lost))
                if was_lost:
                    # Alone, so that if it is what kills the worker, it alone pays for it
                    # (MAX_LOST), not the innocent jobs that shared its batch.
                    break
            await conn.executemany(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                "lease_until = ?, lost = lost + ?, updated_at = ? WHERE id = ?",
                [
                    (now + self.settings.lease_seconds, flag, now, job.id)
                    for job, flag in zip(jobs, lost_flags, strict=True)
                ],
            )
        if lost:
            self._wake()
        return jobs

    async def _fail_lost_jobs(self, conn: aiosqlite.Connection, now: float) -> int:
        """Fail jobs whose lease ran out `max_lost` times: they kill their worker."""
        async with conn.execute(
            "UPDATE jobs SET state = 'failed', payload = NULL, updated_at = ?, "
            "last_error = 'the worker was lost ' || lost || ' times while processing this job "
            "(it may crash or hang the process); not retried' "
            "WHERE state = 'running' AND lease_until < ? AND lost + 1 >= ? RETURNING id",
            (now, now, self.settings.max_lost),
        ) as cur:
            return len(list(await cur.fetchall()))

    async def renew(self, *jobs: Job) -> None:
        """Extend the jobs' leases: the worker is still on them."""
        now = self._clock()
        async with self.catalog.transaction(durable=False) as conn:
            await conn.executemany(
                "UPDATE jobs SET lease_until = ?, updated_at = ? "
                "WHERE id = ? AND state = 'running'",
                [(now + self.settings.lease_seconds, now, job.id) for job in jobs],
            )

    @staticmethod
    async def mark_done(conn: aiosqlite.Connection, jobs: Sequence[Job], now: float) -> None:
        """Within the caller's transaction (with the results the jobs produced): they are done."""
        await conn.executemany(
            "UPDATE jobs SET state = 'done', payload = NULL, lease_until = NULL, "
            "last_error = NULL, updated_at = ? WHERE id = ?",
            [(now, job.id) for job in jobs],
        )

    async def complete(self, job: Job) -> None:
        """The job is done (for work whose results need no transaction of their own)."""
        async with self.catalog.transaction(durable=False) as conn:
            await self.mark_done(conn, [job], self._clock())
        self.waiting_reason = None

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter, for the `attempt`-th retry."""
        ceiling = min(
            self.settings.backoff_max, self.settings.backoff_initial * 2 ** min(attempt - 1, 30)
        )
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not secrecy

    async def retry_later(self, job: Job, error: str, *, delay: float) -> None:
        """Put the job back; it becomes claimable after `delay` seconds."""
        now = self._clock()
        async with self.catalog.transaction(durable=False) as conn:
            await conn.execute(
                "UPDATE jobs SET state = 'pending', not_before = ?, lease_until = NULL, "
                "last_error = ?, updated_at = ? WHERE id = ?",
                (now + delay, error, now, job.id),
            )

    async def release(self, job: Job) -> None:
        """Give the job back untouched (shutdown): claimable at once, the attempt not counted."""
        now = self._clock()
        async with self.catalog.transaction(durable=False) as conn:
            await conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = attempts - 1, lease_until = NULL, "
                "updated_at = ? WHERE id = ? AND state = 'running'",
                (now, job.id),
            )
        self._wake()

    @staticmethod
    async def mark_failed(conn: aiosqlite.Connection, job: Job, error: str, now: float) -> None:
        """Within the caller's transaction: the job can never succeed, for this reason."""
        await conn.execute(
            "UPDATE jobs SET state = 'failed', payload = NULL, lease_until = NULL, "
            "last_error = ?, updated_at = ? WHERE id = ?",
            (error, now, job.id),
        )

    async def fail(self, job: Job, error: str) -> None:
        """The job can never succeed: mark it failed with the reason."""
        async with self.catalog.transaction() as conn:
            await self.mark_failed(conn, job, error, self._clock())

    # -- status -------------------------------------------------------------------------------

    async def job(self, job_id: int) -> JobInfo | None:
        """A job's state, if it exists."""
        async with self.catalog.conn.execute(
            "SELECT id, source_id, state, attempts, last_error, created_at, updated_at "
            "FROM jobs WHERE id = ?",
            (job_id,),
        ) as cur:
            row = await cur.fetchone()
        return JobInfo(*row) if row else None

    async def stats(self) -> QueueStats:
        """Depth, age, in-flight, failures and why the queue waits, for status."""
        now = self._clock()
        conn = self.catalog.conn
        async with conn.execute(
            "SELECT state, COUNT(*), MIN(created_at) FROM jobs GROUP BY state"
        ) as cur:
            rows = {state: (count, oldest) for state, count, oldest in await cur.fetchall()}
        async with conn.execute(
            "SELECT last_error FROM jobs WHERE state = 'failed' ORDER BY updated_at DESC LIMIT 1"
        ) as cur:
            failed_row = await cur.fetchone()
        pending, oldest = rows.get("pending", (0, None))
        return QueueStats(
            pending=pending,
            in_flight=rows.get("running", (0, None))[0],
            failed=rows.get("failed", (0, None))[0],
            done=rows.get("done", (0, None))[0],
            oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
            last_error=failed_row[0] if failed_row else None,
            waiting_reason=self.waiting_reason if pending else None,
        )

    async def prune(self, older_than: float) -> int:
        """Delete finished jobs last touched more than `older_than` seconds ago."""
        cutoff = self._clock() - older_than
        async with (
            self.catalog.transaction() as conn,
            conn.execute(
                "DELETE FROM jobs WHERE state IN ('done', 'superseded') AND updated_at < ? "
                "RETURNING id",
                (cutoff,),
            ) as cur,
        ):
            return len(list(await cur.fetchall()))
