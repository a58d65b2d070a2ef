"""The store implementations the conformance suite runs against, and record helpers.

Each implementation is a factory that opens a store on a directory; opening the same directory
again must show the same data (the reopen tests rely on it). The ``http-*`` openers start the
sidecar (``python -m store serve``) as a real child process on the directory and talk to it
through `HTTPStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from store.base import Record, VectorStore
from store.http import HTTPStore
from store.sqlite import SQLiteStore
from tests.store.sidecar import running_sidecar

StoreOpener = Callable[[Path], AbstractAsyncContextManager[VectorStore]]


@asynccontextmanager
async def open_sqlite(directory: Path) -> AsyncIterator[VectorStore]:
    async with SQLiteStore(directory / "vectors.db") as store:
        yield store


@asynccontextmanager
async def open_lance(directory: Path) -> AsyncIterator[VectorStore]:
    from store.lance import LanceStore  # noqa: PLC0415 - lancedb takes ~3.6 s to import

    async with LanceStore(directory / "lance") as store:
        yield store


@asynccontextmanager
async def open_http_sqlite(directory: Path) -> AsyncIterator[VectorStore]:
    async with (
        running_sidecar("sqlite", directory / "vectors.db") as sidecar,
        HTTPStore(sidecar.url, secret=sidecar.secret) as store,
    ):
        yield store


@asynccontextmanager
async def open_http_lance(directory: Path) -> AsyncIterator[VectorStore]:
    async with (
        running_sidecar("lance", directory / "lance") as sidecar,
        HTTPStore(sidecar.url, secret=sidecar.secret) as store,
    ):
        yield store


OPENERS: dict[str, StoreOpener] = {
    "sqlite": open_sqlite,
    "lance": open_lance,
    "http-sqlite": open_http_sqlite,
    "http-lance": open_http_lance,
}


@pytest.fixture(params=sorted(OPENERS))
def opener(request: pytest.FixtureRequest) -> StoreOpener:
    """How to open a store of each implementation on a directory."""
    return OPENERS[request.param]


@pytest.fixture
async def store(opener: StoreOpener, tmp_path: Path) -> AsyncIterator[VectorStore]:
    """A freshly opened, empty store of each implementation."""
    async with opener(tmp_path) as s:
        yield s


def record(
    id: str,
    vector: Sequence[float] | np.ndarray,
    *,
    source_id: str = "src",
    source_type: str = "page",
    text: str | None = None,
    created_at: str = "2024-05-01T12:00:00Z",
    tags: Sequence[str] = (),
) -> Record:
    """A record with sensible defaults for the fields a test does not care about."""
    return Record(
        id=id,
        source_id=source_id,
        source_type=source_type,
        text_chunk=f"text of {id}" if text is None else text,
        embedding=np.asarray(vector, np.float32),
        created_at=created_at,
        tags=list(tags),
    )


def random_records(n: int, dim: int, *, seed: int = 0, prefix: str = "r") -> list[Record]:
    """`n` records with random vectors and metadata spread over a few values per column."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    kinds = ["page", "feed", "note"]
    return [
        record(
            f"{prefix}{i:06d}",
            vectors[i],
            source_id=f"source-{i % 7}",
            source_type=kinds[i % 3],
            text=f"{'Chunk' if i % 2 else 'chunk'} {i} ünïcødé 文字 {('even', 'odd')[i % 2]}",
            created_at=f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
            tags=[f"t{i % 5}", *(["rust"] if i % 4 == 0 else [])],
        )
        for i in range(n)
    ]


def clustered(n: int, dim: int, *, seed: int = 0, clusters: int = 40) -> npt.NDArray[np.float32]:
    """Unit vectors around `clusters` random centres: shaped like real embeddings, where
    an IVF index has structure to find (uniform noise has none)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    unit: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


def records_of(vectors: npt.NDArray[np.float32], *, start: int = 0) -> list[Record]:
    return [
        record(
            f"r{start + i:06d}",
            v,
            source_type="feed" if (start + i) % 100 == 0 else "page",
            source_id=f"s{(start + i) % 10}",
        )
        for i, v in enumerate(vectors)
    ]
