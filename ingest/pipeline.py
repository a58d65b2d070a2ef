"""The ingest pipeline: workers that turn queued documents into searchable chunks.

For each claimed job a worker:

1. extracts the document's text (`ingest.documents.extract`, in a worker thread);
2. stops early if the text is what the source already holds (nothing is embedded);
3. chunks it and derives each chunk's id from the source id and the chunk text;
4. embeds only the chunks whose ids the vector store lacks, in batches, and upserts them;
5. deletes the source's chunks that vanished since it was last ingested;
6. records the source and marks the job done, in one catalog transaction.

Every step is idempotent, so a job replayed after a crash (its lease ran out) finds its chunks
already stored and finishes without embedding them again.

Failures follow `ingest.errors`: a transient one (the embedder is down) puts the job back with
backoff and pauses every worker for that long, so a dead embedder costs one probe per interval
instead of a churn through the whole queue, and the queue says why it waits. A permanent one
fails the job after `permanent_attempts` tries, recording the error on the job and the source;
the other jobs go on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Final

import anyio
import numpy as np
from anyio.abc import TaskStatus

from ingest.catalog import Catalog, TableModel
from ingest.chunking import chunk_id, chunk_text
from ingest.documents import Document, extract
from ingest.embed import Embedder
from ingest.errors import IngestError, PermanentError, TransientError
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
    workers: int = 4
    embed_batch: int = 64
    idle_poll_seconds: float = 5.0


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
        self._cpu = anyio.CapacityLimiter(1)  # extraction and chunking: one at a time per core
        self._pause_until = 0.0
        self._transient_streak = 0
        self.embedded_chunks = 0  # how many chunks were sent to the embedder, ever

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
                await anyio.sleep(delay)
        self.queue.waiting_reason = None
        async with anyio.create_task_group() as tg:
            for number in range(self.settings.workers):
                tg.start_soon(self._worker, number)
            task_status.started()

    async def _worker(self, number: int) -> None:
        while True:
            pause = self._pause_until - time.monotonic()
            if pause > 0:
                await anyio.sleep(pause)
            job = await self.queue.claim()
            if job is None:
                await self.queue.wait_for_work(self.settings.idle_poll_seconds)
                continue
            await self._handle(job)

    async def _handle(self, job: Job) -> None:
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_leased, job)
                try:
                    await self.process(job)
                except Exception as exc:  # classified below, outside the task group
                    error = exc
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.queue.release(job)  # shutdown: claimable at once on restart
            raise
        if error is None:
            self._transient_streak = 0
        elif isinstance(error, StoreClosed):
            raise error
        elif isinstance(error, TransientError | StoreError) and not isinstance(
            error, InvalidRecord
        ):
            await self._transient(job, error)  # a store I/O failure is worth a retry too
        elif isinstance(error, PermanentError | InvalidRecord):
            await self._permanent(job, error)
        else:
            _log.error("job %d (%s): internal error", job.id, job.source_id, exc_info=error)
            await self._permanent(job, error, internal=True)

    async def _keep_leased(self, job: Job) -> None:
        while True:
            await anyio.sleep(self.queue.settings.lease_seconds / 3)
            try:
                await self.queue.renew(job)
            except Exception:  # a missed renewal only risks a harmless replay
                _log.warning("job %d: could not renew its lease", job.id, exc_info=True)

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
        async with self.catalog.transaction() as conn:
            await conn.execute(
                "UPDATE jobs SET state = 'failed', payload = NULL, lease_until = NULL, "
                "last_error = ?, updated_at = ? WHERE id = ?",
                (message, time.time(), job.id),
            )
            await Catalog.record_failure(
                conn, source_id=job.source_id, source_type=_source_type(job), error=message
            )

    # -- one job ------------------------------------------------------------------------------

    async def process(self, job: Job) -> None:
        """Turn one job's document into stored chunks (see the module docstring)."""
        document = Document.from_json(job.payload)
        extracted = await anyio.to_thread.run_sync(extract, document, limiter=self._cpu)
        content_hash = hashlib.sha256(extracted.text.encode()).hexdigest()
        known = await self.catalog.source(document.source_id)
        if known is not None and known.state == "ok" and known.content_hash == content_hash:
            async with self.catalog.transaction() as conn:
                await conn.execute(
                    "UPDATE sources SET last_seen = ? WHERE id = ?",
                    (utc_now(), document.source_id),
                )
                await Queue.mark_done(conn, job, time.time())
            return
        chunks = await anyio.to_thread.run_sync(
            lambda: chunk_text(
                extracted.text,
                budget=self.settings.chunk_tokens,
                overlap=self.settings.chunk_overlap,
            ),
            limiter=self._cpu,
        )
        texts: dict[str, str] = {}
        for chunk in chunks:  # identical chunks of one source share an id: keep the first
            texts.setdefault(chunk_id(document.source_id, chunk.text), chunk.text)
        table = self.settings.table
        present = {r.id for r in await self.store.get_by_ids(table, list(texts))}
        missing = [(i, t) for i, t in texts.items() if i not in present]
        created_at = document.published or utc_now()
        for start in range(0, len(missing), self.settings.embed_batch):
            batch = missing[start : start + self.settings.embed_batch]
            vectors = await self.embedder.embed_documents([text for _, text in batch])
            self.embedded_chunks += len(batch)
            await self.store.insert(
                table,
                [
                    Record(
                        id=i,
                        source_id=document.source_id,
                        source_type=document.source_type,
                        text_chunk=text,
                        embedding=np.asarray(vector, np.float32),
                        created_at=created_at,
                        tags=document.tags,
                    )
                    for (i, text), vector in zip(batch, vectors, strict=True)
                ],
            )
        vanished = sorted(await self.catalog.chunk_ids(document.source_id) - texts.keys())
        for start in range(0, len(vanished), _DELETE_CHUNK):
            part = tuple(vanished[start : start + _DELETE_CHUNK])
            await self.store.delete_where(table, to_text(In("id", part)))
        async with self.catalog.transaction() as conn:
            await Catalog.record_source(
                conn,
                source_id=document.source_id,
                source_type=document.source_type,
                url=document.url,
                title=extracted.title,
                lang=extracted.lang,
                content_hash=content_hash,
                chunk_ids=list(texts),
            )
            await Queue.mark_done(conn, job, time.time())
        self.queue.waiting_reason = None


def _source_type(job: Job) -> str:
    try:
        return Document.from_json(job.payload).source_type
    except IngestError:
        return "unknown"
