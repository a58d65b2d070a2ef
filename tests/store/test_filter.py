"""The filter language: parsing, errors, rendering, and agreement with a reference evaluator."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.base import InvalidFilter, Record, tags_to_json
from store.filter import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    TEXT_COLUMNS,
    And,
    Compare,
    Contains,
    FilterNode,
    In,
    IsNull,
    Like,
    Not,
    Or,
    parse,
    to_lance,
    to_sqlite,
    to_text,
)
from tests.store.model import matches

# -- parsing ------------------------------------------------------------------------------------


def test_parses_the_documented_forms() -> None:
    assert parse("source_type = 'feed'") == Compare("source_type", "=", "feed")
    assert parse("id <> 'x'") == Compare("id", "!=", "x")
    assert parse("created_at>='2024'") == Compare("created_at", ">=", "2024")
    assert parse("id not in ('a','b')") == In("id", ("a", "b"), negated=True)
    assert parse("text_chunk LIKE 'it''s%'") == Like("text_chunk", "it's%")
    assert parse("source_id IS NOT NULL") == IsNull("source_id", negated=True)
    assert parse("tags contains 'rust'") == Contains("rust")
    assert parse("NOT (id = 'a' OR id = 'b') AND tags CONTAINS 'x'") == And(
        (Not(Or((Compare("id", "=", "a"), Compare("id", "=", "b")))), Contains("x"))
    )


def test_and_binds_tighter_than_or() -> None:
    assert parse("id = 'a' OR id = 'b' AND id = 'c'") == Or(
        (Compare("id", "=", "a"), And((Compare("id", "=", "b"), Compare("id", "=", "c"))))
    )


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("", 0, "expected a condition"),
        ("   ", 3, "expected a condition"),
        ("source_id", 9, "expected an operator after 'source_id'"),
        ("source_id =", 11, "expected a string in single quotes, found the end"),
        ("source_id = 'abc", 12, "unterminated string"),
        ('source_id = "abc"', 12, "single quotes"),
        ("source_id = 5", 12, "every column holds text"),
        ("embedding = 'x'", 0, "unknown column 'embedding'"),
        ("Source_ID = 'x'", 0, "did you mean 'source_id'"),
        ("id = 'a' id = 'b'", 9, "expected AND, OR or the end"),
        ("(id = 'a'", 9, "expected ')', AND or OR"),
        ("id = 'a')", 8, "expected AND, OR or the end"),
        ("id IN 'a'", 6, "'(' to open the IN list"),
        ("id IN ('a' 'b')", 11, "',' or ')' in the IN list"),
        ("id IN ()", 7, "expected a string"),
        ("id NOT = 'a'", 7, "IN or LIKE after NOT"),
        ("tags = 'x'", 5, "CONTAINS or IS [NOT] NULL"),
        ("id CONTAINS 'x'", 3, "CONTAINS applies to tags only"),
        ("id LIKE 'abc\\'", 8, "lone '\\'"),
        ("id IS 'x'", 6, "expected NULL"),
        ("id = 'a' AND", 12, "expected a column"),
        ("id ! 'a'", 3, "'!=' ('!' alone"),
        ("id = 'a'; DROP TABLE t", 8, "unexpected character ';'"),
        ("id = 'a' -- comment", 9, "every column holds text"),
        ("id = 'a' /* c */", 9, "unexpected character '/'"),
        ("id = 'a\x00'", 7, "NUL"),
    ],
)
def test_errors_say_where_and_what_was_expected(text: str, position: int, message: str) -> None:
    with pytest.raises(InvalidFilter) as info:
        parse(text)
    assert info.value.position == position, str(info.value)
    assert message in str(info.value)
    assert f"at position {position}" in str(info.value)


def test_limits_on_length_depth_and_list_size() -> None:
    with pytest.raises(InvalidFilter, match=f"longer than {MAX_LENGTH}"):
        parse("id = '" + "x" * MAX_LENGTH + "'")
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse("(" * (MAX_DEPTH + 1) + "id = 'a'" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(InvalidFilter, match="nested deeper"):
        parse("NOT " * 1000 + "id = 'a'")
    with pytest.raises(InvalidFilter, match="at most 1000 values"):
        parse("id IN (" + ", ".join(["'a'"] * 1001) + ")")
    assert parse("(" * (MAX_DEPTH - 1) + "id = 'a'" + ")" * (MAX_DEPTH - 1)) == Compare(
        "id", "=", "a"
    )


def test_renders_sqlite_with_parameters_only() -> None:
    sql, params = to_sqlite(parse("source_id = 'x'' OR 1=1 --' AND tags CONTAINS 'a'"))
    assert sql == ('("source_id" = ? AND EXISTS (SELECT 1 FROM json_each("tags") WHERE value = ?))')
    assert params == ["x' OR 1=1 --", "a"]


def test_renders_lance_with_every_literal_escaped() -> None:
    text = "source_id = 'it''s' AND NOT text_chunk LIKE '100\\%' OR tags CONTAINS 'a''b'"
    assert to_lance(parse(text)) == (
        "((source_id = 'it''s' AND (NOT text_chunk LIKE '100\\%' ESCAPE '\\')) "
        "OR array_has(tag_list, 'a''b'))"
    )


# -- generated trees ------------------------------------------------------------------------------

# A small alphabet makes matches likely and covers the characters that need care.
VALUE_CHARS = st.sampled_from(list("abA'%_\\*?[ é文🦀\n"))
values = st.text(VALUE_CHARS, max_size=4)


def like_patterns() -> st.SearchStrategy[str]:
    piece = st.one_of(
        st.sampled_from(["%", "_", "a", "b", "A", "'", "é", " ", "*", "?", "["]),
        st.sampled_from(["\\%", "\\_", "\\\\", "\\a"]),
    )
    return st.lists(piece, max_size=5).map("".join)


def leaves() -> st.SearchStrategy[FilterNode]:
    column = st.sampled_from(TEXT_COLUMNS)
    return st.one_of(
        st.builds(Compare, column, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), values),
        st.builds(In, column, st.lists(values, min_size=1, max_size=3).map(tuple), st.booleans()),
        st.builds(Like, column, like_patterns(), st.booleans()),
        st.builds(IsNull, st.sampled_from([*TEXT_COLUMNS, "tags"]), st.booleans()),
        st.builds(Contains, values),
    )


def _flatten(kind: type[And] | type[Or], items: tuple[FilterNode, ...]) -> FilterNode:
    # The parser flattens `a AND (b AND c)` to one And; generate trees in that normal form.
    flat: list[FilterNode] = []
    for item in items:
        flat.extend(item.items if isinstance(item, kind) else (item,))
    return kind(tuple(flat))


trees: st.SearchStrategy[FilterNode] = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flatten(And, tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flatten(Or, tuple(xs))),
        st.builds(Not, inner),
    ),
    max_leaves=8,
)

records = st.builds(
    Record,
    id=st.text(VALUE_CHARS, min_size=1, max_size=4),
    source_id=values,
    source_type=values,
    text_chunk=values,
    embedding=st.just(np.ones(2, np.float32)),
    created_at=st.sampled_from(
        ["2024-01-01T00:00:00Z", "2024-06-30T23:59:59.999Z", "2023-12-31T23:00:00-02:00"]
    ),
    tags=st.lists(values, max_size=3),
)


@given(trees)
def test_printed_trees_parse_back_to_themselves(tree: FilterNode) -> None:
    assert parse(to_text(tree)) == tree


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute("PRAGMA case_sensitive_like = ON")
    conn.execute(
        "CREATE TABLE r (n INTEGER, id TEXT, source_id TEXT, source_type TEXT, "
        "text_chunk TEXT, created_at TEXT, tags TEXT)"
    )
    yield conn
    conn.close()


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees, rows=st.lists(records, min_size=1, max_size=8))
def test_sqlite_selects_exactly_what_the_reference_selects(
    db: sqlite3.Connection, tree: FilterNode, rows: list[Record]
) -> None:
    db.execute("DELETE FROM r")
    db.executemany(
        "INSERT INTO r VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (n, r.id, r.source_id, r.source_type, r.text_chunk, r.created_at, tags_to_json(r.tags))
            for n, r in enumerate(rows)
        ],
    )
    sql, params = to_sqlite(parse(to_text(tree)))
    got = {n for (n,) in db.execute(f"SELECT n FROM r WHERE {sql}", params)}
    assert got == {n for n, r in enumerate(rows) if matches(tree, r)}


@settings(max_examples=1000)
@given(st.text(max_size=60))
def test_random_text_raises_only_the_filter_error(text: str) -> None:
    try:
        tree = parse(text)
    except InvalidFilter as exc:
        position = exc.position
    else:
        assert parse(to_text(tree)) == tree
        return
    assert 0 <= position <= len(text)


TOKENS = st.sampled_from(
    [
        "id", "tags", "source_type", "created_at", "AND", "or", "NOT", "IN", "LIKE", "IS",
        "NULL", "CONTAINS", "(", ")", ",", "=", "!=", "<=", ">", "'x'", "'it''s'", "'",
        "%", "--", ";", "/*", "1", "\\",
    ]
)  # fmt: skip


@settings(max_examples=1000)
@given(st.lists(TOKENS, max_size=12).map(" ".join))
def test_token_soup_raises_only_the_filter_error(text: str) -> None:
    try:
        tree = parse(text)
    except InvalidFilter:
        return
    assert parse(to_text(tree)) == tree


INJECTIONS = [
    "source_id = 'x' OR '1'='1'",
    "source_id = 'x' UNION SELECT * FROM sqlite_master",
    "source_id = 'x'; DELETE FROM vectors_t",
    "source_id = 'x' -- AND 1",
    "source_id = 'x' /* comment */",
    "source_id = char(120)",
    "source_id = 'x' OR 1",
    "source_id = ＇x＇",  # fullwidth apostrophes
    "source_id ＝ 'x'",  # fullwidth equals
    "source_id = ‘x’",  # curly quotes
    "ѕource_id = 'x'",  # Cyrillic s
    "source_id = 'x' OR id = (SELECT id FROM vectors_t)",
    "json_each(tags) = 'x'",
    "source_id = x'78'",
    "\"source_id\" = 'x'",
    "source_id = 'x' COLLATE NOCASE",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_attempts_are_rejected(text: str) -> None:
    with pytest.raises(InvalidFilter):
        parse(text)


@pytest.mark.parametrize(
    "value",
    ["'; DROP TABLE vectors_t; --", "' OR '1'='1", "\\'", "%' OR 1 --", 'x"y', "-- /* */", "[*?]"],
)
def test_hostile_literals_are_only_ever_values(db: sqlite3.Connection, value: str) -> None:
    db.execute("DELETE FROM r")
    db.executemany(
        "INSERT INTO r VALUES (?, 'a', ?, 'page', ?, '2024-01-01T00:00:00.000Z', '[]')",
        [(0, value, value), (1, "other", "other")],
    )
    literal = value.replace("'", "''")
    # The same value as a LIKE pattern that matches it literally.
    pattern = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = pattern.replace("'", "''")
    for text, template in (
        (f"source_id = '{literal}'", '"source_id" = ?'),
        (f"text_chunk LIKE '{pattern}'", '"text_chunk" GLOB ?'),
    ):
        sql, params = to_sqlite(parse(text))
        # The SQL is the fixed template whatever the literal; the literal is only a parameter.
        assert sql == template
        assert db.execute(f"SELECT n FROM r WHERE {sql}", params).fetchall() == [(0,)]
    assert db.execute("SELECT count(*) FROM r").fetchone() == (2,)


def test_like_is_case_sensitive_and_glob_characters_are_literal(db: sqlite3.Connection) -> None:
    texts = ["a*b", "a?b", "a[b]", "axb", "ABC", "abc", "a\\nb"]
    db.execute("DELETE FROM r")
    db.executemany(
        "INSERT INTO r VALUES (?, 'a', 's', 'page', ?, '2024-01-01T00:00:00.000Z', '[]')",
        list(enumerate(texts)),
    )

    def select(pattern: str) -> list[str]:
        sql, params = to_sqlite(parse(f"text_chunk LIKE '{pattern}'"))
        rows = db.execute(f"SELECT n FROM r WHERE {sql} ORDER BY n", params)
        return [texts[n] for (n,) in rows]

    assert select("a*b") == ["a*b"]
    assert select("a?b") == ["a?b"]
    assert select("a_b") == ["a*b", "a?b", "axb"]
    assert select("a[b%") == ["a[b]"]
    assert select("abc") == ["abc"]
    assert select("A%") == ["ABC"]
    assert select("a\\\\nb") == ["a\\nb"]  # an escaped backslash


def test_created_at_literals_are_normalised_like_stored_values() -> None:
    assert parse("created_at >= '2024-05-01T14:00:00+02:00'") == Compare(
        "created_at", ">=", "2024-05-01T12:00:00.000Z"
    )
    assert parse("created_at IN ('2024-05-01T12:00:00Z')") == In(
        "created_at", ("2024-05-01T12:00:00.000Z",)
    )
    assert parse("created_at < '2024-05-01'") == Compare("created_at", "<", "2024-05-01")
    assert parse("source_id = '2024-05-01T12:00:00Z'") == Compare(
        "source_id", "=", "2024-05-01T12:00:00Z"
    )


def test_condition_count_is_capped_below_sqlites_depth_limit(db: sqlite3.Connection) -> None:
    many = " OR ".join(["id = 'x'"] * MAX_CONDITIONS)
    sql, params = to_sqlite(parse(many))
    db.execute(f"SELECT n FROM r WHERE {sql}", params).fetchall()  # SQLite accepts it
    with pytest.raises(InvalidFilter, match=f"more than {MAX_CONDITIONS} conditions"):
        parse(many + " OR id = 'y'")
    with pytest.raises(InvalidFilter, match="conditions"):
        parse("id=''OR " * 1000 + "id=''")
