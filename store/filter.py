"""The filter language of `VectorStore.search` and `delete_where`: parse, validate, render.

A filter is a small SQL-like boolean expression over a record's metadata columns::

    source_type = 'feed' AND (created_at >= '2024-05-01' OR tags CONTAINS 'rust')
    source_id IN ('a', 'b')   text_chunk LIKE '%tokio%'   NOT source_type != 'page'

Grammar (keywords are case-insensitive; column names are lower-case)::

    expr      := and_expr ('OR' and_expr)*
    and_expr  := not_expr ('AND' not_expr)*
    not_expr  := 'NOT' not_expr | '(' expr ')' | predicate
    predicate := column ('=' | '!=' | '<>' | '<' | '<=' | '>' | '>=') string
               | column ['NOT'] 'IN' '(' string (',' string)* ')'
               | column ['NOT'] 'LIKE' string      -- % any run, _ one character, \\ escapes
               | column 'IS' ['NOT'] 'NULL'
               | 'tags' 'CONTAINS' string
    string    := "'" ( any character except "'" | "''" )* "'"

Every column holds text, so every literal is a string; comparisons and LIKE are
case-sensitive and compare by code point (equal to UTF-8 byte order), identically on SQLite
and LanceDB. A `created_at` literal that is a full RFC 3339 timestamp is normalised the way
stored values are (UTC, milliseconds: see `store.base.normalize_timestamp`), so
``created_at >= '2024-05-01T14:00:00+02:00'`` means that moment; any other literal, such as a
bare date, compares as a string prefix. The text is parsed into a tree of frozen dataclasses
which the backends render: `to_sqlite` into SQL with ``?`` parameters, `to_lance` into a
DataFusion predicate with every literal escaped. Filter text never reaches SQL unparsed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Final, Literal

from store.base import InvalidFilter, InvalidRecord, normalize_timestamp

__all__ = [
    "COLUMNS",
    "And",
    "Compare",
    "Contains",
    "FilterNode",
    "In",
    "IsNull",
    "Like",
    "Not",
    "Or",
    "parse",
    "to_lance",
    "to_sqlite",
    "to_text",
]

TEXT_COLUMNS: Final = ("id", "source_id", "source_type", "text_chunk", "created_at")
COLUMNS: Final = (*TEXT_COLUMNS, "tags")
"""The columns a filter may name: every field of a record except its embedding."""

MAX_LENGTH: Final = 8192
MAX_DEPTH: Final = 32
MAX_LIST: Final = 1000
MAX_CONDITIONS: Final = 256
"""SQLite refuses expressions more than 1,000 deep; a filter stays far below that."""

Op = Literal["=", "!=", "<", "<=", ">", ">="]
_OPS: Final[dict[str, Op]] = {
    "=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The tree.


@dataclass(frozen=True, slots=True)
class Compare:
    """`column op 'value'`."""

    column: str
    op: Op
    value: str


@dataclass(frozen=True, slots=True)
class In:
    """`column [NOT] IN ('a', 'b', ...)`."""

    column: str
    values: tuple[str, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Like:
    """`column [NOT] LIKE 'pattern'` with % and _ wildcards and backslash escapes."""

    column: str
    pattern: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class IsNull:
    """`column IS [NOT] NULL`."""

    column: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Contains:
    """`tags CONTAINS 'tag'`: the record's tag list holds this exact tag."""

    tag: str


@dataclass(frozen=True, slots=True)
class And:
    """All of `items` hold."""

    items: tuple[FilterNode, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Any of `items` holds."""

    items: tuple[FilterNode, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """`item` does not hold."""

    item: FilterNode


FilterNode = Compare | In | Like | IsNull | Contains | And | Or | Not


# --------------------------------------------------------------------------------------------
# Tokens.

_KEYWORDS: Final = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "IS", "NULL", "CONTAINS"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["word", "string", "op", "(", ")", ",", "end"]
    text: str  # the keyword upper-cased, the word as written, the string's value, the operator
    pos: int


def _is_word_start(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _is_word_char(ch: str) -> bool:
    return _is_word_start(ch) or ("0" <= ch <= "9")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch in "(),":
            tokens.append(_Token(ch, ch, i))  # type: ignore[arg-type]
            i += 1
        elif ch == "'":
            start, i, parts = i, i + 1, []
            while True:
                end = text.find("'", i)
                if end < 0:
                    raise InvalidFilter(text, start, "unterminated string; expected a closing '")
                parts.append(text[i:end])
                if text.startswith("'", end + 1):  # '' is an escaped quote
                    parts.append("'")
                    i = end + 2
                else:
                    i = end + 1
                    break
            tokens.append(_Token("string", "".join(parts), start))
        elif ch in "=!<>":
            two = text[i : i + 2]
            if two in _OPS:
                tokens.append(_Token("op", _OPS[two], i))
                i += 2
            elif ch in _OPS:
                tokens.append(_Token("op", _OPS[ch], i))
                i += 1
            else:
                raise InvalidFilter(text, i, "expected '!=' ('!' alone is not an operator)")
        elif _is_word_start(ch):
            start = i
            while i < n and _is_word_char(text[i]):
                i += 1
            word = text[start:i]
            upper = word.upper()
            tokens.append(_Token("word", upper if upper in _KEYWORDS else word, start))
        elif ch in '"`':
            raise InvalidFilter(
                text, i, "strings are written in single quotes ('...'); columns are bare names"
            )
        elif ch.isdigit() or ch in "-+.":
            raise InvalidFilter(
                text, i, "every column holds text: expected a string literal in single quotes"
            )
        else:
            raise InvalidFilter(text, i, f"unexpected character {ch!r}")
    tokens.append(_Token("end", "", n))
    return tokens


# --------------------------------------------------------------------------------------------
# Parser.


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0
        self.conditions = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def fail(self, expected: str, token: _Token | None = None) -> InvalidFilter:
        tok = token or self.token
        found = "the end of the filter" if tok.kind == "end" else _describe(tok)
        return InvalidFilter(self.text, tok.pos, f"expected {expected}, found {found}")

    def at(self, kind: str) -> bool:
        # A method rather than `self.token.kind == ...` inline: mypy would narrow the property
        # and then believe the token cannot change after advancing.
        return self.token.kind == kind

    def advance(self) -> _Token:
        tok = self.token
        self.index += 1
        return tok

    def is_keyword(self, keyword: str) -> bool:
        return self.at("word") and self.token.text == keyword

    def expect_keyword(self, keyword: str) -> None:
        if not self.is_keyword(keyword):
            raise self.fail(keyword)
        self.index += 1

    def expect_string(self, what: str) -> str:
        if not self.at("string"):
            raise self.fail(what)
        return self.advance().text

    def parse(self) -> FilterNode:
        if self.at("end"):
            raise self.fail("a condition such as source_type = 'feed'")
        node = self.expr()
        if not self.at("end"):
            raise self.fail("AND, OR or the end of the filter")
        return node

    def expr(self) -> FilterNode:
        items = [self.and_expr()]
        while self.is_keyword("OR"):
            self.index += 1
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> FilterNode:
        items = [self.not_expr()]
        while self.is_keyword("AND"):
            self.index += 1
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> FilterNode:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InvalidFilter(self.text, self.token.pos, f"nested deeper than {MAX_DEPTH} levels")
        try:
            if self.is_keyword("NOT"):
                self.index += 1
                return Not(self.not_expr())
            if self.at("("):
                self.index += 1
                node = self.expr()
                if not self.at(")"):
                    raise self.fail("')', AND or OR")
                self.index += 1
                return node
            return self.predicate()
        finally:
            self.depth -= 1

    def column(self) -> tuple[str, _Token]:
        tok = self.token
        if tok.kind != "word" or tok.text in _KEYWORDS:
            raise self.fail(f"a column ({', '.join(COLUMNS)}) or '('")
        if tok.text not in COLUMNS:
            close = difflib.get_close_matches(tok.text.lower(), COLUMNS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidFilter(
                self.text,
                tok.pos,
                f"unknown column {tok.text!r}: expected one of {', '.join(COLUMNS)}{hint}",
            )
        self.index += 1
        return tok.text, tok

    def predicate(self) -> FilterNode:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise InvalidFilter(
                self.text, self.token.pos, f"more than {MAX_CONDITIONS} conditions in one filter"
            )
        column, col_tok = self.column()
        tok = self.token
        if tok.kind == "word" and tok.text == "IS":
            self.index += 1
            negated = self.is_keyword("NOT")
            if negated:
                self.index += 1
            self.expect_keyword("NULL")
            return IsNull(column, negated)
        if column == "tags":
            if self.is_keyword("CONTAINS"):
                self.index += 1
                return Contains(self.expect_string("a tag in single quotes"))
            raise self.fail("CONTAINS or IS [NOT] NULL (tags is a list: test it with CONTAINS)")
        if tok.kind == "op":
            self.index += 1
            value = self.expect_string("a string in single quotes")
            return Compare(column, _OPS[tok.text], _literal(column, value))
        negated = False
        if self.is_keyword("NOT"):
            negated = True
            self.index += 1
            if not (self.is_keyword("IN") or self.is_keyword("LIKE")):
                raise self.fail("IN or LIKE after NOT")
        if self.is_keyword("IN"):
            self.index += 1
            values = tuple(_literal(column, v) for v in self.string_list())
            return In(column, values, negated)
        if self.is_keyword("LIKE"):
            self.index += 1
            pattern_tok = self.token
            pattern = self.expect_string("a LIKE pattern in single quotes")
            _check_like_pattern(self.text, pattern_tok.pos, pattern)
            return Like(column, pattern, negated)
        if self.is_keyword("CONTAINS"):
            raise self.fail(f"a comparison for {column!r} (CONTAINS applies to tags only)")
        raise self.fail(f"an operator after {col_tok.text!r}: = != < <= > >= IN LIKE IS")

    def string_list(self) -> tuple[str, ...]:
        if not self.at("("):
            raise self.fail("'(' to open the IN list")
        self.index += 1
        values = [self.expect_string("a string in single quotes")]
        while self.at(","):
            self.index += 1
            values.append(self.expect_string("a string in single quotes"))
            if len(values) > MAX_LIST:
                raise InvalidFilter(
                    self.text, self.token.pos, f"an IN list may hold at most {MAX_LIST} values"
                )
        if not self.at(")"):
            raise self.fail("',' or ')' in the IN list")
        self.index += 1
        return tuple(values)


def _literal(column: str, value: str) -> str:
    """A comparison value as stored: created_at timestamps are normalised like records'."""
    if column != "created_at" or len(value) < 20:
        return value  # a date or other prefix compares as a string
    try:
        return normalize_timestamp(value)
    except InvalidRecord:
        return value


def _describe(tok: _Token) -> str:
    if tok.kind == "string":
        return f"the string '{tok.text[:30]}'"
    if tok.kind == "word":
        return f"{tok.text!r}"
    return f"{tok.text!r}"


def _check_like_pattern(text: str, pos: int, pattern: str) -> None:
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 >= len(pattern):
                raise InvalidFilter(
                    text, pos, "a LIKE pattern may not end in a lone '\\' (it escapes what follows)"
                )
            i += 2
        else:
            i += 1


def parse(text: str) -> FilterNode:
    """Parse filter text into a tree; raise `InvalidFilter` naming the position and expectation."""
    if not isinstance(text, str):
        raise InvalidFilter(str(text), 0, f"expected filter text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise InvalidFilter(text, MAX_LENGTH, f"longer than {MAX_LENGTH} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidFilter(text, exc.start, "not valid Unicode text") from None
    if "\x00" in text:
        # SQLite's LIKE stops at NUL; refusing it keeps the backends in agreement.
        raise InvalidFilter(text, text.index("\x00"), "NUL characters are not allowed")
    return _Parser(text).parse()


# --------------------------------------------------------------------------------------------
# Renderers.


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def to_text(node: FilterNode) -> str:
    """Canonical filter text for a tree; `parse(to_text(t)) == t` for every parsed tree."""
    match node:
        case Compare(column, op, value):
            return f"{column} {op} {_quote(value)}"
        case In(column, values, negated):
            keyword = "NOT IN" if negated else "IN"
            return f"{column} {keyword} ({', '.join(_quote(v) for v in values)})"
        case Like(column, pattern, negated):
            return f"{column} {'NOT LIKE' if negated else 'LIKE'} {_quote(pattern)}"
        case IsNull(column, negated):
            return f"{column} IS {'NOT NULL' if negated else 'NULL'}"
        case Contains(tag):
            return f"tags CONTAINS {_quote(tag)}"
        case And(items):
            return " AND ".join(_group(item, Or) for item in items)
        case Or(items):
            return " OR ".join(_group(item, Or) for item in items)
        case Not(item):
            return "NOT " + _group(item, And | Or)
    raise TypeError(f"not a filter node: {node!r}")


def _group(node: FilterNode, needs_parens: object) -> str:
    text = to_text(node)
    return f"({text})" if isinstance(node, needs_parens) else text  # type: ignore[arg-type]


def like_to_glob(pattern: str) -> str:
    """A LIKE pattern (% _ and backslash escapes) as an SQLite GLOB pattern.

    GLOB is case-sensitive by definition, where LIKE's case sensitivity hangs on a deprecated
    pragma that builds may omit; the languages match one-to-one: % is *, _ is ?, and GLOB's own
    metacharacters become one-character classes.
    """
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            ch = pattern[i + 1]  # parse() guarantees a character follows
            i += 2
            out.append(f"[{ch}]" if ch in "*?[" else ch)
            continue
        i += 1
        if ch == "%":
            out.append("*")
        elif ch == "_":
            out.append("?")
        else:
            out.append(f"[{ch}]" if ch in "*?[" else ch)
    return "".join(out)


def to_sqlite(node: FilterNode, *, tags_column: str = "tags") -> tuple[str, list[str]]:
    """Render to an SQLite boolean expression with ``?`` placeholders, and its parameters.

    Columns are quoted identifiers from the fixed list; values are always parameters. LIKE is
    rendered as GLOB (see `like_to_glob`). Tags are a JSON array, tested with ``json_each``.
    """
    params: list[str] = []

    def render(n: FilterNode) -> str:
        match n:
            case Compare(column, op, value):
                params.append(value)
                return f'"{column}" {op} ?'
            case In(column, values, negated):
                params.extend(values)
                marks = ", ".join("?" for _ in values)
                return f'"{column}" {"NOT IN" if negated else "IN"} ({marks})'
            case Like(column, pattern, negated):
                params.append(like_to_glob(pattern))
                return f'"{column}" {"NOT GLOB" if negated else "GLOB"} ?'
            case IsNull(column, negated):
                return f'"{column}" IS {"NOT NULL" if negated else "NULL"}'
            case Contains(tag):
                params.append(tag)
                return f'EXISTS (SELECT 1 FROM json_each("{tags_column}") WHERE value = ?)'
            case And(items):
                return "(" + " AND ".join(render(i) for i in items) + ")"
            case Or(items):
                return "(" + " OR ".join(render(i) for i in items) + ")"
            case Not(item):
                return f"(NOT {render(item)})"
        raise TypeError(f"not a filter node: {n!r}")

    return render(node), params


def _lance_string(value: str) -> str:
    # DataFusion string literals are standard SQL: only the quote needs doubling; backslashes
    # are literal. (parse() has already refused NUL.)
    return "'" + value.replace("'", "''") + "'"


def to_lance(node: FilterNode, *, tag_list_column: str = "tag_list") -> str:
    """Render to a DataFusion predicate for LanceDB, every literal escaped.

    The seed's schema stores tags as a JSON string, which substring tests cannot match exactly,
    so the LanceDB table also keeps them as a list column (`tag_list_column`) for CONTAINS.
    """

    def render(n: FilterNode) -> str:
        match n:
            case Compare(column, op, value):
                return f"{column} {op} {_lance_string(value)}"
            case In(column, values, negated):
                listed = ", ".join(_lance_string(v) for v in values)
                return f"{column} {'NOT IN' if negated else 'IN'} ({listed})"
            case Like(column, pattern, negated):
                keyword = "NOT LIKE" if negated else "LIKE"
                return f"{column} {keyword} {_lance_string(pattern)} ESCAPE '\\'"
            case IsNull(column, negated):
                return f"{column} IS {'NOT NULL' if negated else 'NULL'}"
            case Contains(tag):
                return f"array_has({tag_list_column}, {_lance_string(tag)})"
            case And(items):
                return "(" + " AND ".join(render(i) for i in items) + ")"
            case Or(items):
                return "(" + " OR ".join(render(i) for i in items) + ")"
            case Not(item):
                return f"(NOT {render(item)})"
        raise TypeError(f"not a filter node: {n!r}")

    return render(node)
