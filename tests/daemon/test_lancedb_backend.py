"""`backend = "lancedb"` end to end: the daemon runs the sidecar under its supervisor (ready on
/health, restarted after a crash, stopped at shutdown), or uses one someone else runs; status
shows the sidecar and each table's index."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from store.http import HTTPStore
from tests.daemon.daemon_proc import FAST_CONFIG, DaemonProcess, alive
from tests.store.sidecar import running_sidecar

LANCEDB_CONFIG = FAST_CONFIG + '\n[retrieval]\nbackend = "lancedb"\n'


def _sidecar(status: dict[str, object]) -> dict[str, object]:
    (child,) = [c for c in status["children"] if c["name"] == "lancedb"]  # type: ignore[attr-defined]
    return child  # type: ignore[no-any-return]


def _add_and_wait(daemon: DaemonProcess, text: str) -> None:
    with daemon.http() as client:
        job = client.post("/documents", json={"content": text, "title": text[:20]}).json()
    assert daemon.wait_job(job["job_id"])["state"] == "done"


@pytest.fixture
def lancedb_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path / "home", LANCEDB_CONFIG).start()
    yield daemon
    daemon.stop()


def test_the_daemon_runs_its_sidecar_and_stores_through_it(
    lancedb_daemon: DaemonProcess,
) -> None:
    daemon = lancedb_daemon
    _add_and_wait(daemon, "Herons stand still in the shallows waiting for fish.")
    found = daemon.cli("search", "heron shallows fish", "-k", "1")
    assert found.returncode == 0, found.stderr
    assert "Herons stand still" in found.stdout

    status = daemon.status()
    assert status["backend"] == "lancedb"
    assert status["sidecar"]["managed"] is True
    assert status["sidecar"]["url"].startswith("http://127.0.0.1:")
    assert _sidecar(status)["state"] == "ready"
    table = status["tables"]["context_vectors"]
    assert table["count"] >= 1
    assert table["index"]["kind"] == "exact"  # far below ann_min_rows
    assert table["index"]["unindexed_rows"] == table["count"]
    assert (daemon.home / "data" / "lance" / "context_vectors.lance").is_dir()

    shown = daemon.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "backend lancedb" in shown.stdout
    assert "index exact" in shown.stdout
    assert "child lancedb: ready" in shown.stdout


def test_a_crashed_sidecar_is_restarted_and_nothing_acknowledged_is_lost(
    lancedb_daemon: DaemonProcess,
) -> None:
    daemon = lancedb_daemon
    _add_and_wait(daemon, "Kestrels hover over motorway verges.")
    before = _sidecar(daemon.status())
    os.killpg(int(before["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    status = daemon.status()  # answers while the sidecar is down, saying what is missing
    assert _sidecar(status)["state"] in {"backoff", "starting", "ready"}
    deadline = time.monotonic() + 60
    while True:
        child = _sidecar(daemon.status())
        if child["state"] == "ready" and child["restarts"] == 1:
            break
        assert time.monotonic() < deadline, child
        time.sleep(0.2)
    _add_and_wait(daemon, "Swifts sleep on the wing above the clouds.")
    for query, text in (("kestrel motorway", "Kestrels"), ("swifts wing", "Swifts")):
        found = daemon.cli("search", query, "-k", "1")
        assert text in found.stdout, found.stdout


def test_shutdown_stops_the_sidecar_after_closing_the_store(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "home", LANCEDB_CONFIG).start()
    try:
        pid = int(_sidecar(daemon.status())["pid"])  # type: ignore[call-overload]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0
        assert not alive(pid), "the sidecar outlived the daemon"
        messages = daemon.log_messages()
        assert messages.index("closing the stores") < messages.index("stopping children")
    finally:
        daemon.stop()


def test_an_external_sidecar_is_used_and_left_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_sidecar("lance", tmp_path / "external") as sidecar:
            config = LANCEDB_CONFIG.replace(
                'backend = "lancedb"\n', f'backend = "lancedb"\nlancedb_url = "{sidecar.url}"\n'
            )
            daemon = DaemonProcess(tmp_path / "home", config)
            daemon.env["SATCHEL_SIDECAR_SECRET"] = sidecar.secret
            await anyio.to_thread.run_sync(daemon.start)
            try:
                await anyio.to_thread.run_sync(
                    _add_and_wait, daemon, "Otters hold hands while they sleep."
                )
                status = await anyio.to_thread.run_sync(daemon.status)
                assert status["sidecar"] == {"url": sidecar.url, "managed": False}
                assert [c["name"] for c in status["children"]] == []
                daemon.signal(signal.SIGTERM)
                assert await anyio.to_thread.run_sync(daemon.wait_exit, 30) == 0
            finally:
                daemon.stop()
            # Still running, and it has what the daemon stored.
            async with HTTPStore(sidecar.url, secret=sidecar.secret) as store:
                assert await store.count("context_vectors") >= 1

    anyio.run(scenario)


def test_an_external_sidecar_without_its_secret_is_a_clear_error(tmp_path: Path) -> None:
    config = LANCEDB_CONFIG.replace(
        'backend = "lancedb"\n', 'backend = "lancedb"\nlancedb_url = "http://127.0.0.1:9"\n'
    )
    daemon = DaemonProcess(tmp_path / "home", config)
    daemon.env.pop("SATCHEL_SIDECAR_SECRET", None)
    daemon.start(wait=False)
    assert daemon.wait_exit(30) == 1
    assert "set SATCHEL_SIDECAR_SECRET to that sidecar's secret" in daemon.logs()
