"""Child process for the pipeline crash test.

Usage: python -m tests.ingest.crash_ingest DIR FIRST COUNT
Enqueues documents FIRST..FIRST+COUNT-1 (printing ``ack N`` once each is acknowledged) while
workers ingest them through a slowed-down Ollama stand-in; after the last, it drains the queue
and prints ``drained``. The parent SIGKILLs it whenever it likes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from ingest.catalog import Catalog
from ingest.documents import Document
from ingest.embed import OllamaEmbedder
from ingest.pipeline import Pipeline, PipelineSettings
from ingest.queue import Queue, QueueSettings
from store import SQLiteStore
from tests.ollama_standin import Faults, StandinState, running_standin

SETTINGS = PipelineSettings(workers=3, idle_poll_seconds=0.05, chunk_tokens=48, embed_batch=4)
# The kills here come from outside, every second or so; the guard against jobs that kill their
# worker (max_lost, tested in test_queue) would rightly give up on a job caught in several.
QUEUE = QueueSettings(lease_seconds=1.0, backoff_initial=0.05, backoff_max=0.2, max_lost=1000)


def text_of(n: int) -> str:
    """Document n: several paragraphs, so it makes several chunks and embedding batches."""
    return "\n\n".join(
        f"Document {n} paragraph {p}: " + " ".join(f"w{n}_{p}_{k}" for k in range(25))
        for p in range(6)
    )


async def main(directory: Path, first: int, count: int) -> None:
    state = StandinState(faults=Faults(latency=0.01))
    with running_standin(state) as (url, _):
        async with (
            Catalog(directory / "satchel.db") as catalog,
            SQLiteStore(directory / "vectors.db") as store,
        ):
            queue = Queue(catalog, QUEUE)
            embedder = OllamaEmbedder(url)
            pipeline = Pipeline(queue, store, embedder, SETTINGS)
            async with anyio.create_task_group() as tg:
                await tg.start(pipeline.run)
                for n in range(first, first + count):
                    await queue.enqueue(Document(f"doc-{n}", "note", text=text_of(n)))
                    print(f"ack {n}", flush=True)
                while (stats := await queue.stats()).pending or stats.in_flight:
                    await anyio.sleep(0.05)
                print("drained", flush=True)
                tg.cancel_scope.cancel()
            await embedder.aclose()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
