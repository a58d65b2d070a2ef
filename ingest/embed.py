"""Embedders: turning chunk texts and queries into vectors.

`Embedder` is the seam; three implementations sit behind it:

- `OllamaEmbedder`: a local Ollama server's ``POST /api/embed``, batched.
- `OpenAIEmbedder`: any server that speaks OpenAI's ``POST /v1/embeddings``.
- `HashEmbedder`: built in, no model and no server. It hashes character n-grams into a fixed
  number of dimensions. It is *lexical*, not semantic: texts that share words and spellings
  score high, paraphrases do not. It is the fallback when no model server is available, and
  the test suite's embedder.

Models that were trained with task prefixes get them added here, so callers never think about
them: nomic-embed-text wants ``search_document: `` before what is stored and
``search_query: `` before what is asked (`KNOWN_PREFIXES`; overridable per embedder).

HTTP failures are translated once, in `_http_errors`, into the queue's two kinds (see
`ingest.errors`): 400 is `EmbedderRejected` (permanent); 404 is `ModelNotFound` (transient:
the daemon pulls the model); 5xx, timeouts and connection failures are `EmbedderUnavailable`.
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import anyio
import anyio.to_process
import httpx
import numpy as np
import numpy.typing as npt

from ingest.errors import EmbedderRejected, EmbedderUnavailable, ModelNotFound

__all__ = [
    "KNOWN_PREFIXES",
    "Embedder",
    "HashEmbedder",
    "OllamaEmbedder",
    "OpenAIEmbedder",
    "Prefixes",
]

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Prefixes:
    """Text a model expects before documents and before queries."""

    document: str = ""
    query: str = ""


_RETRIEVAL_QUERY: Final = "Represent this sentence for searching relevant passages: "
KNOWN_PREFIXES: Final[dict[str, Prefixes]] = {
    "nomic-embed-text": Prefixes("search_document: ", "search_query: "),
    "nomic-embed-text-v2-moe": Prefixes("search_document: ", "search_query: "),
    "mxbai-embed-large": Prefixes("", _RETRIEVAL_QUERY),
    "snowflake-arctic-embed": Prefixes("", _RETRIEVAL_QUERY),
}


def prefixes_for(model: str) -> Prefixes:
    """The prefixes of a known model (a tag such as ':latest' is ignored), else none."""
    return KNOWN_PREFIXES.get(model.split(":", 1)[0], Prefixes())


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of one model.

    `model` names the model (recorded with each table so vectors of different models never
    mix); `dim` is its dimension, known after `warm_up()`. `embed_documents` and `embed_query`
    apply the model's prefixes themselves. Errors are `ingest.errors` classes: transient ones
    (`EmbedderUnavailable`, `ModelNotFound`) are worth waiting for, `EmbedderRejected` is not.
    """

    @property
    def model(self) -> str:
        """The model's name."""
        ...

    @property
    def dim(self) -> int:
        """The vectors' dimension; raises `EmbedderUnavailable` before the first embedding."""
        ...

    async def warm_up(self) -> int:
        """Embed a probe text (loading the model) and return the dimension."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """One vector per text, as rows of a (len(texts), dim) array."""
        ...

    async def embed_query(self, text: str) -> Vectors:
        """The vector for a search query."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...


def _unit(rows: Vectors) -> Vectors:
    wide = rows.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    unit: Vectors = (wide / norms).astype(np.float32)
    return unit


# --------------------------------------------------------------------------------------------
# The built-in lexical embedder.


class HashEmbedder:
    """Feature hashing of character 3- and 5-grams into `dim` dimensions, L2-normalised.

    Deterministic across processes and machines (no Python `hash`, whose seed varies). Lexical,
    not semantic; see the module docstring.
    """

    def __init__(self, dim: int = 768, *, processes: bool = False) -> None:
        if dim < 16:
            raise ValueError(f"hash embedder dim: expected at least 16, got {dim}")
        self._dim = dim
        # Large batches go to worker processes: hashing is CPU work that would otherwise
        # share the event loop's GIL.
        self._processes = processes

    @property
    def model(self) -> str:
        """The model's name, with its dimension: vectors of two dims never share a table."""
        return f"satchel-hash-v1-{self._dim}"

    @property
    def dim(self) -> int:
        """The configured dimension."""
        return self._dim

    async def warm_up(self) -> int:
        """Nothing to load; returns the dimension."""
        return self._dim

    async def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """Hash each text; runs in a worker thread for large batches."""
        if sum(len(t) for t in texts) < 20_000:
            return self.embed_sync(texts)
        if self._processes:
            vectors: Vectors = await anyio.to_process.run_sync(hash_embed, list(texts), self._dim)
            return vectors
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts))

    async def embed_query(self, text: str) -> Vectors:
        """Queries and documents are hashed alike."""
        first: Vectors = self.embed_sync([text])[0]
        return first

    async def aclose(self) -> None:
        """Nothing to release."""

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """The embedding itself, synchronously."""
        out = np.zeros((len(texts), self._dim), np.float32)
        for row, text in enumerate(texts):
            out[row] = self._one(text)
        return _unit(out)

    def _one(self, text: str) -> Vectors:
        normal = " " + " ".join(unicodedata.normalize("NFKC", text).casefold().split()) + " "
        codes = np.frombuffer(normal.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        vector = np.zeros(self._dim, np.float32)
        for n, weight in ((3, 1.0), (5, 0.5)):
            if len(codes) < n:
                continue
            # A polynomial hash of each n-gram, then a 64-bit mix so that nearby n-grams land
            # far apart. uint64 arithmetic wraps, which is what a hash wants.
            h = np.zeros(len(codes) - n + 1, np.uint64)
            for i in range(n):
                h = h * np.uint64(1_000_003) + codes[i : len(codes) - n + 1 + i]
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(33)
            index = (h % np.uint64(self._dim)).astype(np.intp)
            sign = np.where((h >> np.uint64(63)) == 1, -weight, weight).astype(np.float32)
            vector += np.bincount(index, weights=sign, minlength=self._dim).astype(np.float32)
        return vector


def hash_embed(texts: list[str], dim: int) -> Vectors:
    """`HashEmbedder(dim).embed_sync(texts)`, as a module-level function for worker processes."""
    from ingest.cpu import background_priority  # noqa: PLC0415 - cpu imports this module's peers

    background_priority()
    return HashEmbedder(dim).embed_sync(texts)


# --------------------------------------------------------------------------------------------
# HTTP embedders.


@contextlib.contextmanager
def _http_errors(server: str) -> Iterator[None]:
    """Translate httpx failures into the queue's error kinds, chained."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise EmbedderUnavailable(f"{server}: timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise EmbedderUnavailable(f"{server}: cannot connect ({exc})") from exc


def _check_status(response: httpx.Response, server: str, model: str) -> None:
    if response.status_code < 400:
        return
    detail = _error_text(response)
    if response.status_code == 404:
        raise ModelNotFound(f"{server}: model {model!r} is not available ({detail})")
    if response.status_code >= 500 or response.status_code == 429:
        raise EmbedderUnavailable(f"{server}: HTTP {response.status_code} ({detail})")
    raise EmbedderRejected(f"{server}: HTTP {response.status_code} refused the input ({detail})")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str):
            return error[:200]
    return response.text[:200]


def _as_vectors(value: Any, count: int, server: str) -> Vectors:
    try:
        rows = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EmbedderUnavailable(f"{server}: malformed embeddings in the answer ({exc})") from exc
    if rows.ndim != 2 or rows.shape[0] != count or rows.shape[1] == 0:
        raise EmbedderUnavailable(
            f"{server}: expected {count} embeddings, got an array of shape {rows.shape}"
        )
    if not np.isfinite(rows).all():
        raise EmbedderUnavailable(f"{server}: the answer holds NaN or infinite values")
    return _unit(rows)


class _HTTPEmbedder:
    """What the two HTTP embedders share: a pooled client, batching, prefixes, the dimension."""

    server: str

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        batch_size: int,
        timeout: float,
        prefixes: Prefixes | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._model = model
        self._batch = batch_size
        self._prefixes = prefixes if prefixes is not None else prefixes_for(model)
        self._dim: int | None = None
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers, trust_env=False
        )

    @property
    def model(self) -> str:
        """The model's name."""
        return self._model

    @property
    def dim(self) -> int:
        """The dimension, learnt from the first answer."""
        if self._dim is None:
            raise EmbedderUnavailable(f"{self.server}: dimension unknown until warm_up()")
        return self._dim

    async def warm_up(self) -> int:
        """Embed a probe text (once: it loads the model and learns the dimension)."""
        if self._dim is None:
            await self.embed_documents(["warm-up"])
        return self.dim

    async def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """Batched; the document prefix is added."""
        prefixed = [self._prefixes.document + t for t in texts]
        parts = [
            await self._embed(prefixed[i : i + self._batch])
            for i in range(0, len(prefixed), self._batch)
        ]
        if not parts:
            return np.zeros((0, self._dim or 0), np.float32)
        return np.concatenate(parts)

    async def embed_query(self, text: str) -> Vectors:
        """The query prefix is added."""
        vectors = await self._embed([self._prefixes.query + text])
        first: Vectors = vectors[0]
        return first

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _embed(self, texts: list[str]) -> Vectors:
        raise NotImplementedError

    def _learn_dim(self, vectors: Vectors) -> Vectors:
        dim = int(vectors.shape[1])
        if self._dim is not None and dim != self._dim:
            raise EmbedderUnavailable(
                f"{self.server}: model {self._model!r} changed dimension from {self._dim} to "
                f"{dim}; was the model replaced?"
            )
        self._dim = dim
        return vectors


class OllamaEmbedder(_HTTPEmbedder):
    """Ollama's ``POST /api/embed`` with a batched ``input``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        model: str = "nomic-embed-text",
        *,
        batch_size: int = 32,
        timeout: float = 120.0,
        prefixes: Prefixes | None = None,
    ) -> None:
        self.server = f"Ollama at {base_url}"
        super().__init__(base_url, model, batch_size=batch_size, timeout=timeout, prefixes=prefixes)

    async def _embed(self, texts: list[str]) -> Vectors:
        with _http_errors(self.server):
            # truncate=False: the chunker already fits the context; a silent cut would lose
            # text, so an over-long input must fail loudly instead.
            response = await self._client.post(
                "/api/embed", json={"model": self._model, "input": texts, "truncate": False}
            )
        _check_status(response, self.server, self._model)
        try:
            body = response.json()
        except ValueError as exc:
            raise EmbedderUnavailable(f"{self.server}: answer is not JSON") from exc
        return self._learn_dim(_as_vectors(body.get("embeddings"), len(texts), self.server))


class OpenAIEmbedder(_HTTPEmbedder):
    """Any server speaking OpenAI's ``POST /v1/embeddings`` (with an optional API key)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        batch_size: int = 64,
        timeout: float = 120.0,
        prefixes: Prefixes | None = None,
    ) -> None:
        self.server = f"embedding server at {base_url}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(
            base_url,
            model,
            batch_size=batch_size,
            timeout=timeout,
            prefixes=prefixes,
            headers=headers,
        )

    async def _embed(self, texts: list[str]) -> Vectors:
        with _http_errors(self.server):
            response = await self._client.post(
                "/v1/embeddings", json={"model": self._model, "input": texts}
            )
        _check_status(response, self.server, self._model)
        try:
            data = response.json()["data"]
            ordered = sorted(data, key=lambda item: item["index"])
            vectors = [item["embedding"] for item in ordered]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderUnavailable(f"{self.server}: malformed answer ({exc!r})") from exc
        return self._learn_dim(_as_vectors(vectors, len(texts), self.server))
