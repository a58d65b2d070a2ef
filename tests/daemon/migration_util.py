"""Records in and out of a real daemon for the migration tests: import bodies, exports, and the
config that lets a cutover go ahead on a few thousand rows."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx

from tests.daemon.daemon_proc import FAST_CONFIG, DaemonProcess

DIM = 16
MODEL = f"satchel-hash-v1-{DIM}"


def config(backend: str = "auto", **retrieval: object) -> str:
    """The test daemon's config with a [retrieval] section.

    ann_min_rows is at its least, so a few thousand rows get an index; a slow p95 of 0.001 ms
    lets the cutover go ahead although LanceDB (a process away) is slower than SQLite on a few
    rows (and makes any full latency window fire the trigger)."""
    keys = {
        "backend": backend,
        "migration_batch": 250,
        "ann_min_rows": 1000,
        "migrate_at_p95_ms": 0.001,
        **retrieval,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    base = FAST_CONFIG.replace("hash_dim = 64", f"hash_dim = {DIM}")
    return base + "\n[retrieval]\n" + "\n".join(lines) + "\n"


def vector(record_id: str, version: int) -> list[float]:
    rng = random.Random(f"{record_id}/{version}")
    return [rng.gauss(0, 1) for _ in range(DIM)]


def record(record_id: str, version: int = 0) -> dict[str, Any]:
    return {
        "id": record_id,
        "source_id": f"s{record_id[-1]}",
        "source_type": "note",
        "text_chunk": f"{record_id} v{version}",
        "embedding": vector(record_id, version),
        "created_at": "2026-01-01T00:00:00Z",
        "tags": [],
    }


def import_body(records: list[dict[str, Any]]) -> bytes:
    header = {"format": "satchel-export", "version": 1, "model": MODEL, "dim": DIM}
    return "\n".join(json.dumps(line) for line in [header, *records]).encode()


def put(client: httpx.Client, records: list[dict[str, Any]]) -> None:
    response = client.post("/import", content=import_body(records))
    assert response.status_code == 200, response.text


def exported(daemon: DaemonProcess) -> dict[str, str]:
    """id -> text of every record the daemon serves."""
    with daemon.http() as client:
        lines = client.get("/export").content.decode().splitlines()
    return {row["id"]: row["text_chunk"] for row in map(json.loads, lines[1:])}


def migration(daemon: DaemonProcess) -> dict[str, Any]:
    with daemon.http() as client:
        answer: dict[str, Any] = client.get("/migration").json()
        return answer


def wait_phase(daemon: DaemonProcess, phase: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll the migration until it reaches `phase` (failing on a recorded error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = migration(daemon)
        if state["phase"] == phase:
            return state
        time.sleep(0.1)
    raise AssertionError(f"migration not at {phase} after {timeout} s: {state}\n{daemon.logs()}")
