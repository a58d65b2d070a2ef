"""Splitting extracted text into chunks that fit the embedding model, with overlap.

Chunks follow the text's own boundaries, preferring the largest that fits: paragraphs (blank
lines), then lines (code blocks and lists keep their lines whole), then sentences, then words,
and only as a last resort runs of characters (a CJK paragraph with no spaces, a base64 blob).
Pieces are packed greedily up to the token budget. Each new chunk starts with the last pieces
of the previous one, up to the overlap, so a sentence cut at a boundary still appears whole.

Tokens are estimated, not counted with the model's tokenizer (which would mean shipping it).
The estimate is deliberately on the high side for WordPiece/BPE vocabularies: Latin words
count 1 token per 4 letters (about 1.4 per English word, near WordPiece's real rate), digit
runs 1 per 3 digits, and every other character (CJK, punctuation, emoji) 1 each.
nomic-embed-text's context is 2,048 tokens against the default 512-token budget, so the
estimate never has to be exact, only never low by 4x.

Chunks carry their character offsets in the text; every non-space character of the text lies in
at least one chunk, no chunk is empty or over budget, and the same input gives the same chunks.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["Chunk", "chunk_id", "chunk_text", "count_tokens"]

_TOKEN: Final = re.compile(r"[A-Za-z]+|[0-9]+|\S")
_LETTERS: Final = re.compile(r"[A-Za-z]{5,}")  # runs long enough to cost more than 1
_DIGITS: Final = re.compile(r"[0-9]{4,}")  # runs long enough to cost more than 1
_SPLITTERS: Final = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraphs
    re.compile(r"\n"),  # lines
    # sentences: . ! ? … then space, or the CJK full stop, exclamation and question marks
    re.compile(r"(?<=[.!?…])[\"')\]]*\s+|(?<=[\u3002\uff01\uff1f])"),
    re.compile(r"\s+"),  # words
)


def count_tokens(text: str) -> int:
    """A generous estimate of how many model tokens `text` takes (see the module docstring).

    Every letter run, digit run and other non-space character is one token (``findall`` counts
    them in C); long letter and digit runs then add their extra cost: a letter run costs one
    token per 4 letters, a digit run one per 3 digits.

    The estimate is subadditive (cutting a run never makes its pieces cost less than the
    whole), which is what lets the chunker sum its pieces' costs instead of recounting.
    """
    total = len(_TOKEN.findall(text))
    for run in _LETTERS.findall(text):
        total += math.ceil(len(run) / 4) - 1
    for run in _DIGITS.findall(text):
        total += math.ceil(len(run) / 3) - 1
    return total


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of the text: ``text[start:end]``, stripped of surrounding whitespace."""

    start: int
    end: int
    text: str
    tokens: int


def chunk_id(source_id: str, text: str) -> str:
    """The content-derived id of a chunk: the same source and text always give the same id.

    The source id is length-prefixed, so no (source, text) pair can spell another's.
    """
    digest = hashlib.sha256(f"{len(source_id)}:{source_id}{text}".encode()).hexdigest()
    return digest[:32]


Span = tuple[int, int, int]  # start, end, estimated tokens


def _pieces(text: str, start: int, end: int, budget: int, level: int) -> Iterator[Span]:
    """Cut text[start:end] into spans of at most `budget` tokens, at the coarsest boundaries."""
    # A span this long almost never fits; splitting it without counting saves a pass over a
    # large page, and if it did fit, the packer joins its pieces back into one chunk anyway.
    if end - start <= budget * 64:
        tokens = count_tokens(text[start:end])
        if tokens <= budget:
            yield start, end, tokens
            return
    if level == len(_SPLITTERS):
        yield from _hard_pieces(text, start, end, budget)
        return
    cursor = start
    for match in _SPLITTERS[level].finditer(text, start, end):
        if match.end() == match.start() and match.start() in (start, end):
            continue
        # The separator stays with the piece before it, so pieces tile the span exactly.
        yield from _pieces(text, cursor, match.end(), budget, level + 1)
        cursor = match.end()
    if cursor < end:
        yield from _pieces(text, cursor, end, budget, level + 1)


def _hard_pieces(text: str, start: int, end: int, budget: int) -> Iterator[Span]:
    """Runs of characters within budget, for text with no usable boundary at all."""
    piece_start, used = start, 0
    for match in _TOKEN.finditer(text, start, end):
        cost = count_tokens(match.group())
        if cost > budget:  # one enormous word: cut it by characters
            if used:
                yield piece_start, match.start(), used
            step = max(1, budget * 3)  # digits cost 1 per 3, letters less; this always fits
            for cut in range(match.start(), match.end(), step):
                stop = min(cut + step, match.end())
                yield cut, stop, count_tokens(text[cut:stop])
            piece_start, used = match.end(), 0
            continue
        if used + cost > budget:
            yield piece_start, match.start(), used
            piece_start, used = match.start(), 0
        used += cost
    if piece_start < end:
        yield piece_start, end, used


def chunk_text(text: str, *, budget: int = 512, overlap: float = 0.15) -> list[Chunk]:
    """Split `text` into chunks of at most `budget` estimated tokens, overlapping by `overlap`.

    A chunk's `tokens` is the sum of its pieces' estimates, which is never below
    `count_tokens` of its text (the estimate is subadditive), so the budget holds for both.
    """
    if budget < 8:
        raise ValueError(f"chunk budget: expected at least 8 tokens, got {budget}")
    if not 0 <= overlap < 0.5:
        raise ValueError(f"chunk overlap: expected a fraction from 0 to 0.5, got {overlap}")
    # Whitespace-only pieces carry no tokens and nothing to embed.
    spans = [span for span in _pieces(text, 0, len(text), budget, 0) if span[2] > 0]
    overlap_tokens = int(budget * overlap)
    chunks: list[Chunk] = []
    current: list[Span] = []
    used = 0
    for span in spans:
        if current and used + span[2] > budget:
            chunks.append(_make_chunk(text, current))
            # Carry the last pieces forward as the overlap, whole pieces only, and only as
            # much as still leaves room for the piece that did not fit.
            carried: list[Span] = []
            room = min(overlap_tokens, budget - span[2])
            for piece in reversed(current):
                if piece[2] > room:
                    break
                carried.insert(0, piece)
                room -= piece[2]
            current, used = carried, sum(p[2] for p in carried)
        current.append(span)
        used += span[2]
    if current:
        chunks.append(_make_chunk(text, current))
    return chunks


def _make_chunk(text: str, pieces: list[Span]) -> Chunk:
    start, end = pieces[0][0], pieces[-1][1]
    raw = text[start:end]
    body = raw.strip()
    lead = len(raw) - len(raw.lstrip())
    return Chunk(start + lead, start + lead + len(body), body, sum(p[2] for p in pieces))
