"""The in-memory matrix on its own: tiny blocks, so every operation crosses block boundaries.

Each generated history appends, deletes and compacts; after every step the newest snapshot must
search exactly like brute force over its live rows, and every older snapshot must still answer
exactly as it did when it was made (snapshots are immutable: that is what lets searches run in
threads while writes go on).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.matrix import Matrix, MatrixOutOfStep, unit_rows

DIM = 3
BLOCK = 4

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 9)),
        st.tuples(st.just("delete"), st.lists(st.integers(0, 40), max_size=6)),
        st.tuples(st.just("compact"), st.just(0)),
    ),
    min_size=1,
    max_size=12,
)


def brute_force(live: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[tuple[int, float]]:
    scored = sorted(
        ((rowid, float(vector.astype(np.float64) @ query)) for rowid, vector in live.items()),
        key=lambda pair: (-pair[1], pair[0]),
    )
    return scored[:k]


def check(matrix: Matrix, live: dict[int, np.ndarray], query: np.ndarray, k: int) -> None:
    top = matrix.search(query, k)
    want = brute_force(live, query, k)
    got = list(zip(top.rowids.tolist(), top.scores.tolist(), strict=True))
    # The matrix may return more than k rows only for exact ties with the k-th score.
    assert len(got) >= len(want)
    assert [s for _, s in got[: len(want)]] == pytest.approx([s for _, s in want], abs=1e-6)
    assert {r for r, _ in got} <= set(live)
    if want:
        kth = want[-1][1]
        assert all(s >= kth - 1e-6 for _, s in got)
        assert {r for r, s in want if s > kth + 1e-6} <= {r for r, _ in got}
    assert matrix.live == len(live)


@settings(max_examples=200, deadline=None)
@given(operations, st.integers(0, 2**32 - 1), st.integers(1, 8))
def test_matrix_histories_match_brute_force(
    history: list[tuple[str, object]], seed: int, k: int
) -> None:
    rng = np.random.default_rng(seed)
    # Few distinct directions, so exact ties between rows are common.
    palette = unit_rows(rng.integers(-2, 3, (5, DIM)).astype(np.float32) + 0.01)
    matrix = Matrix.empty(DIM, block_rows=BLOCK)
    live: dict[int, np.ndarray] = {}
    next_rowid = 1
    snapshots: list[tuple[Matrix, dict[int, np.ndarray]]] = []
    query = unit_rows(rng.standard_normal((1, DIM)).astype(np.float32))[0]
    for version, (op, arg) in enumerate(history, start=1):
        if op == "append":
            count = int(arg)  # type: ignore[call-overload]
            rows = palette[rng.integers(0, len(palette), count)]
            rowids = np.arange(next_rowid, next_rowid + count, dtype=np.int64)
            next_rowid += count
            matrix = matrix.appended(rowids, rows, version)
            live.update({int(r): v for r, v in zip(rowids, rows, strict=True)})
        elif op == "delete":
            doomed = np.unique(np.array(arg, np.int64))
            matrix = matrix.without(doomed, version)
            for rowid in doomed.tolist():
                live.pop(rowid, None)
        else:
            matrix = matrix.compacted()
            assert matrix.dead == 0
        snapshots.append((matrix, dict(live)))
        check(matrix, live, query, k)
        # Candidate search equals brute force over the candidates.
        candidates = np.array(sorted(live)[::2], np.int64)
        if len(candidates):
            top = matrix.search(query, k, candidates)
            chosen = {int(c): live[int(c)] for c in candidates}
            want = brute_force(chosen, query, k)
            assert top.scores[: len(want)].tolist() == pytest.approx([s for _, s in want], abs=1e-6)
    for old, old_live in snapshots:
        check(old, old_live, query, k)


def test_candidates_the_snapshot_lacks_mean_it_is_out_of_step() -> None:
    matrix = Matrix.empty(DIM, block_rows=BLOCK).appended(
        np.array([1, 2, 3], np.int64), unit_rows(np.eye(3, dtype=np.float32)), 1
    )
    with pytest.raises(MatrixOutOfStep):
        matrix.search(np.array([1, 0, 0], np.float32), 1, np.array([2, 7], np.int64))
    with pytest.raises(MatrixOutOfStep):  # dead in the snapshot, alive in the file
        matrix.without(np.array([2], np.int64), 2).search(
            np.array([1, 0, 0], np.float32), 1, np.array([2], np.int64)
        )
