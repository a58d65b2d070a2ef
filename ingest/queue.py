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
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.lowlevel

from ingest.catalog import Catalog
from ingest.documents import Document
from ingest.errors import IngestError

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


@dataclass(slots=True, eq=False)  # by identity: two producers may send equal documents
class _Waiter:
    source_id: str
    payload: str
    job_id: int | None = None
    error: BaseException | None = None

    @property
    def settled(self) -> bool:
        return self.job_id is not None or self.error is not None


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
        self._committing = False  # a producer is writing the pending jobs
        self._committed = anyio.Event()  # set (and replaced) after each group commit
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
            while not all(w.settled for w in waiters):
                if self._committing:
                    await self._committed.wait()
                    continue
                # This producer writes every pending job, its own and the others', then wakes
                # them all at once.
                self._committing = True
                try:
                    # One turn of the event loop first: producers that are ready to run join
                    # this commit instead of waiting for the next.
                    await anyio.lowlevel.checkpoint()
                    await self._commit_pending()
                finally:
                    self._committing = False
                    self._committed.set()
                    self._committed = anyio.Event()
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
        if not batch:
            return
        now = self._clock()
        rows = [(waiter.source_id, waiter.payload) for waiter in batch]
        try:
            first = await self.catalog.write(lambda conn: _insert_jobs(conn, rows, now))
            for offset, waiter in enumerate(batch):
                waiter.job_id = first + offset
        except BaseException as exc:
            for waiter in batch:
                waiter.job_id = None
                waiter.error = exc
            raise
        self.wake()

    def wake(self) -> None:
        """Wake the workers waiting in `wait_for_work`."""
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
        lease_until = now + self.settings.lease_seconds
        max_lost = self.settings.max_lost
        jobs, lost = await self.catalog.write(  # not durable: a lost claim is replayed
            lambda conn: _claim(conn, limit, now, lease_until, max_lost), durable=False
        )
        if lost:
            self.wake()
        return jobs

    async def renew(self, *jobs: Job) -> None:
        """Extend the jobs' leases: the worker is still on them."""
        now = self._clock()
        rows = [(now + self.settings.lease_seconds, now, job.id) for job in jobs]
        await self.catalog.write(
            lambda conn: conn.executemany(
                "UPDATE jobs SET lease_until = ?, updated_at = ? "
                "WHERE id = ? AND state = 'running'",
                rows,
            ),
            durable=False,
        )

    @staticmethod
    def mark_done(conn: sqlite3.Connection, jobs: Sequence[Job], now: float) -> None:
        """Within the caller's transaction (with the results the jobs produced): they are done."""
        conn.executemany(
            "UPDATE jobs SET state = 'done', payload = NULL, lease_until = NULL, "
            "last_error = NULL, updated_at = ? WHERE id = ?",
            [(now, job.id) for job in jobs],
        )

    async def complete(self, job: Job) -> None:
        """The job is done (for work whose results need no transaction of their own)."""
        now = self._clock()
        await self.catalog.write(lambda conn: self.mark_done(conn, [job], now), durable=False)
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
        await self.catalog.write(
            lambda conn: conn.execute(
                "UPDATE jobs SET state = 'pending', not_before = ?, lease_until = NULL, "
                "last_error = ?, updated_at = ? WHERE id = ?",
                (now + delay, error, now, job.id),
            ),
            durable=False,
        )

    async def release(self, job: Job) -> None:
        """Give the job back untouched (shutdown): claimable at once, the attempt not counted."""
        now = self._clock()
        await self.catalog.write(
            lambda conn: conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = attempts - 1, lease_until = NULL, "
                "updated_at = ? WHERE id = ? AND state = 'running'",
                (now, job.id),
            ),
            durable=False,
        )
        self.wake()

    @staticmethod
    def mark_failed(conn: sqlite3.Connection, job: Job, error: str, now: float) -> None:
        """Within the caller's transaction: the job can never succeed, for this reason."""
        conn.execute(
            "UPDATE jobs SET state = 'failed', payload = NULL, lease_until = NULL, "
            "last_error = ?, updated_at = ? WHERE id = ?",
            (error, now, job.id),
        )

    async def fail(self, job: Job, error: str) -> None:
        """The job can never succeed: mark it failed with the reason."""
        now = self._clock()
        await self.catalog.write(lambda conn: self.mark_failed(conn, job, error, now))

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

    async def waiting(self, source_id: str) -> bool:
        """Whether a job for `source_id` is queued or being worked on."""
        async with self.catalog.conn.execute(
            "SELECT 1 FROM jobs WHERE source_id = ? AND state IN ('pending', 'running') LIMIT 1",
            (source_id,),
        ) as cur:
            return await cur.fetchone() is not None

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
        return await self.catalog.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM jobs WHERE state IN ('done', 'superseded') AND updated_at < ?",
                    (cutoff,),
                ).rowcount
            )
        )


def _insert_jobs(conn: sqlite3.Connection, rows: Sequence[tuple[str, str]], now: float) -> int:
    """Insert pending jobs for (source id, payload) rows; return the first one's id."""
    # The newest content wins: an older pending job for the source is moot.
    conn.executemany(
        "UPDATE jobs SET state = 'superseded', payload = NULL, updated_at = ? "
        "WHERE source_id = ? AND state = 'pending'",
        [(now, source_id) for source_id, _ in rows],
    )
    before = _sequence(conn)
    conn.executemany(
        "INSERT INTO jobs (source_id, payload, state, created_at, updated_at) "
        "VALUES (?, ?, 'pending', ?, ?)",
        [(source_id, payload, now, now) for source_id, payload in rows],
    )
    # AUTOINCREMENT numbers the rows of this transaction, the only writer, in order.
    if _sequence(conn) != before + len(rows):
        raise IngestError("job ids were not allocated in order")
    return before + 1


def _sequence(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
    return int(row[0]) if row else 0


def _claim(
    conn: sqlite3.Connection, limit: int, now: float, lease_until: float, max_lost: int
) -> tuple[list[Job], int]:
    """Lease up to `limit` claimable jobs (see `Queue.claim_many`); also fail the jobs that
    lost their worker `max_lost` times. Returns the jobs and how many were failed."""
    lost = conn.execute(
        "UPDATE jobs SET state = 'failed', payload = NULL, updated_at = ?, "
        "last_error = 'the worker was lost ' || lost || ' times while processing this job "
        "(it may crash or hang the process); not retried' "
        "WHERE state = 'running' AND lease_until < ? AND lost + 1 >= ?",
        (now, now, max_lost),
    ).rowcount
    rows = conn.execute(
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
    ).fetchall()
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
            # (max_lost), not the innocent jobs that shared its batch.
            break
    conn.executemany(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
        "lease_until = ?, lost = lost + ?, updated_at = ? WHERE id = ?",
        [(lease_until, flag, now, job.id) for job, flag in zip(jobs, lost_flags, strict=True)],
    )
    return jobs, lost
