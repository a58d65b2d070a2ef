"""The daemon migrating itself from SQLite to LanceDB: by hand, by its triggers, across
restarts, and back by rollback. Real daemons, real sidecars, real files."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.daemon_proc import DaemonProcess
from tests.daemon.migration_util import config, exported, migration, put, record, wait_phase


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path / "home", config())
    yield process
    process.stop()


def search_some(daemon: DaemonProcess, n: int) -> None:
    with daemon.http() as client:
        for i in range(n):
            found = client.post("/search", json={"vector": record(f"r{i:05d}")["embedding"]})
            assert found.status_code == 200, found.text


def triggered(daemon: DaemonProcess) -> list[str]:
    return [m for m in daemon.log_messages() if m.startswith("migration triggered")]


def test_migrate_by_hand_survives_restarts_and_rolls_back_with_every_change(
    daemon: DaemonProcess,
) -> None:
    daemon.start()
    with daemon.http() as client:
        put(client, [record(f"r{i:05d}") for i in range(3000)])
    expected = {f"r{i:05d}": f"r{i:05d} v0" for i in range(3000)}

    plan = daemon.cli("migrate", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "would start a migration of 3,000 records" in plan.stdout
    assert migration(daemon)["phase"] is None  # a dry run changes nothing

    done = daemon.cli("migrate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "migration: done" in done.stdout
    assert "goes back until" in done.stdout
    status = daemon.status()
    assert status["backend"] == "lancedb"
    assert status["tables"]["context_vectors"]["index"]["kind"] == "IVF_RQ"
    again = daemon.cli("migrate")
    assert again.returncode == 1
    assert "already migrated to LanceDB" in again.stderr

    # Changes after cutover, on LanceDB: new records, upserts and deletes.
    with daemon.http() as client:
        put(client, [record(f"n{i:03d}") for i in range(100)])
        put(client, [record(f"r{i:05d}", 1) for i in range(0, 200, 20)])
        for i in range(1000, 1020):
            assert client.delete(f"/records/r{i:05d}").status_code == 200
    expected |= {f"n{i:03d}": f"n{i:03d} v0" for i in range(100)}
    expected |= {f"r{i:05d}": f"r{i:05d} v1" for i in range(0, 200, 20)}
    for i in range(1000, 1020):
        del expected[f"r{i:05d}"]

    daemon.stop()
    daemon.start()  # comes up on LanceDB
    assert daemon.status()["backend"] == "lancedb"
    assert exported(daemon) == expected

    # A pinned sqlite backend would serve the stale file: refused, and says what to do.
    daemon.stop()
    (daemon.home / "config.toml").write_text(config("sqlite"))
    daemon.start(wait=False)
    assert daemon.wait_exit(60) != 0
    assert 'backend = "sqlite", but this data was moved to LanceDB' in daemon.logs()
    (daemon.home / "config.toml").write_text(config())
    daemon.start()

    back = daemon.cli("migrate", "--rollback")
    assert back.returncode == 0, back.stderr
    assert "migration: rolled back" in back.stdout
    assert daemon.status()["backend"] == "sqlite"
    assert exported(daemon) == expected
    assert not (daemon.home / "data" / "lance").exists()
    twice = daemon.cli("migrate", "--rollback")
    assert twice.returncode == 1
    assert "nothing to roll back" in twice.stderr
    daemon.stop()
    daemon.start()
    assert daemon.status()["backend"] == "sqlite"
    assert exported(daemon) == expected


def test_the_count_trigger_fires_once(daemon: DaemonProcess) -> None:
    (daemon.home / "config.toml").write_text(config(migrate_at_count=1000))
    daemon.start()
    with daemon.http() as client:
        put(client, [record(f"r{i:05d}") for i in range(1200)])
    state = wait_phase(daemon, "done")
    assert "holds 1200 rows, above migrate_at_count (1000)" in state["reason"]
    with daemon.http() as client:
        put(client, [record(f"n{i:05d}") for i in range(1200)])
    daemon.stop()
    daemon.start()
    after = migration(daemon)
    assert (after["phase"], after["started_at"]) == ("done", state["started_at"])
    assert len(exported(daemon)) == 2400
    assert len(triggered(daemon)) == 1, triggered(daemon)


def test_the_latency_trigger_fires_once_and_not_after_a_rollback(daemon: DaemonProcess) -> None:
    (daemon.home / "config.toml").write_text(config(latency_window=5))
    daemon.start()
    with daemon.http() as client:
        put(client, [record(f"r{i:05d}") for i in range(1200)])
    search_some(daemon, 5)
    state = wait_phase(daemon, "done")
    assert "search p95" in state["reason"]
    assert "over the last 5 searches" in state["reason"]
    assert daemon.cli("migrate", "--rollback").returncode == 0
    search_some(daemon, 10)
    after = migration(daemon)
    assert (after["phase"], after["automatic"], after["running"]) == (
        "rolled back",
        False,
        False,
    )
    assert len(triggered(daemon)) == 1, triggered(daemon)


@pytest.mark.parametrize("trigger", ["count", "latency"])
def test_a_pinned_backend_never_migrates(daemon: DaemonProcess, trigger: str) -> None:
    (daemon.home / "config.toml").write_text(
        config("sqlite", migrate_at_count=1000, latency_window=5)
    )
    daemon.start()
    with daemon.http() as client:
        put(client, [record(f"r{i:05d}") for i in range(1200)])
    if trigger == "latency":
        search_some(daemon, 10)
    with daemon.http() as client:
        refused = client.post("/migration", json={})
        assert refused.status_code == 409
        assert 'backend = "sqlite" is pinned' in refused.json()["error"]
    time.sleep(2.5)  # longer than the count trigger takes to look (it waits 1 s)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
    assert not any(m.startswith("migration") for m in daemon.log_messages())
    assert not (daemon.home / "data" / "lance").exists()
