"""_ddl: reading names, table parts and CHECK expressions from SQL text as SQLite stores it."""

from __future__ import annotations

import sqlite3

import pytest

from abathur_db import _ddl


@pytest.mark.parametrize("text, spelled", [
    ("plain", "plain"),
    ('"with ""quote"" and space"', 'with "quote" and space'),
    ("`back``tick`", "back`tick"),
    ("[square name]", "square name"),
])
def test_identifiers_are_unquoted_as_sqlite_reads_them(text, spelled):
    """Each of SQLite's identifier quotings gives the name it spells, checked against SQLite itself."""
    (token,) = _ddl.tokens(text)
    assert _ddl.name(token) == spelled
    conn = sqlite3.connect(":memory:")  # a single connection: the test is about naming
    conn.execute(f"CREATE TABLE {text} (x)")
    assert conn.execute("SELECT name FROM sqlite_master").fetchone()[0] == spelled
    assert conn.execute(f"SELECT count(*) FROM {_ddl.quote(spelled)}").fetchone()[0] == 0
    conn.close()


def test_comments_and_strings_do_not_split_or_end_a_table():
    """Commas and parentheses inside strings, comments and CHECKs stay within their part."""
    sql = """CREATE TABLE "odd table" ( -- a comment, with (parens
        a TEXT DEFAULT 'x, y)' CHECK (a IN ('p', 'q,)')), /* b, c) */
        "b c" INTEGER CONSTRAINT b_positive CHECK ((("b c") > 0)),
        CONSTRAINT pair UNIQUE (a, "b c"),
        CHECK (length(a) < 10)
    ) WITHOUT ROWID"""
    parts = _ddl.parts(sql)
    assert [part.column for part in parts] == ["a", "b c", None, None]
    assert parts[0].text == "a TEXT DEFAULT 'x, y)' CHECK (a IN ('p', 'q,)'))"
    assert _ddl.checks(parts[0], sql) == [(None, "a IN ('p', 'q,)')")]
    assert _ddl.checks(parts[1], sql) == [("b_positive", '(("b c") > 0)')]
    assert _ddl.checks(parts[2], sql) == []
    assert _ddl.checks(parts[3], sql) == [(None, "length(a) < 10")]


def test_a_word_named_check_without_parentheses_is_not_a_check():
    """A column called check (quoted) or a trailing CHECK keyword is not taken for a constraint."""
    sql = 'CREATE TABLE t ("check" TEXT, b TEXT COLLATE "check")'
    assert [_ddl.checks(part, sql) for part in _ddl.parts(sql)] == [[], []]


def test_unfinished_text_gives_what_it_holds():
    """Text cut short (no closing parenthesis) yields the parts it finished, not an error."""
    assert [part.text for part in _ddl.parts("CREATE TABLE t (a TEXT, b")] == ["a TEXT"]
    cut = "a INTEGER CHECK (a > (0)"
    assert _ddl.checks(_ddl.Part("a", cut, _ddl.tokens(cut)), cut) == [(None, "a > (0")]
    assert _ddl.tokens("SELECT 'unterminated", 1)[0].text == "SELECT"


def test_words_reads_only_the_leading_tokens():
    """words() returns the first tokens, quoted names unquoted, keywords as written."""
    assert _ddl.words('-- note\nALTER TABLE "My Tasks" RENAME TO legacy', 6) == [
        "ALTER", "TABLE", "My Tasks", "RENAME", "TO", "legacy"]


@pytest.mark.parametrize("sql, expected", [
    ("CREATE TABLE t (a PRIMARY KEY, b) WITHOUT ROWID", True),
    ("CREATE TABLE t (a PRIMARY KEY, b) STRICT, WITHOUT ROWID", True),
    ("CREATE TABLE t (a PRIMARY KEY, rowid_note TEXT DEFAULT 'WITHOUT ROWID')", False),
    ("CREATE TABLE t (a)", False),
])
def test_without_rowid_reads_only_the_table_options(sql, expected):
    """WITHOUT ROWID is recognised after the column list, never inside it."""
    assert _ddl.without_rowid(sql) is expected
