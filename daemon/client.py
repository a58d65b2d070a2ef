"""The CLI's side of the daemon's socket API, and the bits of terminal output commands share.

Every client command goes through `Client`, which turns a refused connection into "the daemon
is not running" (exit status 3) and an error answer into a `CLIError` carrying its message.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx

from daemon.config import Config, usable_socket_path

__all__ = ["NOT_RUNNING", "CLIError", "Client", "bar", "duration", "progress"]

NOT_RUNNING = 3


class CLIError(Exception):
    """A failure to report in one line, with the exit status to use."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """The daemon's API over its socket, with errors turned into `CLIError`s."""

    def __init__(self, config: Config, timeout: float = 60.0) -> None:
        self.socket = usable_socket_path(config.paths)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://satchel",
            timeout=timeout,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer; an error answer raises `CLIError` with its message."""
        return _checked(self._send(method, path, **kwargs))

    def request_raw(self, method: str, path: str, **kwargs: Any) -> bytes:
        """Like `request`, for an answer that is not JSON: its bytes."""
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            _checked(response)
        return response.content

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._not_running() from exc
        except httpx.HTTPError as exc:
            raise CLIError(f"talking to the daemon at {self.socket}: {exc}") from exc

    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[bytes]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    _checked(response)
                yield from response.iter_bytes()
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._not_running() from exc
        except httpx.HTTPError as exc:
            raise CLIError(f"the daemon's answer broke off: {exc}") from exc

    def _not_running(self) -> CLIError:
        return CLIError(
            f"the daemon is not running (nothing answers on {self.socket}). Start it with "
            "`satchel run`, or install the login service with `satchel service install`.",
            NOT_RUNNING,
        )


def _checked(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        message = body.get("error") if isinstance(body, dict) else response.text[:200]
        raise CLIError(f"{message} (HTTP {response.status_code})")
    return body


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def bar(done: float, total: float, width: int = 30) -> str:
    share = 0.0 if total <= 0 else min(1.0, done / total)
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%}"


def progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text}", end="", file=sys.stderr, flush=True)
