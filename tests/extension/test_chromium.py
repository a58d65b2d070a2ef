"""The extension end to end in a real Chromium, against a real daemon, over real loopback HTTP.

Debian's Chromium (installed by .ci/run) loads the unpacked build (`npm run build`), driven by
Playwright over the DevTools protocol. The test pairs it through its options page with a code
from `satchel pair`, opens pages served on loopback, and saves them through the extension's own
code: `saveTab` is what the toolbar action, the shortcut and the popup's button call; a test
calls it through the service worker because a headless browser has no toolbar to click. What
arrived is then checked where a user would: `satchel search`.

One browser and one daemon serve the whole module; each test uses pages of its own.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, Worker, sync_playwright

from tests.daemon.daemon_proc import FAST_CONFIG, DaemonProcess
from tests.extension.conftest import ARTIFACTS, CHROMIUM

ARTICLE = """<!doctype html><html lang="en"><head><title>{title}</title></head><body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<article><h1>{title}</h1>
<p>{body}</p>
<p>Gardeners who keep notes find that the same varieties behave differently from one season to
the next, depending on rain, on the first frost and on how early the seedlings went out.</p>
<p>This page exists for Satchel's end-to-end test and says so plainly in its last paragraph.</p>
</article><footer>Copyright nobody</footer></body></html>"""

# A web page trying every way it has to push something into the daemon.
ATTACK = """<!doctype html><html><body><script>
window.attempts = (async () => {{
  const target = "http://127.0.0.1:{port}/pages";
  const capture = JSON.stringify({{url: "https://attacker.example/planted", title: "planted",
      text: "planted by a web page", captured_at: new Date().toISOString(), mode: "manual"}});
  const results = {{}};
  const tries = {{
    cors_json: () => fetch(target, {{method: "POST",
        headers: {{"Content-Type": "application/json"}}, body: capture}}),
    no_cors_text: () => fetch(target, {{method: "POST", mode: "no-cors", body: capture}}),
    with_token_guess: () => fetch(target, {{method: "POST", headers: {{"Content-Type":
        "application/json", "Authorization": "Bearer guess"}}, body: capture}}),
    state: () => fetch("http://127.0.0.1:{port}/pages/state?url=https://example.com/"),
    rebound_name: () => fetch("http://localhost:{port}/pages", {{method: "POST", mode: "no-cors",
                                                               body: capture}}),
  }};
  for (const [name, attempt] of Object.entries(tries)) {{
    try {{ const r = await attempt(); results[name] = r.type === "opaque" ? "opaque" : r.status; }}
    catch (e) {{ results[name] = "blocked: " + e.message; }}
  }}
  const form = document.createElement("form");
  form.method = "POST"; form.action = target; form.enctype = "text/plain";
  const field = document.createElement("input");
  field.name = capture.slice(0, -1); field.value = "}}";
  form.appendChild(field); document.body.appendChild(form);
  const frame = document.createElement("iframe"); frame.name = "sink";
  document.body.appendChild(frame); form.target = "sink"; form.submit();
  return results;
}})();
</script></body></html>"""


class Pages:
    """Web pages on loopback: /article/<name> is an article naming <name>; /attack attacks."""

    def __init__(self, daemon_port: int) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/article/"):
                    name = self.path.rsplit("/", 1)[1]
                    body = f"The {name} article: {name} is the word to search for."
                    html = ARTICLE.format(title=f"All about {name}", body=body)
                elif self.path == "/attack":
                    html = ATTACK.format(port=outer.daemon_port)
                else:
                    self.send_error(404)
                    return
                data = html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.daemon_port = daemon_port
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/article/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Browser:
    context: BrowserContext
    worker: Worker
    extension_id: str

    def call(self, expression: str, arg: Any = None) -> Any:
        """Evaluate in the extension's service worker (where its `satchel` object lives)."""
        return self.worker.evaluate(expression, arg)

    def open(self, url: str) -> Page:
        page = self.context.new_page()
        page.goto(url)
        return page

    def tab_id(self, url: str) -> int:
        tabs = self.call("(url) => chrome.tabs.query({url})", url)
        assert tabs, f"no tab shows {url}"
        return int(tabs[0]["id"])


@dataclass
class Setup:
    daemon: DaemonProcess
    port: int
    browser: Browser
    pages: Pages


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(playwright: Playwright, extension: Path, profile: Path) -> Browser:
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,  # Chrome's new headless mode, which runs extensions
        # Playwright passes --disable-extensions; the -except switch lets ours load.
        args=[
            f"--disable-extensions-except={extension}",
            f"--load-extension={extension}",
            "--disable-gpu",
            "--disable-quic",
        ],
    )
    worker = context.service_workers[0] if context.service_workers else None
    if worker is None:
        worker = context.wait_for_event("serviceworker", timeout=15_000)
    return Browser(context, worker, worker.url.split("/")[2])


def wait_for(what: str, check: Callable[[], Any], page: Page, timeout: float = 30.0) -> Any:
    """Poll `check` until it is truthy; `page.wait_for_timeout` keeps Playwright's events
    flowing meanwhile (a plain sleep would not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        page.wait_for_timeout(200)
    raise AssertionError(f"timed out waiting for {what}")


def sources(daemon: DaemonProcess) -> set[str]:
    with daemon.http() as client:
        return {s["id"] for s in client.get("/sources", params={"limit": 1000}).json()["sources"]}


def stored(daemon: DaemonProcess, url: str) -> bool:
    with daemon.http() as client:
        found = client.get("/sources", params={"limit": 1000}).json()["sources"]
    return any(s["id"] == url and s["state"] == "ok" for s in found)


@pytest.fixture(scope="module")
def setup(extension_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    port = free_port()
    daemon = DaemonProcess(home, FAST_CONFIG.replace("port = 0", f"port = {port}")).start()
    pages = Pages(port)
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright, extension_build, home.parent / "profile")
            try:
                pair_through_options_page(browser, daemon, port)
                yield Setup(daemon, port, browser, pages)
            finally:
                browser.context.close()
    finally:
        pages.close()
        daemon.stop()


def pair_through_options_page(browser: Browser, daemon: DaemonProcess, port: int) -> None:
    printed = daemon.cli("pair").stdout
    match = re.search(r"pairing code: (\S+)", printed)
    assert match, printed
    options = browser.open(f"chrome-extension://{browser.extension_id}/options.html")
    options.fill("#port", str(port))
    options.fill("#code", match[1].lower())  # typed carelessly: case does not matter
    options.click("#pair")
    wait_for(
        "the options page to say it is paired",
        lambda: (
            "paired" in (options.text_content("#status") or "").lower()
            and "not" not in (options.text_content("#status") or "").lower()
        ),
        options,
    )
    options.close()


def test_pairing_gave_the_extension_a_token_for_its_own_origin(setup: Setup) -> None:
    listed = setup.daemon.cli("pair", "--list").stdout
    assert f"chrome-extension://{setup.browser.extension_id}" in listed
    status = setup.browser.call("() => satchel.status()")
    assert status["paired"] is True, status


def test_save_this_page_then_satchel_search_finds_it(setup: Setup) -> None:
    url = setup.pages.url("kohlrabi")
    page = setup.browser.open(url)
    result = setup.browser.call("(id) => satchel.saveTab(id, 'manual')", setup.browser.tab_id(url))
    assert result["status"] == "saved", result
    wait_for("the page to be stored", lambda: stored(setup.daemon, url), page)
    found = setup.daemon.cli("search", "kohlrabi", "--json")
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert results[0]["source_id"] == url
    assert "kohlrabi" in results[0]["text_chunk"]
    assert "Copyright nobody" not in " ".join(r["text_chunk"] for r in results)  # extracted
    wait_for(
        "the badge to show the page is saved",
        lambda: (
            setup.browser.call(
                "(id) => chrome.action.getBadgeText({tabId: id})", setup.browser.tab_id(url)
            )
            == "✓"
        ),
        page,
    )
    page.close()


def test_the_popup_searches_the_daemon(setup: Setup) -> None:
    url = setup.pages.url("salsify")
    page = setup.browser.open(url)
    setup.browser.call("(id) => satchel.saveTab(id, 'manual')", setup.browser.tab_id(url))
    wait_for("the page to be stored", lambda: stored(setup.daemon, url), page)
    popup = setup.browser.open(f"chrome-extension://{setup.browser.extension_id}/popup.html")
    popup.set_viewport_size({"width": 420, "height": 600})
    wait_for(
        "the popup to show paired",
        lambda: "connected and paired" in (popup.text_content("#state") or "").lower(),
        popup,
    )
    popup.fill("#query", "salsify")
    popup.click("#search")
    link = popup.wait_for_selector(f"#results a[href='{url}']", timeout=15_000)
    assert link is not None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    popup.screenshot(path=str(ARTIFACTS / "popup-search.png"))
    assert (ARTIFACTS / "popup-search.png").stat().st_size > 2000
    popup.close()
    page.close()


def test_auto_save_after_dwell_and_never_in_incognito(setup: Setup) -> None:
    browser = setup.browser
    defaults = browser.call("() => satchel.settings()")
    # The test's pages live on 127.0.0.1, which the default deny list (rightly) covers.
    local_allowed = "\n".join(
        line for line in defaults["denyList"].splitlines() if line.strip() != "127.0.0.1"
    )
    allow_in_incognito(browser)  # as a user could: the background must still refuse
    browser.call(
        "(deny) => satchel.setSettings({autosave: true, dwellSeconds: 2, denyList: deny})",
        local_allowed,
    )
    try:
        url = setup.pages.url("celeriac")
        page = browser.open(url)
        page.bring_to_front()
        wait_for("the auto-saved page", lambda: stored(setup.daemon, url), page)
        private = setup.pages.url("scorzonera")
        window = browser.call("(url) => chrome.windows.create({incognito: true, url})", private)
        assert window["incognito"] is True
        [tab] = window["tabs"]
        refused = browser.call("(id) => satchel.saveTab(id, 'manual')", tab["id"])
        assert refused["status"] == "refused", refused  # a manual save is refused too
        page.wait_for_timeout(6000)  # three times the dwell, the content script running there
        assert private not in sources(setup.daemon)
        assert browser.call("() => satchel.queueStats()")["count"] == 0  # nor kept on disk
        page.close()
    finally:
        browser.call(
            "(deny) => satchel.setSettings({autosave: false, denyList: deny})", defaults["denyList"]
        )


def allow_in_incognito(browser: Browser) -> None:
    """Tick "Allow in Incognito" as chrome://extensions does; the extension reloads."""
    manager = browser.open(f"chrome://extensions/?id={browser.extension_id}")
    # Developer mode first: without it, reloading an unpacked extension disables it.
    manager.evaluate(
        "() => new Promise(r => chrome.developerPrivate.updateProfileConfiguration("
        "{inDeveloperMode: true}, r))"
    )
    with browser.context.expect_event("serviceworker", timeout=15_000) as reloaded:
        manager.evaluate(
            "id => new Promise(r => chrome.developerPrivate.updateExtensionConfiguration("
            "{extensionId: id, incognitoAccess: true}, r))",
            browser.extension_id,
        )
    browser.worker = reloaded.value
    manager.close()


class Squatter:
    """Another local user's server on the daemon's port while it is down: it claims to be
    Satchel, says yes to everything, and records what it is sent."""

    def __init__(self, port: int) -> None:
        seen: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers, body
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def answer(self, status: int) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen.append((self.command, self.path, dict(self.headers), body))
                data = json.dumps({"ok": True, "paired": True, "proof": "0" * 64}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self.answer(200)

            def do_POST(self) -> None:
                self.answer(202)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_captures_wait_while_the_daemon_is_down_and_an_impostor_gets_nothing(
    setup: Setup,
) -> None:
    url = setup.pages.url("cardoon")
    page = setup.browser.open(url)
    setup.daemon.stop()
    result = setup.browser.call("(id) => satchel.saveTab(id, 'manual')", setup.browser.tab_id(url))
    assert result["status"] == "queued", result
    # Another local user binds the port meanwhile: the daemon's proof fails, so the extension
    # sends it neither the token nor the page.
    squatter = Squatter(setup.port)
    try:
        again = setup.browser.call(
            "(id) => satchel.saveTab(id, 'manual')", setup.browser.tab_id(url)
        )
        assert again["status"] == "queued", again
        setup.browser.call("() => satchel.flushQueue()")
        searched = setup.browser.call("() => satchel.search('cardoon')")
        assert searched["ok"] is False, searched
    finally:
        squatter.close()
    assert squatter.seen, "the extension never asked the impostor to prove itself"
    for method, path, headers, body in squatter.seen:
        assert (method, path.split("?")[0]) == ("GET", "/health"), (method, path)
        assert "Authorization" not in headers
        assert b"cardoon" not in body
    assert setup.browser.call("() => satchel.queueStats()")["count"] >= 1
    setup.daemon.start()
    # Nothing is asked of the extension: its own backoff retries and the capture arrives.
    wait_for("the queued capture to arrive", lambda: stored(setup.daemon, url), page, 90)
    assert setup.browser.call("() => satchel.queueStats()")["count"] == 0
    page.close()


def test_a_web_page_cannot_make_the_daemon_store_anything(setup: Setup) -> None:
    before = sources(setup.daemon)
    jobs_before = setup.daemon.status()["queue"]
    page = setup.browser.open(f"http://127.0.0.1:{setup.pages.port}/attack")
    results = page.evaluate("() => window.attempts")
    # Cross-origin reads are blocked by CORS (no header is ever granted); blind writes land
    # on the checks: a 403 for the page's Origin.
    assert all(
        value == "opaque" or str(value).startswith("blocked") for value in results.values()
    ), results
    page.wait_for_timeout(1000)  # the form post
    assert sources(setup.daemon) == before
    jobs_after = setup.daemon.status()["queue"]
    assert (
        jobs_after["done"] + jobs_after["pending"] == jobs_before["done"] + jobs_before["pending"]
    )
    refused = [line for line in setup.daemon.logs().splitlines() if "planted" in line]
    assert not refused  # nothing of the planted page was ever processed
    page.close()
