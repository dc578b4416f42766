"""Reading SQL text: the leading words of a statement, and the parts of a CREATE TABLE.

SQLite keeps each object's CREATE statement exactly as it was written. The schema
runner and the rule check read those texts with this small tokenizer rather than
a parser: they only need names, the top-level parts of a table definition, and
the CHECK expressions in them.
"""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple, cast

__all__ = ["Part", "Token", "checks", "name", "parts", "quote", "tokens", "without_rowid", "words"]

_TOKEN = re.compile(
    r"""
      (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
    | (?P<word>[^\W\d][\w$]*|\d[\w.]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_TABLE_CONSTRAINTS = {"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"}


class Token(NamedTuple):
    """One token of SQL text: its kind (word, quoted, string, other), its text and where it starts and ends."""

    kind: str
    text: str
    start: int
    end: int


class Part(NamedTuple):
    """One top-level part of a CREATE TABLE: a column (named) or a table constraint (column None)."""

    column: str | None
    text: str
    tokens: list[Token]


def tokens(sql: str, limit: int | None = None) -> list[Token]:
    """Return the tokens of `sql` (the first `limit` only, if given), without whitespace and comments."""
    # Every alternative of _TOKEN is a named group, so a match always has a lastgroup.
    found = (Token(cast(str, m.lastgroup), m.group(), m.start(), m.end()) for m in _TOKEN.finditer(sql)
             if m.lastgroup != "space")
    return list(itertools.islice(found, limit))


def name(token: Token) -> str:
    """Return the identifier a word or quoted token spells ("a""b" -> a"b, [x] -> x)."""
    text = token.text
    if token.kind != "quoted":
        return text
    if text[0] == "[":
        return text[1:-1]
    return text[1:-1].replace(text[0] * 2, text[0])


def quote(identifier: str) -> str:
    """Return `identifier` as a double-quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


def words(sql: str, count: int) -> list[str]:
    """Return the first `count` tokens of `sql` as text, quoted identifiers unquoted."""
    return [name(t) for t in tokens(sql, count)]


def parts(create_table: str) -> list[Part]:
    """Return the columns and table constraints of a CREATE TABLE statement, in order."""
    found: list[Part] = []
    depth = 0
    current: list[Token] = []
    for token in tokens(create_table):
        if token.text == "(":
            depth += 1
            if depth == 1:
                continue
        elif token.text == ")":
            depth -= 1
            if depth == 0:
                found.append(_part(create_table, current))
                break
        if depth == 1 and token.text == ",":
            found.append(_part(create_table, current))
            current = []
        elif depth >= 1:
            current.append(token)
    return found


def _part(sql: str, part_tokens: list[Token]) -> Part:
    first = part_tokens[0]
    is_constraint = first.kind == "word" and first.text.upper() in _TABLE_CONSTRAINTS
    return Part(None if is_constraint else name(first), sql[first.start:part_tokens[-1].end], part_tokens)


def checks(part: Part, sql: str) -> list[tuple[str | None, str]]:
    """Return the CHECK constraints of one part as (constraint name or None, expression text).

    `sql` is the CREATE TABLE text the part was read from.
    """
    found = []
    toks = part.tokens
    for i, token in enumerate(toks):
        if token.kind != "word" or token.text.upper() != "CHECK" or i + 1 >= len(toks) or toks[i + 1].text != "(":
            continue
        depth = 0
        for closing in toks[i + 1:]:
            depth += {"(": 1, ")": -1}.get(closing.text, 0)
            if depth == 0:
                break
        named = i >= 2 and toks[i - 2].kind == "word" and toks[i - 2].text.upper() == "CONSTRAINT"
        found.append((name(toks[i - 1]) if named else None, sql[toks[i + 1].end:closing.start].strip()))
    return found


def without_rowid(create_table: str) -> bool:
    """Tell whether a CREATE TABLE statement makes a WITHOUT ROWID table."""
    found = tokens(create_table)
    closing = max((i for i, token in enumerate(found) if token.text == ")"), default=len(found))
    return any(token.text.upper() == "ROWID" for token in found[closing:])
