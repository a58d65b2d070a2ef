"""The migration's crash loop: a writer inserts, upserts and deletes through the daemon's API
while the daemon migrates, and the daemon or, separately, its LanceDB sidecar is SIGKILLed at
random moments across the phases, then restarted (the daemon by the test, the sidecar by the
daemon's supervisor). Now and then a finished migration is rolled back and started again, so
the kills keep landing in every phase. At the end LanceDB must hold exactly what the writer was
told it stored, and its searches must agree with exact search.

Kills default to a CI-sized 10 of each; set SATCHEL_MIGRATION_KILLS=50 for the full loop.
"""

from __future__ import annotations

import collections
import http.client
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from store.lance import LanceStore
from tests.daemon.daemon_proc import DaemonProcess
from tests.daemon.migration_util import (
    DIM,
    config,
    import_body,
    migration,
    record,
    vector,
    wait_phase,
)

KILLS = int(os.environ.get("SATCHEL_MIGRATION_KILLS", "10"))
SEED_ROWS = 4000
TABLE = "context_vectors"


class Writer(threading.Thread):
    """One client writing without pause; an operation counts once the daemon acknowledged it,
    and one whose answer was lost is sent again until it is (each is idempotent)."""

    def __init__(self, socket: Path, expected: dict[str, int], seed: int) -> None:
        super().__init__(daemon=True)
        self.socket = socket
        self.expected = expected  # id -> version
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.acked = 0
        self.retried = 0
        self.fresh = 0

    def run(self) -> None:
        while not self.halt.is_set():
            roll = self.rng.random()
            if roll < 0.4 or not self.expected:
                self.fresh += 1
                rid, version = f"w{self.fresh:06d}", 0
                self._until_acked("POST", rid, version)
                self.expected[rid] = version
            elif roll < 0.8:
                rid = self.rng.choice(sorted(self.expected))
                version = self.expected[rid] + 1
                self._until_acked("POST", rid, version)
                self.expected[rid] = version
            else:
                rid = self.rng.choice(sorted(self.expected))
                self._until_acked("DELETE", rid, 0)
                del self.expected[rid]
            self.acked += 1

    def _until_acked(self, method: str, rid: str, version: int) -> None:
        while True:
            # http.client over a Unix socket rather than httpx, whose Unix transport leaks its
            # socket when the connect fails, as it does here many times.
            conn = _UnixHTTPConnection(str(self.socket))
            try:
                if method == "POST":
                    conn.request("POST", "/import", body=import_body([record(rid, version)]))
                else:
                    conn.request("DELETE", f"/records/{rid}")
                status = conn.getresponse().status
                if status == 200 or (method == "DELETE" and status == 404):
                    return  # (a 404: deleted before a crash lost the answer)
            except OSError:
                pass
            finally:
                conn.close()
            self.retried += 1
            time.sleep(0.05)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("satchel", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def sidecar_pid(daemon: DaemonProcess) -> int | None:
    try:
        children = daemon.status()["children"]
    except (httpx.HTTPError, OSError, ValueError):
        return None
    for child in children:
        if child["name"] == "lancedb" and child["state"] == "ready" and child["pid"]:
            return int(child["pid"])
    return None


def wait_sidecar(daemon: DaemonProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while sidecar_pid(daemon) is None:
        assert time.monotonic() < deadline, (
            f"no sidecar after {timeout} s:\n{daemon.logs()[-4000:]}"
        )
        time.sleep(0.05)


def phase_of(daemon: DaemonProcess) -> str:
    try:
        phase = migration(daemon)["phase"]
    except (httpx.HTTPError, OSError, ValueError):
        return "unreachable"
    return str(phase)


def post(daemon: DaemonProcess, path: str, body: dict[str, Any] | None = None) -> int:
    """POST until the daemon answers something other than a failure of the moment."""
    for _ in range(200):
        try:
            with daemon.http() as client:
                response = client.post(path, json=body) if body is not None else client.post(path)
            if response.status_code < 500:
                return response.status_code
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"POST {path} kept failing:\n{daemon.logs()[-4000:]}")


@pytest.mark.timeout(300 + 30 * KILLS)  # about 8 s a kill pair, and the last migration
def test_kill_9_of_daemon_and_sidecar_across_the_migration_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261124)
    # The sidecar is killed on purpose here: the supervisor must not give up on it.
    settings = config(migration_batch=100).replace(
        "[supervisor]\n", "[supervisor]\ndegraded_after_crashes = 1000\n"
    )
    assert "degraded_after_crashes = 1000" in settings
    daemon = DaemonProcess(tmp_path / "home", settings)
    expected = {f"r{i:05d}": 0 for i in range(SEED_ROWS)}
    writer = Writer(daemon.socket, expected, seed=7)
    kills: collections.Counter[tuple[str, str]] = collections.Counter()
    try:
        daemon.start()
        with daemon.http() as client:
            response = client.post(
                "/import", content=import_body([record(rid) for rid in sorted(expected)])
            )
            assert response.status_code == 200, response.text
        writer.start()
        assert post(daemon, "/migration", {}) == 202
        plan = ["daemon"] * KILLS + ["sidecar"] * KILLS
        rng.shuffle(plan)
        for left, kind in reversed(list(enumerate(plan))):
            # Mostly once the sidecar is up (it takes seconds to start; the copy, replay, index
            # and verify happen after), sometimes before, while the daemon is starting it.
            if rng.random() < 0.8:
                wait_sidecar(daemon)
            time.sleep(rng.uniform(0.0, 3.0))
            phase = phase_of(daemon)
            if phase == "done" and left > 2:
                # Around again, every time: on a fast machine the migration is often over
                # before the next kill, and the kills must keep landing in the early phases.
                assert post(daemon, "/migration/rollback") == 200
                assert post(daemon, "/migration", {}) == 202
                phase = phase_of(daemon)
            pid = sidecar_pid(daemon) if kind == "sidecar" else None
            victim = "sidecar" if pid is not None else "daemon"  # no sidecar up yet: the daemon
            kills[(victim, phase)] += 1
            if victim == "sidecar":
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                continue
            assert daemon.proc is not None
            daemon.proc.kill()
            daemon.proc.wait(10)
            daemon.start()
        writer.halt.set()
        writer.join(120)
        assert not writer.is_alive()
        if phase_of(daemon) not in ("done",):
            post(daemon, "/migration", {})  # 202, or 409 when it is already running
        wait_phase(daemon, "done", timeout=300)
        daemon.stop()
        assert daemon.proc is not None
        assert daemon.proc.returncode == 0, daemon.logs()[-4000:]
    finally:
        writer.halt.set()
        daemon.stop()
    print(f"\nkills by (process, phase): {dict(sorted(kills.items()))}")
    print(f"writer: {writer.acked} acknowledged operations, {writer.retried} retries")
    assert sum(kills.values()) == 2 * KILLS
    assert len({phase for _, phase in kills}) >= 4, kills  # spread over the phases
    assert writer.acked > 0

    stored = anyio.run(read_lance, daemon.home / "data" / "lance")
    assert sorted(stored) == sorted(expected), (
        f"missing {sorted(set(expected) - set(stored))[:10]}, "
        f"unexpected {sorted(set(stored) - set(expected))[:10]}"
    )
    for rid, version in expected.items():
        text, embedding = stored[rid]
        assert text == f"{rid} v{version}", rid
        assert np.allclose(embedding, np.asarray(vector(rid, version), np.float32)), rid
    recall = anyio.run(lance_recall, daemon.home / "data" / "lance", expected)
    assert recall >= 0.9, recall


async def read_lance(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """id -> (text, vector) of every row of the LanceDB table, duplicates counted apart."""
    stored: dict[str, tuple[str, np.ndarray]] = {}
    async with LanceStore(path) as lance:
        async for batch in lance.export_all(TABLE):
            for row in batch:
                assert row.id not in stored, f"{row.id} is stored twice"
                stored[row.id] = (row.text_chunk, np.asarray(row.embedding, np.float32))
    return stored


async def lance_recall(path: Path, expected: dict[str, int]) -> float:
    """Mean overlap of LanceDB's top-10 with exact cosine top-10 over 20 queries."""
    ids = sorted(expected)
    matrix = np.asarray([vector(rid, expected[rid]) for rid in ids], np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    rng = np.random.default_rng(3)
    overlaps = []
    async with LanceStore(path) as lance:
        for _ in range(20):
            query = rng.standard_normal(DIM).astype(np.float32)
            scores = matrix @ (query / np.linalg.norm(query))
            exact = {ids[i] for i in np.argsort(-scores)[:10]}
            found = {hit.id for hit in await lance.search(TABLE, query, 10)}
            overlaps.append(len(exact & found) / 10)
    return float(np.mean(overlaps))
