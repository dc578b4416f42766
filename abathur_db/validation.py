"""Checks of a database's contents and of its query plans against the query catalog."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import cast

from . import _ddl
from .catalog import CATALOG, CatalogQuery
from .errors import AbathurDBError, ValidationError, translate, translated
from .rows import RuleViolation
from .schema import statements
from .transaction import Params, hold, one, rows

__all__ = ["PlanCheck", "check_catalog", "check_plan", "explain_query_plan", "rule_violations",
           "validate_foreign_keys"]

# Statements that EXPLAIN QUERY PLAN can describe without side effects. Others are
# refused: a PRAGMA setting a flag (foreign_keys, ignore_check_constraints, ...)
# takes effect while the statement is prepared, so even its EXPLAIN would change
# the connection.
_PLANNABLE = ("SELECT", "WITH", "VALUES", "INSERT", "REPLACE", "UPDATE", "DELETE")
_LEADING_NOISE = re.compile(r"(?:\s+|;|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
_KEYWORD = re.compile(r"[A-Za-z]*")
# SQLite before 3.36 prints "SCAN TABLE t" / "SEARCH TABLE t"; later versions "SCAN t".
_SCAN = re.compile(r"SCAN (?:TABLE )?(?P<table>\S+)(?P<rest>.*)")
_USES_INDEX = re.compile(r"USING (?:COVERING )?INDEX (\S+)")


@dataclass(frozen=True)
class PlanCheck:
    """The verdict on one catalog query: its id, whether it passed, its plan, and what is wrong."""

    id: str
    ok: bool
    plan: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def validate_foreign_keys(conn: sqlite3.Connection) -> list[tuple[str, int | None, str, int]]:
    """Return the rows of ``PRAGMA foreign_key_check``: (table, rowid, parent, fkid) per violation."""
    return [tuple(row) for row in rows(conn, None, "PRAGMA foreign_key_check")]


def explain_query_plan(conn: sqlite3.Connection, sql: str, params: Params = ()) -> list[str]:
    """Return the lines of ``EXPLAIN QUERY PLAN`` for one statement, without running it.

    :raises ValidationError: `sql` is empty, holds more than one statement, or is
        not a SELECT, WITH, VALUES, INSERT, REPLACE, UPDATE or DELETE statement.
    """
    statement = _one_statement(sql)
    # An EXPLAIN never checks the schema cookie, so sqlite3's statement cache would
    # replay a plan made before an index was dropped; the version in the text
    # gives each schema its own cache entry.
    version = one(conn, None, "PRAGMA schema_version")[0]
    with hold(conn):
        try:
            plan = conn.execute(f"/* schema {version} */ EXPLAIN QUERY PLAN {statement}", params).fetchall()
        except sqlite3.ProgrammingError as exc:  # parameters that do not fit the statement
            raise ValidationError(f"explain_query_plan: {exc}") from exc
        except sqlite3.Error as exc:
            raise translate(exc) from exc
    return [detail for *_, detail in plan]


def check_plan(conn: sqlite3.Connection, query: CatalogQuery) -> PlanCheck:
    """Check that `query` uses each of its indexes, scans no table in full and sorts nothing.

    A plan that cannot be prepared (an ``INDEXED BY`` index was dropped, a column
    is missing) makes a failed check naming the missing indexes, not an exception.
    """
    present = _index_names(conn)
    missing = [name for name in query.indexes if name not in present]
    try:
        plan = explain_query_plan(conn, query.sql, query.params)
    except AbathurDBError as exc:
        problems = [f"cannot be planned: {exc}", *(f"index {name} does not exist" for name in missing)]
        return PlanCheck(query.id, False, [], problems)
    problems = _plan_problems(plan, query, missing)
    return PlanCheck(query.id, not problems, plan, problems)


def check_catalog(conn: sqlite3.Connection) -> list[PlanCheck]:
    """Check the plan of every query of the catalog, in catalog order."""
    return [check_plan(conn, query) for query in CATALOG]


def _one_statement(sql: str) -> str:
    if not isinstance(sql, str):
        raise ValidationError(f"explain_query_plan: sql must be a string, not {type(sql).__name__}")
    found = [text for text in statements(sql) if _code(text)]
    if len(found) != 1:
        raise ValidationError(f"explain_query_plan takes exactly one statement; got {len(found)}")
    keyword = cast("re.Match[str]", _KEYWORD.match(_code(found[0])))[0].upper()  # it matches "", so never None
    if keyword not in _PLANNABLE:
        raise ValidationError(
            f"explain_query_plan: {keyword or found[0][:20]!r} statements are refused; "
            f"only {', '.join(_PLANNABLE)}"
        )
    return found[0]


def _code(statement: str) -> str:
    """Return `statement` without its leading whitespace, comments and semicolons."""
    return statement[cast("re.Match[str]", _LEADING_NOISE.match(statement)).end():]  # it matches "", so never None


def _index_names(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in rows(conn, None, "SELECT name FROM sqlite_master WHERE type = 'index'")}


def _plan_problems(plan: list[str], query: CatalogQuery, missing: list[str]) -> list[str]:
    problems = []
    used = {name for line in plan for name in _USES_INDEX.findall(line)}
    for line in plan:
        scan = _SCAN.match(line)
        if scan and scan["table"] != "CONSTANT":  # "SCAN CONSTANT ROW": a SELECT without FROM
            index = _USES_INDEX.search(scan["rest"])
            if index is None:
                problems.append(f"full scan of {scan['table']} ({line})")
            elif not (query.ordered_walk and index[1] in query.indexes):
                problems.append(f"walks all of {index[1]} instead of searching it ({line})")
        if "USE TEMP B-TREE" in line:
            problems.append(f"sorts in a temporary b-tree ({line})")
        if "AUTOMATIC" in line:
            problems.append(f"builds a temporary index, scanning the table to do so ({line})")
    problems.extend(f"does not use {name}" + (" (no such index)" if name in missing else "")
                    for name in query.indexes if name not in used)
    return problems


def rule_violations(conn: sqlite3.Connection) -> list[RuleViolation]:
    """Return one dict per value that breaks a CHECK or NOT NULL rule of its table.

    Each names the ``table``, the row (``row_key``: its one-column primary key, a
    WITHOUT ROWID table's key columns comma-separated, else ``rowid``; ``row``: that
    key's value, a JSON array of several), the ``column``, its ``value`` and the ``rule``.
    Legacy rows that an upgrade kept as they were show up here; ``integrity_check`` only
    counts them per table.
    """
    with hold(conn), translated():
        tables = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
            " AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name").fetchall()
        return [found for table, sql in tables for found in _table_violations(conn, table, sql)]


def _table_violations(conn: sqlite3.Connection, table: str, sql: str) -> list[RuleViolation]:
    quote = _ddl.quote
    # Names and CHECK expressions come from the database's own schema, never from the caller.
    columns = conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
    # SQLite folds "x IS NULL" to false when x is declared NOT NULL; typeof() looks at the stored value.
    rules = [(column, "NOT NULL", f"typeof({quote(column)}) = 'null'") for _, column, _, notnull, _, _ in columns
             if notnull]
    for part in _ddl.parts(sql):
        for name, expression in _ddl.checks(part, sql):
            rules.append((part.column or name, f"CHECK {name}" if name else "CHECK", f"NOT ({expression})"))
    if not rules:
        return []
    names = {column for _, column, *_ in columns}
    keys = [column for *_, column in sorted((pk, column) for _, column, _, _, _, pk in columns if pk)]
    without_rowid = _ddl.without_rowid(sql)
    row_key = keys[0] if len(keys) == 1 else ", ".join(keys) if without_rowid else "rowid"
    key_sql = quote(keys[0]) if len(keys) == 1 else f"json_array({', '.join(map(quote, keys))})" if without_rowid \
        else "rowid"
    # CASE WHEN evaluates a rule as a CHECK does: json_type() on text that is not JSON is never reached.
    flags = ", ".join(f"CASE WHEN {broken} THEN 1 ELSE 0 END" for _, _, broken in rules)
    values = ", ".join(quote(column) if column in names else "NULL" for column, _, _ in rules)
    where = " OR ".join(broken for _, _, broken in rules)
    found: list[RuleViolation] = []
    for key, *rest in conn.execute(f"SELECT {key_sql}, {flags}, {values} FROM {quote(table)} WHERE {where}"):
        for (column, rule, _), flag, value in zip(rules, rest, rest[len(rules):]):
            if flag:
                found.append({"table": table, "row_key": row_key, "row": key, "column": column,
                              "value": value, "rule": rule})
    return found
