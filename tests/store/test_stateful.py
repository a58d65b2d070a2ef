"""A stateful model test: random interleavings of writes and searches against a plain model.

The model is a dict of records searched by exact numpy; the store is a real SQLiteStore on a
real file, driven from hypothesis's synchronous rules through an anyio blocking portal. Small
integer vectors make exact ties and duplicates common, which is where ranking bugs live.
"""

from __future__ import annotations

import contextlib
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from store.base import Record, StoreError
from store.filter import parse
from store.sqlite import SQLiteStore
from tests.store.model import assert_same_ranking, exact_search, matches

DIM = 4
IDS = st.sampled_from([f"id{i}" for i in range(12)])
VECTORS = st.lists(st.integers(-2, 2), min_size=DIM, max_size=DIM).filter(any)
FILTERS = st.sampled_from(
    [
        "source_type = 'feed'",
        "source_type != 'feed' AND tags CONTAINS 'x'",
        "id IN ('id1', 'id2', 'id3', 'id4')",
        "NOT tags CONTAINS 'x' OR source_id LIKE 's1%'",
        "created_at >= '2024-06-01'",
    ]
)


@st.composite
def records(draw: st.DrawFn) -> Record:
    return Record(
        id=draw(IDS),
        source_id=draw(st.sampled_from(["s1", "s2", "s10"])),
        source_type=draw(st.sampled_from(["feed", "page"])),
        text_chunk=draw(
            st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=5)
        ),
        embedding=np.array(draw(VECTORS), np.float32),
        created_at=draw(st.sampled_from(["2024-01-01T00:00:00Z", "2024-07-01T00:00:00Z"])),
        tags=draw(st.lists(st.sampled_from(["x", "y"]), max_size=2)),
    )


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(start_blocking_portal("asyncio"))
        self.dir = Path(self.stack.enter_context(tempfile.TemporaryDirectory()))
        self.store = self._open()
        self.model: dict[str, Record] = {}

    def _open(self) -> SQLiteStore:
        store = SQLiteStore(self.dir / "vectors.db")
        self.portal.call(store.open)
        return store

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            return await getattr(self.store, method)(*args, **kwargs)

        return self.portal.call(run)

    @initialize()
    def create(self) -> None:
        self.call("create_table", "t", dim=DIM)

    @rule(batch=st.lists(records(), max_size=6))
    def insert(self, batch: list[Record]) -> None:
        self.call("insert", "t", batch)
        for r in batch:
            self.model[r.id] = r

    @rule(id=IDS)
    def delete(self, id: str) -> None:
        existed = self.call("delete", "t", id)
        assert existed == (id in self.model)
        self.model.pop(id, None)

    @rule(text=FILTERS)
    def delete_where(self, text: str) -> None:
        tree = parse(text)
        doomed = [i for i, r in self.model.items() if matches(tree, r)]
        assert self.call("delete_where", "t", text) == len(doomed)
        for i in doomed:
            del self.model[i]

    @rule(query=VECTORS, k=st.integers(1, 15), text=st.none() | FILTERS)
    def search(self, query: list[int], k: int, text: str | None) -> None:
        got = self.call("search", "t", query, k, filter=text)
        pool = list(self.model.values())
        if text is not None:
            tree = parse(text)
            pool = [r for r in pool if matches(tree, r)]
        assert_same_ranking(got, exact_search(pool, query, len(pool)), k)

    @rule()
    def reopen(self) -> None:
        self.portal.call(self.store.aclose)
        self.store = self._open()

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def get_by_ids(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(IDS, max_size=5))
        got = self.call("get_by_ids", "t", ids)
        wanted = [i for i in dict.fromkeys(ids) if i in self.model]
        assert got == [self.model[i] for i in wanted]

    @rule(batch_size=st.integers(1, 5))
    def export_all(self, batch_size: int) -> None:
        async def run() -> list[list[Record]]:
            return [b async for b in self.store.export_all("t", batch_size=batch_size)]

        batches = self.portal.call(run)
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert [r for b in batches for r in b] == [self.model[i] for i in sorted(self.model)]

    @invariant()
    def counts_agree(self) -> None:
        assert self.call("count", "t") == len(self.model)

    def teardown(self) -> None:
        with contextlib.suppress(StoreError):
            self.portal.call(self.store.aclose)
        self.stack.close()


StoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_store_matches_the_model = StoreMachine.TestCase
