"""The local API: HTTP routes over `daemon.core.Satchel`, served on the Unix socket.

Every request body is checked against the schema that ``GET /openapi.json`` publishes
(`daemon.schema`), and every error is a JSON ``{"error": message}`` whose message names the
field or the thing that was wrong. Errors of our own kinds map to 4xx and 503 in one place,
`_errors`; anything else is logged with its traceback and answered with a plain 500, so no
traceback ever reaches a client.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from daemon.config import Config
from daemon.core import Conflict, NotFound, NotReady, Satchel
from daemon.feeds import Feeds, fetch_settings
from daemon.schema import OPENAPI, InvalidRequest, request_schema, validate
from ingest.documents import Document
from ingest.errors import IngestError, PermanentError, TransientError
from ingest.feedlist import NotSubscribed
from ingest.fetch import HTML_TYPES, FetchFailed, fetch
from ingest.opml import Subscription
from store import StoreError, UnknownTable

__all__ = ["MAX_JSON_BODY", "create_app"]

_log = logging.getLogger(__name__)

MAX_JSON_BODY: Final = 64 * 1024 * 1024
_MAX_IDS: Final = 1000

Handler = Callable[[Request], Awaitable[Response]]


def create_app(satchel: Satchel) -> Starlette:
    """The ASGI application for `satchel`."""

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def status(request: Request) -> Response:
        return JSONResponse(await satchel.status())

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def search(request: Request) -> Response:
        body = await _json_body(request, "/search")
        found = await satchel.search(
            query=body.get("query"),
            vector=body.get("vector"),
            top_k=body.get("top_k", 10),
            filter=body.get("filter"),
            table=body.get("table"),
        )
        return JSONResponse(
            {
                "results": found.results,
                "timing_ms": {
                    "embed": round(found.embed_ms, 3),
                    "search": round(found.search_ms, 3),
                },
                "warning": found.warning,
            }
        )

    async def documents(request: Request) -> Response:
        body = await _json_body(request, "/documents")
        if "content" not in body:
            if "url" not in body:
                raise InvalidRequest("content: required, unless url names a page to fetch")
            body = await _fetched(body, satchel.config)
        limit = satchel.config.ingest.max_document_bytes
        if len(body["content"].encode()) > limit:
            raise _TooLarge(f"content: larger than [ingest] max_document_bytes ({limit} bytes)")
        document = _document(body)
        job_id = await satchel.add_document(document)
        return JSONResponse({"job_id": job_id, "source_id": document.source_id}, status_code=202)

    async def job(request: Request) -> Response:
        job_id = _int_param(request.path_params["id"], "id")
        return JSONResponse(asdict(await satchel.job(job_id)))

    async def records(request: Request) -> Response:
        raw = request.query_params.get("ids")
        if not raw:
            raise InvalidRequest("ids: required (comma-separated record ids)")
        ids = [part for part in raw.split(",") if part]
        if len(ids) > _MAX_IDS:
            raise InvalidRequest(f"ids: expected at most {_MAX_IDS} ids, got {len(ids)}")
        return JSONResponse({"records": await satchel.records(ids, _table(request))})

    async def delete_record(request: Request) -> Response:
        record_id = request.path_params["id"]
        await satchel.delete_record(record_id, _table(request))
        return JSONResponse({"deleted": record_id})

    async def sources(request: Request) -> Response:
        limit = _int_param(request.query_params.get("limit", "100"), "limit", 1, 1000)
        after = request.query_params.get("after", "")
        return JSONResponse({"sources": await satchel.sources(after=after, limit=limit)})

    async def delete_source(request: Request) -> Response:
        source_id = request.path_params["id"]
        chunks = await satchel.delete_source(source_id)
        return JSONResponse({"deleted": source_id, "chunks": chunks})

    async def export(request: Request) -> Response:
        stream = satchel.export(_table(request))
        first = await anext(stream)  # errors (an unknown table) before the 200 is sent

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for line in stream:
                yield line

        return StreamingResponse(body(), media_type="application/x-ndjson")

    async def import_(request: Request) -> Response:
        imported = await satchel.import_lines(_lines(request), _table(request))
        return JSONResponse({"imported": imported})

    async def migration(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(satchel.migration())
        dry_run = (await _json_body(request, "/migration")).get("dry_run", False)
        answer = await satchel.migrate(dry_run=dry_run)
        return JSONResponse(answer, status_code=200 if dry_run else 202)

    async def rollback(request: Request) -> Response:
        return JSONResponse(await satchel.rollback())

    def feeds() -> Feeds:
        if satchel.feeds is None:
            raise NotReady("feeds are not running in this daemon")
        return satchel.feeds

    async def feed_list(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"feeds": await feeds().all()})
        if request.method == "DELETE":
            url = request.query_params.get("url")
            if not url:
                raise InvalidRequest("url: required (the feed's URL)")
            purge = request.query_params.get("purge", "false").lower()
            if purge not in ("true", "false"):
                raise InvalidRequest(f"purge: expected true or false, got {purge!r:.20}")
            return JSONResponse(await feeds().remove(url, purge=purge == "true"))
        body = await _json_body(request, "/feeds")
        added = await feeds().add(
            body["url"],
            title=body.get("title"),
            full_text=body.get("full_text"),
            discover=body.get("discover", True),
        )
        return JSONResponse(asdict(added), status_code=201 if added.added else 200)

    async def feed_import(request: Request) -> Response:
        body = await _json_body(request, "/feeds/import")
        subs = [Subscription(item["url"], item.get("title")) for item in body["feeds"]]
        return JSONResponse(await feeds().import_(subs))

    async def feed_refresh(request: Request) -> Response:
        body = await _json_body(request, "/feeds/refresh")
        return JSONResponse({"results": await feeds().refresh(body.get("url"))})

    async def feed_export(request: Request) -> Response:
        return Response(await feeds().opml(), media_type="text/x-opml")

    async def pairing_(request: Request) -> Response:
        if request.method == "POST":
            code, expires = satchel.pairing.new_code()
            return JSONResponse({"code": code, "expires_at": expires, "endpoint": satchel.browser})
        if request.method == "DELETE":
            origin = request.query_params.get("origin")
            if not origin:
                raise InvalidRequest("origin: required (as `satchel pair --list` shows it)")
            if not await satchel.pairing.revoke(origin):
                raise NotFound(f"origin {origin!r:.200}: not paired")
            return JSONResponse({"revoked": origin})
        browsers = [asdict(browser) for browser in await satchel.pairing.browsers()]
        return JSONResponse({"browsers": browsers, "endpoint": satchel.browser})

    routes = [
        Route("/health", _guard(health), methods=["GET"]),
        Route("/status", _guard(status), methods=["GET"]),
        Route("/openapi.json", _guard(openapi), methods=["GET"]),
        Route("/search", _guard(search), methods=["POST"]),
        Route("/documents", _guard(documents), methods=["POST"]),
        Route("/jobs/{id}", _guard(job), methods=["GET"]),
        Route("/records", _guard(records), methods=["GET"]),
        Route("/records/{id:path}", _guard(delete_record), methods=["DELETE"]),
        Route("/sources", _guard(sources), methods=["GET"]),
        Route("/sources/{id:path}", _guard(delete_source), methods=["DELETE"]),
        Route("/export", _guard(export), methods=["GET"]),
        Route("/import", _guard(import_), methods=["POST"]),
        Route("/migration", _guard(migration), methods=["GET", "POST"]),
        Route("/migration/rollback", _guard(rollback), methods=["POST"]),
        Route("/feeds", _guard(feed_list), methods=["GET", "POST", "DELETE"]),
        Route("/feeds/import", _guard(feed_import), methods=["POST"]),
        Route("/feeds/refresh", _guard(feed_refresh), methods=["POST"]),
        Route("/feeds/export", _guard(feed_export), methods=["GET"]),
        Route("/pairing", _guard(pairing_), methods=["GET", "POST", "DELETE"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})


def _guard(handler: Handler) -> Handler:
    """Map our errors to statuses with a JSON message (see the module docstring)."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except FetchFailed as exc:
            return _error(502, str(exc))
        except (InvalidRequest, PermanentError, ValueError) as exc:
            if isinstance(exc, UnknownTable):
                return _error(404, str(exc))
            return _error(400, str(exc))
        except (NotFound, UnknownTable, NotSubscribed) as exc:
            return _error(404, str(exc).strip("'\""))
        except (NotReady, TransientError) as exc:
            return _error(503, str(exc))
        except Conflict as exc:
            return _error(409, str(exc))
        except _TooLarge as exc:
            return _error(413, str(exc))
        except _WrongType as exc:
            return _error(415, str(exc))
        except (StoreError, IngestError) as exc:
            _log.error("%s %s: %s", request.method, request.url.path, exc)
            return _error(500, str(exc))
        except Exception:
            _log.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal error; the daemon's log has the details")

    return guarded


class _TooLarge(Exception):  # noqa: N818 - private, named for its status
    """413."""


class _WrongType(Exception):  # noqa: N818
    """415."""


async def _json_body(request: Request, path: str) -> dict[str, Any]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise _WrongType(f"Content-Type: expected application/json, got {kind or 'nothing'!r}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise _TooLarge(f"body: larger than {MAX_JSON_BODY} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise InvalidRequest(f"body: not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidRequest("body: nested too deeply") from None
    validate(body, request_schema(path, "post"))
    if not isinstance(body, dict):  # the schema says object; this tells mypy
        raise InvalidRequest("body: expected a JSON object")
    return body


async def _lines(request: Request) -> AsyncIterator[bytes]:
    """The request body split into lines, without holding more than one line at a time."""
    rest = b""
    async for chunk in request.stream():
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line
        if len(rest) > MAX_JSON_BODY:
            raise _TooLarge(f"body: a line longer than {MAX_JSON_BODY} bytes")
    if rest:
        yield rest


async def _fetched(body: dict[str, Any], config: Config) -> dict[str, Any]:
    """`body` with the content of its url, fetched through the guarded fetcher."""
    settings = fetch_settings(config)
    limit = min(settings.max_bytes, config.ingest.max_document_bytes)
    settings = replace(settings, max_bytes=limit)
    page = await fetch(body["url"], settings)
    kind = page.content_type.split(";")[0].strip().lower()
    if kind not in (*HTML_TYPES, "text/plain", "text/markdown", ""):
        raise InvalidRequest(f"url: {page.url} is {kind}, not a page of text or HTML")
    html = kind not in {"text/plain", "text/markdown"}
    return {**body, "content": page.text(), "format": "html" if html else "text"}


def _document(body: dict[str, Any]) -> Document:
    content: str = body["content"]
    url = body.get("url")
    source_id = body.get("source_id") or url
    if source_id is None:
        # Pasted text with no identity: the text is its identity, so adding it twice is one source.
        source_id = "text:" + hashlib.sha256(content.encode()).hexdigest()[:32]
    scheme = urlsplit(url).scheme.lower() if url else ""
    source_type = {"file": "file", "http": "page", "https": "page"}.get(scheme, "note")
    is_html = body.get("format") == "html"
    return Document(
        source_id=source_id,
        source_type=source_type,
        text=None if is_html else content,
        html=content if is_html else None,
        url=url,
        title=body.get("title"),
        tags=tuple(body.get("tags", ())),
    )


def _table(request: Request) -> str | None:
    table = request.query_params.get("table")
    if table is not None:
        validate(table, OPENAPI["paths"]["/export"]["get"]["parameters"][0]["schema"], "table")
    return table


def _int_param(raw: str, name: str, low: int = 1, high: int = 2**63 - 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: expected an integer, got {raw!r:.40}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name}: expected an integer from {low} to {high}, got {value}")
    return value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"{request.url.path}: no such endpoint (see GET /openapi.json)")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} {request.url.path}: method not allowed")
