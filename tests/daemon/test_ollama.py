"""The Ollama manager against the stand-in: in-process as an "external" server, and as
``ollama serve`` through the ``tests/bin/ollama`` shim, started by a real Supervisor.

The shim reaches the manager through the environment handed to it (PATH), never through
this process's own environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import anyio
import anyio.lowlevel
import httpx
import pytest

from daemon.ollama import OllamaManager, OllamaUnavailable, PullFailed
from daemon.supervisor import ChildState, Supervisor, SupervisorSettings
from tests.daemon.procs import DEADLINE, free_port, running, until, until_gone
from tests.ollama_standin import Faults, StandinState, running_standin

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "tests" / "bin" / "ollama"
MODEL = "nomic-embed-text"
PULLED_SIZE = 274_302_450  # what the stand-in reports for every layer
FAST = SupervisorSettings(
    ready_timeout=30.0,
    restart_initial=0.05,
    restart_max=0.2,
    degraded_after=100,
    stop_grace=2.0,
    health_interval=0.0,
)


def environment(*, shim: bool, models: str | None = None) -> dict[str, str]:
    """This process's environment with the shim's folder on PATH (or no `ollama` at all).

    The shim runs ``python3`` from PATH; the virtualenv's comes first so it finds our packages.
    """
    env = {k: v for k, v in os.environ.items() if k not in {"OLLAMA_HOST", "STANDIN_MODELS"}}
    folders = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    folders = [f for f in folders if f and not (Path(f) / "ollama").exists()]
    env["PATH"] = os.pathsep.join([str(SHIM.parent), *folders] if shim else folders)
    if models is not None:
        env["STANDIN_MODELS"] = models
    return env


async def answers(url: str) -> bool:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        try:
            return (await client.get(f"{url}/api/version")).status_code == 200
        except httpx.TransportError:
            return False


async def get(url: str) -> object:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.json()


def group_of(run_dir: Path) -> list[int]:
    """The launcher's and the program's pids, from the supervisor's pidfile."""
    record = json.loads((run_dir / "ollama.pid").read_text())
    return [process["pid"] for process in record["processes"]]


@pytest.fixture
def cleanup() -> Iterator[list[int]]:
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


@pytest.mark.anyio
async def test_a_running_ollama_is_used_and_never_stopped(tmp_path: Path) -> None:
    with running_standin() as (url, state):
        async with (
            Supervisor(tmp_path / "run", FAST) as supervisor,
            OllamaManager(
                url=url, model=MODEL, supervisor=supervisor, env=environment(shim=True)
            ) as manager,
        ):
            status = await manager.ensure()
            assert status.state == "external"
            assert not status.managed
            assert status.url == url
            assert manager.status() == status
            assert supervisor.get("ollama") is None  # the shim was there, and not started
            assert state.stats.pulls == 0  # "nomic-embed-text" is "nomic-embed-text:latest"
            assert state.stats.last_inputs == ["warm-up"]
        await manager.aclose()  # idempotent
        assert await answers(url)


@pytest.mark.anyio
async def test_ollama_is_started_on_demand_and_stopped_at_shutdown(
    tmp_path: Path, cleanup: list[int]
) -> None:
    url, run_dir = f"http://127.0.0.1:{free_port()}", tmp_path / "run"
    log_path = tmp_path / "logs" / "ollama.log"
    async with Supervisor(run_dir, FAST) as supervisor:
        async with OllamaManager(
            url=url,
            model=MODEL,
            supervisor=supervisor,
            env=environment(shim=True, models="nomic-embed-text:latest"),
            log_path=log_path,
        ) as manager:
            status = await manager.ensure()
            assert status.state == "ready"
            assert status.managed
            child = supervisor.get("ollama")
            assert child is not None
            assert child.state is ChildState.READY
            assert child.pid is not None
            cleanup.append(child.pid)
            group = group_of(run_dir)
            stats = await get(f"{url}/_standin/stats")
            assert isinstance(stats, dict)
            assert stats["pulls"] == 0
            assert stats["embed_requests"] == 1
        assert await answers(url)  # closing the manager leaves the server to the supervisor
    assert not await answers(url)
    await until_gone(group)
    assert "listening" in log_path.read_text()


@pytest.mark.anyio
async def test_a_missing_model_is_pulled_with_progress(tmp_path: Path, cleanup: list[int]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    seen: set[str] = set()
    async with (
        Supervisor(tmp_path / "run", FAST) as supervisor,
        OllamaManager(
            url=url,
            model=MODEL,
            supervisor=supervisor,
            binary=str(SHIM),  # configured, not on PATH
            env=environment(shim=False),
        ) as manager,
        anyio.create_task_group() as tg,
    ):

        async def watch() -> None:
            while True:
                seen.add(manager.status().state)
                await anyio.lowlevel.checkpoint()  # see every state

        tg.start_soon(watch)
        status = await manager.ensure()
        tg.cancel_scope.cancel()
        child = supervisor.get("ollama")
        assert child is not None
        assert child.pid is not None
        cleanup.append(child.pid)
        assert status.state == "ready"
        assert status.pull_status == "success"
        assert status.pull_completed == status.pull_total == PULLED_SIZE
        stats = await get(f"{url}/_standin/stats")
        assert isinstance(stats, dict)
        assert stats["pulls"] == 1
        tags = await get(f"{url}/api/tags")
        assert isinstance(tags, dict)
        assert [m["name"] for m in tags["models"]] == ["nomic-embed-text:latest"]
    assert {"probing", "starting", "pulling", "warming"} <= seen


@pytest.mark.anyio
async def test_an_error_inside_the_pull_stream_fails_the_pull(tmp_path: Path) -> None:
    state = StandinState(models=set(), faults=Faults(pull_error="disk full"))
    with running_standin(state) as (url, _):
        async with (
            Supervisor(tmp_path / "run", FAST) as supervisor,
            OllamaManager(url=url, model=MODEL, supervisor=supervisor) as manager,
        ):
            with pytest.raises(PullFailed, match=r"pulling nomic-embed-text from .* disk full"):
                await manager.ensure()
            status = manager.status()
            assert status.state == "failed"
            assert status.error is not None
            assert "disk full" in status.error
            assert status.pull_completed == PULLED_SIZE  # progress came before the error
        assert state.stats.pulls == 1
        assert state.models == set()


@pytest.mark.anyio
async def test_a_crashed_ollama_is_restarted(tmp_path: Path, cleanup: list[int]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with (
        Supervisor(tmp_path / "run", FAST) as supervisor,
        OllamaManager(
            url=url,
            model=MODEL,
            supervisor=supervisor,
            env=environment(shim=True, models="nomic-embed-text:latest"),
        ) as manager,
    ):
        await manager.ensure()
        first = supervisor.get("ollama")
        assert first is not None
        assert first.pid is not None
        cleanup.append(first.pid)
        group = group_of(tmp_path / "run")
        os.killpg(first.pid, signal.SIGKILL)
        await until_gone(group)

        def back() -> bool:
            child = supervisor.get("ollama")
            assert child is not None
            if child.pid is not None:
                cleanup.append(child.pid)
            # A new pid, not merely "no pid": between the kill and the watcher noticing it,
            # the status still says READY while the dead process has no pid to report.
            return child.state is ChildState.READY and child.pid not in (None, first.pid)

        await until(back, within=DEADLINE * 2)
        child = supervisor.get("ollama")
        assert child is not None
        assert child.restarts == 1
        assert child.last_exit == "killed by SIGKILL"
        assert await answers(url)
        assert manager.status().state == "ready"


@pytest.mark.anyio
async def test_no_server_and_no_binary_is_unavailable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with (
        Supervisor(tmp_path / "run", FAST) as supervisor,
        OllamaManager(
            url=url, model=MODEL, supervisor=supervisor, env=environment(shim=False)
        ) as manager,
    ):
        with pytest.raises(OllamaUnavailable) as caught:
            await manager.ensure()
        assert str(caught.value) == f"no Ollama server at {url} and no `ollama` on PATH"
        assert manager.status().state == "unavailable"
        assert supervisor.get("ollama") is None


@pytest.mark.anyio
async def test_management_disabled_is_unavailable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with (
        Supervisor(tmp_path / "run", FAST) as supervisor,
        OllamaManager(
            url=url,
            model=MODEL,
            supervisor=supervisor,
            manage=False,
            env=environment(shim=True),
        ) as manager,
    ):
        with pytest.raises(OllamaUnavailable, match=r"starting one is disabled"):
            await manager.ensure()
        assert supervisor.get("ollama") is None


@pytest.mark.anyio
async def test_a_start_that_fails_is_unavailable(tmp_path: Path) -> None:
    # The port is taken (bound, not listening): nothing answers, and `ollama serve` cannot bind.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{squatter.getsockname()[1]}"
        async with (
            Supervisor(tmp_path / "run", FAST) as supervisor,
            OllamaManager(
                url=url, model=MODEL, supervisor=supervisor, env=environment(shim=True)
            ) as manager,
        ):
            with pytest.raises(
                OllamaUnavailable, match=r"could not start .*exited with exit code 1"
            ):
                await manager.ensure()
            child = supervisor.get("ollama")
            assert child is not None
            assert child.state is ChildState.FAILED
            assert running(os.getpid())


class _Odd(BaseHTTPRequestHandler):
    """A server that is not quite Ollama: answers from `ANSWERS`, by method and path."""

    ANSWERS: ClassVar[dict[tuple[str, str], tuple[int, object]]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, body = self.ANSWERS.get((self.command, self.path), (404, {"error": "no route"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def odd_server(answers: dict[tuple[str, str], tuple[int, object]]) -> Iterator[str]:
    handler = type("Handler", (_Odd,), {"ANSWERS": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.anyio
async def test_a_refused_pull_fails_with_the_servers_error(tmp_path: Path) -> None:
    answers: dict[tuple[str, str], tuple[int, object]] = {
        ("GET", "/api/version"): (200, {"version": "0.12.0"}),
        ("GET", "/api/tags"): (200, {"models": [{"name": "other:latest"}]}),
        ("POST", "/api/pull"): (500, {"error": "registry unreachable"}),
    }
    with odd_server(answers) as url:
        async with (
            Supervisor(tmp_path / "run", FAST) as supervisor,
            OllamaManager(url=url, model=MODEL, supervisor=supervisor) as manager,
        ):
            with pytest.raises(PullFailed, match=r"HTTP 500 \(registry unreachable\)"):
                await manager.ensure()


@pytest.mark.anyio
async def test_something_else_on_the_port_is_not_taken_for_ollama(tmp_path: Path) -> None:
    with odd_server({}) as url:
        async with (
            Supervisor(tmp_path / "run", FAST) as supervisor,
            OllamaManager(
                url=url, model=MODEL, supervisor=supervisor, env=environment(shim=True)
            ) as manager,
        ):
            with pytest.raises(OllamaUnavailable, match=r"with HTTP 404 .*other than Ollama"):
                await manager.ensure()
            assert supervisor.get("ollama") is None
