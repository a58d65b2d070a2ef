"""Chunking: coverage, budget and determinism as properties; the awkward inputs by example."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunk, chunk_id, chunk_text, count_tokens

# Fragments that exercise every boundary the chunker knows, mixed with arbitrary characters.
texts = st.lists(
    st.one_of(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
        st.sampled_from([" ", "\n", "\n\n", ". ", "。", "word ", "```\n", "    x = 1\n", "x" * 90]),
    ),
    max_size=150,
).map("".join)


def check(text: str, chunks: list[Chunk], budget: int) -> None:
    covered = [False] * len(text)
    for chunk in chunks:
        assert chunk.text, "no empty chunks"
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()
        assert count_tokens(chunk.text) <= budget
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    missed = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert missed == [], f"characters in no chunk at {missed[:10]}"


@settings(max_examples=300, deadline=None)
@given(texts, st.integers(8, 200), st.sampled_from([0.0, 0.15, 0.3]))
def test_every_character_is_in_a_chunk_and_no_chunk_is_over_budget(
    text: str, budget: int, overlap: float
) -> None:
    chunks = chunk_text(text, budget=budget, overlap=overlap)
    check(text, chunks, budget)
    assert chunk_text(text, budget=budget, overlap=overlap) == chunks  # deterministic


def test_paragraphs_and_sentences_are_kept_whole_when_they_fit() -> None:
    paragraphs = [f"Paragraph {i}. It has two sentences about topic {i}." for i in range(40)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, budget=64, overlap=0.0)
    for chunk in chunks:
        # Every chunk starts at a paragraph start and ends at a paragraph end.
        assert chunk.text.startswith("Paragraph ")
        assert chunk.text.endswith(".")


def test_overlap_repeats_the_tail_of_the_previous_chunk() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    chunks = chunk_text(text, budget=60, overlap=0.2)
    assert len(chunks) > 5
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.end  # they overlap
        assert before.text[-10:] in after.text


def test_a_ten_megabyte_page_is_chunked() -> None:
    paragraph = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40
    text = "\n\n".join(paragraph for _ in range(4500))  # ~10 MB
    assert len(text) > 10_000_000
    chunks = chunk_text(text, budget=512)
    assert all(c.tokens <= 512 for c in chunks)
    assert chunks[-1].end == len(text.rstrip())


@pytest.mark.parametrize(
    "text",
    [
        "中文句子没有空格" * 2000,  # CJK without spaces
        "x" * 50_000,  # one enormous word
        "ab" * 10_000 + "1234567890" * 3000,  # letters then digits, no whitespace
        "```python\n"
        + "\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(300))
        + "\n```",
        "🦀" * 5000,
    ],
)
def test_awkward_texts(text: str) -> None:
    chunks = chunk_text(text, budget=100)
    check(text, chunks, 100)


def test_code_blocks_split_at_lines() -> None:
    code = "\n".join(f"    value_{i} = compute({i})" for i in range(200))
    for chunk in chunk_text(code, budget=50, overlap=0.0):
        assert chunk.text.startswith("value_")


def test_chunk_ids_depend_on_source_and_text_only() -> None:
    assert chunk_id("a", "text") == chunk_id("a", "text")
    assert chunk_id("a", "text") != chunk_id("b", "text")
    assert chunk_id("a", "text") != chunk_id("a", "text!")
    assert chunk_id("a\x00b", "c") != chunk_id("a", "b\x00c")
    assert len(chunk_id("a", "b")) == 32


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 8 tokens"):
        chunk_text("x", budget=4)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", overlap=0.9)


def test_empty_and_blank_texts_give_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text(" \n\n \t ") == []
