"""Reference models the store is checked against: a filter evaluator and exact search.

Both are plain Python and numpy, written from the documented semantics and not from the
store's code, so a test that compares the two finds real disagreements.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from store.base import Record, ScoredRecord, VectorLike
from store.filter import And, Compare, Contains, FilterNode, In, IsNull, Like, Not, Or


def like_regex(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern (% any run, _ one character, backslash escapes) as a regex."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def matches(node: FilterNode, record: Record) -> bool:
    """Whether `record` satisfies the filter tree, by the language's documented meaning."""
    match node:
        case Compare(column, op, value):
            field: str = getattr(record, column)
            return {
                "=": field == value,
                "!=": field != value,
                "<": field < value,
                "<=": field <= value,
                ">": field > value,
                ">=": field >= value,
            }[op]
        case In(column, values, negated):
            return (getattr(record, column) in values) != negated
        case Like(column, pattern, negated):
            return (like_regex(pattern).fullmatch(getattr(record, column)) is not None) != negated
        case IsNull(column, negated):
            return negated  # no field of a record is ever null
        case Contains(tag):
            return tag in record.tags
        case And(items):
            return all(matches(i, record) for i in items)
        case Or(items):
            return any(matches(i, record) for i in items)
        case Not(item):
            return not matches(item, record)
    raise TypeError(node)


def exact_search(
    records: Iterable[Record], query: VectorLike, top_k: int
) -> list[tuple[str, float]]:
    """(id, cosine) of the top_k records, by brute force in float64; ties by id."""
    q = np.asarray(query, np.float64)
    q = q / np.linalg.norm(q)
    scored = []
    for r in records:
        v = r.embedding.astype(np.float64)
        scored.append((r.id, float(v @ q / np.linalg.norm(v))))
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    return scored[:top_k]


def assert_same_ranking(
    got: Sequence[ScoredRecord], ranking: Sequence[tuple[str, float]], k: int, *, tol: float = 1e-5
) -> None:
    """`got` is the top `k` of the full reference `ranking`: same ids in order, scores within tol.

    Where the reference's own scores differ by less than `tol`, the order between those ids
    (and, at the k-th place, which of them make the cut) is a tie that float32 storage may
    settle either way, so such runs are compared as sets drawn from the tied candidates.
    """
    expected = ranking[:k]
    assert len(got) == len(expected), ([g.id for g in got], expected)
    assert len({g.id for g in got}) == len(got), [g.id for g in got]  # no id twice
    for g, (_, score) in zip(got, expected, strict=True):
        assert abs(g.score - score) <= tol, (g.id, g.score, score)
    # The store's own output must follow its rule exactly: score descending, then id.
    keys = [(-g.score, g.id) for g in got]
    assert keys == sorted(keys), keys
    i = 0
    while i < len(expected):
        j = i  # expected[i..j] is one run of reference scores within tol of each other
        while j + 1 < len(ranking) and ranking[i][1] - ranking[j + 1][1] <= tol:
            j += 1
        end = min(j + 1, len(expected))
        got_ids = {g.id for g in got[i:end]}
        tied = {e[0] for e in ranking[i : j + 1]}
        assert got_ids <= tied, (i, got_ids, tied)
        i = end
