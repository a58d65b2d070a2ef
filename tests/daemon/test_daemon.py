"""End to end: `satchel run` in a subprocess, used through the CLI and the socket API."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.daemon_proc import FAST_CONFIG, SHIM_DIR, DaemonProcess, alive, connectable
from tests.loopback import body, serving


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path / "home").start()
    yield proc
    proc.stop()


def _job_id(cli_output: str) -> int:
    # "queued SOURCE as job N"
    return int(cli_output.rsplit(" ", 1)[1])


def test_add_a_file_and_a_page_then_search_finds_them(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# Sourdough\n\nFeed the starter with rye flour twice a day.\n")
    page = tmp_path / "page.html"
    page.write_text(
        "<html lang='en'><head><title>Tide tables</title></head><body><nav>Home | About</nav>"
        "<article><h1>Tide tables</h1><p>Spring tides follow the new and full moon, when the "
        "sun and moon pull together on the oceans.</p></article></body></html>"
    )
    jobs = []
    for path in (notes, page):
        added = daemon.cli("add", str(path))
        assert added.returncode == 0, added.stderr
        jobs.append(_job_id(added.stdout.strip()))
    piped = daemon.cli("add", "-", "--title", "piped", stdin="Kestrels hover over motorway verges.")
    assert piped.returncode == 0, piped.stderr
    jobs.append(_job_id(piped.stdout.strip()))
    for job in jobs:
        assert daemon.wait_job(job)["state"] == "done"

    found = daemon.cli("search", "starter rye flour", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "notes.md" in found.stdout
    assert "rye flour" in found.stdout
    assert "built-in lexical embedder" not in found.stdout  # pinned to hash: no fallback warning

    found = daemon.cli("search", "spring tides moon", "-k", "1", "--json")
    assert found.returncode == 0, found.stderr
    assert '"title": "Tide tables"' in found.stdout
    assert "Home | About" not in found.stdout  # boilerplate dropped by extraction

    listed = daemon.cli("sources", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("ok ") == 3, listed.stdout
    status = daemon.status()
    assert status["tables"]["context_vectors"]["count"] >= 3
    assert status["queue"]["done"] == 3
    assert status["search_latency"]["count"] == 2
    assert status["embedder"] == {
        "provider": "hash",
        "model": "satchel-hash-v1-64",
        "state": "ready",
        "warning": None,
    }

    removed = daemon.cli("sources", "rm", notes.resolve().as_uri())
    assert removed.returncode == 0, removed.stderr
    found = daemon.cli("search", "starter rye flour", "-k", "3")
    assert "notes.md" not in found.stdout


def test_sigterm_exits_zero_logging_each_step(daemon: DaemonProcess) -> None:
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=15) == 0
    messages = daemon.log_messages()
    steps = [
        "SIGTERM: shutting down",
        "no longer accepting connections",
        "closing the stores",
        "stopping children",
        "stopped",
    ]
    positions = [next(i for i, m in enumerate(messages) if m.startswith(step)) for step in steps]
    assert positions == sorted(positions)
    assert not daemon.socket.exists() or not connectable(daemon.socket)


def test_a_second_daemon_exits_zero_saying_one_runs(daemon: DaemonProcess) -> None:
    second = daemon.cli("run")
    assert second.returncode == 0
    assert "running and healthy" in second.stderr
    with daemon.http() as client:  # the first is undisturbed
        assert client.get("/health").status_code == 200


def test_the_cli_says_how_to_start_the_daemon(tmp_path: Path) -> None:
    idle = DaemonProcess(tmp_path / "home")
    result = idle.cli("status")
    assert result.returncode == 3
    assert "not running" in result.stderr
    assert "satchel run" in result.stderr


def test_socket_is_owner_only(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600


def _as_root() -> list[str] | None:
    """How to run a command as root, so it can drop to another uid: directly when we are root,
    else through passwordless sudo (as `.ci/run` uses for apt); None when neither works."""
    if os.getuid() == 0:
        return []
    try:
        sudo = subprocess.run(["sudo", "-n", "true"], check=False, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ["sudo", "-n"] if sudo.returncode == 0 else None


_ROOT = _as_root()


@pytest.mark.skipif(_ROOT is None, reason="needs root or passwordless sudo to act as another user")
def test_another_uid_cannot_use_the_socket(daemon: DaemonProcess) -> None:
    assert _ROOT is not None
    probe = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1]); s.sendall(b'GET /health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        "    print('answered' if s.recv(100) else 'refused')\n"
        "except OSError as e:\n"
        "    print('refused', e)\n"
    )
    result = subprocess.run(
        [*_ROOT, sys.executable, "-c", probe, str(daemon.socket)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.startswith("refused"), result.stdout


def test_kill_9_leaves_no_children_and_a_restart_finishes_the_queue(tmp_path: Path) -> None:
    config = _with_ollama(FAST_CONFIG)
    home = tmp_path / "home"
    daemon = DaemonProcess(home, config, path_extra=str(SHIM_DIR)).start()
    try:
        child = _wait_for_child(daemon)
        with daemon.http() as client:
            jobs = [
                client.post(
                    "/documents", json={"content": f"document number {n} about herons"}
                ).json()["job_id"]
                for n in range(200)
            ]
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.wait_exit(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the Ollama child outlived the daemon"

        restarted = DaemonProcess(home, config, path_extra=str(SHIM_DIR)).start()
        try:
            for job in jobs:
                assert restarted.wait_job(job)["state"] == "done"
            assert restarted.status()["tables"]["context_vectors"]["count"] >= 200
        finally:
            restarted.stop()
        assert restarted.wait_exit(15) == 0
    finally:
        daemon.stop()


def test_managed_ollama_is_stopped_at_shutdown(tmp_path: Path) -> None:
    config = _with_ollama(FAST_CONFIG)
    daemon = DaemonProcess(tmp_path / "home", config, path_extra=str(SHIM_DIR)).start()
    try:
        child = _wait_for_child(daemon)
        assert daemon.status()["embedder"]["provider"] == "ollama"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(15) == 0
        assert not alive(child)
    finally:
        daemon.stop()


def test_no_ollama_falls_back_to_the_builtin_embedder_with_a_warning(tmp_path: Path) -> None:
    config = _with_ollama(FAST_CONFIG)
    daemon = DaemonProcess(tmp_path / "home", config).start()  # no shim on PATH
    try:
        added = daemon.cli("add", "-", stdin="Otters hold hands while they sleep.")
        assert daemon.wait_job(_job_id(added.stdout.strip()))["state"] == "done"
        status = daemon.status()["embedder"]
        assert status["provider"] == "hash"
        assert status["state"] == "fallback"
        found = daemon.cli("search", "otters")
        assert found.stdout.startswith("warning: Ollama is not available")
        assert "Otters hold hands" in found.stdout
    finally:
        daemon.stop()


def _with_ollama(config: str) -> str:
    """`config` with provider auto and an Ollama URL on a free port (nothing listens there)."""
    return config.replace(
        'provider = "hash"\nhash_dim = 64',
        f'provider = "auto"\nollama_url = "http://127.0.0.1:{_free_port()}"',
    )


def _wait_for_child(daemon: DaemonProcess, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = daemon.status()
        children = [c for c in status["children"] if c["state"] == "ready"]
        if children and status["embedder"]["state"] == "ready":
            pid: int = children[0]["pid"]
            return pid
        time.sleep(0.1)
    raise AssertionError(f"no ready child: {daemon.status()}\n{daemon.logs()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_export_then_import_through_the_cli(daemon: DaemonProcess, tmp_path: Path) -> None:
    added = daemon.cli("add", "-", stdin="Swifts sleep on the wing.")
    assert daemon.wait_job(_job_id(added.stdout.strip()))["state"] == "done"
    dump = tmp_path / "dump.ndjson"
    exported = daemon.cli("export", str(dump))
    assert exported.returncode == 0, exported.stderr
    lines = dump.read_text().splitlines()
    assert '"model":"satchel-hash-v1-64"' in lines[0]
    assert len(lines) == 2
    assert "Swifts sleep" in lines[1]

    other = DaemonProcess(tmp_path / "other").start()
    try:
        imported = other.cli("import", str(dump))
        assert imported.returncode == 0, imported.stderr
        assert "imported 1 records" in imported.stderr
        found = other.cli("search", "swifts wing", "-k", "1")
        assert "Swifts sleep on the wing." in found.stdout
    finally:
        other.stop()


def test_doctor_checks_a_running_daemon(daemon: DaemonProcess) -> None:
    result = daemon.cli("doctor")
    assert "ok   daemon: running, embedder hash" in result.stdout
    assert "ok   socket directory mode 700" in result.stdout
    assert result.returncode == (1 if "BAD" in result.stdout else 0)


def test_doctor_says_how_to_fix_a_stopped_daemon(tmp_path: Path) -> None:
    result = DaemonProcess(tmp_path / "home").cli("doctor")
    assert result.returncode == 1
    assert "BAD  daemon: not running" in result.stdout
    assert "fix: start it: satchel run" in result.stdout


def test_a_bad_config_stops_the_daemon_with_a_clear_message(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "home", '[embedder]\nprovder = "hash"\n')
    result = daemon.cli("run")
    assert result.returncode == 1
    assert "[embedder] provder: unknown key; did you mean 'provider'?" in result.stderr


def test_add_a_url_fetched_by_the_daemon_through_the_guard(tmp_path: Path) -> None:
    page = (
        b"<html><head><title>Herons</title></head><body><article><p>Grey herons stand "
        b"motionless in the shallows, waiting for fish.</p></article></body></html>"
    )
    with serving({"/herons": body(page)}) as port:
        config = FAST_CONFIG + f'\n[feeds]\nallowed_hosts = ["127.0.0.1:{port}"]\n'
        daemon = DaemonProcess(tmp_path / "home", config).start()
        try:
            added = daemon.cli("add", f"http://127.0.0.1:{port}/herons")
            assert added.returncode == 0, added.stderr
            assert daemon.wait_job(_job_id(added.stdout.strip()))["state"] == "done"
            found = daemon.cli("search", "herons shallows", "-k", "1")
            assert "Herons" in found.stdout
            assert f"http://127.0.0.1:{port}/herons" in found.stdout

            refused = daemon.cli("add", f"http://localhost:{port}/herons")
            assert refused.returncode == 1
            assert "private or local address" in refused.stderr
        finally:
            daemon.stop()


def test_a_table_of_another_model_stops_ingestion_not_the_daemon(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = DaemonProcess(home).start()
    added = first.cli("add", "-", stdin="Moths navigate by the moon.")
    assert first.wait_job(_job_id(added.stdout.strip()))["state"] == "done"
    first.stop()

    # The same data with another embedder (a user who installed Ollama, say).
    second = DaemonProcess(home, FAST_CONFIG.replace("hash_dim = 64", "hash_dim = 128")).start()
    try:
        deadline = time.monotonic() + 30
        while second.status()["embedder"]["state"] != "failed":
            assert time.monotonic() < deadline, second.logs()
            time.sleep(0.1)
        warning = second.status()["embedder"]["warning"]
        assert "satchel-hash-v1-64" in warning  # names the model the table expects
        with second.http() as client:  # still serving what is stored
            assert client.get("/sources").json()["sources"][0]["state"] == "ok"
    finally:
        second.stop()
    assert second.wait_exit(15) == 0
