"""IdSet: never a false "absent", so an insert that appends can never duplicate an id."""

from __future__ import annotations

import random

import pytest

from store import idset
from store.idset import IdSet


def test_an_empty_set_contains_nothing() -> None:
    assert not IdSet().may_contain_any(["a", "b"])
    assert not IdSet().may_contain_any([])


def test_every_added_id_is_found_before_and_after_the_merge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(idset, "_MERGE_AT", 100)  # fold into the sorted array often
    rng = random.Random(7)
    ids = [f"doc-{rng.getrandbits(48):x}" for _ in range(1_000)]
    known = IdSet(ids[:300])
    for start in range(300, 1_000, 37):
        known.add(ids[start : start + 37])
    assert len(known) >= 1_000
    for one in ids:
        assert known.may_contain_any([one]), one
    assert known.may_contain_any(["never", ids[500], "seen"])


def test_unseen_ids_are_reported_absent() -> None:
    known = IdSet(f"a{i}" for i in range(10_000))
    known.add(["b1", "b2"])
    fresh = [f"c{i}" for i in range(1_000)]
    # A false "maybe" needs a 64-bit hash collision: not among a thousand ids.
    assert not known.may_contain_any(fresh)
