"""The guarded fetcher, against real HTTP servers on loopback.

Loopback is exactly what the guard refuses, so each test that needs to reach its server allows
that server's ``host:port`` the way a user allows a feed they host at home.
"""

from __future__ import annotations

import gzip
import time
import zlib
from http.server import BaseHTTPRequestHandler

import pytest

from ingest.fetch import Blocked, FetchFailed, FetchSettings, fetch, is_public
from tests.loopback import Route, body, redirect, serving


def allowing(port: int, **kwargs: object) -> FetchSettings:
    return FetchSettings(allowed_hosts=(f"127.0.0.1:{port}",), timeout=5, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # CGNAT
        ("169.254.169.254", False),  # link-local: cloud metadata
        ("0.0.0.0", False),  # noqa: S104 - an address judged, not bound
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("ff02::1", False),
        ("64:ff9b::a00:1", False),  # NAT64 to 10.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 to 8.8.8.8
        ("64:ff9b:1::a00:1", False),
        ("2002:7f00:1::1", False),  # 6to4 around 127.0.0.1
        ("::127.0.0.1", False),
        ("::ffff:0:7f00:1", False),
        ("fec0::1", False),
    ],
)
def test_only_public_unicast_addresses_pass(address: str, public: bool) -> None:
    assert is_public(address) is public


@pytest.mark.anyio
async def test_an_allowed_host_port_is_fetched() -> None:
    with serving({"/page": body(b"<p>hello</p>", kind="text/html; charset=utf-8")}) as port:
        page = await fetch(f"http://127.0.0.1:{port}/page", allowing(port))
    assert page.status == 200
    assert page.text() == "<p>hello</p>"


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_is_refused(host: str) -> None:
    with serving({"/": body(b"secret")}) as port:
        with pytest.raises(Blocked, match="private or local address"):
            await fetch(f"http://{host}:{port}/", FetchSettings(timeout=5))


@pytest.mark.anyio
async def test_an_allowed_port_does_not_open_the_hosts_other_ports() -> None:
    with serving({"/": body(b"ok")}) as allowed, serving({"/": body(b"secret")}) as other:
        with pytest.raises(Blocked, match=f"127.0.0.1:{other}"):
            await fetch(f"http://127.0.0.1:{other}/", allowing(allowed))


@pytest.mark.anyio
async def test_every_redirect_hop_is_checked() -> None:
    with serving({"/": body(b"secret")}) as inner:
        routes = {"/hop": redirect(f"http://127.0.0.1:{inner}/")}
        with serving(routes) as outer, pytest.raises(Blocked, match=f"127.0.0.1:{inner}"):
            await fetch(f"http://127.0.0.1:{outer}/hop", allowing(outer))


@pytest.mark.anyio
async def test_redirects_are_capped() -> None:
    routes: dict[str, Route] = {}
    with serving(routes) as port:
        for n in range(10):
            routes[f"/{n}"] = redirect(f"/{n + 1}")
        routes["/10"] = body(b"end")
        with pytest.raises(Blocked, match="more than 5 redirects"):
            await fetch(f"http://127.0.0.1:{port}/0", allowing(port))
        page = await fetch(f"http://127.0.0.1:{port}/6", allowing(port))
        assert page.body == b"end"


@pytest.mark.anyio
async def test_a_gzip_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB in ~64 KB
    with serving({"/": body(bomb, encoding="gzip")}) as port:
        with pytest.raises(Blocked, match="larger than 1048576 bytes"):
            await fetch(f"http://127.0.0.1:{port}/", allowing(port, max_bytes=1024 * 1024))


@pytest.mark.anyio
async def test_compressed_bodies_are_decoded() -> None:
    text = b"<p>" + b"tide " * 10_000 + b"</p>"
    routes = {
        "/gzip": body(gzip.compress(text), encoding="gzip"),
        "/deflate": body(zlib.compress(text), encoding="deflate"),
    }
    with serving(routes) as port:
        for path in routes:
            page = await fetch(f"http://127.0.0.1:{port}{path}", allowing(port))
            assert page.body == text


@pytest.mark.anyio
async def test_raw_deflate_is_decoded_whole() -> None:
    text = bytes(range(256)) * 12_000  # 3 MB that compresses poorly: many raw chunks
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = squeeze.compress(text) + squeeze.flush()
    with serving({"/": body(raw, encoding="deflate")}) as port:
        page = await fetch(f"http://127.0.0.1:{port}/", allowing(port, max_bytes=4_000_000))
    assert page.body == text


@pytest.mark.anyio
async def test_a_trickling_server_hits_the_overall_deadline() -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        for _ in range(100):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.1)

    with serving({"/": trickle}) as port:
        settings = FetchSettings(allowed_hosts=(f"127.0.0.1:{port}",), timeout=1)
        with pytest.raises(FetchFailed, match="not fetched within 1 s"):
            await fetch(f"http://127.0.0.1:{port}/", settings)


@pytest.mark.anyio
async def test_a_malformed_url_is_refused() -> None:
    with pytest.raises(Blocked, match="not a valid URL"):
        await fetch("http://[::1/")


@pytest.mark.anyio
async def test_stacked_encodings_are_refused() -> None:
    twice = gzip.compress(gzip.compress(b"x"))
    with serving({"/": body(twice, encoding="gzip, gzip")}) as port:
        with pytest.raises(Blocked, match="more than one Content-Encoding"):
            await fetch(f"http://127.0.0.1:{port}/", allowing(port))


@pytest.mark.anyio
async def test_a_plain_body_over_the_cap_is_refused() -> None:
    with serving({"/": body(b"x" * 5000)}) as port:
        with pytest.raises(Blocked, match="larger than 4096 bytes"):
            await fetch(f"http://127.0.0.1:{port}/", allowing(port, max_bytes=4096))


@pytest.mark.anyio
async def test_server_errors_are_worth_a_retry() -> None:
    with serving({}) as port, pytest.raises(FetchFailed, match="answered 404"):
        await fetch(f"http://127.0.0.1:{port}/missing", allowing(port))


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "example.com"])
async def test_only_http_and_https(url: str) -> None:
    with pytest.raises(Blocked, match="only http and https"):
        await fetch(url)
