"""The pipeline's CPU-bound steps, as plain functions that can run in another process.

Extraction, chunking and hash embedding are pure Python and numpy work. Run in threads they
all queue for the daemon's one GIL, which also runs the event loop; run in worker processes
(`anyio.to_process`) they use the machine's other cores and leave the event loop responsive.
Each function takes and returns only picklable values and is importable at module level, as
worker processes require.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

from ingest.chunking import chunk_id, chunk_text
from ingest.documents import Document, extract

__all__ = ["PreparedText", "background_priority", "prepare_text"]

_lowered = False


def background_priority() -> None:
    """Lower this worker process's CPU priority, once.

    Workers do background work (extraction, embedding, parsing); the daemon's own process
    answers people (acknowledgements, searches). On a two-core machine, two busy workers would
    otherwise take the cores from the event loop: with a lower priority they still get every
    idle cycle, and yield when the daemon has a request to answer.
    """
    global _lowered  # noqa: PLW0603 - once per worker process
    if not _lowered:
        _lowered = True
        with contextlib.suppress(OSError):
            os.nice(10)


@dataclass(frozen=True, slots=True)
class PreparedText:
    """A document's text made ready to store: its hash, and its chunks by id (None: unchanged)."""

    content_hash: str
    title: str | None
    lang: str | None
    chunks: dict[str, str] | None


def prepare_text(payload: str, known_hash: str | None, budget: int, overlap: float) -> PreparedText:
    """Extract a queued document's text and chunk it, unless its hash equals `known_hash`.

    Raises `ingest.errors.InvalidDocument` or `ExtractionError` for a document that cannot work.
    """
    background_priority()
    document = Document.from_json(payload)
    extracted = extract(document)
    content_hash = hashlib.sha256(extracted.text.encode()).hexdigest()
    if content_hash == known_hash:
        return PreparedText(content_hash, extracted.title, extracted.lang, None)
    chunks: dict[str, str] = {}
    for chunk in chunk_text(extracted.text, budget=budget, overlap=overlap):
        # Identical chunks of one source share an id: keep the first.
        chunks.setdefault(chunk_id(document.source_id, chunk.text), chunk.text)
    return PreparedText(content_hash, extracted.title, extracted.lang, chunks)
