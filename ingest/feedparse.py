"""Parsing a fetched feed into entries, safely: bytes in, plain picklable values out.

Feeds come from strangers, so:

- the DOCTYPE and every entity declaration in it are removed before feedparser sees the bytes
  (`strip_doctype`). feedparser 6 expands a long internal entity referenced many times
  quadratically (110 KB in, 205 MB out and 11 s of CPU, measured); billion-laughs nests them;
  an external (``SYSTEM``) entity would read a file. With no declarations, nothing expands;
- feedparser only ever gets a file object over the bytes: given a string or even bytes it
  first tries them as a URL or a file path (a feed whose body is ``/etc/passwd`` would be read
  from disk). Its preference for libxml2 is emptied, so Python's expat parses;
- `parse_feed` is a plain function for a worker process (`anyio.to_process`), so the daemon
  can bound it in time and kill it past that.

A survivable error (a charset that lies, a stray character) still yields the entries feedparser
recovered; a fatal one (not a feed at all) raises `NotAFeed`.

Entries become `ParsedEntry` values with their identity (guid, then link, then a hash of the
content), metadata and plain text: feed content is already the article, so its HTML is reduced
to text here rather than sent through main-content extraction.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import re
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Final
from urllib.parse import urljoin

import feedparser

from ingest.errors import PermanentError

__all__ = [
    "FEED_TYPES",
    "NotAFeed",
    "ParsedEntry",
    "ParsedFeed",
    "discover_feeds",
    "html_to_text",
    "parse_feed",
    "strip_doctype",
]

# Python's expat, never libxml2 (the module-level list is what feedparser's parse reads).
feedparser.api.PREFERRED_XML_PARSERS.clear()

FEED_TYPES: Final = frozenset(
    {
        "application/rss+xml",
        "application/atom+xml",
        "application/rdf+xml",
        "application/feed+json",
        "application/xml",
        "text/xml",
    }
)
_MAX_TEXT: Final = 1_000_000  # characters of one entry's text kept (an entry, not a book)


class NotAFeed(PermanentError, ValueError):  # noqa: N818 - reads as a fact
    """The bytes are not a feed feedparser can read anything from."""


@dataclass(frozen=True, slots=True)
class ParsedEntry:
    """One entry, ready to become a document."""

    key: str  # identity within its feed: "guid:...", "link:..." or "hash:..."
    link: str | None
    title: str | None
    author: str | None
    published: str | None  # RFC 3339, UTC
    tags: tuple[str, ...]
    text: str  # plain text of the content, or of the summary
    summary_only: bool  # no full content: `full_text` may fetch the link
    content_hash: str  # of everything that becomes the document


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    """A feed's own metadata and its entries (duplicates removed, feed order kept)."""

    title: str | None
    site_url: str | None
    ttl_minutes: int | None
    entries: tuple[ParsedEntry, ...]
    warning: str | None  # a survivable parse error, for the log


# -- the DOCTYPE ---------------------------------------------------------------------------------

_UTF16_32: Final = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\x00<\x00?", "utf-16-be"),
    (b"<\x00?\x00", "utf-16-le"),
)
_DECLARED_ENCODING: Final = re.compile(rb"(<\?xml[^>]*?encoding\s*=\s*)([\"'])[^\"']*\2")


def strip_doctype(data: bytes) -> bytes:
    """`data` without its DOCTYPE declaration (internal subset included).

    Only the prologue is looked at: the declaration must come before the root element. UTF-16
    and UTF-32 documents are re-encoded as UTF-8 first (with their declaration saying so), so
    that one byte scan serves every encoding.
    """
    for bom, codec in _UTF16_32:
        if data.startswith(bom):
            text = data.decode(codec, errors="replace").lstrip("\ufeff")
            data = _DECLARED_ENCODING.sub(rb"\1\2utf-8\2", text.encode("utf-8"), count=1)
            break
    start = _doctype_start(data)
    if start is None:
        return data
    return data[:start] + data[_doctype_end(data, start) :]


def _doctype_start(data: bytes) -> int | None:
    """Where the prologue's DOCTYPE starts: after a BOM, white space, the XML declaration,
    processing instructions and comments (whose content may hold anything), if there is one."""
    i = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while i < len(data):
        if data[i : i + 1].isspace():
            i += 1
        elif data.startswith(b"<?", i):
            end = data.find(b"?>", i + 2)
            i = len(data) if end < 0 else end + 2
        elif data.startswith(b"<!--", i):
            end = data.find(b"-->", i + 4)
            i = len(data) if end < 0 else end + 3
        elif data[i : i + 9].upper() == b"<!DOCTYPE":
            return i
        else:
            return None  # the root element, or text: no DOCTYPE can follow
    return None


def _doctype_end(data: bytes, start: int) -> int:
    """The index just past the DOCTYPE starting at `start` (quotes and the subset skipped)."""
    i = start + len(b"<!DOCTYPE")
    depth = 0  # inside "[ ... ]"
    quote: int | None = None
    while i < len(data):
        c = data[i]
        if quote is not None:
            if c == quote:
                quote = None
        elif c in (0x22, 0x27):  # " '
            quote = c
        elif c == 0x5B:  # [
            depth += 1
        elif c == 0x5D:  # ]
            depth = max(0, depth - 1)
        elif c == 0x3E and depth == 0:  # >
            return i + 1
        i += 1
    return len(data)  # unterminated: nothing after it is a document anyway


# -- parsing ----------------------------------------------------------------------------------


def parse_feed(data: bytes, url: str, content_type: str = "") -> ParsedFeed:
    """Parse a feed's bytes (`url` resolves relative links; `content_type` carries the HTTP
    charset). Raises `NotAFeed`. Blocking and CPU-bound: run it in a worker process."""
    # No base URL for feedparser: it would resolve a relative guid ("a") into a URL, and a
    # guid is opaque. Entry links are resolved here; content's own links are not needed for text.
    headers = {}
    if content_type:
        headers["content-type"] = content_type
    try:
        result = feedparser.parse(
            io.BytesIO(strip_doctype(data)),
            response_headers=headers,
            resolve_relative_uris=False,
            sanitize_html=True,
        )
    except Exception as exc:  # feedparser's own bugs (a lone surrogate's &#xD800;, say)
        raise NotAFeed(f"{url}: feedparser failed ({_describe(exc)})") from None
    problem = result.get("bozo_exception")
    if not result.entries and not result.get("version"):
        reason = f" ({_describe(problem)})" if problem else ""
        raise NotAFeed(f"{url}: not an RSS or Atom feed{reason}")
    feed = result.feed
    entries: list[ParsedEntry] = []
    seen: set[str] = set()
    for raw in result.entries:
        entry = _entry(raw, url)
        if entry is None or entry.key in seen:
            continue
        seen.add(entry.key)
        entries.append(entry)
    return ParsedFeed(
        title=_clean(feed.get("title")),
        site_url=_clean(feed.get("link")),
        ttl_minutes=_ttl(feed.get("ttl")),
        entries=tuple(entries),
        warning=_describe(problem) if result.get("bozo") and problem else None,
    )


def _describe(problem: Any) -> str:
    return f"{type(problem).__name__}: {problem}"[:300]


def _ttl(raw: Any) -> int | None:
    try:
        minutes = int(str(raw).strip())
    except (TypeError, ValueError):
        return None
    return minutes if 0 < minutes <= 7 * 24 * 60 else None


def _clean(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    return value or None


def _entry(raw: Any, feed_url: str) -> ParsedEntry | None:
    title = _clean(raw.get("title"))
    link = _clean(raw.get("link"))
    if link is not None:
        link = urljoin(feed_url, link)
        if not link.startswith(("http://", "https://")):
            link = None
    guid = _clean(raw.get("id"))
    content = raw.get("content") or []
    summary_only = not content
    html = (content[0].get("value") if content else raw.get("summary")) or ""
    body = html_to_text(html)[:_MAX_TEXT]
    author = _clean(raw.get("author"))
    if not body and not title:
        return None  # nothing to search
    published = _when(raw.get("published_parsed") or raw.get("updated_parsed"))
    tags = tuple(
        dict.fromkeys(
            term
            for tag in raw.get("tags") or []
            if (term := _clean(tag.get("term") or tag.get("label")))
        )
    )
    head = [title or ""] + ([f"By {author}"] if author else [])
    text = "\n".join(part for part in head if part) + ("\n\n" + body if body else "")
    content_hash = hashlib.sha256(
        "\x1f".join([text, link or "", published or "", *tags]).encode()
    ).hexdigest()
    if guid:
        key = "guid:" + guid
    elif link:
        key = "link:" + link
    else:
        key = "hash:" + content_hash[:32]
    return ParsedEntry(
        key=key[:2048],
        link=link,
        title=title,
        author=author,
        published=published,
        tags=tags,
        text=text.strip(),
        summary_only=summary_only,
        content_hash=content_hash,
    )


def _when(parsed: Any) -> str | None:
    if not parsed:
        return None
    try:
        seconds = calendar.timegm(parsed)
    except (TypeError, ValueError, OverflowError):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)).replace("Z", "+00:00")


# -- HTML to text -------------------------------------------------------------------------------


class _Text(HTMLParser):
    _BLOCK: Final = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6"}
        | {"blockquote", "pre", "tr", "table", "section", "article"}
    )
    _SKIP: Final = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The text of an HTML fragment (feedparser has sanitised it): paragraphs kept apart."""
    if "<" not in html and "&" not in html:
        return _tidy(html)
    parser = _Text()
    parser.feed(html)
    parser.close()
    return _tidy("".join(parser.parts))


def _tidy(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.replace("\r", "\n").split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# -- discovery ----------------------------------------------------------------------------------


class _Alternates(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "link":
            return
        values = {name.lower(): value or "" for name, value in attrs}
        rel = values.get("rel", "").lower().split()
        kind = values.get("type", "").lower().split(";")[0].strip()
        if "alternate" in rel and kind in FEED_TYPES and values.get("href"):
            self.found.append((values["href"], values.get("title") or None))


def discover_feeds(html: str, page_url: str) -> list[tuple[str, str | None]]:
    """The feeds a page announces with ``<link rel="alternate" type="...">``: (url, title)
    pairs, absolute, http(s) only, in page order, without repeats."""
    parser = _Alternates()
    parser.feed(html[:2_000_000])  # the links are in the head
    parser.close()
    found: dict[str, str | None] = {}
    for href, title in parser.found:
        url = urljoin(page_url, href.strip())
        if url.startswith(("http://", "https://")):
            found.setdefault(url, title)
    return list(found.items())
