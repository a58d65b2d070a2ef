"""Ollama for the embedder: use the server that runs, or start one, then make the model usable.

`OllamaManager.ensure` does, in order:

1. **Probe** ``GET /api/version`` at the configured URL. An answer means an Ollama someone else
   runs ("external"): it is used and never stopped.
2. Otherwise **start** ``ollama serve`` under the `Supervisor` (child ``ollama``), with
   ``OLLAMA_HOST`` set to the URL's host and port, if management is enabled, the URL is a local
   ``http://`` address, and the binary is configured or found on PATH. The supervisor's health
   check is the same ``/api/version``; it restarts the server after a crash and stops it when
   it closes ("managed").
3. **Pull** the model if ``GET /api/tags`` lacks it (a name matches with or without its
   ``:latest`` tag): ``POST /api/pull`` streams NDJSON progress, which `status` exposes. An
   ``{"error": ...}`` line inside the 200 stream, a non-200 answer, or a stream that ends
   without ``success`` is `PullFailed`.
4. **Warm up** with one ``POST /api/embed``, which loads the model.

Errors: `OllamaUnavailable` when there is no Ollama to use (the caller falls back to the
built-in embedder), `PullFailed` when the model cannot be pulled, `OllamaError` when the server
answers wrongly. httpx's errors are translated in one place, `_http_errors`. A managed server
is stopped again when `ensure` fails after starting it: nobody will use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import httpx

from daemon.supervisor import ChildFailed, ChildSpec, ChildState, Supervisor

__all__ = [
    "CHILD_NAME",
    "OllamaError",
    "OllamaManager",
    "OllamaStatus",
    "OllamaUnavailable",
    "PullFailed",
]

log = logging.getLogger("daemon.ollama")

CHILD_NAME = "ollama"  # the supervisor's name for a managed `ollama serve`
_CHECK_TIMEOUT = 2.0  # one health check; /api/version answers at once when the server is up
_RUNNING = {ChildState.STARTING, ChildState.READY, ChildState.BACKOFF}
_CHILD_STATE = {  # how a managed server that was ready shows in our status when it is not
    ChildState.STARTING: "starting",
    ChildState.BACKOFF: "starting",
    ChildState.STOPPING: "unavailable",
    ChildState.STOPPED: "unavailable",
    ChildState.DEGRADED: "failed",
    ChildState.FAILED: "failed",
}


class OllamaError(Exception):
    """Root of the Ollama manager's errors: the server answered wrongly or not at all."""


class OllamaUnavailable(OllamaError):  # noqa: N818 - reads as a fact, like store's errors
    """There is no Ollama to use: nothing answers and none can be started."""


class PullFailed(OllamaError):  # noqa: N818
    """The model is missing and pulling it failed."""


@dataclass(frozen=True, slots=True)
class OllamaStatus:
    """What the manager is doing or has done, for ``status``."""

    state: str  # probing | external | starting | pulling | warming | ready | unavailable | failed
    url: str
    model: str
    managed: bool  # we started it (and stop it)
    pull_completed: int | None = None  # bytes of the layer being pulled
    pull_total: int | None = None
    pull_status: str | None = None  # Ollama's last progress message ("pulling 970aa74c0a90")
    error: str | None = None


class OllamaManager:
    """Finds or starts Ollama and readies the model; see the module docstring.

    An async context manager owning one HTTP client; `aclose` is idempotent and closes only
    the client. A managed server belongs to the supervisor, which stops it when it closes;
    `stop` stops it earlier. ``env`` is the environment `ollama serve` runs with and where
    ``ollama`` is looked for on PATH (default: this process's).
    """

    def __init__(
        self,
        *,
        url: str,
        model: str,
        supervisor: Supervisor,
        binary: str = "",
        manage: bool = True,
        startup_timeout: float = 30.0,
        pull_timeout: float = 3600.0,
        request_timeout: float = 30.0,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self._model = model
        self._supervisor = supervisor
        self._binary = binary
        self._manage = manage
        self._startup_timeout = startup_timeout
        self._pull_timeout = pull_timeout
        self._request_timeout = request_timeout
        self._log_path = log_path
        self._env = env
        self._client = httpx.AsyncClient(
            base_url=self._url, timeout=request_timeout, trust_env=False
        )
        self._closed = False
        self._status = OllamaStatus("probing", self._url, model, managed=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client. Idempotent; a managed server keeps running (see `stop`)."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    def status(self) -> OllamaStatus:
        """The latest status; for a managed server, what the supervisor says of it now."""
        status = self._status
        if status.managed and status.state == "ready":
            child = self._supervisor.get(CHILD_NAME)
            if child is not None and child.state is not ChildState.READY:
                state = _CHILD_STATE.get(child.state, "failed")
                return dataclasses.replace(status, state=state, error=child.last_error)
        return status

    async def stop(self) -> None:
        """Stop the server if we started it (the supervisor also does so when it closes)."""
        if self._status.managed:
            await self._supervisor.stop(CHILD_NAME)

    async def ensure(self) -> OllamaStatus:
        """Find or start Ollama, pull the model if missing, warm it up; return the status.

        Raises OllamaUnavailable, PullFailed or OllamaError (see the module docstring).
        """
        self._update(state="probing", error=None)
        try:
            if self._ours_is_running() or not await self._probe():
                await self._start()
            else:
                log.info("using the Ollama server at %s (external: never stopped)", self._url)
            await self._ensure_model()
            await self._warm_up()
        except OllamaError as exc:
            failed = "unavailable" if isinstance(exc, OllamaUnavailable) else "failed"
            self._update(state=failed, error=str(exc))
            log.warning("Ollama at %s: %s", self._url, exc)
            if self._status.managed:
                with anyio.CancelScope(shield=True):
                    await self.stop()
            raise
        self._update(state="ready" if self._status.managed else "external")
        log.info("Ollama at %s is ready with %s", self._url, self._model)
        return self._status

    # ----------------------------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        self._status = dataclasses.replace(self._status, **changes)

    @contextlib.contextmanager
    def _http_errors(self, what: str, error: type[OllamaError] = OllamaError) -> Iterator[None]:
        """The one place httpx's errors become ours, chained."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise error(f"{what} at {self._url} timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise error(f"{what} at {self._url} failed: {exc or type(exc).__name__}") from exc

    def _ours_is_running(self) -> bool:
        child = self._supervisor.get(CHILD_NAME)
        return child is not None and child.state in _RUNNING

    async def _probe(self) -> bool:
        """True if an Ollama answers at the URL, False if nothing does."""
        try:
            response = await self._client.get("/api/version")
        except httpx.TransportError:
            return False
        if response.status_code == 200 and "version" in _json_object(response):
            return True
        raise OllamaUnavailable(
            f"{self._url} answered GET /api/version with HTTP {response.status_code} "
            f"({_error_text(response)}); is something other than Ollama listening there?"
        )

    async def _start(self) -> None:
        url = httpx.URL(self._url)
        if not self._manage:
            raise OllamaUnavailable(
                f"no Ollama server at {self._url}, and starting one is disabled "
                "(manage_ollama = false)"
            )
        if url.scheme != "http" or not _is_local(url.host):
            raise OllamaUnavailable(
                f"no Ollama server at {self._url}, which is not a local http:// address, "
                "so no `ollama serve` is started for it"
            )
        environ = dict(self._env if self._env is not None else os.environ)
        binary = shutil.which(self._binary or "ollama", path=environ.get("PATH", os.defpath))
        if binary is None:
            where = (
                f"the configured binary {self._binary!r} is not an executable"
                if self._binary
                else "no `ollama` on PATH"
            )
            raise OllamaUnavailable(f"no Ollama server at {self._url} and {where}")
        port = url.port or 80
        environ["OLLAMA_HOST"] = f"[{url.host}]:{port}" if ":" in url.host else f"{url.host}:{port}"
        spec = ChildSpec(
            CHILD_NAME,
            [binary, "serve"],
            ready=self._answers,
            env=environ,
            log_path=self._log_path,
            ready_timeout=self._startup_timeout,
        )
        self._update(state="starting")
        log.info("starting %s serve on %s", binary, environ["OLLAMA_HOST"])
        try:
            await self._supervisor.start(spec)
        except ChildFailed as exc:
            raise OllamaUnavailable(
                f"could not start `{binary} serve` for {self._url}: {exc}"
            ) from exc
        self._update(managed=True)

    async def _answers(self) -> bool:
        """The supervisor's health check. Its own client: it outlives this manager's.

        Only plain-http local servers are managed, so the client skips TLS set-up (loading
        the CA bundle would cost ~40 ms per check).
        """
        client = httpx.AsyncClient(
            timeout=_CHECK_TIMEOUT,
            trust_env=False,
            verify=False,  # noqa: S501 - http:// only (see _start): no certificate to check
        )
        async with client:
            try:
                response = await client.get(f"{self._url}/api/version")
            except httpx.TransportError:
                return False
        return response.status_code == 200

    async def _ensure_model(self) -> None:
        with self._http_errors("GET /api/tags"):
            response = await self._client.get("/api/tags")
        if response.status_code != 200:
            raise OllamaError(
                f"GET /api/tags at {self._url}: HTTP {response.status_code} "
                f"({_error_text(response)})"
            )
        models = _json_object(response).get("models")
        names = {
            name
            for entry in (models if isinstance(models, list) else [])
            if isinstance(entry, dict)
            for name in (entry.get("name"), entry.get("model"))
            if isinstance(name, str)
        }
        if _tagged(self._model) in {_tagged(name) for name in names}:
            return
        log.info("model %s is not at %s: pulling it", self._model, self._url)
        await self._pull()

    async def _pull(self) -> None:
        self._update(state="pulling", pull_completed=None, pull_total=None, pull_status=None)
        what = f"pulling {self._model}"
        body = {"model": self._model, "stream": True}
        timeout = httpx.Timeout(self._request_timeout, read=self._pull_timeout)
        try:
            with anyio.fail_after(self._pull_timeout), self._http_errors(what, PullFailed):
                async with self._client.stream(
                    "POST", "/api/pull", json=body, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise PullFailed(
                            f"{what} from {self._url} failed: HTTP {response.status_code} "
                            f"({_error_text(response)})"
                        )
                    succeeded = False
                    async for line in response.aiter_lines():
                        if line.strip():
                            succeeded = self._progress(what, line) or succeeded
        except TimeoutError:
            raise PullFailed(
                f"{what} from {self._url} did not finish within {self._pull_timeout:g} s"
            ) from None
        if not succeeded:
            raise PullFailed(f"{what} from {self._url}: the stream ended before 'success'")
        log.info("pulled %s", self._model)

    def _progress(self, what: str, line: str) -> bool:
        """Take in one NDJSON progress line; True if it says the pull succeeded."""
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise PullFailed(f"{what} from {self._url}: not a JSON object: {line[:200]!r}")
        if "error" in event:
            raise PullFailed(f"{what} from {self._url} failed: {event['error']}")
        status = event.get("status")
        changes: dict[str, Any] = {}
        if isinstance(status, str):
            if status != self._status.pull_status:
                log.info("%s: %s", what, status)
            changes["pull_status"] = status
        for key, field in (("total", "pull_total"), ("completed", "pull_completed")):
            if isinstance(event.get(key), int):
                changes[field] = event[key]
        self._update(**changes)
        return status == "success"

    async def _warm_up(self) -> None:
        self._update(state="warming")
        body = {"model": self._model, "input": ["warm-up"]}
        timeout = max(self._request_timeout, self._startup_timeout)  # loading a model is slow
        with self._http_errors("warm-up embed"):
            response = await self._client.post("/api/embed", json=body, timeout=timeout)
        embeddings = (
            _json_object(response).get("embeddings") if response.status_code == 200 else None
        )
        if not (isinstance(embeddings, list) and embeddings):
            raise OllamaError(
                f"warm-up embed with {self._model} at {self._url} failed: HTTP "
                f"{response.status_code} ({_error_text(response)})"
            )


def _tagged(name: str) -> str:
    """``name:latest`` unless the name carries a tag (a registry's port is not a tag)."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(response: httpx.Response) -> str:
    error = _json_object(response).get("error")
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str):
        return error[:300]
    return response.text[:300] or response.reason_phrase
