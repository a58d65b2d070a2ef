"""Exact cosine search over one table's vectors, held in memory as unit-length float32 rows.

`Matrix` is an immutable snapshot: writers build the next one (`appended`, `without`,
`compacted`) and swap a reference, so a search running in a worker thread keeps reading the
snapshot it started with and never sees half of a batch. The trick that makes snapshots cheap:
rows live in fixed-size blocks with spare capacity, a new snapshot only ever writes past the end
an older snapshot can see, and only the small `alive` mask is copied when rows die. Blocks also
mean the matrix never has to be copied to grow, which keeps peak memory near the raw bytes.

Slots are kept in the order of the SQLite rowids they mirror (rowids only grow, and an upsert
gets a new rowid), so a sorted `rowids` array maps rowids to slots by binary search.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from store.base import Vector

__all__ = ["BLOCK_ROWS", "Matrix", "MatrixOutOfStep", "TopK", "unit_rows", "write_unit_rows"]

BLOCK_ROWS = 65_536
"""Rows per block. At 1M x 768 one search over 16K-row blocks measured 244 ms, over 64K-row
blocks 191 ms (fewer BLAS calls), against 203 ms for one call over a contiguous matrix. A block
is 192 MiB of address space at 768 dimensions, but only the rows written are resident."""


def _rescore_margin(dim: int) -> float:
    """How far below the k-th float32 score a row may sit and still be rescored exactly.

    BLAS float32 dot products of unit vectors err by about sqrt(dim) x 6e-8 in practice and by
    at most dim x 6e-8, and they differ for identical rows in different positions. The margin
    covers the worst case; only the handful of rows inside it pay for exact rescoring.
    """
    return max(1e-4, dim * 2.0**-24)


Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class MatrixOutOfStep(Exception):  # noqa: N818 - a condition, not a failure of the caller
    """The snapshot lacks rows that SQLite, at the snapshot's own version, holds: rebuild it."""


def unit_rows(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length, as a new array (see `write_unit_rows`)."""
    out = np.empty(vectors.shape, np.float32)
    write_unit_rows(vectors, out)
    return out


def write_unit_rows(vectors: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
    """Write `vectors` scaled to unit length into `out`, allocating nothing row-sized.

    Fresh large allocations are slow where page faults are (a 12 MiB temporary measured 50 ms
    in a VM, against 7 ms for the same arithmetic in place), so rows go straight to their
    destination. Squared norms are summed in float32; a row whose squared norm leaves float32's
    comfortable range (components near 1e-20 or 1e19) is redone in float64.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        squared = np.einsum("ij,ij->i", vectors, vectors)
        np.multiply(vectors, (1.0 / np.sqrt(squared)).astype(np.float32)[:, None], out=out)
    extreme = ~((squared > 1e-30) & (squared < 1e30))
    if extreme.any():
        wide = vectors[extreme].astype(np.float64)
        out[extreme] = (wide / np.linalg.norm(wide, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True, slots=True)
class TopK:
    """Search result as slots into a snapshot: rowids and exact scores, best first.

    `rowids` holds more than k entries only when rows tie exactly with the k-th score; the
    caller orders ties by record id and cuts to k.
    """

    rowids: Int64s
    scores: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Matrix:
    """An immutable snapshot of one table's vectors (see the module docstring)."""

    dim: int
    blocks: tuple[npt.NDArray[np.float32], ...]
    rowids: Int64s  # capacity-sized; entries [0:n] are valid and strictly increasing
    alive: Bools  # capacity-sized; copied (never written) when rows die
    n: int
    dead: int
    version: int
    block_rows: int = BLOCK_ROWS

    @classmethod
    def empty(cls, dim: int, version: int = 0, *, block_rows: int = BLOCK_ROWS) -> Matrix:
        """A snapshot with no rows."""
        return cls(dim, (), np.zeros(0, np.int64), np.zeros(0, np.bool_), 0, 0, version, block_rows)

    @property
    def live(self) -> int:
        """Rows that are not deleted."""
        return self.n - self.dead

    # -- writers ------------------------------------------------------------------------------

    def appended(
        self, rowids: Int64s, vectors: npt.NDArray[np.float32], version: int, *, unit: bool = False
    ) -> Matrix:
        """A snapshot with these rows added; `rowids` must exceed every rowid already held.

        The vectors are normalised on their way into the blocks, unless `unit` says they are
        unit-length already.
        """
        m = len(rowids)
        if m == 0:
            return dataclasses.replace(self, version=version)
        if self.n and rowids[0] <= self.rowids[self.n - 1]:
            raise ValueError("rowids must grow")  # a bug in the caller, not bad input
        blocks = list(self.blocks)
        capacity = len(blocks) * self.block_rows
        while capacity < self.n + m:
            blocks.append(np.empty((self.block_rows, self.dim), np.float32))
            capacity += self.block_rows
        # Write into space no existing snapshot can see (slots >= self.n).
        start = self.n
        done = 0
        while done < m:
            slot = start + done
            block, row = divmod(slot, self.block_rows)
            take = min(m - done, self.block_rows - row)
            destination = blocks[block][row : row + take]
            if unit:
                destination[:] = vectors[done : done + take]
            else:
                write_unit_rows(vectors[done : done + take], destination)
            done += take
        ids = self.rowids
        alive = self.alive
        if len(ids) < self.n + m:
            grown = max(self.n + m, len(ids) * 2, 1024)
            ids = np.concatenate([ids[: self.n], np.zeros(grown - self.n, np.int64)])
            alive = np.concatenate([alive[: self.n], np.zeros(grown - self.n, np.bool_)])
        ids[start : start + m] = rowids
        alive[start : start + m] = True
        return dataclasses.replace(
            self, blocks=tuple(blocks), rowids=ids, alive=alive, n=self.n + m, version=version
        )

    def without(self, rowids: Int64s, version: int) -> Matrix:
        """A snapshot in which these rowids are dead; unknown rowids are ignored."""
        slots = self.slots_of(rowids)
        slots = slots[self.alive[slots]]
        if len(slots) == 0:
            return dataclasses.replace(self, version=version)
        alive = self.alive.copy()  # old snapshots keep their mask
        alive[slots] = False
        return dataclasses.replace(self, alive=alive, dead=self.dead + len(slots), version=version)

    def needs_compaction(self) -> bool:
        """True when dead rows waste enough memory and time to be worth a rebuild."""
        return self.dead > max(1024, self.n // 4)

    def compacted(self) -> Matrix:
        """A snapshot holding only the live rows, in fresh blocks. O(n): run it in a thread."""
        keep = np.flatnonzero(self.alive[: self.n])
        fresh = Matrix.empty(self.dim, self.version, block_rows=self.block_rows)
        for start in range(0, len(keep), self.block_rows):
            slots = keep[start : start + self.block_rows]
            fresh = fresh.appended(self.rowids[slots], self._gather(slots), self.version, unit=True)
        return fresh

    # -- readers ------------------------------------------------------------------------------

    def slots_of(self, rowids: Int64s) -> Int64s:
        """Slots of the rowids this snapshot holds (alive or not); others are dropped."""
        held = self.rowids[: self.n]
        slots = np.searchsorted(held, rowids)
        inside = slots < self.n
        slots = slots[inside]
        found: Int64s = slots[held[slots] == np.asarray(rowids)[inside]].astype(np.int64)
        return found

    def _gather(self, slots: Int64s) -> npt.NDArray[np.float32]:
        """The rows at `slots`, which must be sorted (slots_of and flatnonzero give them so)."""
        out = np.empty((len(slots), self.dim), np.float32)
        bounds = np.searchsorted(slots, np.arange(len(self.blocks) + 1) * self.block_rows)
        for block, (start, stop) in enumerate(itertools.pairwise(bounds)):
            if start < stop:
                rows = slots[start:stop] - block * self.block_rows
                np.take(self.blocks[block], rows, axis=0, out=out[start:stop])
        return out

    def _all_scores(self, query: Vector) -> npt.NDArray[np.float32]:
        scores = np.empty(self.n, np.float32)
        for index, block in enumerate(self.blocks):
            start = index * self.block_rows
            rows = min(self.block_rows, self.n - start)
            if rows <= 0:
                break
            np.matmul(block[:rows], query, out=scores[start : start + rows])
        return scores

    def search(self, query: Vector, k: int, candidates: Int64s | None = None) -> TopK:
        """The best `k` live rows by cosine similarity to the unit vector `query`.

        `candidates` (rowids) restricts the search to those rows, as a filter does. Runs in
        the calling thread; it touches no shared mutable state.
        """
        if candidates is None:
            slots = None
            if self.live == 0:
                return _empty_topk()
            scores = self._all_scores(query)
            if self.dead:
                scores[~self.alive[: self.n]] = -np.inf
        else:
            slots = self.slots_of(np.sort(candidates))  # sorted rowids give sorted slots
            slots = slots[self.alive[slots]]
            if len(slots) != len(candidates):
                # The caller read the candidates at this snapshot's version, so every one must
                # be here and alive; if not, this snapshot missed a write.
                raise MatrixOutOfStep(f"{len(candidates) - len(slots)} candidate rows missing")
            if len(slots) == 0:
                return _empty_topk()
            if len(slots) * 4 > self.n:
                # Many candidates: one pass over all rows beats gathering them.
                everything = self._all_scores(query)
                scores = everything[slots]
            else:
                scores = self._gather(slots) @ query
        # Dead rows score -inf in the unfiltered pass and must never be chosen.
        eligible = self.live if slots is None else len(scores)
        if k < eligible:
            top = np.argpartition(scores, len(scores) - k)[-k:]  # no negated copy
            threshold = scores[top].min() - _rescore_margin(self.dim)
            chosen = np.flatnonzero(scores >= threshold)
        elif slots is None and self.dead:
            chosen = np.flatnonzero(self.alive[: self.n])
        else:
            chosen = np.arange(len(scores))
        picked = chosen if slots is None else slots[chosen]
        # Rescore the few survivors exactly: float64, a reduction per row that does not depend
        # on where the row sits, so identical vectors get identical scores and ties are real.
        exact = np.sum(self._gather(picked).astype(np.float64) * query.astype(np.float64), axis=1)
        order = np.argsort(-exact, kind="stable")
        rowids, exact = self.rowids[picked[order]], exact[order]
        if len(exact) > k:
            # Keep the exact top k, plus only rows tied exactly with the k-th (ids decide).
            keep = exact >= exact[k - 1]
            rowids, exact = rowids[keep], exact[keep]
        return TopK(rowids, exact)


def _empty_topk() -> TopK:
    return TopK(np.zeros(0, np.int64), np.zeros(0, np.float64))
