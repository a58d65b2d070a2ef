"""What the local API serves: one object over the store, the catalog, the queue and the embedder.

`Satchel` holds the daemon's open resources (opened and closed by `daemon.main`) and offers the
operations behind each endpoint: search (with the store's own latency recorded for status and
the migration trigger), documents in, records and sources out, export and import, and the
status report. It raises `NotFound`, `NotReady` or the store's and ingest's own errors; the API
maps them to status codes.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from daemon import __version__
from daemon.config import Config
from daemon.feeds import Feeds
from daemon.migration import Conflict, Migrations
from daemon.pairing import Pairing
from ingest.catalog import Catalog
from ingest.documents import Document
from ingest.embed import Embedder
from ingest.queue import JobInfo, Queue
from store import Record
from store.base import StoreError, VectorLike
from store.filter import In, to_text
from store.http import HTTPStore, ServedStore, record_from_json, record_to_json
from store.migrate import RoutedStore

__all__ = [
    "EXPORT_FORMAT",
    "Conflict",
    "EmbedderState",
    "NotFound",
    "NotReady",
    "Satchel",
    "SearchResult",
]

EXPORT_FORMAT: Final = "satchel-export"
_DELETE_BATCH: Final = 500
_IMPORT_BATCH: Final = 1000


class NotFound(LookupError):  # noqa: N818 - names read as facts, as in store.base
    """The record, source, job or table asked for does not exist."""


class NotReady(RuntimeError):  # noqa: N818
    """The daemon cannot do this yet (the embedder is still starting)."""


@dataclass(slots=True)
class EmbedderState:
    """Which embedder serves, and how it got there, for status and search warnings."""

    provider: str = "starting"  # ollama | openai | hash | starting
    model: str | None = None
    state: str = "starting"  # starting | ready | fallback | failed
    warning: str | None = None
    embedder: Embedder | None = None
    detail: Callable[[], dict[str, Any]] | None = None  # e.g. the Ollama manager's status

    def report(self) -> dict[str, Any]:
        """The JSON shape `status` shows."""
        report: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "state": self.state,
            "warning": self.warning,
        }
        if self.detail is not None:
            report["detail"] = self.detail()
        return report


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Results with their sources' url and title, and where the time went."""

    results: list[dict[str, Any]]
    embed_ms: float
    search_ms: float
    warning: str | None


@dataclass(slots=True)
class _Latency:
    window: int
    samples: deque[float] = field(default_factory=deque)

    def add(self, ms: float) -> None:
        self.samples.append(ms)
        while len(self.samples) > self.window:
            self.samples.popleft()

    def report(self) -> dict[str, float | int | None]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"count": 0, "p50_ms": None, "p95_ms": None}
        return {
            "count": len(ordered),
            "p50_ms": round(statistics.median(ordered), 3),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3),
        }


class Satchel:
    """The daemon's resources and the operations the API offers on them."""

    def __init__(
        self,
        config: Config,
        store: ServedStore,
        catalog: Catalog,
        queue: Queue,
        *,
        children: Callable[[], list[dict[str, Any]]] = list,
        migrations: Migrations | None = None,
        feeds: Feeds | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        self.queue = queue
        self.embedding = EmbedderState()
        self.started = time.time()
        self.table = config.retrieval.table
        self._children = children
        self._latency = _Latency(config.retrieval.latency_window)
        self.migrations = migrations
        self.feeds = feeds
        self.pairing = Pairing(catalog)
        # The browser endpoint's state for status: "listening" with its port, or why not.
        self.browser: dict[str, Any] = {"state": "off"}

    # -- search -------------------------------------------------------------------------------

    async def search(
        self,
        *,
        query: str | None,
        vector: Sequence[float] | None,
        top_k: int,
        filter: str | None,
        table: str | None,
    ) -> SearchResult:
        """Embed `query` (with the model's query prefix) or take `vector`; search the table."""
        if (query is None) == (vector is None):
            raise ValueError("query, vector: give exactly one of them")
        name = table or self.table
        embed_ms = 0.0
        target: VectorLike
        if vector is not None:
            target = vector
        else:
            embedder = self.embedding.embedder
            if embedder is None:
                raise NotReady("the embedder is still starting; search with a vector meanwhile")
            started = time.perf_counter()
            assert query is not None
            target = await embedder.embed_query(query)
            embed_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        found = await self.store.search(name, target, top_k, filter)
        search_ms = (time.perf_counter() - started) * 1000
        self._latency.add(search_ms)
        if self.migrations is not None:
            self.migrations.observe(name, search_ms)
        sources = await self.catalog.sources_by_id(list({r.source_id for r in found}))
        results = []
        for hit in found:
            source = sources.get(hit.source_id)
            results.append(
                _record_json(
                    hit,
                    score=hit.score,
                    url=source.url if source else None,
                    title=source.title if source else None,
                )
            )
        return SearchResult(results, embed_ms, search_ms, self.embedding.warning)

    # -- documents and jobs -------------------------------------------------------------------

    async def add_document(self, document: Document) -> int:
        """Queue `document`; return the job id once the job is committed."""
        return await self.queue.enqueue(document)

    async def job(self, job_id: int) -> JobInfo:
        """A job's state."""
        info = await self.queue.job(job_id)
        if info is None:
            raise NotFound(f"job {job_id}: no such job")
        return info

    # -- records and sources ------------------------------------------------------------------

    async def records(self, ids: Sequence[str], table: str | None) -> list[dict[str, Any]]:
        """The records with these ids that exist."""
        found = await self.store.get_by_ids(table or self.table, ids)
        return [_record_json(record) for record in found]

    async def delete_record(self, record_id: str, table: str | None) -> None:
        """Delete one record; `NotFound` if it was not there."""
        if not await self.store.delete(table or self.table, record_id):
            raise NotFound(f"record {record_id!r}: no such record")

    async def sources(self, *, after: str, limit: int) -> list[dict[str, Any]]:
        """A page of sources in id order."""
        return [asdict(source) for source in await self.catalog.sources(after=after, limit=limit)]

    async def delete_source(self, source_id: str) -> int:
        """Forget a source and delete its chunks; return how many chunks went."""
        if await self.catalog.source(source_id) is None:
            raise NotFound(f"source {source_id!r}: no such source")
        # The vectors first: if this is cut short, the source is still listed and `rm` can be
        # run again, rather than its chunks staying searchable with nothing pointing at them.
        ids = sorted(await self.catalog.chunk_ids(source_id))
        deleted = 0
        for start in range(0, len(ids), _DELETE_BATCH):
            where = to_text(In("id", tuple(ids[start : start + _DELETE_BATCH])))
            deleted += await self.store.delete_where(self.table, where)
        await self.catalog.forget_source(source_id)
        return deleted

    # -- export and import --------------------------------------------------------------------

    async def export(self, table: str | None) -> AsyncIterator[bytes]:
        """NDJSON: a header naming the model that made the vectors, then one record a line."""
        name = table or self.table
        binding = await self.catalog.table_binding(name)
        count = await self.store.count(name)  # raises UnknownTable
        header = {
            "format": EXPORT_FORMAT,
            "version": 1,
            "table": name,
            "model": binding.model if binding else None,
            "dim": binding.dim if binding else None,
            "count": count,
        }
        yield _line(header)
        async for batch in self.store.export_all(name):
            for record in batch:
                yield _line(record_to_json(record, as_base64=False))

    async def import_lines(self, lines: AsyncIterator[bytes], table: str | None) -> int:
        """Load an `export` stream; refuses a stream made by another model than the table's."""
        name = table or self.table
        header: dict[str, Any] | None = None
        batch: list[Record] = []
        imported = 0
        number = 0
        async for raw in lines:
            number += 1
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"line {number}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise ValueError(f"line {number}: expected a JSON object")
            if header is None:
                header = item
                await self._bind_import(name, header)
                continue
            try:
                batch.append(record_from_json(item))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"line {number}: {exc}") from None
            if len(batch) >= _IMPORT_BATCH:
                await self.store.insert(name, batch)
                imported += len(batch)
                batch = []
        if header is None:
            raise ValueError("body: empty; expected an export's header line")
        if batch:
            await self.store.insert(name, batch)
            imported += len(batch)
        return imported

    async def _bind_import(self, name: str, header: dict[str, Any]) -> None:
        if header.get("format") != EXPORT_FORMAT:
            raise ValueError(f"line 1: expected a {EXPORT_FORMAT} header, got {header!r:.80}")
        model, dim = header.get("model"), header.get("dim")
        if not isinstance(model, str) or not isinstance(dim, int) or isinstance(dim, bool):
            raise ValueError("line 1: the header lacks the model and dim that made the vectors")
        await self.catalog.bind_table(name, model, dim)  # raises ModelMismatch
        if name not in self.store.tables():
            await self.store.create_table(name, dim=dim)

    # -- migration ----------------------------------------------------------------------------

    def _migrations(self) -> Migrations:
        if self.migrations is None:
            backend = self.config.retrieval.backend
            raise Conflict(
                f'backend = "{backend}" is pinned and its data never migrated: '
                'set backend = "auto" to migrate'
            )
        return self.migrations

    def migration(self) -> dict[str, Any]:
        """The migration's progress (`satchel migrate --status`)."""
        return self._migrations().report()

    async def migrate(self, *, dry_run: bool) -> dict[str, Any]:
        """Start (or resume) the migration to LanceDB, or say what it would do."""
        return await self._migrations().start(dry_run=dry_run)

    async def rollback(self) -> dict[str, Any]:
        """Serve from SQLite again."""
        return await self._migrations().rollback()

    # -- status -------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Everything `satchel status` shows."""
        tables: dict[str, dict[str, Any]] = {}
        for name in self.store.tables():
            try:
                index = await self.store.index_status(name)
            except StoreError as exc:  # a sidecar restarting, say: status still answers
                tables[name] = {"count": None, "index": None, "error": str(exc)}
                continue
            tables[name] = {"count": index.rows, "index": asdict(index)}
        queue = await self.queue.stats()
        active = self.store.active if isinstance(self.store, RoutedStore) else self.store
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "backend": "lancedb" if isinstance(active, HTTPStore) else "sqlite",
            "sidecar": (
                {"url": active.base_url, "managed": not self.config.retrieval.lancedb_url}
                if isinstance(active, HTTPStore)
                else None
            ),
            "tables": tables,
            "embedder": self.embedding.report(),
            "children": self._children(),
            "queue": asdict(queue),
            "search_latency": self._latency.report(),
            "migration": None if self.migrations is None else self.migrations.report(),
            "feeds": None if self.feeds is None else await self.feeds.health(),
            "browser": {
                **self.browser,
                "paired": len(await self.pairing.browsers()),
            },
        }


def _record_json(record: Record, **extra: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "source_id": record.source_id,
        "source_type": record.source_type,
        "text_chunk": record.text_chunk,
        "created_at": record.created_at,
        "tags": list(record.tags),
        **extra,
    }


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
