"""The socket API's routes, in process over ASGI, on real SQLite files.

Schemathesis generates requests from the published OpenAPI schema: no response may be a 5xx,
and every response must match the schema. The explicit tests check that bad input gets a 4xx
whose message names the field.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from daemon.api import create_app
from daemon.config import Config, FeedsConfig, resolve_paths
from daemon.core import Satchel
from daemon.feeds import Feeds, fetch_settings
from ingest.catalog import Catalog
from ingest.embed import HashEmbedder
from ingest.feedlist import FeedList
from ingest.fetch import Fetcher
from ingest.queue import Queue
from store import SQLiteStore

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


@asynccontextmanager
async def open_satchel(home: Path) -> AsyncIterator[Satchel]:
    """A `Satchel` on files under `home`, with the hash embedder and a small table."""
    # Generated feed URLs are fetched: a short timeout keeps a name that never resolves quick.
    config = Config(
        paths=resolve_paths({"SATCHEL_HOME": str(home)}), feeds=FeedsConfig(timeout_seconds=2.0)
    )
    async with (
        Catalog(home / "satchel.db") as catalog,
        SQLiteStore(home / "vectors.db") as store,
        Fetcher(fetch_settings(config)) as fetcher,
    ):
        queue = Queue(catalog)
        satchel = Satchel(config, store, catalog, queue)
        satchel.feeds = Feeds(config, FeedList(catalog), queue, fetcher, satchel.delete_source)
        embedder = HashEmbedder(32)
        satchel.embedding.embedder = embedder
        satchel.embedding.provider = satchel.embedding.state = "hash"
        await catalog.bind_table(satchel.table, embedder.model, 32)
        if satchel.table not in store.tables():
            await store.create_table(satchel.table, dim=32)
        yield satchel


class _Lifespan:
    """An ASGI app that opens a `Satchel` for its lifespan and serves `create_app` on it: the
    test client runs the app in its own event loop, where the resources must be opened."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.inner: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            async with open_satchel(self.home) as satchel:
                self.inner = create_app(satchel)
                await send({"type": "lifespan.startup.complete"})
                await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.inner is not None
        await self.inner(scope, receive, send)


# NDJSON bodies (import) are text on the wire.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
SCHEMA = schemathesis.openapi.from_asgi(
    "/openapi.json", _Lifespan(Path(tempfile.mkdtemp(prefix="satchel-api-")))
)


@SCHEMA.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_generated_requests_get_no_5xx_and_match_the_schema(case: Any) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ]
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with open_satchel(tmp_path) as satchel:
        transport = httpx.ASGITransport(app=create_app(satchel))
        async with httpx.AsyncClient(transport=transport, base_url="http://satchel") as c:
            yield c


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"query": "x", "top_k": 0}, 400, "top_k: expected a value from 1 to 1000, got 0"),
        ({"query": "x", "top_k": "5"}, 400, "top_k: expected integer, got '5'"),
        ({"query": "x", "top_k": True}, 400, "top_k: expected integer, got True"),
        ({"query": "x", "colour": 1}, 400, "colour: unknown field"),
        ({"query": "x", "vector": [1.0] * 32}, 400, "give exactly one of them"),
        ({}, 400, "give exactly one of them"),
        ({"vector": [1.0, 2.0]}, 400, "dimension"),
        ({"query": "x", "filter": "source_type = "}, 400, "filter"),
        ({"query": "x", "table": "no such"}, 400, "table: expected an identifier"),
        ({"query": "x", "table": "missing"}, 404, "missing"),
    ],
)
async def test_bad_searches_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, message: str
) -> None:
    response = await client.post("/search", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.anyio
async def test_bodies_must_be_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/search", content=b"query=x")
    assert response.status_code == 415
    assert "Content-Type" in response.json()["error"]
    response = await client.post(
        "/search", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("body: not valid JSON")


@pytest.mark.anyio
async def test_documents_are_acknowledged_with_a_committed_job(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/documents", json={"content": "hello", "tags": ["a"]})
    assert response.status_code == 202
    job = response.json()["job_id"]
    state = (await client.get(f"/jobs/{job}")).json()
    assert state["state"] == "pending"
    assert state["source_id"].startswith("text:")
    missing = await client.post("/documents", json={"title": "no content"})
    assert missing.status_code == 400
    assert missing.json()["error"] == "content: required, unless url names a page to fetch"
    bad_tag = await client.post("/documents", json={"content": "x", "tags": ["ok", 3]})
    assert bad_tag.json()["error"] == "tags[1]: expected string, got 3"


@pytest.mark.anyio
async def test_unknown_things_are_404_with_a_message(client: httpx.AsyncClient) -> None:
    for method, path, message in [
        ("GET", "/jobs/99", "job 99: no such job"),
        ("DELETE", "/records/nope", "record 'nope': no such record"),
        ("DELETE", "/sources/nope", "source 'nope': no such source"),
        ("GET", "/nowhere", "/nowhere: no such endpoint"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, path
        assert message in response.json()["error"]
    assert (await client.get("/jobs/x")).json()["error"] == "id: expected an integer, got 'x'"


@pytest.mark.anyio
async def test_export_then_import_round_trips_and_refuses_another_model(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    vectors = [[float(i == j) for j in range(32)] for i in range(3)]
    lines: list[dict[str, Any]] = [
        {"format": "satchel-export", "version": 1, "model": "satchel-hash-v1-32", "dim": 32},
        *(
            {
                "id": f"r{i}",
                "source_id": "s",
                "source_type": "note",
                "text_chunk": f"chunk {i}",
                "embedding": vector,
                "created_at": "2026-01-01T00:00:00Z",
                "tags": ["t"],
            }
            for i, vector in enumerate(vectors)
        ),
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    imported = await client.post("/import", content=body)
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"imported": 3}

    exported = (await client.get("/export")).content.decode().splitlines()
    header, *rows = (json.loads(line) for line in exported)
    assert header["model"] == "satchel-hash-v1-32"
    assert header["count"] == 3
    assert [row["id"] for row in rows] == ["r0", "r1", "r2"]
    assert rows[1]["embedding"] == vectors[1]

    found = await client.post("/search", json={"vector": vectors[2], "top_k": 1})
    assert found.json()["results"][0]["id"] == "r2"

    lines[0]["model"] = "nomic-embed-text"
    other = "\n".join(json.dumps(line) for line in lines).encode()
    refused = await client.post("/import", content=other)
    assert refused.status_code == 400
    assert "satchel-hash-v1-32" in refused.json()["error"]
