"""A feed farm: a real HTTP server on 127.0.0.1 serving feeds that tests change as they go.

Each path serves a `Served` answer: a body with its type and encoding, an ETag it honours with
304, a status (429 with Retry-After, say) or a redirect. Every request is recorded with its
headers, so tests can check conditional GETs and politeness.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Farm", "Served", "atom", "farm", "rss"]


@dataclass
class Served:
    """What a path answers."""

    body: bytes = b""
    kind: str = "application/rss+xml"
    status: int = 200
    etag: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    delay: float = 0.0  # seconds before answering


@dataclass
class Farm:
    """The server's port, its routes (mutable while it runs) and what it was asked."""

    port: int
    routes: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0  # requests being answered now
    most_active: int = 0  # the most at once
    last_request: float = 0.0  # time.monotonic() of the latest request

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def asked(self, path: str) -> list[dict[str, str]]:
        """The headers of each request made for `path`, in order."""
        with self.lock:
            return [headers for p, headers in self.requests if p == path]


@contextmanager
def farm() -> Iterator[Farm]:
    """A running feed farm."""
    state = Farm(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                served = state.routes.get(self.path)
                state.active += 1
                state.last_request = time.monotonic()
                state.most_active = max(state.most_active, state.active)
            try:
                self._serve(served)
            finally:
                with state.lock:
                    state.active -= 1

        def _serve(self, served: Served | None) -> None:
            if served is None:
                self._answer(404, b"no such feed", {"Content-Type": "text/plain"})
                return
            if served.delay:
                time.sleep(served.delay)
            headers = dict(served.headers)
            if served.etag is not None:
                headers["ETag"] = served.etag
                if self.headers.get("If-None-Match") == served.etag:
                    self._answer(304, b"", headers)
                    return
            body = served.body
            if served.gzip:
                body = gzip.compress(body)
                headers["Content-Encoding"] = "gzip"
            headers.setdefault("Content-Type", served.kind)
            self._answer(served.status, body, headers)

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if status != 304:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 304:
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def rss(title: str, items: list[tuple[str, str]], *, ttl: int | None = None) -> bytes:
    """An RSS 2.0 feed whose items are (guid, text) pairs; each guid's link is on example.org."""
    entries = "".join(
        f"<item><guid>{guid}</guid><title>{guid} title</title>"
        f"<link>https://example.org/{guid}</link><description>{text}</description>"
        f"<category>news</category><pubDate>Mon, 02 Nov 2026 10:00:00 GMT</pubDate></item>"
        for guid, text in items
    )
    extra = f"<ttl>{ttl}</ttl>" if ttl is not None else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{title}</title><link>https://example.org/</link>{extra}{entries}"
        "</channel></rss>"
    ).encode()


def atom(title: str, items: list[tuple[str, str]]) -> bytes:
    """An Atom 1.0 feed whose entries are (id, text) pairs, content as HTML."""
    entries = "".join(
        f"<entry><id>urn:{guid}</id><title>{guid} title</title>"
        f'<link href="https://example.org/{guid}"/><updated>2026-11-02T10:00:00Z</updated>'
        f'<author><name>Ann</name></author><content type="html">&lt;p&gt;{text}&lt;/p&gt;'
        "</content></entry>"
        for guid, text in items
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        f"<title>{title}</title><id>urn:feed</id><updated>2026-11-02T10:00:00Z</updated>"
        f"{entries}</feed>"
    ).encode()
