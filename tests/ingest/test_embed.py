"""Embedders: the built-in lexical one, and the HTTP ones against the Ollama stand-in."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from ingest.embed import Embedder, HashEmbedder, OllamaEmbedder, OpenAIEmbedder, Prefixes
from ingest.errors import (
    EmbedderRejected,
    EmbedderUnavailable,
    ModelNotFound,
    PermanentError,
    TransientError,
)
from tests.ollama_standin import Faults, StandinState

pytestmark = pytest.mark.anyio

Standin = tuple[str, StandinState]


async def test_hash_embedder_is_deterministic_normalised_and_lexical() -> None:
    embedder = HashEmbedder(256)
    assert isinstance(embedder, Embedder)
    texts = [
        "tokio tasks stall when they never yield",
        "Tokio tasks STALL when they never yield!",
        "a recipe for sourdough bread with rye flour",
    ]
    vectors = await embedder.embed_documents(texts)
    assert vectors.shape == (3, 256)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(vectors, await HashEmbedder(256).embed_documents(texts))
    assert vectors[0] @ vectors[1] > 0.9  # same words, different case and punctuation
    assert vectors[0] @ vectors[2] < 0.3  # different words
    query = await embedder.embed_query("why do tokio tasks stall")
    assert query @ vectors[0] > query @ vectors[2]
    assert embedder.model == "satchel-hash-v1-256"


async def test_hash_embedder_gives_the_same_vectors_in_worker_processes() -> None:
    texts = [f"text number {i} " * 200 for i in range(20)]  # large enough to leave the thread
    in_process = await HashEmbedder(128).embed_documents(texts)
    elsewhere = await HashEmbedder(128, processes=True).embed_documents(texts)
    assert np.array_equal(in_process, elsewhere)


async def test_hash_embedder_copes_with_empty_and_huge_texts() -> None:
    embedder = HashEmbedder(64)
    vectors = await embedder.embed_documents(["", "a", "文" * 100_000])
    assert np.isfinite(vectors).all()
    assert np.linalg.norm(vectors[2]) == pytest.approx(1.0)


async def test_ollama_embedder_batches_and_adds_nomic_prefixes(standin: Standin) -> None:
    url, state = standin
    embedder = OllamaEmbedder(url, "nomic-embed-text", batch_size=3)
    try:
        assert await embedder.warm_up() == 768
        vectors = await embedder.embed_documents([f"text {i}" for i in range(7)])
        assert vectors.shape == (7, 768)
        assert state.stats.embed_requests == 1 + 3  # warm-up, then batches of 3, 3, 1
        assert state.stats.last_inputs == ["search_document: text 6"]
        query = await embedder.embed_query("question")
        assert query.shape == (768,)
        assert state.stats.last_inputs == ["search_query: question"]
        # The same text as query and as document differs by its prefix.
        document = (await embedder.embed_documents(["question"]))[0]
        assert not np.allclose(query, document)
    finally:
        await embedder.aclose()


async def test_prefixes_can_be_overridden(standin: Standin) -> None:
    url, state = standin
    embedder = OllamaEmbedder(url, "nomic-embed-text", prefixes=Prefixes("D: ", "Q: "))
    try:
        await embedder.embed_documents(["x"])
        assert state.stats.last_inputs == ["D: x"]
    finally:
        await embedder.aclose()


@pytest.mark.parametrize(
    ("faults", "error", "kind", "message"),
    [
        (
            Faults(embed_status=503, embed_status_count=1),
            EmbedderUnavailable,
            TransientError,
            "503",
        ),
        (
            Faults(embed_status=500, embed_status_count=1),
            EmbedderUnavailable,
            TransientError,
            "500",
        ),
        (
            Faults(embed_status=429, embed_status_count=1),
            EmbedderUnavailable,
            TransientError,
            "429",
        ),
        (Faults(embed_status=400, embed_status_count=1), EmbedderRejected, PermanentError, "400"),
        (Faults(drop_count=1), EmbedderUnavailable, TransientError, "cannot connect"),
        (Faults(latency=1.0), EmbedderUnavailable, TransientError, "timed out"),
    ],
)
async def test_ollama_errors_map_to_the_queue_kinds(
    standin: Standin, faults: Faults, error: type[Exception], kind: type[Exception], message: str
) -> None:
    url, state = standin
    state.faults = faults
    embedder = OllamaEmbedder(url, "nomic-embed-text", timeout=0.3)
    try:
        with pytest.raises(error, match=message) as info:
            await embedder.embed_documents(["hello"])
        assert isinstance(info.value, kind)
    finally:
        await embedder.aclose()


async def test_a_rejected_input_is_permanent(standin: Standin) -> None:
    url, _ = standin
    embedder = OllamaEmbedder(url)
    try:
        with pytest.raises(EmbedderRejected, match=r"refused the input.*rejected"):
            await embedder.embed_documents(["fine", "POISON-400 here"])
    finally:
        await embedder.aclose()


async def test_a_missing_model_is_reported_as_such(standin: Standin) -> None:
    url, _ = standin
    embedder = OllamaEmbedder(url, "all-minilm")
    try:
        with pytest.raises(ModelNotFound, match=r"'all-minilm' is not available.*try pulling it"):
            await embedder.embed_documents(["x"])
    finally:
        await embedder.aclose()


async def test_nothing_listening_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        embedder = OllamaEmbedder(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(EmbedderUnavailable, match="cannot connect"):
                await embedder.embed_documents(["x"])
            with pytest.raises(EmbedderUnavailable, match="dimension unknown"):
                _ = embedder.dim
        finally:
            await embedder.aclose()


async def test_openai_embedder_orders_by_index_and_sends_the_key(standin: Standin) -> None:
    url, state = standin
    embedder = OpenAIEmbedder(url, "nomic-embed-text", api_key="sk-test")
    try:
        vectors = await embedder.embed_documents(["alpha", "beta", "gamma"])
        # The stand-in answers in reverse order: the client must sort by "index".
        expected = HashEmbedder(768).embed_sync(
            [f"search_document: {t}" for t in ("alpha", "beta", "gamma")]
        )
        assert np.allclose(vectors, expected, atol=1e-6)
        assert state.stats.last_authorization == "Bearer sk-test"
        state.faults = Faults(embed_status=400, embed_status_count=1)
        with pytest.raises(EmbedderRejected, match="injected 400"):
            await embedder.embed_documents(["x"])
    finally:
        await embedder.aclose()
