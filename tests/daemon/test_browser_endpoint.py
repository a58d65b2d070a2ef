"""The browser endpoint's security matrix, over real HTTP on loopback against a real daemon.

Each check gets its exact status; Host failures are decided before any body byte is read; only a
paired extension's origin is ever echoed in CORS headers, and never ``*``. Then what the
endpoint does with pages: normalised source ids, the server-side deny list, unchanged pages
doing no work, and a 202 that survives ``kill -9``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon.daemon_proc import FAST_CONFIG, DaemonProcess

CHROME = "chrome-extension://" + "c" * 32
OTHER_EXTENSION = "chrome-extension://" + "d" * 32
FIREFOX = "moz-extension://0f3a1c2e-1b2c-4d5e-8f90-123456789abc"
FIREFOX_PAIRED = "moz-extension://9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"  # paired by one test
NOW = "2026-11-24T10:00:00.000Z"


class Endpoint:
    """A running daemon's browser endpoint, paired with CHROME."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.port = int(daemon.status()["browser"]["port"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = self.pair(CHROME)

    def pair(self, origin: str) -> str:
        printed = self.daemon.cli("pair").stdout
        match = re.search(r"pairing code: (\S+)", printed)
        assert match, printed
        answer = httpx.post(
            f"{self.base}/pair", json={"code": match[1]}, headers={"Origin": origin}
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["token"]
        self.daemon_key = bytes.fromhex(answer.json()["daemon_key"])
        return token

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Origin": CHROME, "Authorization": f"Bearer {self.token}", **extra}

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", json=body, headers=self.headers(**headers))


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("browser") / "home").start()
    try:
        yield Endpoint(daemon)
    finally:
        daemon.stop()


def raw(port: int, head: str, body: bytes = b"", *, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send exactly these header lines (and body), return the status and the response body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        head_bytes, _, rest = received.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head_bytes, re.I)
        while length and len(rest) < int(length[1]):
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(head_bytes.split()[1]), rest


def page(url: str = "https://example.com/article", **fields: Any) -> dict[str, Any]:
    body = {
        "url": url,
        "title": "An article",
        "html": "<html><body><article><p>Tomatoes ripen in late summer sun.</p></article></body>",
        "captured_at": NOW,
        "mode": "manual",
    }
    body.update(fields)
    return body


# -- Host --------------------------------------------------------------------------------------


def test_the_loopback_names_with_the_port_are_accepted(endpoint: Endpoint) -> None:
    for host in (
        f"127.0.0.1:{endpoint.port}",
        f"localhost:{endpoint.port}",
        f"[::1]:{endpoint.port}",
    ):
        status, body = raw(endpoint.port, f"GET /health HTTP/1.1\nHost: {host}\n")
        assert (status, json.loads(body)) == (200, {"ok": True, "paired": False}), host


@pytest.mark.parametrize(
    "host",
    [
        "",  # empty
        "127.0.0.1",  # no port
        "127.0.0.1:1",  # the wrong port
        "localhost",
        f"{socket.gethostname()}:PORT",  # the machine's own name
        "satchel.local:PORT",
        "attacker.example:PORT",  # a rebound DNS name arrives with its own Host
        "127.0.0.1.:PORT",
        "0.0.0.0:PORT",
        "127.1:PORT",
    ],
)
def test_any_other_host_is_403(endpoint: Endpoint, host: str) -> None:
    host = host.replace("PORT", str(endpoint.port))
    status, body = raw(endpoint.port, f"GET /health HTTP/1.1\nHost: {host}\n")
    assert status == 403
    assert "Host" in json.loads(body)["error"]


def test_a_missing_or_doubled_host_is_403(endpoint: Endpoint) -> None:
    # HTTP/1.0 lets a request go without Host; HTTP/1.1 parsers refuse that on their own.
    assert raw(endpoint.port, "GET /health HTTP/1.0\n")[0] == 403
    good = f"127.0.0.1:{endpoint.port}"
    assert raw(endpoint.port, f"GET /health HTTP/1.1\nHost: {good}\nHost: evil.example\n")[0] in (
        400,  # h11 itself refuses two Host headers...
        403,  # ...or we do
    )


def test_a_host_failure_reads_no_body(endpoint: Endpoint) -> None:
    """The answer comes while the declared megabyte was never sent: nothing waited for it."""
    head = (
        "POST /pages HTTP/1.1\nHost: attacker.example\n"
        f"Origin: {CHROME}\nAuthorization: Bearer {endpoint.token}\n"
        "Content-Type: application/json\nContent-Length: 1000000\n"
    )
    status, _ = raw(endpoint.port, head, timeout=5)
    assert status == 403


# -- Origin ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["null", "https://example.com", "http://127.0.0.1:8000", "file://", OTHER_EXTENSION, FIREFOX],
)
def test_foreign_origins_are_403_and_never_echoed(endpoint: Endpoint, origin: str) -> None:
    answer = endpoint.post("/pages", page(), Origin=origin)
    assert answer.status_code == 403, answer.text
    assert "Origin" in answer.json()["error"]
    assert "access-control-allow-origin" not in answer.headers


def test_a_missing_origin_is_403_except_for_a_health_probe(endpoint: Endpoint) -> None:
    headers = {"Authorization": f"Bearer {endpoint.token}"}
    answer = httpx.post(f"{endpoint.base}/pages", json=page(), headers=headers)
    assert (answer.status_code, answer.json()["error"]) == (403, "Origin: required")
    answer = httpx.get(
        f"{endpoint.base}/pages/state", params={"url": "https://x.org/"}, headers=headers
    )
    assert answer.status_code == 403
    assert httpx.get(f"{endpoint.base}/health").status_code == 200


def test_the_extensions_own_gets_come_without_origin_and_are_known_by_token(
    endpoint: Endpoint,
) -> None:
    """Chromium sends no Origin on an extension's GET; it marks it Sec-Fetch-Site: none."""
    state = f"{endpoint.base}/pages/state"
    own = {"Authorization": f"Bearer {endpoint.token}", "Sec-Fetch-Site": "none"}
    assert httpx.get(state, params={"url": "https://x.org/"}, headers=own).status_code == 200
    wrong = {**own, "Authorization": "Bearer forged"}
    assert httpx.get(state, params={"url": "https://x.org/"}, headers=wrong).status_code == 401
    for site in ("cross-site", "same-site", "same-origin"):  # a page's request
        page_made = {**own, "Sec-Fetch-Site": site}
        answer = httpx.get(state, params={"url": "https://x.org/"}, headers=page_made)
        assert answer.status_code == 403, site
    health = httpx.get(f"{endpoint.base}/health", headers=own).json()
    assert health == {"ok": True, "paired": True}
    assert httpx.get(f"{endpoint.base}/health", headers=wrong).json()["paired"] is False
    posted = httpx.post(f"{endpoint.base}/search", json={"query": "x"}, headers=own)
    assert posted.status_code == 403  # only GETs: a POST always carries its Origin


def test_health_says_whether_the_token_is_paired(endpoint: Endpoint) -> None:
    answer = httpx.get(f"{endpoint.base}/health", headers=endpoint.headers())
    assert answer.json() == {"ok": True, "paired": True}
    assert answer.headers["access-control-allow-origin"] == CHROME
    wrong = endpoint.headers(Authorization="Bearer nope")
    assert httpx.get(f"{endpoint.base}/health", headers=wrong).json()["paired"] is False
    web = httpx.get(f"{endpoint.base}/health", headers={"Origin": "https://example.com"})
    assert web.status_code == 403  # nothing for a page to read (it could still see a port answer)
    no_origin = httpx.get(f"{endpoint.base}/health", headers={"Sec-Fetch-Site": "cross-site"})
    assert no_origin.status_code == 403  # a page's no-cors GET carries no Origin
    unpaired = httpx.get(f"{endpoint.base}/health", headers={"Origin": OTHER_EXTENSION})
    assert unpaired.json()["paired"] is False
    assert "access-control-allow-origin" not in unpaired.headers


def test_the_daemon_proves_itself_before_any_token_is_sent(endpoint: Endpoint) -> None:
    """Pairing handed the extension the daemon's key; /health answers a challenge with an HMAC
    under it, asked with no token and no Origin, so an impostor on the port learns nothing."""
    challenge = os.urandom(32)
    answer = httpx.get(f"{endpoint.base}/health", params={"challenge": challenge.hex()})
    assert answer.status_code == 200
    expected = hmac.new(endpoint.daemon_key, challenge, hashlib.sha256).hexdigest()
    assert answer.json()["proof"] == expected
    for bad in ("zz", "ab", "00" * 65):
        refused = httpx.get(f"{endpoint.base}/health", params={"challenge": bad})
        assert refused.status_code == 400, bad
        assert "challenge" in refused.json()["error"]


def test_preflight_is_answered_for_paired_origins_only(endpoint: Endpoint) -> None:
    asks = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    ok = httpx.options(f"{endpoint.base}/pages", headers={"Origin": CHROME, **asks})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == CHROME
    assert ok.headers["access-control-allow-private-network"] == "true"
    for origin in ("https://example.com", "null", OTHER_EXTENSION):
        refused = httpx.options(f"{endpoint.base}/pages", headers={"Origin": origin, **asks})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers


# -- Content-Type, token, size -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_only_json_is_accepted(endpoint: Endpoint, kind: str | None) -> None:
    headers = endpoint.headers()
    if kind is not None:
        headers["Content-Type"] = kind
    answer = httpx.post(f"{endpoint.base}/pages", content=json.dumps(page()), headers=headers)
    assert answer.status_code == 415, answer.text


def test_json_with_a_charset_is_json(endpoint: Endpoint) -> None:
    headers = endpoint.headers(**{"Content-Type": "application/json; charset=utf-8"})
    answer = httpx.post(f"{endpoint.base}/pages", content=json.dumps(page()), headers=headers)
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic abc", "Bearer", "TOKEN"])
def test_a_bad_token_is_401(endpoint: Endpoint, authorization: str | None) -> None:
    headers = {"Origin": CHROME}
    if authorization is not None:
        headers["Authorization"] = authorization.replace("TOKEN", endpoint.token)
    answer = httpx.post(f"{endpoint.base}/pages", json=page(), headers=headers)
    assert answer.status_code == 401, answer.text


def test_a_token_works_only_for_its_own_origin(endpoint: Endpoint) -> None:
    firefox_token = endpoint.pair(FIREFOX_PAIRED)
    mixed = {"Origin": CHROME, "Authorization": f"Bearer {firefox_token}"}
    assert httpx.post(f"{endpoint.base}/pages", json=page(), headers=mixed).status_code == 401
    own = {"Origin": FIREFOX_PAIRED, "Authorization": f"Bearer {firefox_token}"}
    assert httpx.post(f"{endpoint.base}/pages", json=page(), headers=own).status_code == 202


def test_bodies_over_the_cap_are_413_declared_or_streamed(endpoint: Endpoint) -> None:
    big = page(html="<p>" + "x" * (5 * 1024 * 1024) + "</p>")
    assert endpoint.post("/pages", big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while streaming
        data = json.dumps(big).encode()
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    streamed = httpx.post(
        f"{endpoint.base}/pages",
        content=chunks(),
        headers=endpoint.headers(**{"Content-Type": "application/json"}),
    )
    assert streamed.status_code == 413
    head = (
        f"POST /pages HTTP/1.1\nHost: 127.0.0.1:{endpoint.port}\nOrigin: {CHROME}\n"
        f"Authorization: Bearer {endpoint.token}\nContent-Type: application/json\n"
        "Content-Length: 900000000\n"
    )
    assert raw(endpoint.port, head, timeout=5)[0] == 413  # refused before reading


def test_the_endpoint_listens_on_127_0_0_1_only(endpoint: Endpoint) -> None:
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) == endpoint.port:  # 0A: LISTEN
                listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian; no wildcard, no IPv6


def test_cors_names_only_a_paired_origin_and_never_every_origin(endpoint: Endpoint) -> None:
    asks = {"Access-Control-Request-Method": "POST"}
    unpaired = {"Origin": OTHER_EXTENSION, "Authorization": f"Bearer {endpoint.token}"}
    answers = [
        httpx.get(f"{endpoint.base}/health", headers={"Origin": CHROME}),
        endpoint.post("/pages", page()),
        endpoint.post("/pages", {"mode": "x"}),
        endpoint.post("/search", {"query": "tomatoes"}),
        httpx.get(f"{endpoint.base}/nowhere", headers=endpoint.headers()),
        httpx.get(f"{endpoint.base}/nowhere", headers=unpaired),
        httpx.get(f"{endpoint.base}/pages", headers=unpaired),  # 405
        httpx.get(f"{endpoint.base}/health", headers=unpaired),
        httpx.post(f"{endpoint.base}/pages", content=b"x", headers=unpaired),
        httpx.options(f"{endpoint.base}/pages", headers={**unpaired, **asks}),
        httpx.options(f"{endpoint.base}/search", headers={"Origin": "https://a.example", **asks}),
    ]
    for answer in answers:
        allowed = answer.headers.get("access-control-allow-origin")
        assert allowed in (None, CHROME), (answer.request.url, answer.status_code, allowed)
        if answer.request.headers.get("origin") != CHROME:
            assert allowed is None, (answer.request.url, answer.status_code)
    # Pairing names the extension pairing (it is not paired yet: that is the point).
    failed = httpx.post(
        f"{endpoint.base}/pair", json={"code": "x"}, headers={"Origin": OTHER_EXTENSION}
    )
    assert failed.headers["access-control-allow-origin"] == OTHER_EXTENSION


def test_doubled_origin_or_token_headers_are_refused(endpoint: Endpoint) -> None:
    base = (
        f"POST /pages HTTP/1.1\nHost: 127.0.0.1:{endpoint.port}\n"
        "Content-Type: application/json\nContent-Length: 2\n"
    )
    token = f"Authorization: Bearer {endpoint.token}\n"
    two_origins = f"{base}Origin: {CHROME}\nOrigin: https://a.example\n{token}"
    assert raw(endpoint.port, two_origins, b"{}")[0] == 403
    two_tokens = (
        f"{base}Origin: {CHROME}\nAuthorization: Bearer {endpoint.token}\nAuthorization: Bearer x\n"
    )
    assert raw(endpoint.port, two_tokens, b"{}")[0] == 400


def test_an_unknown_table_is_404(endpoint: Endpoint) -> None:
    answer = endpoint.post("/search", {"query": "x", "table": "no_such_table"})
    assert answer.status_code == 404, answer.text


# -- pairing over HTTP ---------------------------------------------------------------------------


def test_pairing_needs_an_extension_origin_and_the_right_code(endpoint: Endpoint) -> None:
    printed = endpoint.daemon.cli("pair").stdout
    code = re.search(r"pairing code: (\S+)", printed)
    assert code
    web = httpx.post(
        f"{endpoint.base}/pair", json={"code": code[1]}, headers={"Origin": "https://evil.example"}
    )
    assert web.status_code == 403
    for attempt in range(5):
        wrong = httpx.post(
            f"{endpoint.base}/pair", json={"code": "ZZZZ-ZZZZ"}, headers={"Origin": OTHER_EXTENSION}
        )
        assert wrong.status_code == 403, attempt
    late = httpx.post(
        f"{endpoint.base}/pair", json={"code": code[1]}, headers={"Origin": OTHER_EXTENSION}
    )
    assert late.status_code == 403
    assert "none is pending" in late.json()["error"]


def test_pair_list_and_revoke(endpoint: Endpoint) -> None:
    origin = "chrome-extension://" + "e" * 32
    token = endpoint.pair(origin)
    listed = endpoint.daemon.cli("pair", "--list")
    assert origin in listed.stdout
    assert endpoint.daemon.cli("pair", "--revoke", origin).returncode == 0
    answer = httpx.post(
        f"{endpoint.base}/pages",
        json=page(),
        headers={"Origin": origin, "Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 403  # no longer paired
    again = endpoint.daemon.cli("pair", "--revoke", origin)
    assert again.returncode != 0
    assert "not paired" in again.stderr


# -- pages ---------------------------------------------------------------------------------------


def test_a_page_is_saved_under_its_normal_url_and_the_badge_says_so(endpoint: Endpoint) -> None:
    url = "https://Example.com/tomatoes?utm_source=newsletter#comments"
    answer = endpoint.post("/pages", page(url))
    assert answer.status_code == 202, answer.text
    assert answer.json()["url"] == "https://example.com/tomatoes"
    assert endpoint.daemon.wait_job(answer.json()["job"])["state"] == "done"
    state = httpx.get(
        f"{endpoint.base}/pages/state", params={"url": url}, headers=endpoint.headers()
    )
    assert state.json()["saved"] is True
    assert state.json()["saved_at"]
    found = endpoint.post("/search", {"query": "tomatoes ripen", "top_k": 3}).json()["results"]
    assert found[0]["source_id"] == "https://example.com/tomatoes"
    assert found[0]["url"] == "https://example.com/tomatoes"
    unsaved = httpx.get(
        f"{endpoint.base}/pages/state",
        params={"url": "https://example.com/never"},
        headers=endpoint.headers(),
    )
    assert unsaved.json() == {
        "url": "https://example.com/never",
        "saved": False,
        "saved_at": None,
        "queued": False,
    }


def test_an_unchanged_page_keeps_its_chunks_and_a_changed_one_replaces_them(
    endpoint: Endpoint,
) -> None:
    url = "https://example.com/changing"

    def save(text: str) -> set[str]:
        body = page(url, html=f"<html><body><article><p>{text}</p></article></body></html>")
        job = endpoint.post("/pages", body).json()["job"]
        assert endpoint.daemon.wait_job(job)["state"] == "done"
        with endpoint.daemon.http() as client:
            sources = client.get("/sources", params={"limit": 1000}).json()["sources"]
        [source] = [s for s in sources if s["id"] == url]
        found = endpoint.post("/search", {"query": text, "top_k": 50}).json()["results"]
        assert source["chunk_count"] == len({r["id"] for r in found if r["source_id"] == url})
        return {r["id"] for r in found if r["source_id"] == url}

    first = save("Basil likes warm soil and full sun.")
    # Same text again: same chunks (the pipeline's hash check, which skips extraction's
    # aftermath and all embedding, is tested in tests/ingest/test_pipeline.py).
    assert save("Basil likes warm soil and full sun.") == first
    second = save("Rosemary survives dry winters on a sunny wall.")
    assert second
    assert not second & first


def test_text_and_selection_captures(endpoint: Endpoint) -> None:
    text = endpoint.post(
        "/pages",
        page(
            "https://example.com/plain",
            html=None,
            text="Plain text from the extension about leeks.",
        ),
    )
    assert text.status_code == 202, text.text
    sel = endpoint.post(
        "/pages",
        page("https://example.com/plain", mode="selection", selection="Leeks want deep trenches."),
    )
    assert sel.status_code == 202, sel.text
    for answer in (text, sel):
        assert endpoint.daemon.wait_job(answer.json()["job"])["state"] == "done"
    with endpoint.daemon.http() as client:
        ids = {s["id"] for s in client.get("/sources", params={"limit": 1000}).json()["sources"]}
    assert "https://example.com/plain" in ids
    assert any(i.startswith("https://example.com/plain#selection-") for i in ids)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (page("https://mail.google.com/mail/u/0/"), 422, "deny list"),
        (page("https://www.google.com/search?q=rash"), 422, "deny list"),
        (page("file:///etc/passwd"), 422, "not an http(s) URL"),
        (page("javascript:alert(1)"), 422, "not an http(s) URL"),
        (page(mode="burst"), 400, "mode:"),
        (page(captured_at="noon"), 400, "captured_at:"),
        (page(html=None), 400, "html, text"),
        (page(extra=1), 400, "extra: unknown field"),
        ([], 400, "body: expected a JSON object"),
    ],
)
def test_bad_pages_get_a_clear_error_and_store_nothing(
    endpoint: Endpoint, body: Any, status: int, message: str
) -> None:
    before = endpoint.daemon.status()["queue"]
    answer = endpoint.post("/pages", body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    after = endpoint.daemon.status()["queue"]
    assert after["pending"] + after["done"] + after["failed"] == (
        before["pending"] + before["done"] + before["failed"]
    )


def test_not_json_is_400(endpoint: Endpoint) -> None:
    answer = httpx.post(
        f"{endpoint.base}/pages",
        content=b"{not json",
        headers=endpoint.headers(**{"Content-Type": "application/json"}),
    )
    assert answer.status_code == 400
    assert "not valid JSON" in answer.json()["error"]


def test_status_shows_the_endpoint(endpoint: Endpoint) -> None:
    printed = endpoint.daemon.cli("status").stdout
    assert f"browser endpoint: 127.0.0.1:{endpoint.port}" in printed


def test_an_acknowledged_page_survives_kill_9(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "home").start()
    try:
        endpoint = Endpoint(daemon)
        answer = endpoint.post("/pages", page("https://example.com/durable"))
        assert answer.status_code == 202
        job = answer.json()["job"]
        daemon.signal(9)
        daemon.wait_exit(10)
        daemon.start()
        assert daemon.wait_job(job)["state"] == "done"
        with daemon.http() as client:
            sources = client.get("/sources").json()["sources"]
        assert [s["id"] for s in sources] == ["https://example.com/durable"]
    finally:
        daemon.stop()


def test_a_taken_port_leaves_the_daemon_serving_and_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = DaemonProcess(tmp_path / "home", FAST_CONFIG.replace("port = 0", f"port = {port}"))
        daemon.start()
        try:
            browser = daemon.status()["browser"]
            assert browser["state"] == "failed"
            assert f"127.0.0.1:{port}" in browser["error"]
            assert "not listening" in daemon.cli("status").stdout
        finally:
            daemon.stop()
