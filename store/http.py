"""Both ends of the sidecar wire: `create_app(store)` serves a store, `HTTPStore` is its client.

The sidecar (``python -m store serve``) runs a store (LanceDB, which the daemon must never
import) in its own process on 127.0.0.1; the daemon reaches it through `HTTPStore`, which is a
`VectorStore` like any other. The routes are the seed's, so a client written from the seed
works unchanged: ``POST /tables`` ``{name, dim}``, ``POST /tables/{t}/records`` (records, or
``{"records": [...]}``), ``POST /tables/{t}/search`` ``{vector, topK | top_k, filter}``,
``DELETE /tables/{t}/records/{id}``, ``GET /tables/{t}/records`` (the export, streamed as
NDJSON, one ``{"records": [...]}`` line per batch), ``GET /tables/{t}/count``; and beside them
``GET /health``, ``GET /tables`` (names and dimensions), ``POST /tables/{t}/records/get``
``{ids}``, ``POST /tables/{t}/records/delete`` ``{filter}``, ``GET /tables/{t}/index`` and
``GET /tables/{t}/digests`` (each id and its content digest, NDJSON, for verification).
Records carry the seed's field names; ``tags`` is a list, and the seed's JSON-array string is
accepted too.

Vectors: measured for a batch of 1,000 x 768 records (encode and decode, both ends, CPython
3.11 on the 2-core development machine), plain JSON arrays take 634 + 284 = 918 ms and 16.2 MB;
base64 of little-endian float32 takes 32 + 24 = 56 ms and 4.4 MB, 16 times faster and exact. Arrow
IPC was not a candidate: the daemon end must not import pyarrow (~200 MB with lancedb). So a
client that sends ``X-Satchel-Vectors: f32-base64`` (as `HTTPStore` does) gets every vector as
a base64 string; others get JSON arrays. On input either form is accepted, by its JSON type.

Security: a request whose Host header is not allow-listed gets 403 before anything else is
looked at (DNS rebinding); then every request, ``/health`` included, needs
``Authorization: Bearer <secret>``, compared in constant time, else 401. Errors are
``{"error": {"code", "message", ...}}`` with the structured fields of the `StoreError`
subclass, which `HTTPStore` raises again as the same class with the same message. A search's
answer says how long the store itself took, ``Server-Timing: search;dur=<ms>``, so the hop's
cost can be told from the store's.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeVar
from urllib.parse import quote

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from store.base import (
    MAX_DIM,
    DimensionMismatch,
    IndexStatus,
    InvalidFilter,
    InvalidQuery,
    InvalidRecord,
    InvalidTableName,
    Record,
    ScoredRecord,
    StoreClosed,
    StoreError,
    TableExists,
    UnknownTable,
    Vector,
    VectorLike,
    VectorStore,
    check_dim,
    check_table_name,
    check_top_k,
    tags_from_json,
)
from store.columns import Columns

if TYPE_CHECKING:
    # Imported where used: the sidecar serves without the client, and httpx (which pulls in
    # its CLI's dependencies when they are installed) would add ~0.4 s to every start-up.
    import httpx

__all__ = [
    "MAX_BODY",
    "VECTORS_HEADER",
    "HTTPStore",
    "ServedStore",
    "bind_tcp",
    "create_app",
]

_log = logging.getLogger(__name__)

VECTORS_HEADER: Final = "X-Satchel-Vectors"
"""Request header asking for vectors as base64 little-endian float32 (value ``f32-base64``)."""
_BASE64: Final = "f32-base64"
MAX_BODY: Final = 512 * 1024 * 1024
"""Largest request body the sidecar reads."""
_OFFLOAD_BYTES: Final = 256 * 1024  # bodies this big are (de)coded in a worker thread
_NDJSON: Final = "application/x-ndjson"
RECORDS_BINARY: Final = "application/x-satchel-records"
"""Bulk inserts' content type: a 4-byte big-endian length, that many bytes of JSON
(``{"dim": D, "columns": {"id": [...], "source_id": [...], "source_type": [...],
"text_chunk": [...], "created_at": [...], "tags": ["[...]", ...]}}``: one list per field, tags
as JSON arrays in strings, as `store.columns.Columns` holds them), then the embeddings as one
row-major little-endian float32 matrix. It spares a 1,000 x 768 batch ~80 ms of base64 and JSON
work at each end (bench/lance.py), and columns spare building a `Record` per row
(bench/migrate.py); JSON bodies stay accepted."""

# One code and status per error class; a subclass missing here is reported as its nearest base.
_CODES: Final[dict[type[StoreError], tuple[str, int]]] = {
    UnknownTable: ("unknown_table", 404),
    TableExists: ("table_exists", 409),
    DimensionMismatch: ("dimension_mismatch", 400),
    InvalidTableName: ("invalid_table_name", 400),
    InvalidRecord: ("invalid_record", 400),
    InvalidFilter: ("invalid_filter", 400),
    InvalidQuery: ("invalid_query", 400),
    StoreClosed: ("store_closed", 503),
    StoreError: ("store_error", 500),
}
_T = TypeVar("_T")


class ServedStore(VectorStore, Protocol):
    """What the sidecar serves: a `VectorStore` that also lists its tables and says how each
    is searched."""

    def tables(self) -> dict[str, int]:
        """The tables and their dimensions."""
        ...

    async def index_status(self, table: str) -> IndexStatus:
        """How the table is searched: exactly, or by which index, and what it does not cover."""
        ...

    async def load_finished(self, table: str) -> None:
        """A bulk load into the table (a migration's copy) is over: index it now rather than
        wait to see it stop growing. Changes nothing a client can read; saying it twice is
        saying it once. Raises as `VectorStore`'s methods do (`UnknownTable`, `StoreClosed`,
        `StoreError` for a table that could not be opened)."""
        ...

    def digests(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every record's id and `store.base.content_digest`, in id order, in batches: what
        a migration's verification compares without moving the records themselves."""
        ...


# -- the wire format ----------------------------------------------------------------------------


def encode_vector(vector: Vector, *, as_base64: bool) -> str | list[float]:
    """A vector for the wire: base64 of little-endian float32, or a JSON array."""
    if as_base64:
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector.tolist()  # type: ignore[no-any-return]


def decode_vector(value: object, error: Callable[[str], StoreError]) -> object:
    """A base64 string becomes a float32 array; anything else is left for the caller to check."""
    if not isinstance(value, str):
        return value
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise error(
            "expected a JSON array of numbers or base64 float32, got a bad string"
        ) from None
    if len(raw) % 4:
        raise error(f"base64 float32 vector has {len(raw)} bytes, not a multiple of 4")
    return np.frombuffer(raw, dtype="<f4")


def record_to_json(record: Record, *, as_base64: bool) -> dict[str, Any]:
    """A record (with its score if it has one) as a JSON object with the seed's field names."""
    out: dict[str, Any] = {
        "id": record.id,
        "source_id": record.source_id,
        "source_type": record.source_type,
        "text_chunk": record.text_chunk,
        "embedding": encode_vector(record.embedding, as_base64=as_base64),
        "created_at": record.created_at,
        "tags": list(record.tags),
    }
    if isinstance(record, ScoredRecord):
        out["score"] = record.score
    return out


def record_from_json(value: object) -> Record:
    """A record from a JSON object (tags a list or a JSON-array string); validated."""
    fields = _record_fields(value, "embedding")
    embedding = decode_vector(value["embedding"], lambda m: InvalidRecord(f"embedding: {m}"))  # type: ignore[index]
    return Record(**fields, embedding=embedding)  # type: ignore[arg-type]


def _record_fields(value: object, *required: str) -> dict[str, Any]:
    """A record's JSON object without its embedding: its fields by name, tags decoded from the
    seed's JSON-array string when they come as one. Types are left to `Record` to check."""
    if not isinstance(value, dict):
        raise InvalidRecord(f"record: expected a JSON object, got {type(value).__name__}")
    missing = [f for f in ("id", *required, "created_at") if f not in value]
    if missing:
        raise InvalidRecord(f"record {value.get('id')!r}: missing {', '.join(missing)}")
    tags = value.get("tags", [])
    if isinstance(tags, str):  # the seed's wire kept tags as a JSON array in a string
        try:
            tags = tags_from_json(tags)
        except json.JSONDecodeError:
            raise InvalidRecord(f"tags: expected a JSON array of strings, got {tags!r}") from None
    fields = {
        name: value.get(name, "") for name in ("id", "source_id", "source_type", "text_chunk")
    }
    return {**fields, "created_at": value["created_at"], "tags": tags}


def columns_to_binary(columns: Columns) -> bytes:
    """A batch in the `RECORDS_BINARY` framing."""
    header = {
        "dim": columns.dim,
        "columns": {
            "id": columns.ids,
            "source_id": columns.source_ids,
            "source_type": columns.source_types,
            "text_chunk": columns.text_chunks,
            "created_at": columns.created_at,
            "tags": columns.tags,
        },
    }
    head = _dumps(header)
    matrix = columns.embeddings.astype("<f4", copy=False)
    return b"".join([len(head).to_bytes(4, "big"), head, matrix.tobytes()])


def columns_from_binary(body: bytes) -> Columns:
    """A batch from the `RECORDS_BINARY` framing, checked; InvalidRecord names what is wrong."""
    if len(body) < 4:
        raise InvalidRecord("binary records: body shorter than its 4-byte header length")
    size = int.from_bytes(body[:4], "big")
    try:
        header = json.loads(body[4 : 4 + size])
    except (ValueError, RecursionError) as exc:
        raise InvalidRecord(f"binary records: header is not JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("columns"), dict):
        raise InvalidRecord("binary records: header must be an object with a 'columns' object")
    fields, dim = header["columns"], header.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise InvalidRecord(
            f"binary records: dim: expected an integer from 1 to {MAX_DIM}, got {dim!r:.80}"
        )
    ids = fields.get("id")
    if not isinstance(ids, list):
        raise InvalidRecord(f"binary records: column 'id': expected a list, got {ids!r:.80}")
    vectors = body[4 + size :]
    if len(vectors) != len(ids) * dim * 4:
        raise InvalidRecord(
            f"binary records: {len(ids)} records of dim {dim} need {len(ids) * dim * 4} "
            f"bytes of float32, got {len(vectors)}"
        )
    matrix = np.frombuffer(vectors, dtype="<f4").reshape(len(ids), dim)  # read-only
    try:
        return Columns.checked(fields, matrix)
    except InvalidRecord as exc:
        raise InvalidRecord(f"binary records: {exc}") from None


def scored_from_json(value: dict[str, Any]) -> ScoredRecord:
    """A search result from its JSON object."""
    score = value.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise InvalidRecord(f"score: expected a number, got {score!r}")
    return record_from_json(value).with_score(float(score))


def error_body(exc: StoreError) -> dict[str, Any]:
    """The JSON error for a store error: its code, message and structured fields."""
    code = next(_CODES[c][0] for c in type(exc).__mro__ if c in _CODES)
    body: dict[str, Any] = {"code": code, "message": str(exc)}
    if isinstance(exc, UnknownTable | TableExists | DimensionMismatch):
        body["table"] = exc.table
    if isinstance(exc, TableExists):
        body["dim"] = exc.dim
    if isinstance(exc, DimensionMismatch):
        body.update(expected=exc.expected, got=exc.got)
    if isinstance(exc, InvalidTableName):
        body["name"] = exc.name if isinstance(exc.name, str) else repr(exc.name)
    if isinstance(exc, InvalidFilter):
        body.update(text=exc.text, position=exc.position, reason=exc.message)
    return {"error": body}


def error_from_body(body: object, where: str) -> StoreError:
    """The `StoreError` subclass an error body describes, with the server's exact message."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return StoreError(f"{where}: unexpected error answer {str(body)[:200]!r}")
    code, message = error.get("code"), error["message"]
    exc: StoreError
    try:
        match code:
            case "unknown_table":
                exc = UnknownTable(str(error["table"]))
            case "table_exists":
                exc = TableExists(str(error["table"]), int(error["dim"]))
            case "dimension_mismatch":
                exc = DimensionMismatch(
                    str(error["table"]), int(error["expected"]), int(error["got"])
                )
            case "invalid_table_name":
                exc = InvalidTableName(error.get("name"))
            case "invalid_filter":
                exc = InvalidFilter(str(error["text"]), int(error["position"]), error["reason"])
            case "invalid_record":
                exc = InvalidRecord(message)
            case "invalid_query":
                exc = InvalidQuery(message)
            case "store_closed":
                exc = StoreClosed(f"store behind {where}")
            case _:
                return StoreError(f"{where}: {message}")
    except (KeyError, TypeError, ValueError):
        return StoreError(f"{where}: malformed {code} error: {message}")
    exc.args = (message,)  # the server's words: e.g. which kind of vector mismatched
    return exc


def _size(records: Sequence[Record]) -> int:
    """About how many bytes `records` take as JSON with base64 vectors."""
    return len(records) * (records[0].dim * 6 + 200) if records else 0


async def _offload(size: int, fn: Callable[[], _T]) -> _T:
    """Run `fn` in a worker thread when its input is big enough to stall the event loop."""
    return await anyio.to_thread.run_sync(fn) if size >= _OFFLOAD_BYTES else fn()


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


# -- the server ---------------------------------------------------------------------------------


class _BadRequestError(Exception):
    """A request the sidecar cannot read: its message goes back with a 400."""


def _error_response(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class _Guard:
    """Host allow-list first (403), then the bearer secret in constant time (401)."""

    def __init__(self, app: ASGIApp, secret: str, allowed_hosts: set[str]) -> None:
        self.app = app
        self.secret = secret.encode()
        self.allowed_hosts = {host.lower().encode("latin-1") for host in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here: refused before anything else
            await send({"type": "websocket.close", "code": 1008})
            return
        hosts = [v.lower() for k, v in scope["headers"] if k == b"host"]
        auths = [v for k, v in scope["headers"] if k == b"authorization"]
        # Exactly one of each: with two, which one a proxy or framework reads is anyone's guess.
        if len(hosts) != 1 or hosts[0] not in self.allowed_hosts:
            response = _error_response(403, "forbidden", "Host header not allowed")
        else:
            scheme, _, token = auths[0].partition(b" ") if len(auths) == 1 else (b"", b"", b"")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.secret):
                await self.app(scope, receive, send)
                return
            response = _error_response(401, "unauthorized", "missing or wrong bearer secret")
            response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


async def _body(request: Request) -> Any:
    raw = await _raw_body(request)
    try:
        return await _offload(len(raw), lambda: json.loads(raw))
    except (ValueError, RecursionError) as exc:
        raise _BadRequestError(f"body: expected JSON ({exc})") from None


async def _raw_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _BadRequestError(f"body of {declared} bytes exceeds the limit of {MAX_BODY}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _BadRequestError(f"body exceeds the limit of {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _field(body: Any, name: str, kind: type | tuple[type, ...], *aliases: str) -> Any:
    if not isinstance(body, dict):
        raise _BadRequestError(f"body: expected a JSON object, got {type(body).__name__}")
    for key in (name, *aliases):
        if key in body:
            if not isinstance(body[key], kind):
                raise _BadRequestError(f"{key}: expected {kind}, got {type(body[key]).__name__}")
            return body[key]
    raise _BadRequestError(f"body: missing {name!r}")


def create_app(store: ServedStore, *, secret: str, allowed_hosts: set[str]) -> ASGIApp:
    """The sidecar's ASGI application serving `store`, guarded by `secret` and `allowed_hosts`."""
    if not secret:
        raise ValueError("create_app() needs a non-empty secret")

    def wants_base64(request: Request) -> bool:
        return request.headers.get(VECTORS_HEADER, "").lower() == _BASE64

    async def respond(request: Request, records: Sequence[Record], key: str) -> Response:
        b64 = wants_base64(request)
        body = await _offload(
            _size(records),
            lambda: _dumps({key: [record_to_json(r, as_base64=b64) for r in records]}),
        )
        return Response(body, media_type="application/json")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_tables(request: Request) -> Response:
        tables = [{"name": n, "dim": d} for n, d in store.tables().items()]
        return JSONResponse({"tables": tables})

    async def create_table(request: Request) -> Response:
        body = await _body(request)
        name, dim = _field(body, "name", str), _field(body, "dim", object)
        await store.create_table(name, dim=dim)
        return JSONResponse({"name": name, "dim": dim}, status_code=201)

    async def insert(request: Request) -> Response:
        size = int(request.headers.get("content-length", "0") or 0)
        if request.headers.get("content-type", "").startswith(RECORDS_BINARY):
            raw = await _raw_body(request)
            records: Sequence[Record] = await _offload(size, lambda: columns_from_binary(raw))
        else:
            body = await _body(request)
            items = body if isinstance(body, list) else _field(body, "records", list)
            records = await _offload(size, lambda: [record_from_json(i) for i in items])
        await store.insert(request.path_params["table"], records)
        return JSONResponse({"upserted": len(records)})

    async def search(request: Request) -> Response:
        body = await _body(request)
        vector = decode_vector(
            _field(body, "vector", (list, str)), lambda m: InvalidQuery(f"query vector: {m}")
        )
        top_k = _field(body, "topK", object, "top_k")
        text = body.get("filter")
        if text is not None and not isinstance(text, str):
            raise _BadRequestError(f"filter: expected a string or null, got {type(text).__name__}")
        started = time.perf_counter()
        hits = await store.search(request.path_params["table"], vector, top_k, text or None)  # type: ignore[arg-type]
        took = time.perf_counter() - started
        response = await respond(request, hits, "results")
        # The store's own time, so a client can tell it from the hop's (bench/lance.py does).
        response.headers["Server-Timing"] = f"search;dur={took * 1000:.3f}"
        return response

    async def get_by_ids(request: Request) -> Response:
        ids = _field(await _body(request), "ids", list)
        if not all(isinstance(i, str) for i in ids):
            raise _BadRequestError("ids: expected a list of strings")
        return await respond(
            request, await store.get_by_ids(request.path_params["table"], ids), "records"
        )

    async def delete(request: Request) -> Response:
        deleted = await store.delete(request.path_params["table"], request.path_params["id"])
        return JSONResponse({"deleted": deleted})

    async def delete_where(request: Request) -> Response:
        text = _field(await _body(request), "filter", str)
        return JSONResponse(
            {"deleted": await store.delete_where(request.path_params["table"], text)}
        )

    async def count(request: Request) -> Response:
        return JSONResponse({"count": await store.count(request.path_params["table"])})

    async def index_status(request: Request) -> Response:
        return JSONResponse(asdict(await store.index_status(request.path_params["table"])))

    async def load_finished(request: Request) -> Response:
        await store.load_finished(request.path_params["table"])
        return JSONResponse({"ok": True})

    def batch_size(request: Request) -> int:
        raw = request.query_params.get("batch_size", "1000")
        if not raw.isdigit():
            raise InvalidQuery(f"batch_size: expected a positive integer, got {raw!r}")
        return int(raw)

    async def export(request: Request) -> Response:
        b64 = wants_base64(request)
        batches = store.export_all(request.path_params["table"], batch_size=batch_size(request))

        def line(batch: list[Record]) -> bytes:
            return _dumps({"records": [record_to_json(r, as_base64=b64) for r in batch]}) + b"\n"

        return await streamed(batches, line, _size)

    async def digests(request: Request) -> Response:
        batches = store.digests(request.path_params["table"], batch_size=batch_size(request))

        def line(batch: list[tuple[str, bytes]]) -> bytes:
            return _dumps({"digests": [[i, digest.hex()] for i, digest in batch]}) + b"\n"

        return await streamed(batches, line, lambda batch: 64 * len(batch))

    async def streamed(
        source: AsyncIterator[_T], line: Callable[[_T], bytes], size: Callable[[_T], int]
    ) -> Response:
        """`source`'s batches as NDJSON, one line each."""
        batches = aiter(source)
        # The first batch is read before answering, so an unknown table still gets its 404.
        first = await anext(batches, None)

        async def lines() -> AsyncIterator[bytes]:
            try:
                if first is None:
                    return
                yield await _offload(size(first), lambda: line(first))
                async for batch in batches:
                    yield await _offload(size(batch), lambda: line(batch))  # noqa: B023
            except StoreError as exc:
                # The status is sent already: the error becomes the stream's last line.
                yield _dumps(error_body(exc)) + b"\n"
            finally:
                await batches.aclose()  # type: ignore[attr-defined]

        return StreamingResponse(lines(), media_type=_NDJSON)

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            try:
                response: Response = await handler(request)
                return response
            except StoreError as exc:
                body = error_body(exc)
                status = next(_CODES[c][1] for c in type(exc).__mro__ if c in _CODES)
                if status >= 500:
                    _log.warning("%s %s: %s", request.method, request.url.path, exc)
                return JSONResponse(body, status_code=status)
            except _BadRequestError as exc:
                return _error_response(400, "bad_request", str(exc))

        return run

    table = "/tables/{table}"
    routes = [
        Route("/health", guarded(health), methods=["GET"]),
        Route("/tables", guarded(list_tables), methods=["GET"]),
        Route("/tables", guarded(create_table), methods=["POST"]),
        Route(f"{table}/records", guarded(insert), methods=["POST"]),
        Route(f"{table}/records", guarded(export), methods=["GET"]),
        Route(f"{table}/digests", guarded(digests), methods=["GET"]),
        Route(f"{table}/records/get", guarded(get_by_ids), methods=["POST"]),
        Route(f"{table}/records/delete", guarded(delete_where), methods=["POST"]),
        Route(f"{table}/records/{{id:path}}", guarded(delete), methods=["DELETE"]),
        Route(f"{table}/search", guarded(search), methods=["POST"]),
        Route(f"{table}/count", guarded(count), methods=["GET"]),
        Route(f"{table}/index", guarded(index_status), methods=["GET"]),
        Route(f"{table}/loaded", guarded(load_finished), methods=["POST"]),
    ]
    return _Guard(Starlette(routes=routes), secret, allowed_hosts)


# -- the client ---------------------------------------------------------------------------------


def _retryable() -> tuple[type[httpx.HTTPError], ...]:
    """Failures after which the request probably never ran: worth a retry when the call is
    idempotent. A read timeout is not among them: the server may still be working on it."""
    import httpx  # noqa: PLC0415 - see the import at the top

    return (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout)


_SEARCH_TIMING: Final = re.compile(r"(?:^|,)\s*search\s*;\s*dur\s*=\s*(\d+(?:\.\d+)?)")


def _server_ms(header: str) -> float | None:
    """The search's duration in a ``Server-Timing: search;dur=5.8`` header, or None."""
    found = _SEARCH_TIMING.search(header)
    return float(found.group(1)) if found else None


class HTTPStore:
    """A `VectorStore` served by a sidecar at `base_url` (``http://127.0.0.1:PORT``).

    ``async with HTTPStore(url, secret=...) as store: ...``. One pooled `httpx.AsyncClient`;
    idempotent calls (everything but `create_table` and `delete_where`) are retried `retries`
    times with a short backoff after a connection failure or a 503. Transport failures raise
    `StoreError` naming the sidecar's URL; the sidecar's errors raise the same `StoreError`
    subclasses the store behind it raised. Argument errors that need no data (table names,
    dimensions, top_k, batch sizes, types) are raised here without a round trip.
    """

    def __init__(
        self,
        base_url: str,
        *,
        secret: str,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.1,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._client: httpx.AsyncClient | None = None
        self._tables: dict[str, int] = {}
        self._closed = False
        # The store's own milliseconds for the last call: a search's Server-Timing, else None.
        # The round trip minus this is the hop's cost (bench/lance.py reports it). With calls
        # in flight from several tasks at once, it is whichever answered last.
        self.server_ms: float | None = None

    def __repr__(self) -> str:
        return f"HTTPStore({self.base_url!r})"  # never the secret

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect and read the table list (which checks the URL and the secret)."""
        if self._closed:
            raise StoreClosed("HTTP store")
        if self._client is not None:
            return
        import httpx  # noqa: PLC0415 - see the import at the top

        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._secret}", VECTORS_HEADER: _BASE64},
            timeout=self._timeout,
            trust_env=False,  # a proxy from the environment must never see the secret
        )
        try:
            await self.refresh_tables()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    # -- helpers ------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._closed or self._client is None:
            raise StoreClosed("HTTP store")
        return self._client

    def _path(self, table: str, suffix: str = "") -> str:
        self._http()
        return f"/tables/{check_table_name(table)}{suffix}"

    def _transport_error(self, operation: str, exc: httpx.HTTPError) -> StoreError:
        if self._closed:
            return StoreClosed("HTTP store")
        return StoreError(f"sidecar at {self.base_url}: {operation} failed: {exc!r}")

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: object = None,
        size: int = 0,
        content: tuple[bytes, str] | None = None,
        idempotent: bool = True,
    ) -> Any:
        """One request with retries; the decoded JSON answer, or the error it stands for.
        The request carries `body` as JSON, or `content` as (bytes, content type)."""
        import httpx  # noqa: PLC0415 - see the import at the top

        client = self._http()
        self.server_ms = None
        if body is not None:
            content = (await _offload(size, lambda: _dumps(body)), "application/json")
        attempts = 1 + (self._retries if idempotent else 0)
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                response = await client.request(
                    method,
                    path,
                    content=content[0] if content else None,
                    headers={"Content-Type": content[1]} if content else None,
                )
            except _retryable() as exc:
                if last or self._closed:
                    raise self._transport_error(operation, exc) from exc
            except httpx.HTTPError as exc:
                raise self._transport_error(operation, exc) from exc
            else:
                if response.status_code != 503 or last:
                    return await self._decode(response, operation)
            await anyio.sleep(self._backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _decode(self, response: httpx.Response, operation: str) -> Any:
        self.server_ms = _server_ms(response.headers.get("server-timing", ""))
        try:
            answer = await _offload(len(response.content), response.json)
        except ValueError:
            answer = None
        if response.is_success and answer is not None:
            return answer
        if answer is None:
            raise StoreError(
                f"sidecar at {self.base_url}: {operation} got HTTP {response.status_code} "
                f"{response.text[:200]!r}"
            )
        raise error_from_body(answer, f"sidecar at {self.base_url}")

    async def _records(self, answer: Any, key: str, build: Callable[[Any], _T]) -> list[_T]:
        items = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(items, list):
            raise StoreError(f"sidecar at {self.base_url}: expected {key!r} in its answer")
        return await _offload(len(items) * 1024, lambda: [build(i) for i in items])

    # -- the contract -------------------------------------------------------------------------

    def tables(self) -> dict[str, int]:
        """The tables and their dimensions, as last listed (see `refresh_tables`)."""
        self._http()
        return dict(sorted(self._tables.items()))

    async def refresh_tables(self) -> dict[str, int]:
        """Ask the sidecar for its tables; `tables()` shows them from then on."""
        answer = await self._call("list tables", "GET", "/tables")
        try:
            self._tables = {str(t["name"]): int(t["dim"]) for t in answer["tables"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"sidecar at {self.base_url}: malformed table list") from exc
        return self.tables()

    async def create_table(self, name: str, *, dim: int) -> None:
        """See `VectorStore.create_table`."""
        self._http()
        check_table_name(name)
        check_dim(dim)
        body = {"name": name, "dim": dim}
        await self._call("create_table", "POST", "/tables", body=body, idempotent=False)
        self._tables[name] = dim

    async def insert(self, table: str, records: Sequence[Record]) -> None:
        """See `VectorStore.insert`."""
        path = self._path(table, "/records")
        if not records:
            await self.count(table)  # still raises UnknownTable, like the other stores
            return
        if not isinstance(records, Columns):
            for record in records:
                if not isinstance(record, Record):
                    raise TypeError(f"insert() takes Records, got {type(record).__name__}")
            dims = {r.dim for r in records}
            if len(dims) > 1:  # the framing holds one matrix; let the sidecar name the mismatch
                payload = [record_to_json(r, as_base64=True) for r in records]
                size = _size(records)
                await self._call("insert", "POST", path, body={"records": payload}, size=size)
                return
            records = Columns.from_records(records, dims.pop())
        batch = records
        content = await _offload(_size(batch), lambda: columns_to_binary(batch))
        await self._call("insert", "POST", path, content=(content, RECORDS_BINARY))

    async def search(
        self, table: str, vector: VectorLike, top_k: int, filter: str | None = None
    ) -> list[ScoredRecord]:
        """See `VectorStore.search`."""
        path = self._path(table, "/search")
        check_top_k(top_k)
        try:
            with np.errstate(over="ignore"):  # beyond float32: infinity, refused by the store
                array = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidQuery(f"query vector: expected a sequence of numbers ({exc})") from None
        if array.ndim != 1:
            raise InvalidQuery(f"query vector: expected a 1-D vector, got shape {array.shape}")
        if filter is not None and not isinstance(filter, str):
            raise TypeError(f"filter: expected a string, got {type(filter).__name__}")
        # base64 float32: exact, and carries the infinities JSON cannot (the store refuses them).
        body = {"vector": encode_vector(array, as_base64=True), "topK": top_k, "filter": filter}
        answer = await self._call("search", "POST", path, body=body)
        return await self._records(answer, "results", scored_from_json)

    async def get_by_ids(self, table: str, ids: Sequence[str]) -> list[Record]:
        """See `VectorStore.get_by_ids`."""
        path = self._path(table, "/records/get")
        if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
            raise TypeError("get_by_ids() takes a sequence of id strings")
        answer = await self._call("get_by_ids", "POST", path, body={"ids": list(ids)})
        return await self._records(answer, "records", record_from_json)

    async def delete(self, table: str, id: str) -> bool:
        """See `VectorStore.delete`."""
        path = self._path(table, "/records/")
        if not isinstance(id, str):
            raise TypeError(f"delete() takes one id string, got {type(id).__name__}")
        answer = await self._call("delete", "DELETE", path + quote(id, safe=""))
        return bool(answer.get("deleted"))

    async def delete_where(self, table: str, filter: str) -> int:
        """See `VectorStore.delete_where`. Not retried: a second run would count 0."""
        path = self._path(table, "/records/delete")
        if not isinstance(filter, str):
            raise TypeError(f"filter: expected a string, got {type(filter).__name__}")
        body = {"filter": filter}
        answer = await self._call("delete_where", "POST", path, body=body, idempotent=False)
        return int(answer["deleted"])

    async def count(self, table: str) -> int:
        """See `VectorStore.count`."""
        answer = await self._call("count", "GET", self._path(table, "/count"))
        return int(answer["count"])

    async def index_status(self, table: str) -> IndexStatus:
        """See `ServedStore.index_status`."""
        answer = await self._call("index_status", "GET", self._path(table, "/index"))
        try:
            return IndexStatus(
                kind=str(answer["kind"]),
                state=str(answer["state"]),
                rows=int(answer["rows"]),
                unindexed_rows=int(answer["unindexed_rows"]),
                error=None if answer.get("error") is None else str(answer["error"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"sidecar at {self.base_url}: malformed index status") from exc

    async def load_finished(self, table: str) -> None:
        """See `ServedStore.load_finished`. Retried: saying it twice is saying it once."""
        await self._call("load_finished", "POST", self._path(table, "/loaded"))

    async def export_all(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[Record]]:
        """See `VectorStore.export_all`. One streamed request; one NDJSON line per batch."""
        lines = self._lines("export_all", table, "/records", batch_size)
        async with contextlib.aclosing(lines):  # a bad batch closes the response at once
            async for answer in lines:
                yield await self._records(answer, "records", record_from_json)

    async def digests(
        self, table: str, *, batch_size: int = 1000
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """See `ServedStore.digests`. One streamed request; one NDJSON line per batch."""
        lines = self._lines("digests", table, "/digests", batch_size)
        async with contextlib.aclosing(lines):  # a bad line closes the response at once
            async for answer in lines:
                pairs = answer.get("digests") if isinstance(answer, dict) else None
                try:
                    batch = [(str(i), bytes.fromhex(digest)) for i, digest in pairs]  # type: ignore[union-attr]
                except (TypeError, ValueError) as exc:
                    raise StoreError(
                        f"sidecar at {self.base_url}: digests: bad line, expected "
                        f"{{'digests': [[id, hex], ...]}} ({exc})"
                    ) from None
                yield batch

    async def _lines(
        self, operation: str, table: str, route: str, batch_size: int
    ) -> AsyncGenerator[Any, None]:
        """A streamed GET's NDJSON lines, decoded; an error line is raised as its error."""
        import httpx  # noqa: PLC0415 - see the import at the top

        path = self._path(table, route)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidQuery(f"batch_size: expected a positive integer, got {batch_size!r}")
        request = self._http().build_request("GET", path, params={"batch_size": batch_size})
        self.server_ms = None
        for attempt in range(1 + self._retries):
            try:
                response = await self._http().send(request, stream=True)
                break
            except _retryable() as exc:
                if attempt == self._retries or self._closed:
                    raise self._transport_error(operation, exc) from exc
            except httpx.HTTPError as exc:
                raise self._transport_error(operation, exc) from exc
            await anyio.sleep(self._backoff * 2**attempt)
        try:
            if not response.is_success:
                await response.aread()
                await self._decode(response, operation)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                answer = await _offload(len(line), lambda: json.loads(line))  # noqa: B023
                if isinstance(answer, dict) and "error" in answer:
                    raise error_from_body(answer, f"sidecar at {self.base_url}")
                yield answer
        except httpx.HTTPError as exc:
            raise self._transport_error(operation, exc) from exc
        except ValueError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"sidecar at {self.base_url}: {operation}: bad line ({exc})") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()


def bind_tcp(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on `address`:`port` (0: any free port)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on accepted sockets whose proto is
    # IPPROTO_TCP, and without it Nagle holds each response's body back for the client's
    # delayed ACK, 40 ms or more per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart on a fixed port
        sock.bind((str(address), port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
