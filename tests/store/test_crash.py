"""Crash safety: a writer process is SIGKILLed at random moments; every batch is whole or absent.

Rounds default to a CI-sized 8; set SATCHEL_CRASH_ROUNDS for a longer loop.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import numpy as np

from store.sqlite import SQLiteStore
from tests.store.crash_writer import BATCH, DIM, SHARED

ROUNDS = int(os.environ.get("SATCHEL_CRASH_ROUNDS", "8"))
ROOT = Path(__file__).resolve().parents[2]


def run_until_killed(db: Path, first: int, rng: random.Random) -> set[int]:
    """Run the writer, SIGKILL it at a random moment, and return the batches it acknowledged."""
    acked: set[int] = set()
    with subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", str(db), str(first)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            # Kill after a random number of acknowledgements plus a random delay, so that the
            # moment falls anywhere in a batch: before BEGIN, mid-insert, mid-commit, after.
            for _ in range(rng.randint(1, 6)):
                acked.add(int(child.stdout.readline().split()[1]))
            time.sleep(rng.uniform(0, 0.05))
        finally:
            child.send_signal(signal.SIGKILL)
            for line in child.stdout:  # acks printed before the kill landed count too
                acked.add(int(line.split()[1]))
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return acked


def test_sigkill_never_leaves_half_a_batch(tmp_path: Path) -> None:
    db = tmp_path / "vectors.db"
    rng = random.Random(1234)
    acked: set[int] = set()
    first = 0
    for _ in range(ROUNDS):
        acked |= run_until_killed(db, first, rng)
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            per_batch = Counter(
                source
                for (source,) in conn.execute("SELECT source_id FROM vectors_t WHERE id LIKE 'b%'")
            )
            shared = conn.execute(
                "SELECT DISTINCT source_id FROM vectors_t WHERE id LIKE 'shared-%'"
            )
            shared_batches = [s for (s,) in shared]
            shared_count = conn.execute(
                "SELECT count(*) FROM vectors_t WHERE id LIKE 'shared-%'"
            ).fetchone()[0]
        conn.close()
        present = {int(s.removeprefix("batch-")) for s in per_batch}
        assert all(count == BATCH for count in per_batch.values()), per_batch
        assert acked <= present, f"acknowledged batches lost: {sorted(acked - present)}"
        # The shared ids were rewritten by every batch: all of them by the same, newest one.
        assert shared_count == SHARED
        assert shared_batches == [f"batch-{max(present)}"]
        first = max(present) + 1
        anyio.run(agrees_with_the_file, db, len(present) * BATCH + SHARED)
    assert len(acked) >= ROUNDS


async def agrees_with_the_file(db: Path, rows: int) -> None:
    """Reopened through the store, the file counts and searches whole."""
    async with SQLiteStore(db) as store:
        assert await store.count("t") == rows
        hits = await store.search("t", np.ones(DIM), rows + 10)
        assert len(hits) == rows
        shared = await store.search("t", np.ones(DIM), rows, filter="id LIKE 'shared-%'")
        assert len(shared) == SHARED
