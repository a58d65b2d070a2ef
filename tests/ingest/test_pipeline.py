"""The whole pipeline: queue -> extraction -> chunking -> embedding -> store, against real parts."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest

from ingest.catalog import Catalog
from ingest.documents import Document
from ingest.embed import HashEmbedder, OllamaEmbedder
from ingest.errors import ModelMismatch
from ingest.pipeline import Pipeline
from ingest.queue import Queue
from store import SQLiteStore
from tests.ingest.conftest import FAST, drain, settings
from tests.ollama_standin import Faults, StandinState, running_standin

pytestmark = pytest.mark.anyio

Standin = tuple[str, StandinState]
TABLE = "context_vectors"

PARAGRAPHS = [
    f"Paragraph {i} explains topic {i}: " + " ".join(f"word{i}x{j}" for j in range(40))
    for i in range(12)
]


def article(paragraphs: list[str]) -> str:
    return "\n\n".join(paragraphs)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
async def test_documents_become_searchable_chunks(
    queue: Queue, store: SQLiteStore, standin: Standin, processes: bool
) -> None:
    url, _ = standin
    embedder = OllamaEmbedder(url)
    pipeline = Pipeline(queue, store, embedder, settings(cpu_processes=processes))
    await queue.enqueue(
        Document(
            "note:rust",
            "note",
            text="Tokio tasks stall when a task never yields at an await point.",
            published="2024-05-01T14:00:00+02:00",
            tags=("rust", "async"),
        )
    )
    await queue.enqueue(Document("note:bread", "note", text="Sourdough needs a lively starter."))
    stats = await drain(pipeline)
    assert (stats.done, stats.failed) == (2, 0)
    [hit, *_] = await store.search(TABLE, await embedder.embed_query("tokio task yields"), 2)
    assert hit.source_id == "note:rust"
    assert hit.source_type == "note"
    assert hit.tags == ("rust", "async")
    assert hit.created_at == "2024-05-01T12:00:00.000Z"
    source = await queue.catalog.source("note:rust")
    assert source is not None
    assert (source.state, source.chunk_count) == ("ok", 1)
    await embedder.aclose()


async def test_unchanged_input_embeds_nothing_and_changes_embed_only_new_chunks(
    queue: Queue, store: SQLiteStore, standin: Standin
) -> None:
    url, state = standin
    embedder = OllamaEmbedder(url)
    pipeline = Pipeline(queue, store, embedder, settings())
    await queue.enqueue(Document("page:a", "page", text=article(PARAGRAPHS)))
    await drain(pipeline)
    chunks_before = await store.count(TABLE)
    assert chunks_before > 3
    embedded = state.stats.embedded_inputs

    # The same text again: no embedding at all.
    await queue.enqueue(Document("page:a", "page", text=article(PARAGRAPHS)))
    await drain(pipeline)
    assert state.stats.embedded_inputs == embedded
    assert await store.count(TABLE) == chunks_before

    # Change the last paragraph: only the chunks containing it are embedded, and the chunks
    # that held the old paragraph are gone.
    changed = [*PARAGRAPHS[:-1], "A brand new closing paragraph about something else."]
    await queue.enqueue(Document("page:a", "page", text=article(changed)))
    await drain(pipeline)
    new_embeds = state.stats.embedded_inputs - embedded
    assert 1 <= new_embeds < chunks_before / 2
    texts = [r.text_chunk async for batch in store.export_all(TABLE) for r in batch]
    assert not any(PARAGRAPHS[-1][:30] in t for t in texts)
    assert any("brand new closing paragraph" in t for t in texts)
    assert set(texts) == {
        r.text_chunk
        for r in await store.get_by_ids(TABLE, list(await queue.catalog.chunk_ids("page:a")))
    }
    await embedder.aclose()


async def test_a_poison_document_fails_with_its_reason_and_the_rest_finish(
    queue: Queue, store: SQLiteStore, standin: Standin
) -> None:
    url, _ = standin
    embedder = OllamaEmbedder(url)
    pipeline = Pipeline(queue, store, embedder, settings())
    good = [await queue.enqueue(Document(f"n{i}", "note", text=f"note {i}")) for i in range(5)]
    empty = await queue.enqueue(Document("empty", "page", html="<html><body></body></html>"))
    rejected = await queue.enqueue(Document("bad", "note", text="POISON-400 content"))
    stats = await drain(pipeline)
    assert (stats.done, stats.failed) == (5, 2)
    for job_id, message in ((empty, "no text could be extracted"), (rejected, "refused")):
        info = await queue.job(job_id)
        assert info is not None
        assert info.state == "failed"
        assert message in (info.last_error or "")
        assert info.attempts == queue.settings.permanent_attempts
    for job_id in good:
        info = await queue.job(job_id)
        assert info is not None
        assert info.state == "done"
    source = await queue.catalog.source("empty")
    assert source is not None
    assert source.state == "failed"
    assert "no text could be extracted" in (source.last_error or "")
    await embedder.aclose()


async def test_an_embedder_outage_makes_jobs_wait_then_all_complete(
    queue: Queue, store: SQLiteStore, standin: Standin
) -> None:
    url, state = standin
    embedder = OllamaEmbedder(url)
    pipeline = Pipeline(queue, store, embedder, settings())
    await pipeline.prepare()
    for i in range(10):
        await queue.enqueue(Document(f"n{i}", "note", text=f"note number {i}"))
    state.faults = Faults(embed_status=503, embed_status_count=-1)  # down until further notice
    reasons: list[str | None] = []
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        with anyio.fail_after(10):
            while not reasons or reasons[-1] is None:
                await anyio.sleep(0.05)
                reasons.append((await queue.stats()).waiting_reason)
        state.faults = Faults()  # Ollama is back
        with anyio.fail_after(30):
            while (stats := await queue.stats()).pending or stats.in_flight:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert "503" in (reasons[-1] or "")
    assert (stats.done, stats.failed) == (10, 0)
    assert stats.waiting_reason is None
    assert await store.count(TABLE) == 10
    await embedder.aclose()


async def test_an_embedder_that_is_not_running_yet_is_waited_for(
    queue: Queue, store: SQLiteStore
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    embedder = OllamaEmbedder(f"http://127.0.0.1:{port}")
    pipeline = Pipeline(queue, store, embedder, settings())
    await queue.enqueue(Document("n", "note", text="waiting for ollama"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run)
        with anyio.fail_after(10):
            while (await queue.stats()).waiting_reason is None:
                await anyio.sleep(0.05)
        assert "cannot connect" in ((await queue.stats()).waiting_reason or "")
        with running_standin(port=port):  # Ollama starts on its port
            with anyio.fail_after(30):
                while (await queue.stats()).done < 1:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert await store.count(TABLE) == 1
    await embedder.aclose()


async def test_a_table_refuses_another_models_vectors(
    catalog: Catalog, queue: Queue, store: SQLiteStore
) -> None:
    await Pipeline(queue, store, HashEmbedder(64), settings()).prepare()
    other = Pipeline(queue, store, HashEmbedder(128), settings())
    with pytest.raises(
        ModelMismatch, match=r"'satchel-hash-v1-64'.*embedder is 'satchel-hash-v1-128'"
    ):
        await other.prepare()


async def test_workers_release_their_job_on_shutdown(tmp_path: Path, standin: Standin) -> None:
    url, state = standin
    state.faults = Faults(latency=0.5)  # every embed takes a while
    async with Catalog(tmp_path / "c.db") as catalog, SQLiteStore(tmp_path / "v.db") as store:
        queue = Queue(catalog, FAST)
        embedder = OllamaEmbedder(url)
        pipeline = Pipeline(queue, store, embedder, settings(workers=1))
        await pipeline.prepare()
        job_id = await queue.enqueue(Document("slow", "note", text="slow to embed"))
        async with anyio.create_task_group() as tg:
            await tg.start(pipeline.run)
            with anyio.fail_after(5):
                while (await queue.stats()).in_flight == 0:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # shutdown mid-job
        info = await queue.job(job_id)
        assert info is not None
        assert (info.state, info.attempts) == ("pending", 0)  # claimable at once, not counted
        await embedder.aclose()
