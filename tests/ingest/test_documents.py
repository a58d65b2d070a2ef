"""Documents: validation, the JSON round trip through the queue, and text extraction."""

from __future__ import annotations

import pytest

from ingest.documents import MAX_CONTENT_BYTES, Document, extract
from ingest.errors import ExtractionError, InvalidDocument

ARTICLE = """<!doctype html>
<html lang="en"><head><title>Why tokio tasks stall | The Rust Blog</title>
<script>window.analytics = {track() {}};</script><style>body{font:serif}</style></head>
<body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/archive">Archive</a></nav>
<div class="cookie-banner">We use cookies to improve your experience. Accept all?</div>
<main><article>
<h1>Why tokio tasks stall</h1>
<p>A task that never yields blocks every other task on its worker thread. The executor is
cooperative: it only switches tasks at await points, so a long computation inside an async
function starves the rest of the runtime until it returns.</p>
<p>The fix is to move blocking work onto spawn_blocking, or to insert explicit yield points in
long loops. Budgeting helps too: tokio gives every task a budget of operations per poll.</p>
<pre><code>tokio::task::spawn_blocking(move || heavy_computation(input))</code></pre>
</article></main>
<footer>Copyright 2024 Example Corp. All rights reserved. Privacy | Terms</footer>
</body></html>"""


def test_html_extraction_keeps_the_article_and_drops_the_boilerplate() -> None:
    doc = Document("https://blog.example/tokio", "page", html=ARTICLE)
    out = extract(doc)
    assert "A task that never yields blocks every other task" in out.text
    assert "spawn_blocking" in out.text
    for boilerplate in ("Archive", "cookies", "All rights reserved", "window.analytics", "font:"):
        assert boilerplate not in out.text
    assert out.title is not None
    assert "tokio tasks stall" in out.title
    assert out.lang == "en"


def test_a_page_without_an_article_falls_back_to_its_visible_text() -> None:
    html = "<html><body><div>Short note: buy milk</div><script>var x = 1;</script></body></html>"
    out = extract(Document("note", "page", html=html))
    assert "buy milk" in out.text
    assert "var x" not in out.text


@pytest.mark.parametrize(
    "html",
    ["", "<html><body></body></html>", "<html><body><script>only()</script></body></html>", "   "],
)
def test_html_with_no_text_is_an_extraction_error(html: str) -> None:
    with pytest.raises(ExtractionError, match="no text could be extracted"):
        extract(Document("empty", "page", html=html))


def test_plain_text_is_used_as_given_with_newlines_tidied() -> None:
    out = extract(Document("t", "note", text="line one\r\nline two  \n\n\n\nnext paragraph"))
    assert out.text == "line one\nline two\n\nnext paragraph"
    with pytest.raises(ExtractionError, match="empty"):
        extract(Document("t", "note", text=" \n "))


def test_documents_survive_the_queue_as_json() -> None:
    doc = Document(
        "https://example.org/ü?x=1",
        "page",
        html="<p>é 🦀</p>",
        url="https://example.org/ü?x=1",
        title="Tïtle",
        published="2024-05-01T12:00:00+02:00",
        lang="fr",
        tags=("a", "b"),
    )
    assert Document.from_json(doc.to_json()) == doc


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source_id": ""}, "source_id: expected a non-empty string"),
        ({"source_type": "Page Type"}, "source_type: expected a lower-case word"),
        ({"text": None}, "exactly one of text and html"),
        ({"html": "<p>x</p>"}, "exactly one of text and html"),
        ({"text": 5}, "text: expected a string"),
        ({"published": "yesterday"}, "published: expected an RFC 3339"),
        ({"published": "2024-05-01T12:00:00"}, "with an offset"),
        ({"tags": "rust"}, "tags: expected a list of strings"),
        ({"tags": 5}, "tags: expected a list of strings"),
        ({"text": "x" * (MAX_CONTENT_BYTES + 1)}, "the limit is"),
        ({"text": "bad \ud800"}, "not valid Unicode"),
    ],
)
def test_invalid_documents_name_the_field(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"source_id": "s", "source_type": "note", "text": "hello"}
    with pytest.raises(InvalidDocument, match=message):
        Document(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "not a JSON document"),
        ("[1, 2]", "expected a JSON object"),
        (
            '{"source_id": "s", "source_type": "note", "text": "x", "evil": 1}',
            "unknown fields: evil",
        ),
        ('{"source_type": "note", "text": "x"}', "source_id"),
    ],
)
def test_bad_json_payloads_are_invalid_documents(payload: str, message: str) -> None:
    with pytest.raises(InvalidDocument, match=message):
        Document.from_json(payload)
