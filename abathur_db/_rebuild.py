"""Table rebuilds that keep what the user added to the tables the package owns.

SQLite cannot add a constraint to a table in place, so a schema file rebuilds the
table as SQLite's documentation describes: ``ALTER TABLE t RENAME TO old``,
``CREATE TABLE t (...)``, ``INSERT INTO t (...) SELECT ... FROM old``, ``DROP
TABLE old``. Everything else in the database is the user's, and `plan()` turns a
file into the script that keeps it:

- the user's indexes and triggers on t are dropped first and created again last;
- a column of the old table that the new one lacks is added to t right after its
  CREATE TABLE, and its values are copied just before DROP TABLE old;
- a NULL where the new table has NOT NULL and a default becomes that default;
- AUTOINCREMENT, and the highest id it handed out, are kept;
- views, and the triggers and foreign keys of other tables, keep naming t: the
  runner renames with ``PRAGMA legacy_alter_table=ON`` and foreign keys off, which
  leaves every reference to a renamed table as it was written.

What cannot be carried over is found before anything changes. A file that
rebuilds a table drops its own indexes and triggers of it before the rename, and
removes a column it owns with ALTER TABLE DROP COLUMN: whatever else is there at
the rename is the user's.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from . import _ddl

__all__ = ["Plan", "plan", "preflight"]

_quote = _ddl.quote
_KEPT_ROWS_SHOWN = 5

# One statement of a script and its parameters.
Step = tuple[str, dict[str, Any] | tuple[Any, ...]]
# What a statement does to the schema (see _effect): a tuple whose first item says what.
Effect = tuple[Any, ...]


@dataclass
class _Table:
    """One owned table the file rebuilds, and what of the user's it carries over."""

    name: str  # as the file's CREATE TABLE spells it
    old: str  # the name the file renames it to
    create: int  # index of the file's CREATE TABLE statement
    create_sql: str  # that statement, with AUTOINCREMENT added when the old table had it
    rows: int = 0
    extra: list[tuple[str, str]] = field(default_factory=list)  # (column, definition)
    copied: list[str] = field(default_factory=list)  # extra columns whose values are copied
    key: list[str] = field(default_factory=list)  # matches old rows to new ones
    defaults: dict[str, str] = field(default_factory=dict)  # column -> default SQL for its NULLs
    nulls: dict[str, int] = field(default_factory=dict)  # column -> NULLs that become the default
    autoincrement: bool = False
    objects: list[tuple[str, str, str]] = field(default_factory=list)  # the user's (type, name, sql)


@dataclass
class Plan:
    """What applying one schema file will do: the statements to run in order, and what they keep."""

    script: list[Step]
    tables: list[_Table]
    problems: list[str]

    def summary(self) -> str:
        """Return one line on the tables rebuilt, their rows, and what of the user's they keep."""
        described = []
        for table in self.tables:
            kept = [f"column {c}" for c, _ in table.extra] + [f"{kind} {name}" for kind, name, _ in table.objects]
            kept += ["AUTOINCREMENT"] * table.autoincrement
            notes = [f"{table.rows} rows"] + ([f"keeps {', '.join(kept)}"] if kept else [])
            notes += [f"{n} NULL {c} set to its default" for c, n in table.nulls.items()]
            described.append(f"{table.name} ({'; '.join(notes)})")
        return "rebuilds " + ", ".join(described)


def preflight(conn: sqlite3.Connection, files: list[list[str]]) -> tuple[list[str], list[set[str]]]:
    """Check the pending `files` (each a list of statements, in order) before any of them runs.

    Returns what stops them from keeping the user's objects, and for each file the
    tables that the pending files before it create: those are the package's own,
    and `plan()` skips them. Every file is checked against the database as it is
    now; nothing changes.
    """
    effects = [[_effect(statement) for statement in statements] for statements in files]
    problems = _name_clashes(conn, [effect for file in effects for effect in file])
    existing = {name.lower() for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    owned: list[set[str]] = [set()]
    for statements, file_effects in zip(files, effects):
        problems += plan(conn, statements, owned[-1]).problems
        owned.append(owned[-1] | {e[2].lower() for e in file_effects if e[:2] == ("create", "table")
                                  and not (e[3] and e[2].lower() in existing)})
    return problems, owned[:-1]


def plan(conn: sqlite3.Connection, statements: list[str], owned: AbstractSet[str] = frozenset()) -> Plan:
    """Return the script that runs `statements` keeping the user's objects, and what stops it.

    Tables in `owned` (lower-case names) are taken to hold nothing of the user's.
    Reads the database and runs the new tables' CREATE TABLE in a scratch
    in-memory database; changes nothing.
    """
    effects = [_effect(statement) for statement in statements]
    tables = _rebuilt_tables(statements, effects)
    problems: list[str] = []
    inventoried = [table for table in tables if table.name.lower() not in owned]
    if inventoried:
        scratch = sqlite3.connect(":memory:")
        try:
            for table in inventoried:
                _inventory(conn, scratch, table, statements, effects, problems)
        finally:
            scratch.close()
    return Plan(_script(statements, effects, tables), tables, problems)


@functools.lru_cache(maxsize=1024)  # the same files are read at every open
def _effect(statement: str) -> Effect:
    """Return what a statement does to the schema: ("rename", t, new), ("create", kind, name, if_not_exists), ..."""
    w = _ddl.words(statement, 12) + [""] * 12
    up = [word.upper() for word in w]
    if up[:2] == ["ALTER", "TABLE"] and up[3:5] == ["RENAME", "TO"]:
        return ("rename", w[2], w[5])
    if up[:2] == ["ALTER", "TABLE"] and up[3] == "DROP":
        return ("drop column", w[2], w[5] if up[4] == "COLUMN" else w[4])
    if up[:2] == ["ALTER", "TABLE"] and up[3] == "ADD":
        return ("add column", w[2], w[5] if up[4] == "COLUMN" else w[4])
    if up[0] == "CREATE":
        i = 1 + (up[1] in ("TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL"))
        if_not_exists = up[i + 1:i + 4] == ["IF", "NOT", "EXISTS"]
        return ("create", up[i].lower(), w[i + 1 + 3 * if_not_exists], if_not_exists)
    if up[0] == "DROP":
        return ("drop", up[1].lower(), w[4] if up[2:4] == ["IF", "EXISTS"] else w[2])
    if up[:2] == ["INSERT", "INTO"]:
        return ("insert", w[2])
    if up[0] == "PRAGMA" and w[1].lower() == "ignore_check_constraints":
        return ("ignore checks", up[3] in ("ON", "1", "TRUE", "YES"))
    return ("other",)


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _rebuilt_tables(statements: list[str], effects: list[Effect]) -> list[_Table]:
    tables = []
    for i, effect in enumerate(effects):
        if effect[0] != "rename":
            continue
        create = next((j for j in range(i + 1, len(effects))
                       if effects[j][:2] == ("create", "table") and _same(effects[j][2], effect[1])), None)
        if create is not None:
            tables.append(_Table(effects[create][2], effect[2], create, statements[create]))
    return tables


def _name_clashes(conn: sqlite3.Connection, effects: list[Effect]) -> list[str]:
    """Name each existing object that has the name of one the files create, and each column one adds.

    An index or trigger stays until a file drops it by name: the user's are put
    back under their own names once their table is rebuilt, as are their columns.
    """
    present = {name.lower(): kind for kind, name in conn.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'")}
    problems = []
    for effect in effects:
        verb = effect[0]
        if verb == "rename":
            if effect[2].lower() in present:
                problems.append(f"{present[effect[2].lower()]} {effect[2]} exists already; "
                                f"the upgrade renames {effect[1]} to that name")
            present.pop(effect[1].lower(), None)
            present[effect[2].lower()] = "table"
        elif verb == "create" and effect[2].lower() in present:
            if not effect[3]:  # IF NOT EXISTS
                problems.append(f"{present[effect[2].lower()]} {effect[2]} exists already; "
                                f"the upgrade creates a {effect[1]} of that name")
        elif verb == "create":
            present[effect[2].lower()] = effect[1]
        elif verb == "drop":
            present.pop(effect[2].lower(), None)
        elif verb == "add column" and effect[2].lower() in _columns(conn, effect[1]):
            problems.append(f"{effect[1]}.{effect[2]}: the upgrade adds a column of this name")
    return problems


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """Return the lower-case names of the live `table`'s columns (none when there is no such table)."""
    return {row[1].lower() for row in conn.execute(f"PRAGMA table_xinfo({_quote(table)})")}


def _inventory(conn: sqlite3.Connection, scratch: sqlite3.Connection, table: _Table, statements: list[str],
               effects: list[Effect], problems: list[str]) -> None:
    """Fill in what `table` carries over, from the live table and a scratch copy of the new one."""
    live_sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
                            (table.name,)).fetchone()
    if live_sql is None:
        return  # the file's own earlier statements create it: nothing of the user's to keep
    live_sql = live_sql[0]
    # Table and column names below come from SQLite's own schema, quoted.
    old_columns = conn.execute(f"PRAGMA table_xinfo({_quote(table.name)})").fetchall()
    parts = {part.column.lower(): part for part in _ddl.parts(live_sql) if part.column}
    table.autoincrement = any(t.text.upper() == "AUTOINCREMENT" for p in parts.values() for t in p.tokens)
    new_columns = _scratch_table(scratch, table, problems)
    dropped = {e[2].lower() for e in effects[:table.create] if e[0] == "drop column" and _same(e[1], table.name)}
    for _, column, _, notnull, default, pk, hidden in old_columns:
        if column.lower() in new_columns or column.lower() in dropped:
            continue
        if column.lower() not in parts:  # pragma: no cover - SQLite keeps every column's text
            problems.append(f"{table.name}.{column}: its definition cannot be read from {live_sql!r}")
            continue
        definition = parts[column.lower()].text
        table.extra.append((column, definition))
        if hidden == 0:
            table.copied.append(column)
        if notnull and hidden == 0 and (default is None or default.upper() == "NULL"):
            problems.append(f"{table.name}.{column}: a NOT NULL column without a default cannot be carried over")
            continue
        try:
            scratch.execute(f"ALTER TABLE {_quote(table.name)} ADD COLUMN {definition}")
        except sqlite3.Error as exc:
            problems.append(f"{table.name}.{column}: cannot be carried over with ALTER TABLE ADD COLUMN ({exc})")
    for part in _ddl.parts(live_sql):
        named = {_ddl.name(t).lower() for t in part.tokens}
        for column, _ in table.extra:
            if part.column is None and column.lower() in named:
                problems.append(f"{table.name}: the table constraint {part.text!r} on column {column} "
                                "cannot be carried over")
    table.key = [column for *_, column in sorted((pk, c) for _, c, _, _, _, pk, _ in old_columns if pk)]
    if table.copied and not table.key:
        problems.append(f"{table.name}: has no primary key to match rows by, so column(s) "
                        f"{', '.join(table.copied)} cannot be carried over")
    _check_copy(table, statements, effects, old_columns, new_columns, problems)
    _nulls(conn, table, old_columns, new_columns, problems)
    table.objects = [(kind, name, sql) for kind, name, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL"
        " AND tbl_name = ? COLLATE NOCASE ORDER BY rowid", (table.name,))
        if not any(e[0] == "drop" and _same(e[2], name) for e in effects)]


def _scratch_table(scratch: sqlite3.Connection, table: _Table, problems: list[str]) -> dict[str, tuple[Any, ...]]:
    """Create the new table in `scratch` (with AUTOINCREMENT if the old one had it); return its columns."""
    scratch.execute(table.create_sql)
    columns = {row[1].lower(): row for row in scratch.execute(f"PRAGMA table_xinfo({_quote(table.name)})")}
    if table.autoincrement:
        keys = [row for row in columns.values() if row[5]]
        rewritten = _with_autoincrement(table.create_sql, keys[0][1]) if (
            len(keys) == 1 and keys[0][2].upper() == "INTEGER") else None
        if rewritten is None:
            problems.append(f"{table.name}: AUTOINCREMENT cannot be kept: the new table has no INTEGER PRIMARY KEY")
            table.autoincrement = False
        else:
            table.create_sql = rewritten
            scratch.execute(f"DROP TABLE {_quote(table.name)}")
            scratch.execute(rewritten)
    return columns


def _with_autoincrement(create_sql: str, column: str) -> str | None:
    """Return `create_sql` with AUTOINCREMENT after `column`'s PRIMARY KEY, or None if it has none."""
    for part in _ddl.parts(create_sql):
        if part.column is None or not _same(part.column, column):
            continue
        upper = [t.text.upper() for t in part.tokens] + ["", "", ""]
        for i in range(len(part.tokens) - 1):
            if upper[i:i + 2] == ["PRIMARY", "KEY"]:
                end = i + 2 + (upper[i + 2] in ("ASC", "DESC"))
                end += 3 if upper[end] == "ON" else 0  # ON CONFLICT <resolution>
                at = part.tokens[end - 1].end
                return create_sql[:at] + " AUTOINCREMENT" + create_sql[at:]
    return None


def _check_copy(table: _Table, statements: list[str], effects: list[Effect], old_columns: list[tuple[Any, ...]],
                new_columns: dict[str, tuple[Any, ...]], problems: list[str]) -> None:
    """Refuse a user's column that the file's copy cannot carry: one the new table defines too, but the
    copy leaves out; any, when the copy (``INSERT INTO t (...) SELECT ... FROM old``) names no columns."""
    for i, effect in enumerate(effects):
        if effect[0] != "insert" or not _same(effect[1], table.name):
            continue
        mentioned = [_ddl.name(t).lower() for t in _ddl.tokens(statements[i])]
        if table.old.lower() not in mentioned:
            continue
        if mentioned[3:4] != ["("]:
            if table.extra:
                problems.append(f"{table.name}: the upgrade copies its rows without naming their columns, "
                                f"so column(s) {', '.join(c for c, _ in table.extra)} cannot be carried over")
            continue
        filled = set(mentioned[mentioned.index("(") + 1:mentioned.index(")")])
        for _, column, *_ in old_columns:
            if column.lower() in new_columns and column.lower() not in filled:
                problems.append(f"{table.name}.{column}: the upgrade defines a column of this name "
                                "and would not keep its values")


def _nulls(conn: sqlite3.Connection, table: _Table, old_columns: list[tuple[Any, ...]],
           new_columns: dict[str, tuple[Any, ...]], problems: list[str]) -> None:
    """Count the rows, and the NULLs that the new table's NOT NULL columns turn away."""
    nullable = [(c, new_columns[c.lower()][4]) for _, c, _, notnull, _, _, hidden in old_columns
                if not notnull and not hidden and c.lower() in new_columns and new_columns[c.lower()][3]]
    counts = conn.execute(
        "SELECT count(*)" + "".join(f", sum({_quote(c)} IS NULL)" for c, _ in nullable)
        + f" FROM {_quote(table.name)}").fetchone()
    table.rows = counts[0]
    for (column, default), count in zip(nullable, counts[1:]):
        if not count:
            continue
        if default is not None:
            table.defaults[column] = default
            table.nulls[column] = count
            continue
        key = ", ".join(map(_quote, table.key)) or "rowid"
        shown = [row if len(row) > 1 else row[0] for row in conn.execute(
            f"SELECT {key} FROM {_quote(table.name)} WHERE {_quote(column)} IS NULL LIMIT {_KEPT_ROWS_SHOWN}")]
        problems.append(f"{table.name}.{column}: {count} row(s) hold NULL, which the new schema refuses and has "
                        f"no default for (rows {', '.join(map(repr, shown))}{', …' if count > len(shown) else ''})")


def _script(statements: list[str], effects: list[Effect], tables: list[_Table]) -> list[Step]:
    script: list[Step] = [(f"DROP {kind.upper()} {_quote(name)}", {}) for t in tables for kind, name, _ in t.objects]
    ignoring_checks = False
    for i, statement in enumerate(statements):
        effect = effects[i]
        for table in tables:
            if effect[:2] == ("drop", "table") and _same(effect[2], table.old):
                script += _copy_extra(table, ignoring_checks) + _keep_sequence(table)
        creating = next((t for t in tables if t.create == i), None)
        script.append((creating.create_sql if creating else statement, {}))
        if creating:
            script += [(f"ALTER TABLE {_quote(creating.name)} ADD COLUMN {definition}", {})
                       for _, definition in creating.extra]
            script += _set_defaults(creating)
        if effect[0] == "ignore checks":
            ignoring_checks = effect[1]
    script += [(sql, {}) for t in tables for _, _, sql in t.objects]
    return script


def _set_defaults(table: _Table) -> list[Step]:
    """Give the old rows' NULLs the new column defaults, before the file copies them."""
    if not table.defaults:
        return []
    # Each default is the text of the new table's own DEFAULT clause, from the schema file.
    assignments = ", ".join(f"{_quote(c)} = coalesce({_quote(c)}, ({d}))" for c, d in table.defaults.items())
    where = " OR ".join(f"{_quote(c)} IS NULL" for c in table.defaults)
    return [(f"UPDATE {_quote(table.old)} SET {assignments} WHERE {where}", {})]


def _copy_extra(table: _Table, ignoring_checks: bool) -> list[Step]:
    if not table.copied:
        return []
    new, old = _quote(table.name), _quote("_old_row")
    assignments = ", ".join(f"{_quote(c)} = {old}.{_quote(c)}" for c in table.copied)
    match = " AND ".join(f"{old}.{_quote(k)} = {new}.{_quote(k)}" for k in table.key)
    copy: list[Step] = [(f"UPDATE {new} SET {assignments} FROM {_quote(table.old)} AS {old} WHERE {match}", {})]
    if ignoring_checks:
        return copy
    # Kept values are kept as they were, like the file's own copy: verify reports rule breakers.
    return [("PRAGMA ignore_check_constraints = ON", {}), *copy, ("PRAGMA ignore_check_constraints = OFF", {})]


def _keep_sequence(table: _Table) -> list[Step]:
    """Carry the highest id AUTOINCREMENT handed out, deleted rows' ids included, to the new table."""
    if not table.autoincrement:
        return []
    names = {"table": table.name, "old": table.old}
    return [
        ("UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT max(seq) FROM sqlite_sequence"
         " WHERE name = :old), 0)) WHERE name = :table", names),
        ("INSERT INTO sqlite_sequence (name, seq) SELECT :table, seq FROM sqlite_sequence WHERE name = :old"
         " AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = :table)", names),
    ]
