"""kill -9 in the middle of ingestion: every acknowledged document ends up stored exactly once.

Rounds default to a CI-sized 6; set SATCHEL_CRASH_ROUNDS for a longer loop.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ingest.chunking import chunk_id, chunk_text
from tests.ingest.crash_ingest import SETTINGS, text_of

ROUNDS = int(os.environ.get("SATCHEL_CRASH_ROUNDS", "6"))
ROOT = Path(__file__).resolve().parents[2]
PER_ROUND = 15


def run_child(directory: Path, first: int, rng: random.Random | None) -> set[int]:
    """Run the child; kill it at a random moment if `rng` is given. Returns the acked docs."""
    acked: set[int] = set()
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.ingest.crash_ingest",
            str(directory),
            str(first),
            str(PER_ROUND),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        try:
            if rng is None:
                for line in child.stdout:
                    if line.startswith("ack"):
                        acked.add(int(line.split()[1]))
                    elif line.strip() == "drained":
                        break
                child.wait(timeout=120)
                assert child.returncode == 0
                return acked
            for _ in range(rng.randint(1, PER_ROUND)):
                line = child.stdout.readline()
                if not line.startswith("ack"):
                    break
                acked.add(int(line.split()[1]))
            time.sleep(rng.uniform(0, 0.3))  # workers are mid-batch somewhere in here
        finally:
            if rng is not None:
                child.send_signal(signal.SIGKILL)
                for line in child.stdout:
                    if line.startswith("ack"):
                        acked.add(int(line.split()[1]))
                child.wait(timeout=30)
    return acked


def expected_chunks(n: int) -> set[str]:
    chunks = chunk_text(text_of(n), budget=SETTINGS.chunk_tokens, overlap=SETTINGS.chunk_overlap)
    return {chunk_id(f"doc-{n}", c.text) for c in chunks}


def test_sigkill_during_ingest_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(99)
    acked: set[int] = set()
    first = 0
    for _ in range(ROUNDS):
        acked |= run_child(tmp_path, first, rng)
        first += PER_ROUND
    acked |= run_child(tmp_path, first, None)  # a clean run that drains everything
    assert len(acked) > ROUNDS

    for name in ("satchel.db", "vectors.db"):
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
    with sqlite3.connect(tmp_path / "vectors.db") as conn:
        stored = [
            (i, s) for i, s in conn.execute("SELECT id, source_id FROM vectors_context_vectors")
        ]
    conn.close()
    with sqlite3.connect(tmp_path / "satchel.db") as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        errors = conn.execute("SELECT source_id, last_error FROM jobs WHERE state = 'failed'")
        failed = errors.fetchall()
    conn.close()
    assert states.get("failed", 0) == 0, (states, failed)
    assert states.get("pending", 0) == states.get("running", 0) == 0, states

    stored_ids = [i for i, _ in stored]
    assert len(stored_ids) == len(set(stored_ids))  # nothing twice
    sources = {s for _, s in stored}
    # Every acknowledged document is there, whole; unacknowledged ones are whole or absent.
    for n in acked:
        assert f"doc-{n}" in sources, f"acknowledged doc-{n} is missing"
    expected = set().union(*(expected_chunks(int(s.removeprefix("doc-"))) for s in sources))
    assert set(stored_ids) == expected
