"""The browser extension's endpoint: HTTP on 127.0.0.1, hardened against everything else there.

Any web page the user opens can send requests to 127.0.0.1, and a DNS name can be rebound to
it; other local users can connect too. So every request passes these checks, in this order,
each failing with its own status, before anything else happens:

1. ``Host`` is exactly ``127.0.0.1:PORT``, ``localhost:PORT`` or ``[::1]:PORT`` (DNS
   rebinding: a rebound name arrives with its own Host), else 403. Decided from the headers
   alone: not one byte of the body is read first.
2. ``Origin`` is a paired extension's (``POST /pair``: any extension's; ``GET /health``: any
   extension's, or none for a command-line probe). ``null``, web origins and a missing Origin
   get 403. Browsers set Origin themselves; a page cannot choose its value. One exception:
   Chromium sends no Origin on an extension's GETs, so a GET marked ``Sec-Fetch-Site: none``
   (made by the browser itself, never by a page) is admitted for the paired origin its token
   belongs to.
3. ``Content-Type: application/json`` on a body (415): a page's form post cannot send it without
   a CORS preflight, and preflights are answered only for paired origins.
4. ``Authorization: Bearer <token>``, compared in constant time with the hash stored at pairing
   (401).
5. The body is capped while it streams (``[browser] max_body_bytes``, 413); a declared length
   over the cap is refused before reading.

No response carries ``Access-Control-Allow-Origin: *``: only a paired origin is echoed (and,
on ``POST /pair``, the extension pairing). Preflights are answered likewise. The endpoint binds
127.0.0.1 and nothing else.

The routes: ``POST /pages`` (202 once the job is committed), ``GET /pages/state?url=`` (the
badge), ``POST /search`` (the popup's search, the socket API's search), ``POST /pair`` and
``GET /health`` (with ``?challenge=``, the daemon's proof that it is itself: see
`daemon.pairing`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs

from daemon.config import BrowserConfig
from daemon.core import NotReady, Satchel
from daemon.pairing import Pairing, PairingFailed, is_extension_origin
from daemon.schema import InvalidRequest, request_schema, validate
from ingest.errors import InvalidDocument, TransientError
from ingest.pages import DenyList, PageRefused, page_url, parse_capture
from ingest.urls import InvalidURL
from store import UnknownTable

__all__ = ["BrowserApp"]

_log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Which origins a route admits: any extension's (pairing, health) or only paired ones.
_ROUTES: Final = {
    ("GET", "/health"): "probe",
    ("POST", "/pair"): "extension",
    ("POST", "/pages"): "paired",
    ("GET", "/pages/state"): "paired",
    ("POST", "/search"): "paired",
}
_PATHS: Final = {path for _, path in _ROUTES}


class _Refused(Exception):  # noqa: N818 - carries the status it is answered with
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BrowserApp:
    """The ASGI application behind the endpoint (see the module docstring)."""

    def __init__(
        self, satchel: Satchel, pairing: Pairing, settings: BrowserConfig, port: int
    ) -> None:
        self.satchel = satchel
        self.pairing = pairing
        self.max_body = settings.max_body_bytes
        self.deny = DenyList(settings.deny)
        self.hosts = frozenset(f"{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not ours
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        # The origin CORS headers may name: set only once the request's Origin is admitted as
        # a paired extension's (or, for pairing itself, as an extension's), so an error
        # answered before that grants nothing.
        cors: list[str] = []
        try:
            await self._checked(scope, headers, cors, receive, send)
        except _Refused as exc:
            allowed = cors[0] if cors else None
            await _respond(send, exc.status, {"error": str(exc)}, allow_origin=allowed)

    async def _checked(
        self,
        scope: Scope,
        headers: dict[str, list[str]],
        cors: list[str],
        receive: Receive,
        send: Send,
    ) -> None:
        host = _single(headers, "host")
        if host is None or host.lower() not in self.hosts:
            raise _Refused(403, f"Host: {host!r:.80} is not this endpoint's address")
        origin = _single(headers, "origin")
        method, path = scope["method"], scope["path"]
        preflight = method == "OPTIONS"
        if preflight:
            method = _single(headers, "access-control-request-method") or ""
        kind = _ROUTES.get((method, path))
        if kind is None:
            if path in _PATHS:
                raise _Refused(405, f"{method} {path}: method not allowed")
            raise _Refused(404, f"{path}: no such endpoint")
        if origin is None and kind != "extension" and _extension_get(method, headers):
            # Chromium sends no Origin on an extension's own GETs: the token says whose it is.
            token = _bearer(headers)
            origin = await self.pairing.origin_of(token) if token else None
            if origin is None and kind == "paired":
                raise _Refused(401, "Authorization: a valid bearer token is required; pair again")
        await self._check_origin(kind, origin, headers)
        if origin is not None and (kind == "extension" or await self.pairing.is_paired(origin)):
            cors.append(origin)
        if preflight:
            await _preflight(send, cors[0] if cors else None, headers)
            return
        if method == "POST":
            kind_header = (_single(headers, "content-type") or "").split(";")[0].strip().lower()
            if kind_header != "application/json":
                raise _Refused(
                    415, f"Content-Type: expected application/json, got {kind_header or 'none'!r}"
                )
        token = _bearer(headers)
        if kind == "paired":
            assert origin is not None
            if token is None or not await self.pairing.check(origin, token):
                raise _Refused(401, "Authorization: a valid bearer token is required; pair again")
        body = await self._body(headers, receive) if method == "POST" else None
        status, answer = await self._route(
            method, path, scope=scope, body=body, origin=origin, token=token
        )
        await _respond(send, status, answer, allow_origin=cors[0] if cors else None)

    async def _check_origin(
        self, kind: str, origin: str | None, headers: dict[str, list[str]]
    ) -> None:
        if kind == "probe" and origin is None:
            # `curl /health`, or the extension's own GET; a page's request says where it
            # comes from, and a page must not even learn whether Satchel answers here.
            if _single(headers, "sec-fetch-site") in (None, "none"):
                return
            raise _Refused(403, "Origin: required")
        if origin is None:
            raise _Refused(403, "Origin: required")
        if not is_extension_origin(origin):
            raise _Refused(403, f"Origin: {origin!r:.80} is not a browser extension")
        if kind == "paired" and not await self.pairing.is_paired(origin):
            raise _Refused(403, f"Origin: {origin} is not paired; run `satchel pair`")

    async def _body(self, headers: dict[str, list[str]], receive: Receive) -> Any:
        declared = _single(headers, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _Refused(413, f"body: {int(declared):,} bytes; the limit is {self.max_body:,}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "body: the connection closed before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _Refused(413, f"body: more than {self.max_body:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            return json.loads(b"".join(chunks))
        except ValueError as exc:
            raise _Refused(400, f"body: not valid JSON ({exc})") from None
        except RecursionError:
            raise _Refused(400, "body: nested too deeply") from None

    async def _route(
        self,
        method: str,
        path: str,
        *,
        scope: Scope,
        body: Any,
        origin: str | None,
        token: str | None,
    ) -> tuple[int, dict[str, Any]]:
        try:
            if path == "/health":
                paired = (
                    origin is not None
                    and token is not None
                    and await self.pairing.check(origin, token)
                )
                answer: dict[str, Any] = {"ok": True, "paired": paired}
                challenge = _challenge(scope)
                if challenge is not None:
                    answer["proof"] = await self.pairing.prove(challenge)
                return 200, answer
            if path == "/pair":
                assert origin is not None
                return 200, {
                    **await self._pair(body, origin),
                    "daemon_key": (await self.pairing.key()).hex(),
                }
            if path == "/pages":
                capture = parse_capture(body, self.deny)
                job = await self.satchel.add_document(capture.document())
                return 202, {"job": job, "url": capture.url}
            if path == "/pages/state":
                return 200, await self._state(scope)
            return 200, await self._search(body)
        except _Refused:
            raise
        except (InvalidDocument, InvalidRequest) as exc:  # before ValueError: both are one
            raise _Refused(400, str(exc)) from None
        except (InvalidURL, PageRefused) as exc:
            raise _Refused(422, str(exc)) from None
        except UnknownTable as exc:
            raise _Refused(404, str(exc).strip("'\"")) from None
        except (NotReady, TransientError) as exc:
            raise _Refused(503, str(exc)) from None
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        except Exception:
            _log.exception("%s %s failed", method, path)
            raise _Refused(500, "internal error; the daemon's log has the details") from None

    async def _pair(self, body: Any, origin: str) -> dict[str, Any]:
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code.strip():
            raise InvalidRequest("code: expected the pairing code `satchel pair` printed")
        try:
            token = await self.pairing.redeem(code, origin)
        except PairingFailed as exc:
            _log.warning("pairing refused for %s: %s", origin, exc)
            raise _Refused(403, str(exc)) from None
        _log.info("paired %s", origin)
        return {"token": token, "origin": origin}

    async def _state(self, scope: Scope) -> dict[str, Any]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        urls = query.get("url", [])
        if len(urls) != 1:
            raise InvalidRequest("url: give exactly one ?url= parameter")
        url = page_url(urls[0])
        source = await self.satchel.catalog.source(url)
        saved = source is not None and source.state == "ok"
        return {
            "url": url,
            "saved": saved,
            "saved_at": source.last_seen if saved and source is not None else None,
            "queued": await self.satchel.queue.waiting(url),
        }

    async def _search(self, body: Any) -> dict[str, Any]:
        validate(body, request_schema("/search", "post"))
        found = await self.satchel.search(
            query=body.get("query"),
            vector=body.get("vector"),
            top_k=body.get("top_k", 10),
            filter=body.get("filter"),
            table=body.get("table"),
        )
        return {"results": found.results, "warning": found.warning}


def _challenge(scope: Scope) -> bytes | None:
    """``?challenge=``: 16 to 64 random bytes in hex, for the daemon to prove itself on."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("challenge")
    if not values:
        return None
    if len(values) != 1 or not re.fullmatch(r"(?:[0-9a-fA-F]{2}){16,64}", values[0]):
        raise InvalidRequest("challenge: expected 16 to 64 bytes in hex, once")
    return bytes.fromhex(values[0])


def _single(headers: dict[str, list[str]], name: str) -> str | None:
    """A header that must appear at most once; two copies are refused as ambiguous."""
    values = headers.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _Refused(403 if name in ("host", "origin") else 400, f"{name}: sent more than once")
    return values[0]


def _extension_get(method: str, headers: dict[str, list[str]]) -> bool:
    """A GET the browser made on its own behalf (``Sec-Fetch-Site: none``: no page started it).

    A page's requests always say where they come from (``same-site``, ``cross-site``...), and
    one without an Origin (an ``<img>``, a no-cors fetch) cannot carry an Authorization header
    either, so it fails the token check anyway.
    """
    return method == "GET" and _single(headers, "sec-fetch-site") == "none"


def _bearer(headers: dict[str, list[str]]) -> str | None:
    value = _single(headers, "authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _preflight(send: Send, origin: str | None, headers: dict[str, list[str]]) -> None:
    """Answer a CORS preflight (only reached for an origin the route admits)."""
    extra = [
        (b"access-control-allow-methods", b"GET, POST"),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"600"),
    ]
    if _single(headers, "access-control-request-private-network") == "true":
        extra.append((b"access-control-allow-private-network", b"true"))
    await _send(send, 204, b"", allow_origin=origin, extra=extra)


async def _respond(
    send: Send, status: int, answer: dict[str, Any], *, allow_origin: str | None
) -> None:
    body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
    await _send(send, status, body, allow_origin=allow_origin)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    *,
    allow_origin: str | None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"vary", b"Origin"),
    ]
    if allow_origin is not None:
        headers.append((b"access-control-allow-origin", allow_origin.encode("latin-1")))
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
