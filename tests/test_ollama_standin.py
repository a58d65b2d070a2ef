"""The Ollama stand-in itself speaks the documented protocol the daemon will rely on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.ollama_standin import Faults, StandinState, running_standin

ROOT = Path(__file__).resolve().parents[1]


def test_version_tags_and_pull_with_ndjson_progress() -> None:
    with running_standin(StandinState(models=set())) as (url, state):
        assert httpx.get(f"{url}/api/version").json()["version"]
        assert httpx.get(f"{url}/api/tags").json() == {"models": []}
        with httpx.stream("POST", f"{url}/api/pull", json={"model": "nomic-embed-text"}) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines[0] == {"status": "pulling manifest"}
        assert any(line.get("completed") == line.get("total") for line in lines)
        assert lines[-1] == {"status": "success"}
        names = [m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]]
        assert names == ["nomic-embed-text:latest"]
        assert state.stats.pulls == 1


def test_a_failed_pull_is_an_error_line_inside_a_200_stream() -> None:
    state = StandinState(models=set(), faults=Faults(pull_error="disk full"))
    with running_standin(state) as (url, _):
        with httpx.stream("POST", f"{url}/api/pull", json={"model": "nomic-embed-text"}) as r:
            assert r.status_code == 200
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines[-1] == {"error": "disk full"}
        assert httpx.get(f"{url}/api/tags").json() == {"models": []}  # nothing was pulled


def test_the_ollama_shim_serves_on_ollama_host() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    with subprocess.Popen(
        [str(ROOT / "tests" / "bin" / "ollama"), "serve"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    ) as shim:
        try:
            assert shim.stdout is not None
            assert "listening" in shim.stdout.readline()
            answer = httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=5)
            assert answer.status_code == 200
        finally:
            shim.terminate()
            shim.wait(timeout=10)
    refused = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bin" / "ollama"), "run", "llama3"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1
    assert "only 'serve' is supported" in refused.stderr
