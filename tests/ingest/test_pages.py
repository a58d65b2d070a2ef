"""Pages from the browser: URL normalisation, the deny list, and captures checked field by field."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ingest.errors import InvalidDocument
from ingest.pages import DEFAULT_DENY, DenyList, PageRefused, is_deny_rule, page_url, parse_capture
from ingest.urls import InvalidURL, normalise_url

NOW = "2026-11-24T10:00:00.000Z"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("HTTPS://Example.COM/Path?q=1#section", "https://example.com/Path?q=1"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://user:secret@example.com/a", "https://example.com/a"),
        ("https://example.com/a?utm_source=rss&utm_medium=x&id=7", "https://example.com/a?id=7"),
        ("https://example.com/a?fbclid=abc", "https://example.com/a"),
        ("https://example.com/a?gclid=1&b=2&UTM_Campaign=z", "https://example.com/a?b=2"),
        # What is kept keeps its exact spelling (order, encoding, bare flags), whether or not
        # something was dropped beside it: one page, one source id.
        ("https://example.com/a?b=%2F&a=1", "https://example.com/a?b=%2F&a=1"),
        ("https://example.com/a?q=a%20b&utm_source=x", "https://example.com/a?q=a%20b"),
        ("https://example.com/a?flag&utm_medium=x", "https://example.com/a?flag"),
        ("https://example.com/a?a=1;b=2&fbclid=z", "https://example.com/a?a=1;b=2"),
        ("https://example.com/a?utm%5Fsource=x&b=c+d", "https://example.com/a?b=c+d"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
    ],
)
def test_page_urls_are_normalised(raw: str, normal: str) -> None:
    assert page_url(raw) == normal


def test_feed_urls_keep_their_tracking_looking_parameters() -> None:
    # A feed's query can select the feed itself; only pages lose tracking parameters.
    assert normalise_url("https://x.org/feed?utm_source=a") == "https://x.org/feed?utm_source=a"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("file:///etc/passwd", "not an http(s) URL"),
        ("javascript:alert(1)", "not an http(s) URL"),
        ("chrome://settings", "not an http(s) URL"),
        ("https://", "not an http(s) URL"),
        ("https://exa mple.com/", "white space"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://example.com/" + "a" * 2000, "at most 2000"),
        ("", "expected an http(s) URL"),
    ],
)
def test_bad_page_urls_are_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(InvalidURL, match=re.escape(why)):
        page_url(raw)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://mail.google.com/mail/u/0", True),
        ("https://www.google.com/search?q=x", True),
        ("https://google.com/searchy", True),  # a path prefix, as written
        ("https://www.google.com/maps", False),
        ("https://secure.chase.com/web/auth", True),
        ("https://notchase.com/", False),  # a domain rule is not a suffix of any string
        ("https://mybank.bank/login", True),
        ("https://duckduckgo.com/?q=x", True),
        ("https://example.com/", False),
        ("https://www.google.co.uk/search?q=x", True),  # google.*/search
        ("https://mychart.example.org/visit", True),  # mychart.*
        ("https://www.mychart.health.net/", True),
        ("https://mychart/", False),  # the label must be followed by more
        ("https://www.GOOGLE.com/SEARCH?q=x", True),  # case ignored, paths too
    ],
)
def test_the_default_deny_list(url: str, refused: bool) -> None:
    assert DenyList(DEFAULT_DENY).refuses(page_url(url)) is refused


def test_deny_rules_are_checked() -> None:
    assert is_deny_rule("example.com")
    assert is_deny_rule("*.bank")
    assert is_deny_rule("Example.com/Search")
    assert is_deny_rule("google.*/search")
    for bad in ("", "https://example.com", "exa mple.com", "-bad.com", "*.*"):
        assert not is_deny_rule(bad), bad
    with pytest.raises(ValueError, match="deny rule 'https://x'"):
        DenyList(["https://x"])


def capture(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "url": "https://example.com/post?utm_source=feed",
        "title": "A post",
        "html": "<html><body><p>Hello</p></body></html>",
        "captured_at": NOW,
        "mode": "manual",
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def test_a_capture_becomes_a_page_document_keyed_by_its_normal_url() -> None:
    page = parse_capture(capture(text="Hello", lang="en"), DenyList([]))
    document = page.document()
    assert document.source_id == "https://example.com/post"
    assert document.url == "https://example.com/post"
    assert document.source_type == "page"
    assert document.html is not None  # HTML wins: the daemon extracts it itself
    assert document.text is None
    assert document.lang == "en"


def test_text_is_used_when_no_html_comes() -> None:
    document = parse_capture(capture(html=None, text="Just the text"), DenyList([])).document()
    assert (document.text, document.html) == ("Just the text", None)


def test_a_selection_is_a_source_of_its_own_beside_its_page() -> None:
    one = parse_capture(capture(mode="selection", selection="a quote"), DenyList([])).document()
    two = parse_capture(capture(mode="selection", selection="another"), DenyList([])).document()
    assert one.source_id.startswith("https://example.com/post#selection-")
    assert one.source_id != two.source_id
    assert (one.text, one.source_type) == ("a quote", "selection")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "sometimes"}, "mode: expected one of manual, selection, auto"),
        ({"mode": None}, "mode: expected one of"),
        ({"url": 5}, "url: expected a string, got int"),
        ({"url": None}, r"url: expected an http\(s\) URL"),
        ({"title": ["x"]}, "title: expected a string"),
        ({"captured_at": None}, "captured_at: required"),
        ({"captured_at": "yesterday"}, "captured_at: expected an RFC 3339"),
        ({"captured_at": "2026-11-24T10:00:00"}, "captured_at: expected an RFC 3339"),
        ({"lang": "english please"}, "lang: expected a language tag"),
        ({"html": None, "text": None}, "html, text: give the page's HTML or its text"),
        ({"html": "   ", "text": ""}, "html, text: give the page's HTML or its text"),
        ({"mode": "selection"}, "selection: required"),
        ({"cookies": "x"}, "cookies: unknown field"),
    ],
)
def test_bad_captures_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises((InvalidDocument, InvalidURL), match=message):
        parse_capture(capture(**fields), DenyList([]))


def test_the_deny_list_refuses_before_anything_is_built() -> None:
    with pytest.raises(
        PageRefused, match=re.escape("mail.google.com is on the daemon's deny list")
    ):
        parse_capture(
            capture(url="https://mail.google.com/mail/u/0/#inbox"), DenyList(DEFAULT_DENY)
        )


def test_a_long_title_is_cut_not_refused() -> None:
    page = parse_capture(capture(title="t" * 5000), DenyList([]))
    assert page.title is not None
    assert len(page.title) == 1000
