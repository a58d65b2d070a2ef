"""Pages the browser extension saves: validating a capture and turning it into a `Document`.

A capture is the JSON the extension posts: ``{url, title, html?, text?, selection?, lang?,
captured_at, mode}``. `parse_capture` checks every field and names the one that is wrong. The
page's normalised URL (`ingest.urls`, tracking parameters dropped) is its source id, so saving a
page twice, or from two links that differ only in ``utm_source``, is one source; the pipeline
then does no work when the extracted text has not changed and replaces the chunks when it has.
A saved selection is a source of its own beside its page (``URL#selection-<hash>``), so saving
a quote never replaces the article it came from.

HTML is preferred to text: the daemon extracts it the same way as everything else; the
extension's text is used only when no HTML comes.

`DenyList` is the daemon's own refusal of pages, applied whatever the extension is set to: a
misconfigured extension must not be able to push a banking page. The rules are written as in
the extension: a domain covers its subdomains (``paypal.com``; a leading ``*.`` means the same,
``*.bank``); ``mychart.*`` is any host with the label ``mychart`` followed by more labels
(``mychart.example.org``); either may end in a path prefix (``google.*/search``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from ingest.documents import Document
from ingest.errors import InvalidDocument, PermanentError
from ingest.urls import normalise_url

__all__ = [
    "DEFAULT_DENY",
    "MODES",
    "Capture",
    "DenyList",
    "PageRefused",
    "is_deny_rule",
    "page_url",
    "parse_capture",
]

MODES: Final = ("manual", "selection", "auto")

# Pages nobody wants in a searchable index by accident: webmail, sign-in pages, banking and
# payments, health portals, and search-result pages (they are queries, not reading). The
# extension's default auto-save deny list starts from the same rules.
DEFAULT_DENY: Final = (
    "mail.google.com",
    "outlook.live.com",
    "outlook.office.com",
    "outlook.office365.com",
    "mail.yahoo.com",
    "mail.proton.me",
    "accounts.google.com",
    "login.microsoftonline.com",
    "*.bank",
    "paypal.com",
    "chase.com",
    "bankofamerica.com",
    "wellsfargo.com",
    "citi.com",
    "capitalone.com",
    "mychart.*",
    "google.*/search",
    "bing.com/search",
    "search.yahoo.com",
    "duckduckgo.com",
)

_LABEL: Final = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_RULE: Final = re.compile(rf"(?:\*\.)?({_LABEL}(?:\.{_LABEL})*)(\.\*)?(/\S*)?")
_LANG: Final = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
_MAX_TITLE: Final = 1000


class PageRefused(PermanentError):  # noqa: N818 - reads as a fact
    """The daemon's deny list refuses this page."""


def is_deny_rule(rule: str) -> bool:
    """Whether `rule` is a valid deny-list rule (for the config's check)."""
    return _RULE.fullmatch(rule.strip().lower()) is not None


@dataclass(frozen=True, slots=True)
class _Rule:
    labels: tuple[str, ...]
    any_suffix: bool  # "mychart.*": these labels followed by at least one more, anywhere
    path: str

    def matches(self, host: tuple[str, ...], path: str) -> bool:
        if not path.startswith(self.path):
            return False
        size = len(self.labels)
        if not self.any_suffix:  # the domain itself or a subdomain
            return host[-size:] == self.labels
        return any(host[i : i + size] == self.labels for i in range(len(host) - size))


class DenyList:
    """Rules that refuse a page by its host and path (see the module docstring). Matching
    ignores case, paths included: a deny list errs on the side of refusing."""

    def __init__(self, rules: Iterable[str]) -> None:
        self.rules: list[_Rule] = []
        for text in rules:
            match = _RULE.fullmatch(text.strip().lower())
            if match is None:
                raise ValueError(f"deny rule {text!r}: expected a domain, optionally with a path")
            labels = tuple(match[1].split("."))
            self.rules.append(_Rule(labels, match[2] is not None, match[3] or ""))

    def refuses(self, url: str) -> bool:
        """Whether a (normalised) `url` falls under a rule."""
        parts = urlsplit(url)
        host = tuple((parts.hostname or "").rstrip(".").split("."))
        path = (parts.path or "/").lower()
        return any(rule.matches(host, path) for rule in self.rules)


def page_url(url: object) -> str:
    """A page's source id: its normalised URL without tracking parameters."""
    return normalise_url(url, strip_tracking=True)  # type: ignore[arg-type] # checked inside


@dataclass(frozen=True, slots=True)
class Capture:
    """A validated capture from the extension."""

    url: str  # normalised
    title: str | None
    html: str | None
    text: str | None
    selection: str | None
    lang: str | None
    captured_at: str
    mode: str

    def document(self) -> Document:
        """The document to queue for this capture."""
        if self.mode == "selection":
            assert self.selection is not None
            digest = hashlib.sha256(self.selection.encode()).hexdigest()[:16]
            return Document(
                source_id=f"{self.url}#selection-{digest}",
                source_type="selection",
                text=self.selection,
                url=self.url,
                title=self.title,
                lang=self.lang,
            )
        return Document(
            source_id=self.url,
            source_type="page",
            html=self.html,
            text=None if self.html is not None else self.text,
            url=self.url,
            title=self.title,
            lang=self.lang,
        )


def parse_capture(body: Mapping[str, Any], deny: DenyList) -> Capture:
    """Check a capture's fields; raises `InvalidDocument` naming the field, or `PageRefused`."""
    if not isinstance(body, Mapping):
        raise InvalidDocument("body: expected a JSON object")
    known = {"url", "title", "html", "text", "selection", "lang", "captured_at", "mode"}
    if unknown := sorted(set(body) - known):
        raise InvalidDocument(f"{', '.join(unknown)}: unknown field (expected {sorted(known)})")
    mode = body.get("mode")
    if mode not in MODES:
        raise InvalidDocument(f"mode: expected one of {', '.join(MODES)}, got {mode!r:.40}")
    strings = {}
    for name in ("url", "title", "html", "text", "selection", "lang", "captured_at"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidDocument(f"{name}: expected a string, got {type(value).__name__}")
        strings[name] = value
    url = page_url(strings["url"])  # raises InvalidURL (answered 422: not a page we take)
    if deny.refuses(url):
        raise PageRefused(f"url: {urlsplit(url).hostname} is on the daemon's deny list")
    title = strings["title"]
    if title is not None and len(title) > _MAX_TITLE:
        title = title[:_MAX_TITLE]  # a title is a label; a long one is cut, not refused
    lang = strings["lang"]
    if lang is not None and not _LANG.fullmatch(lang):
        raise InvalidDocument(f"lang: expected a language tag such as 'en', got {lang!r:.40}")
    captured = strings["captured_at"]
    if captured is None:
        raise InvalidDocument("captured_at: required (an RFC 3339 timestamp)")
    try:
        moment = datetime.fromisoformat(captured)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidDocument(
            f"captured_at: expected an RFC 3339 timestamp with an offset, got {captured!r:.40}"
        )
    html, text, selection = strings["html"], strings["text"], strings["selection"]
    if mode == "selection":
        if not selection or not selection.strip():
            raise InvalidDocument("selection: required and non-empty when mode is 'selection'")
    elif not (html and html.strip()) and not (text and text.strip()):
        raise InvalidDocument("html, text: give the page's HTML or its text (neither was sent)")
    return Capture(
        url=url,
        title=title,
        html=html if html and html.strip() else None,
        text=text,
        selection=selection,
        lang=lang,
        captured_at=captured,
        mode=mode,
    )
