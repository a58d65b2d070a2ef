"""Child process for the crash test: writes numbered batches forever, acknowledging each.

Usage: python -m tests.store.crash_writer DB_PATH FIRST_BATCH. After `insert` returns for batch
N it prints ``ack N``; the parent kills it with SIGKILL at a random moment.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import anyio
import numpy as np

from store.base import Record, TableExists
from store.sqlite import SQLiteStore

BATCH = 200
SHARED = 20
DIM = 32


def batch(number: int) -> list[Record]:
    """Batch `number`: BATCH new ids, and a rewrite of the SHARED ids every batch touches."""
    rng = np.random.default_rng(number)
    vectors = rng.standard_normal((BATCH + SHARED, DIM)).astype(np.float32)
    tag = f"batch-{number}"
    fresh = [
        Record(f"b{number}-{i}", tag, "crash", "x" * 500, vectors[i], "2024-01-01T00:00:00Z", [tag])
        for i in range(BATCH)
    ]
    shared = [
        Record(f"shared-{i}", tag, "crash", "", vectors[BATCH + i], "2024-01-01T00:00:00Z", [tag])
        for i in range(SHARED)
    ]
    return fresh + shared


async def main(path: Path, first: int) -> None:
    async with SQLiteStore(path) as store:
        with contextlib.suppress(TableExists):
            await store.create_table("t", dim=DIM)
        print("ready", flush=True)
        number = first
        while True:
            await store.insert("t", batch(number))
            print(f"ack {number}", flush=True)
            number += 1


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
