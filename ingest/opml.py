"""OPML subscription lists: reading them (nested outlines, duplicates dropped) and writing them.

An OPML file is XML from wherever the user exported it, so its DOCTYPE goes first, as for feeds
(`ingest.feedparse.strip_doctype`): no entity is ever expanded, no external file read.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from ingest.feedparse import strip_doctype

__all__ = ["InvalidOPML", "Subscription", "read_opml", "write_opml"]


class InvalidOPML(ValueError):  # noqa: N818 - reads as a fact
    """The file is not OPML; the message says where it went wrong."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """One feed of an OPML file."""

    url: str
    title: str | None = None


def read_opml(data: bytes) -> list[Subscription]:
    """Every outline with an ``xmlUrl``, at any depth, in file order, each url once."""
    try:
        root = ET.fromstring(strip_doctype(data))  # noqa: S314 - DOCTYPE stripped: no entities
    except ET.ParseError as exc:
        raise InvalidOPML(f"not well-formed XML ({exc})") from None
    if root.tag.lower() != "opml":
        raise InvalidOPML(f"the root element is <{root.tag}>, not <opml>")
    body = root.find("body")
    if body is None:
        raise InvalidOPML("no <body> element")
    found: dict[str, Subscription] = {}
    for outline in body.iter("outline"):
        url = (outline.get("xmlUrl") or outline.get("xmlurl") or "").strip()
        if url and url not in found:
            title = (outline.get("title") or outline.get("text") or "").strip() or None
            found[url] = Subscription(url, title)
    return list(found.values())


def write_opml(subscriptions: list[Subscription], title: str = "Satchel feeds") -> str:
    """An OPML 2.0 document listing `subscriptions` flat."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<opml version="2.0">',
        f"  <head><title>{_text(title)}</title></head>",
        "  <body>",
    ]
    for sub in subscriptions:
        name, url = quoteattr(sub.title or sub.url), quoteattr(sub.url)
        lines.append(f'    <outline type="rss" text={name} title={name} xmlUrl={url}/>')
    lines += ["  </body>", "</opml>", ""]
    return "\n".join(lines)


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
