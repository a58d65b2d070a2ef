"""A stand-in for the Ollama server, speaking the parts of its HTTP API that Satchel uses.

Ollama cannot run on the development and CI machines, so tests talk to this instead, over a
real socket. It implements, from Ollama's API documentation:

- ``GET /api/version`` -> ``{"version": ...}``
- ``GET /api/tags`` -> ``{"models": [{"name", "model", "size", "digest", "details"}, ...]}``
- ``POST /api/pull`` ``{"model"}`` -> NDJSON progress lines ending in ``{"status": "success"}``
- ``POST /api/embed`` ``{"model", "input": str | [str]}`` -> ``{"model", "embeddings": [[...]]}``,
  404 ``{"error": "model ... not found, try pulling it first"}`` for a model it lacks.
- ``POST /v1/embeddings`` (Ollama's OpenAI-compatible endpoint) -> ``{"data": [{"index",
  "embedding"}, ...]}``, with OpenAI-style ``{"error": {"message"}}`` errors.

Embeddings come from Satchel's HashEmbedder, so they are deterministic and meaningful enough
for search tests. Failures are injected through ``POST /_standin/faults`` (or `Faults` directly
when the server runs in-process): bursts of a status code, added latency, dropped connections,
a pull that fails inside its 200 stream, inputs that earn a 400. ``GET /_standin/stats`` counts
requests and embedded inputs.

Run as ``python -m tests.ollama_standin serve`` it listens on ``$OLLAMA_HOST`` (as ``ollama
serve`` does); ``tests/bin/ollama`` is that, under the name the daemon looks for.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ingest.embed import HashEmbedder

VERSION = "0.12.0-standin"


@dataclass
class Faults:
    """What to do wrong, and how often. Counters count down as faults are served."""

    embed_status: int = 0  # answer /api/embed with this status...
    embed_status_count: int = 0  # ...this many times (-1: until changed)
    drop_count: int = 0  # close this many embed connections without answering
    latency: float = 0.0  # seconds added to every embed request
    reject_marker: str = "POISON-400"  # an input containing this gets a 400
    pull_error: str = ""  # a pull streams progress, then this error inside its 200


@dataclass
class Stats:
    """What the stand-in has been asked."""

    embed_requests: int = 0
    embedded_inputs: int = 0
    pulls: int = 0
    last_inputs: list[str] = field(default_factory=list)
    last_authorization: str = ""


@dataclass
class StandinState:
    """Models present, faults to inject, counters; shared by the handler threads."""

    models: set[str] = field(default_factory=lambda: {"nomic-embed-text:latest"})
    faults: Faults = field(default_factory=Faults)
    stats: Stats = field(default_factory=Stats)
    dim: int = 768
    lock: threading.Lock = field(default_factory=threading.Lock)

    def has(self, model: str) -> bool:
        name = model if ":" in model else f"{model}:latest"
        return name in self.models


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read results, not access logs

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/api/version":
            self._json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            with state.lock:
                models = sorted(state.models)
            self._json(200, {"models": [_model_entry(m) for m in models]})
        elif self.path == "/_standin/stats":
            with state.lock:
                self._json(200, asdict(state.stats))
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        body = self._body()
        if body is None or not isinstance(body, dict):
            self._json(400, {"error": "invalid JSON body"})
        elif self.path == "/api/embed":
            self._embed(body, openai=False)
        elif self.path == "/v1/embeddings":
            self._embed(body, openai=True)
        elif self.path == "/api/pull":
            self._pull(body)
        elif self.path == "/_standin/faults":
            with self.server.state.lock:
                self.server.state.faults = Faults(**body)
            self._json(200, {"ok": True})
        elif self.path == "/_standin/models":
            with self.server.state.lock:
                self.server.state.models = set(body.get("models", []))
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def _error(self, status: int, message: str, *, openai: bool) -> None:
        self._json(status, {"error": {"message": message} if openai else message})

    def _embed(self, body: dict[str, Any], *, openai: bool) -> None:
        state = self.server.state
        with state.lock:
            state.stats.embed_requests += 1
            state.stats.last_authorization = self.headers.get("Authorization", "")
            faults = state.faults
            latency = faults.latency
            drop = faults.drop_count > 0
            if drop:
                faults.drop_count -= 1
            status = faults.embed_status if faults.embed_status_count != 0 else 0
            if status and faults.embed_status_count > 0:
                faults.embed_status_count -= 1
        if latency:
            time.sleep(latency)
        if drop:
            self.close_connection = True
            self.connection.shutdown(2)  # the peer sees the connection end with no answer
            return
        if status:
            self._error(status, f"injected {status}", openai=openai)
            return
        model = body.get("model")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(model, str)
            or not isinstance(inputs, list)
            or not all(isinstance(i, str) for i in inputs)
        ):
            message = "model (string) and input (string or list) are required"
            self._error(400, message, openai=openai)
            return
        if not state.has(model):
            message = f'model "{model}" not found, try pulling it first'
            self._error(404, message, openai=openai)
            return
        if any(faults.reject_marker and faults.reject_marker in text for text in inputs):
            self._error(400, "the input cannot be embedded (rejected)", openai=openai)
            return
        vectors = HashEmbedder(state.dim).embed_sync(inputs).tolist()
        with state.lock:
            state.stats.embedded_inputs += len(inputs)
            state.stats.last_inputs = list(inputs)
        if openai:
            data = [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ]
            self._json(200, {"object": "list", "data": data[::-1], "model": model})
        else:
            self._json(200, {"model": model, "embeddings": vectors, "total_duration": 1})

    def _pull(self, body: dict[str, Any]) -> None:
        state = self.server.state
        model = body.get("model") or body.get("name")
        if not isinstance(model, str):
            self._json(400, {"error": "model is required"})
            return
        with state.lock:
            state.stats.pulls += 1
            error = state.faults.pull_error
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        total = 274_302_450
        for done in (0, total // 2, total):
            lines.append(
                {
                    "status": "pulling 970aa74c0a90",
                    "digest": "sha256:970aa74c0a90",
                    "total": total,
                    "completed": done,
                }
            )
        if error:
            lines.append({"error": error})
        else:
            lines += [{"status": "verifying sha256 digest"}, {"status": "success"}]
        for line in lines:
            data = json.dumps(line).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        if not error:
            with state.lock:
                state.models.add(model if ":" in model else f"{model}:latest")


def _model_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2026-01-01T00:00:00Z",
        "size": 274_302_450,
        "digest": "970aa74c0a90",
        "details": {"family": "nomic-bert", "parameter_size": "137M"},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: StandinState) -> None:
        self.state = state
        super().__init__(address, _Handler)


@contextmanager
def running_standin(
    state: StandinState | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[tuple[str, StandinState]]:
    """Serve the stand-in in a background thread; yields its base URL and its state."""
    state = state or StandinState()
    server = _Server((host, port), state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main(argv: list[str]) -> int:
    """``serve``: run in the foreground on $OLLAMA_HOST, like ``ollama serve``."""
    if argv[:1] != ["serve"]:
        print(f"ollama stand-in: only 'serve' is supported, got {argv}", file=sys.stderr)
        return 1
    host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
    models = os.environ.get("STANDIN_MODELS")
    state = StandinState(models=set(models.split(",")) if models is not None else set())
    server = _Server((host or "127.0.0.1", int(port)), state)
    print(f"ollama stand-in listening on {host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
