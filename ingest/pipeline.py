"""The ingest pipeline: workers that turn queued documents into searchable chunks.

A worker claims a batch of jobs (one per source) and, for each document:

1. extracts the document's text (`ingest.documents.extract`, in a worker thread);
2. stops early if the text is what the source already holds (nothing is embedded);
3. chunks it and derives each chunk's id from the source id and the chunk text;
4. embeds only the chunks whose ids the vector store lacks, in batches, and upserts them;
5. deletes the source's chunks that vanished since it was last ingested;
6. records the source and marks the job done, in one catalog transaction.

Steps 4 to 6 are shared by the batch: one existence check, embedding batches that mix
documents (so a slow embedder's per-request latency is spread over many chunks), and one
completion transaction, because per-document transactions left ingestion bound by fsync.

Every step is idempotent, so a job replayed after a crash (its lease ran out) finds its chunks
already stored and finishes without embedding them again.

Failures follow `ingest.errors`: a transient one (the embedder is down) puts the job back with
backoff and pauses every worker for that long, so a dead embedder costs one probe per interval
instead of a churn through the whole queue, and the queue says why it waits. A permanent one
fails the job after `permanent_attempts` tries, recording the error on the job and the source;
the other jobs go on.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Final

import anyio
import anyio.to_process
import numpy as np
from anyio import BrokenWorkerProcess
from anyio.abc import TaskStatus

from ingest.catalog import Catalog, Ingested, SourceInfo, TableModel
from ingest.cpu import prepare_text
from ingest.documents import Document
from ingest.embed import Embedder
from ingest.errors import IngestError, PermanentError, QueueClosed, TransientError
from ingest.queue import Job, Queue
from store import Record, StoreClosed, StoreError, TableExists, VectorStore
from store.base import InvalidRecord
from store.filter import In, to_text
from store.sqlitedb import utc_now

__all__ = ["Pipeline", "PipelineSettings"]

_log = logging.getLogger(__name__)
_DELETE_CHUNK: Final = 500


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """How the pipeline works; every timing is here so that tests can shrink it."""

    table: str = "context_vectors"
    chunk_tokens: int = 512
    chunk_overlap: float = 0.15
    workers: int = 2
    jobs_per_batch: int = 32  # documents a worker takes at once: one store write, one commit
    embed_batch: int = 256  # chunks per embed_documents call and store write
    idle_poll_seconds: float = 5.0
    # Run extraction and chunking in worker processes, using the other cores and sparing the
    # event loop's GIL; tests turn it off to avoid starting processes for every event loop.
    cpu_processes: bool = True


class Pipeline:
    """Workers over a `Queue`, writing into a `VectorStore` through an `Embedder`."""

    def __init__(
        self,
        queue: Queue,
        store: VectorStore,
        embedder: Embedder,
        settings: PipelineSettings | None = None,
    ) -> None:
        self.queue = queue
        self.catalog: Catalog = queue.catalog
        self.store = store
        self.embedder = embedder
        self.settings = settings or PipelineSettings()
        # Extraction and chunking: in worker processes (one per core) or one thread at a time.
        self._cpu = anyio.CapacityLimiter(
            max(1, os.cpu_count() or 1) if self.settings.cpu_processes else 1
        )
        self._use_processes = self.settings.cpu_processes
        self._pause_until = 0.0
        self._transient_streak = 0
        self._stopping = anyio.Event()

    # -- running ------------------------------------------------------------------------------

    async def prepare(self) -> TableModel:
        """Warm the embedder up and bind the table to its model, creating the table if needed.

        Raises `ModelMismatch` if the table was made by another model, and a `TransientError`
        while the embedder is unreachable.
        """
        dim = await self.embedder.warm_up()
        binding = await self.catalog.bind_table(self.settings.table, self.embedder.model, dim)
        try:
            await self.store.create_table(self.settings.table, dim=dim)
        except TableExists as exc:
            if exc.dim != dim:
                raise
        return binding

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Prepare (waiting out a down embedder), then run the workers until cancelled."""
        streak = 0
        while True:
            try:
                await self.prepare()
                break
            except TransientError as exc:
                streak += 1
                delay = self.queue.backoff(streak)
                self.queue.waiting_reason = f"{exc}; retrying in {delay:.0f} s"
                _log.warning("embedder not ready: %s", self.queue.waiting_reason)
                with anyio.move_on_after(delay):
                    await self._stopping.wait()
                if self._stopping.is_set():
                    return
        self.queue.waiting_reason = None
        async with anyio.create_task_group() as tg:
            for number in range(self.settings.workers):
                tg.start_soon(self._worker, number)
            task_status.started()

    def stop(self) -> None:
        """Claim no more jobs: `run` returns once the batches in hand are finished. (Cancel it
        to cut them short: their jobs are given back to the queue.)"""
        self._stopping.set()
        self.queue.wake()  # idle workers see it now, not at their next poll

    async def _worker(self, number: int) -> None:
        while not self._stopping.is_set():
            pause = self._pause_until - time.monotonic()
            if pause > 0:
                with anyio.move_on_after(pause):
                    await self._stopping.wait()
                continue
            try:
                jobs = await self.queue.claim_many(self.settings.jobs_per_batch)
            except QueueClosed:
                raise
            except Exception:  # the catalog is locked or the disk is full: try again later
                _log.exception("worker %d could not claim jobs", number)
                with anyio.move_on_after(self.settings.idle_poll_seconds):
                    await self._stopping.wait()
                continue
            if not jobs:
                await self.queue.wait_for_work(self.settings.idle_poll_seconds)
                continue
            await self._handle(jobs)

    async def _handle(self, jobs: list[Job]) -> None:
        """Process a batch; on shutdown give back what is unfinished; classify failures."""
        pending = {job.id: job for job in jobs}
        failures: list[tuple[Job, Exception]] = []  # each job's own failure
        batch_error: Exception | None = None  # a failure of the steps the batch shares
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_leased, jobs)
                try:
                    await self.process_batch(jobs, pending, failures)
                except Exception as exc:
                    batch_error = exc
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                for job in pending.values():  # shutdown: claimable at once on restart
                    await self.queue.release(job)
            raise
        for job, error in failures:
            pending.pop(job.id, None)
            await self._classify(job, error)
        if batch_error is None:
            if not failures:
                self._transient_streak = 0
            return
        if isinstance(batch_error, PermanentError) and len(pending) > 1:
            # One poison document must not fail its neighbours: retry them one at a time.
            for job in list(pending.values()):
                await self._handle([job])
            return
        for job in pending.values():
            await self._classify(job, batch_error)

    async def _classify(self, job: Job, error: Exception) -> None:
        if isinstance(error, StoreClosed):
            raise error
        if isinstance(error, TransientError | StoreError) and not isinstance(error, InvalidRecord):
            await self._transient(job, error)  # a store I/O failure is worth a retry too
        elif isinstance(error, PermanentError | InvalidRecord):
            await self._permanent(job, error)
        else:
            _log.error("job %d (%s): internal error", job.id, job.source_id, exc_info=error)
            await self._permanent(job, error, internal=True)

    async def _keep_leased(self, jobs: list[Job]) -> None:
        while True:
            await anyio.sleep(self.queue.settings.lease_seconds / 3)
            try:
                await self.queue.renew(*jobs)
            except Exception:  # a missed renewal only risks a harmless replay
                _log.warning("could not renew leases", exc_info=True)

    async def _transient(self, job: Job, error: BaseException) -> None:
        self._transient_streak += 1
        delay = self.queue.backoff(self._transient_streak)
        self._pause_until = time.monotonic() + delay
        self.queue.waiting_reason = f"{error}; retrying in {delay:.0f} s"
        _log.warning("job %d (%s) waits: %s", job.id, job.source_id, self.queue.waiting_reason)
        await self.queue.retry_later(job, str(error), delay=delay)

    async def _permanent(self, job: Job, error: BaseException, *, internal: bool = False) -> None:
        message = f"internal error: {error!r}" if internal else str(error)
        if job.attempts < self.queue.settings.permanent_attempts:
            await self.queue.retry_later(job, message, delay=self.queue.backoff(job.attempts))
            return
        _log.warning("job %d (%s) failed: %s", job.id, job.source_id, message)
        source_type = _source_type(job)

        def record(conn: sqlite3.Connection) -> None:
            Queue.mark_failed(conn, job, message, time.time())
            Catalog.record_failure(
                conn, source_id=job.source_id, source_type=source_type, error=message
            )

        await self.catalog.write(record)

    # -- the work -----------------------------------------------------------------------------

    async def process(self, job: Job) -> None:
        """Turn one job's document into stored chunks; raises what went wrong."""
        failures: list[tuple[Job, Exception]] = []
        await self.process_batch([job], {job.id: job}, failures)
        if failures:
            raise failures[0][1]

    async def process_batch(
        self, jobs: list[Job], unfinished: dict[int, Job], failures: list[tuple[Job, Exception]]
    ) -> None:
        """Process documents together (see the module docstring).

        Jobs that finish are removed from `unfinished`. A job whose own document fails
        (extraction, validation) goes to `failures` with its error and the rest go on; an error
        in the shared steps (embedding, storing) is raised, for the caller to apply to every job
        still unfinished.
        """
        work: list[_Prepared] = []
        unchanged: list[_Prepared] = []
        known = await self.catalog.sources_by_id([job.source_id for job in jobs])
        for job in jobs:
            try:
                prepared = await self._prepare(job, known.get(job.source_id))
            except Exception as exc:
                failures.append((job, exc))
                continue
            (unchanged if prepared.unchanged else work).append(prepared)
        if unchanged:
            seen = [(utc_now(), item.document.source_id) for item in unchanged]
            done = [item.job for item in unchanged]

            def record_unchanged(conn: sqlite3.Connection) -> None:
                conn.executemany("UPDATE sources SET last_seen = ? WHERE id = ?", seen)
                Queue.mark_done(conn, done, time.time())

            await self.catalog.write(record_unchanged, durable=False)
            for item in unchanged:
                unfinished.pop(item.job.id, None)
        if work:
            await self._store_chunks(work)
            ingested = [
                Ingested(
                    source_id=item.document.source_id,
                    source_type=item.document.source_type,
                    url=item.document.url,
                    title=item.title,
                    lang=item.lang,
                    content_hash=item.content_hash,
                    chunk_ids=list(item.texts),
                )
                for item in work
            ]
            finished = [item.job for item in work]

            def record_ingested(conn: sqlite3.Connection) -> None:
                Catalog.record_sources(conn, ingested)
                Queue.mark_done(conn, finished, time.time())

            # Not durable: the chunks are (the store syncs its writes), and losing this commit
            # only means the jobs are replayed, which finds the chunks stored.
            await self.catalog.write(record_ingested, durable=False)
            for item in work:
                unfinished.pop(item.job.id, None)
            self.queue.waiting_reason = None

    async def _prepare(self, job: Job, known: SourceInfo | None) -> _Prepared:
        document = Document.from_json(job.payload)  # cheap, and a bad payload fails here
        known_hash = known.content_hash if known is not None and known.state == "ok" else None
        args = (job.payload, known_hash, self.settings.chunk_tokens, self.settings.chunk_overlap)
        text = None
        if self._use_processes:
            try:
                text = await anyio.to_process.run_sync(prepare_text, *args, limiter=self._cpu)
            except BrokenWorkerProcess:
                # Worker processes cannot start or keep dying (memory, a sandbox): carry on in
                # threads rather than fail documents for it.
                _log.warning("worker processes failed; extracting in threads", exc_info=True)
                self._use_processes = False
        if text is None:
            text = await anyio.to_thread.run_sync(prepare_text, *args, limiter=self._cpu)
        prepared = _Prepared(job, document, text.content_hash, text.title, text.lang)
        if text.chunks is None:
            prepared.unchanged = True
        else:
            prepared.texts = text.chunks
        return prepared

    async def _store_chunks(self, work: list[_Prepared]) -> None:
        """Embed and upsert the chunks the store lacks; delete the ones that vanished."""
        table = self.settings.table
        wanted = [i for item in work for i in item.texts]
        present = {r.id for r in await self.store.get_by_ids(table, wanted)}
        missing = [(item, i, t) for item in work for i, t in item.texts.items() if i not in present]
        now = utc_now()
        for start in range(0, len(missing), self.settings.embed_batch):
            batch = missing[start : start + self.settings.embed_batch]
            vectors = await self.embedder.embed_documents([text for _, _, text in batch])
            await self.store.insert(
                table,
                [
                    Record(
                        id=i,
                        source_id=item.document.source_id,
                        source_type=item.document.source_type,
                        text_chunk=text,
                        embedding=np.asarray(vector, np.float32),
                        created_at=item.document.published or now,
                        tags=item.document.tags,
                    )
                    for (item, i, text), vector in zip(batch, vectors, strict=True)
                ],
            )
        previous = await self.catalog.chunk_ids_by_source([item.job.source_id for item in work])
        for item in work:
            vanished = sorted(previous.get(item.job.source_id, set()) - item.texts.keys())
            for start in range(0, len(vanished), _DELETE_CHUNK):
                part = tuple(vanished[start : start + _DELETE_CHUNK])
                await self.store.delete_where(table, to_text(In("id", part)))


@dataclass(slots=True)
class _Prepared:
    """A document ready to store: its extracted text's hash and its chunks by id."""

    job: Job
    document: Document
    content_hash: str
    title: str | None
    lang: str | None
    texts: dict[str, str] = field(default_factory=dict)
    unchanged: bool = False


def _source_type(job: Job) -> str:
    try:
        return Document.from_json(job.payload).source_type
    except IngestError:
        return "unknown"
