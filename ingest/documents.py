"""Documents: what producers hand to the pipeline, and turning their content into text.

A `Document` is one source's content at one moment: a page the browser saved, a feed entry, a
file added from the CLI. It is validated when built and travels through the durable queue as
JSON. `extract` turns it into plain text: HTML goes through trafilatura's main-content
extraction (boilerplate such as navigation, footers and cookie banners is dropped; title and
language are kept), with lxml's plain text as the fallback for pages trafilatura finds no
article in. Text and markdown are used as given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from ingest.errors import ExtractionError, InvalidDocument

__all__ = ["MAX_CONTENT_BYTES", "Document", "Extracted", "extract"]

MAX_CONTENT_BYTES: Final = 32 * 1024 * 1024
"""Largest text or HTML a document may carry (pages larger than this are not articles)."""

_SOURCE_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_HTML_LANG = re.compile(
    r"<html\b[^>]*?\blang\s*=\s*[\"']?([A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*)", re.I
)


@dataclass(frozen=True, slots=True)
class Document:
    """One source's content, as a producer submits it.

    `source_id` is the stable identity (a normalised URL, a file path, a feed entry's guid):
    ingesting a document with the same source id replaces that source's chunks. Exactly one of
    `text` and `html` carries the content.
    """

    source_id: str
    source_type: str
    text: str | None = None
    html: str | None = None
    url: str | None = None
    title: str | None = None
    published: str | None = None
    lang: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.source_id, str) or not self.source_id.strip():
            raise InvalidDocument("source_id: expected a non-empty string")
        if len(self.source_id) > 4096:
            raise InvalidDocument(f"source_id: {len(self.source_id)} characters exceeds 4096")
        if not isinstance(self.source_type, str) or not _SOURCE_TYPE.fullmatch(self.source_type):
            raise InvalidDocument(
                f"source_type: expected a lower-case word such as 'page' or 'feed', "
                f"got {self.source_type!r}"
            )
        for name in ("text", "html", "url", "title", "published", "lang"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidDocument(f"{name}: expected a string, got {type(value).__name__}")
        if (self.text is None) == (self.html is None):
            raise InvalidDocument("expected exactly one of text and html")
        content = self.text if self.text is not None else self.html
        assert content is not None
        try:
            size = len(content.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidDocument(f"content is not valid Unicode text ({exc.reason})") from None
        if size > MAX_CONTENT_BYTES:
            raise InvalidDocument(f"content is {size:,} bytes; the limit is {MAX_CONTENT_BYTES:,}")
        if self.published is not None:
            try:
                moment = datetime.fromisoformat(self.published)
            except ValueError:
                moment = None
            if moment is None or moment.tzinfo is None:
                raise InvalidDocument(
                    f"published: expected an RFC 3339 timestamp with an offset, "
                    f"got {self.published!r}"
                )
        tags: Any = self.tags
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            raise InvalidDocument(f"tags: expected a list of strings, got {tags!r:.60}")
        object.__setattr__(self, "tags", tuple(tags))

    def to_json(self) -> str:
        """The document as JSON, for the queue."""
        # Not `asdict`: its deep copy costs more than the encoding, on every producer's path.
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Document:
        """Rebuild a document from `to_json`; raises `InvalidDocument` for anything else."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidDocument(f"not a JSON document ({exc})") from None
        if not isinstance(data, dict):
            raise InvalidDocument("expected a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        if unknown := set(data) - known:
            raise InvalidDocument(f"unknown fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidDocument(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Extracted:
    """A document's text, ready to chunk, with what extraction learnt about it."""

    text: str
    title: str | None
    lang: str | None


def _normalise(text: str) -> str:
    # One kind of newline, no trailing spaces, at most one blank line between paragraphs.
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def extract(document: Document) -> Extracted:
    """The document's main text; raises `ExtractionError` if there is none.

    Blocking (parsing HTML takes milliseconds to seconds): call it from a worker thread.
    """
    if document.text is not None:
        text = _normalise(document.text)
        if not text:
            raise ExtractionError(f"{document.source_id}: the text is empty")
        return Extracted(text, document.title, document.lang)
    assert document.html is not None
    return _extract_html(document)


def _extract_html(document: Document) -> Extracted:
    import trafilatura  # noqa: PLC0415 - heavy (lxml, courlan, htmldate): only workers need it

    html = document.html or ""
    title, lang, text = document.title, document.lang, ""
    try:
        result = trafilatura.bare_extraction(
            html,
            url=document.url,
            with_metadata=True,
            include_comments=False,
            include_tables=True,
            favor_recall=True,
        )
    except Exception as exc:  # a parser crash on one page is that page's fault, not ours
        result = None
        fallback_reason = f"trafilatura failed: {exc}"
    else:
        fallback_reason = "trafilatura found no main content"
    if result is not None:
        text = _normalise(getattr(result, "text", "") or "")
        title = title or getattr(result, "title", None)
        lang = lang or getattr(result, "language", None)
    if lang is None and (declared := _HTML_LANG.search(html[:4096])):
        lang = declared.group(1).lower()  # the page's own <html lang="...">
    if not text:
        text = _plain_text(html)
    if not text:
        raise ExtractionError(
            f"{document.source_id}: no text could be extracted from the HTML ({fallback_reason})"
        )
    return Extracted(text, title, lang)


def _plain_text(html: str) -> str:
    """All visible text of an HTML page, for pages with no recognisable article."""
    import lxml.html  # noqa: PLC0415

    try:
        root = lxml.html.document_fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return ""
    for element in list(root.iter("script", "style", "noscript", "template")):
        if isinstance(element, lxml.html.HtmlElement):
            element.drop_tree()
    return _normalise("".join(str(piece) for piece in root.itertext()))
