"""Check an abathur_db database from the command line; write to it only when asked.

Usage::

    python -m abathur_db.verify [PATH] [--create] [--upgrade] [--repair] [--check-only] [--json]

PATH defaults to the ``ABATHUR_DB`` environment variable, else ``abathur.db`` in the
current directory. By default the file is opened read-only and nothing is written:
a missing file, a database that needs an upgrade and a missing index are failures,
each saying what to do next. ``--create`` creates a missing file (or the schema in
a database holding no tables), ``--upgrade`` applies pending schema files (after a
backup copy), ``--repair`` recreates missing indexes of the schema; each then checks.

Exit status: 0 when every check passes, 1 when one fails or the file cannot be used
(one line on stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from typing import Any, Callable

import abathur_db
from abathur_db import _ddl, schema
from abathur_db.catalog import CATALOG
from abathur_db.errors import (
    AbathurDBError,
    BusyError,
    DatabaseFileError,
    SchemaError,
    StorageFullError,
    short_repr,
    translate,
)
from abathur_db.maintenance import integrity_check, structural_problems
from abathur_db.pool import PRAGMAS, connect
from abathur_db.transaction import transaction
from abathur_db.validation import check_catalog, rule_violations, validate_foreign_keys

__all__ = ["CORE_INDEXES", "EXPECTED_TABLES", "gather", "main", "render_text"]

EXPECTED_TABLES = (
    "schema_migrations", "sessions", "memory_entries", "tasks", "task_dependencies",
    "agents", "audit", "checkpoints", "state", "metrics",
)
CORE_INDEXES = (  # SPEC §3: the names are part of the contract
    "idx_tasks_status_priority", "idx_tasks_session_id", "idx_tasks_submitted_at",
    "idx_tasks_parent_task_id", "idx_agents_task_id", "idx_agents_session_id",
    "idx_agents_spawned_at", "idx_audit_task_id", "idx_audit_timestamp",
    "idx_audit_memory_operation", "idx_audit_memory_entry_id",
    "idx_checkpoints_task_id_iteration", "idx_checkpoints_session_id",
    "idx_checkpoints_created_at", "idx_metrics_timestamp",
)
CHECKS = ("schema", "pragmas", "tables", "core_indexes", "integrity_check", "foreign_key_check", "query_plans")
_SHOWN_VIOLATIONS = 20  # the text report lists this many; --json lists every one
_NEXT = "; next: "

_DESCRIPTION = """\
Check an abathur_db database: schema, PRAGMAs, tables, indexes, integrity,
foreign keys and the query plan of every catalog query.

What it writes: nothing, unless asked. By default the file is opened read-only;
a missing file, a database that needs an upgrade or a missing index is a failure
that says which option fixes it. (Reading a WAL database may create its -wal and
-shm files; nothing is written into the database.)"""
_EPILOG = """\
exit status:
  0  every check passed
  1  a check failed, or the file cannot be used (one line on stderr); each
     failure ends with the next step
  2  usage error"""

# What to do after an error that stops verify before its report, by the error's class.
_ERROR_STEPS = (
    (BusyError, "another connection holds the write lock: run again once it is done"),
    (StorageFullError, "free some disk space and run again; the database was not changed"),
    (SchemaError, "nothing was changed; the message says what stands in the way"),
    (DatabaseFileError, "check the path; a damaged file: restore its newest backup (<db>.v<version>-<time>.bak)"
                        " or salvage its rows with the sqlite3 shell's .recover"),
    (AbathurDBError, "see docs/verify.md"),
    (OSError, "check the path and its permissions"),
)


def main(argv: list[str] | None = None) -> int:
    """Run the checks (and the writes asked for), print the report and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m abathur_db.verify", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="database file (default: $ABATHUR_DB, else ./abathur.db)")
    parser.add_argument("--create", action="store_true",
                        help="create PATH when it does not exist (or the schema in a database holding no tables)")
    parser.add_argument("--upgrade", action="store_true",
                        help="apply pending schema files to an older database, after writing a backup copy")
    parser.add_argument("--repair", action="store_true",
                        help="recreate the indexes of the schema that are missing, and say which")
    parser.add_argument("--check-only", action="store_true",
                        help="the default, kept for scripts that pass it: read-only, writes nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = parser.parse_args(argv)
    if args.check_only and (args.create or args.upgrade or args.repair):
        parser.error("--check-only writes nothing: it cannot be combined with --create, --upgrade or --repair")
    path = args.path or os.environ.get("ABATHUR_DB") or "abathur.db"
    try:
        report = gather(path, create=args.create, upgrade=args.upgrade, repair=args.repair)
    except (AbathurDBError, sqlite3.Error, OSError) as exc:
        if isinstance(exc, sqlite3.Error):  # e.g. "file is not a database" from the first read
            exc = translate(exc)
        message = " ".join(str(exc).split())
        if not message.startswith(path):
            message = f"{path}: {message}"
        step = next(step for kind, step in _ERROR_STEPS if isinstance(exc, kind))
        if _NEXT not in message:
            message += _NEXT + step
        if args.json:
            print(json.dumps({"path": path, "ok": False, "error": message}))
        print(f"verify: {message}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0 if report["ok"] else 1


def gather(path: str, *, create: bool = False, upgrade: bool = False, repair: bool = False) -> dict[str, Any]:
    """Check the database at `path` and return the report as plain data; write only what the flags allow.

    `create` creates a missing file (or the schema in a database holding no tables),
    `upgrade` applies pending schema files (after a backup), `repair` recreates
    missing indexes of the schema. Without them nothing is written.

    :raises DatabaseFileError: the file is missing (without `create`), a directory, or not SQLite.
    :raises AbathurDBError: the file cannot be created, upgraded or repaired, or a check cannot run.
    """
    if os.path.isdir(path):
        raise DatabaseFileError(f"{path}: is a directory, not a database file{_NEXT}give the database file's path")
    if not os.path.exists(path) and not create:
        raise DatabaseFileError(f"{path}: no such file (verify creates one only with --create){_NEXT}"
                                "check the path, or run with --create to create a new database there")
    files = schema.load_files()
    done: dict[str, Any] = {"created": None, "upgraded": None, "repaired": None}
    if not os.path.exists(path) or _wanted_open(path, files, create, upgrade):
        with abathur_db.open(path) as pool:
            # open() backs up a database that has tables before changing it: that is an upgrade.
            if pool.backup_path:
                done["upgraded"] = {"applied": pool.applied, "backup_path": pool.backup_path}
            else:
                done["created"] = {"applied": pool.applied}
    conn = connect(path, readonly=True)
    try:
        checks = {"schema": _checked(path, "schema", _schema, conn, files)}
        if checks["schema"]["ok"] and repair:
            done["repaired"] = _repair(path, files, conn)
        if checks["schema"]["ok"]:
            checks.update(_run_checks(conn, path, files))
    finally:
        conn.close()
    wal = path + "-wal"
    return {
        "path": path,
        "ok": all(check["ok"] for check in checks.values()),
        "writes_allowed": [name for name, allowed in (("create", create), ("upgrade", upgrade), ("repair", repair))
                           if allowed],
        "versions": {"sqlite": sqlite3.sqlite_version, "abathur_db": abathur_db.__version__},
        **done,
        "checks": checks,
        "skipped": [name for name in CHECKS if name not in checks],
        "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0,
    }


def _wanted_open(path: str, files: list[schema.SchemaFile], create: bool, upgrade: bool) -> bool:
    """Tell whether the flags ask for the pending files of the existing file at `path` to be applied."""
    if not (create or upgrade):
        return False
    conn = connect(path, readonly=True)
    try:
        current = schema.status(conn, files)
        tables = _user_tables(conn)
    finally:
        conn.close()
    if not current.pending or current.problems or _foreign(tables, current):
        return False  # nothing to do, or the schema check says what stands in the way
    return upgrade if tables else create


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    return sorted(name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"))


def _index_names(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def _foreign(tables: list[str], current: schema.SchemaStatus) -> bool:
    """Tell whether a database with these tables and this ledger is another application's (see schema.migrate)."""
    return bool(tables) and not current.applied and "tasks" not in tables


def _repair(path: str, files: list[schema.SchemaFile], reader: sqlite3.Connection) -> dict[str, Any]:
    """Recreate each index of the schema missing from the database; return their names and statements."""
    present = _index_names(reader)
    missing = {name: sql for name, sql in schema.indexes(files).items() if name not in present}
    if missing:
        writer = connect(path)
        try:
            with transaction(writer):
                for sql in missing.values():
                    writer.execute(sql)
        except sqlite3.Error as exc:
            raise AbathurDBError(f"{path}: --repair could not recreate the missing indexes: {exc}") from exc
        finally:
            writer.close()
    return {"created": list(missing), "sql": list(missing.values())}


def _run_checks(conn: sqlite3.Connection, path: str, files: list[schema.SchemaFile]) -> dict[str, Any]:
    return {name: _checked(path, name, check, conn, files)
            for name, check in (("pragmas", _pragmas), ("tables", _tables), ("core_indexes", _indexes),
                                ("integrity_check", _integrity), ("foreign_key_check", _foreign_keys),
                                ("query_plans", _query_plans))}


def _checked(path: str, name: str, check: Callable[[sqlite3.Connection, list[schema.SchemaFile]], dict[str, Any]],
             conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    try:
        return check(conn, files)
    except (AbathurDBError, sqlite3.Error) as exc:
        # A corrupt page usually makes the check itself fail: say which one.
        raise DatabaseFileError(f"{path}: {name} could not run: {exc}") from exc


def _result(ok: bool, summary: str, next_step: str | None, **data: Any) -> dict[str, Any]:
    return {"ok": ok, "summary": summary, "next_step": None if ok else next_step, **data}


def _schema(conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    status = schema.status(conn, files)
    by_version = {file.version: file for file in files}
    ledger = []
    for version, (name, sha256, applied_at) in sorted(status.applied.items()):
        file = by_version.get(version)
        state = "missing file" if file is None else "match" if file.matches(sha256) else "changed"
        ledger.append({"version": version, "name": name, "sha256": sha256, "applied_at": applied_at, "file": state})
    latest = max(by_version, default=0)
    pending = [file.name for file in status.pending]
    tables = _user_tables(conn)
    summary = f"version {status.user_version} of {latest}"
    if status.problems:
        summary = "; ".join(status.problems)
        step = ("restore each changed file as it was applied (an applied file is never edited: add a new one)"
                if status.changed else "use the abathur_db release that wrote this database, or a newer one")
    elif _foreign(tables, status):
        ledger_state = "an empty schema ledger" if "schema_migrations" in tables else "no schema ledger"
        summary = f"not an Abathur database: {ledger_state} and no tasks table (it holds {', '.join(tables)})"
        step = "check the path"
    elif pending and not tables:
        summary = "an empty database: it holds no tables"
        step = "run with --create to create the schema in it"
    elif pending:
        summary += (" (a database of an earlier Abathur release)" if not status.applied else "") + (
            f"; {len(pending)} file(s) pending: {', '.join(pending)}")
        step = "run with --upgrade (it writes a backup copy first)"
    elif status.user_version != latest:
        summary += f"; user_version {status.user_version} disagrees with the ledger"
        step = "restore the newest backup"
    else:
        summary += f"; {len(status.applied)} of {len(files)} files applied, none pending"
        step = None
    return _result(step is None, summary, step, user_version=status.user_version, latest_version=latest,
                   ledger=ledger, pending=pending)


def _pragmas(conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    # Names come from the fixed PRAGMAS table: PRAGMA takes no bound parameters.
    found = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name, _ in PRAGMAS}
    wrong = [name for name, wanted in PRAGMAS if found[name] != wanted]
    summary = " ".join(f"{name}={value}" for name, value in found.items())
    if wrong:
        summary += "; expected " + " ".join(f"{name}={wanted}" for name, wanted in PRAGMAS if name in wrong)
    step = ("open the database once with abathur_db.open(), which switches it to WAL" if wrong == ["journal_mode"]
            else "this SQLite does not keep these settings: report it with this output")
    return _result(not wrong, summary, step, found=found, expected=dict(PRAGMAS), wrong=wrong)


def _tables(conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    found = _user_tables(conn)
    missing = [name for name in EXPECTED_TABLES if name not in found]
    extra = [name for name in found if name not in EXPECTED_TABLES]
    summary = f"{len(EXPECTED_TABLES) - len(missing)} of {len(EXPECTED_TABLES)} present"
    if missing:
        summary += "; missing " + ", ".join(missing)
    if extra:
        summary += "; also found " + ", ".join(extra)
    return _result(not missing, summary, "restore the newest backup: a table of the schema was dropped",
                   expected=list(EXPECTED_TABLES), found=found, missing=missing, extra=extra)


def _indexes(conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    present = _index_names(conn)
    expected = list(schema.indexes(files))
    missing = [name for name in expected if name not in present]
    core_missing = [name for name in CORE_INDEXES if name not in present]
    summary = (f"{len(CORE_INDEXES) - len(core_missing)} of {len(CORE_INDEXES)} core present, "
               f"{len(expected) - len(missing)} of {len(expected)} of the schema")
    if missing:
        summary += "; missing " + ", ".join(missing)
    return _result(not missing, summary, "run with --repair", missing=missing)


def _integrity(conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    problems = integrity_check(conn)
    # integrity_check counts rule breakers per table only, and a read-only
    # connection skips CHECK constraints: list the rows themselves.
    rows = [{**row, "value": _plain(row["value"])} for row in rule_violations(conn)]
    found = ([f"{len(problems)} problem(s)"] if problems else []) + (
        [f"{len(rows)} value(s) break a CHECK or NOT NULL rule"] if rows else [])
    if structural_problems(problems):
        step = "restore the newest backup, or salvage the rows with the sqlite3 shell's .recover"
    else:
        step = "fix or delete the rows listed below (an upgrade keeps such legacy values as they were)"
    return _result(not found, "; ".join(found) or "ok", step, problems=problems, rule_violations=rows)


def _plain(value: object) -> object:
    """Return `value` as JSON can hold it: numbers and short text as they are, the rest shortened."""
    if value is None or isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 200):
        return value
    return short_repr(value, 200)


def _foreign_keys(conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    violations = []
    keys: dict[str, tuple[str, dict[int, list[tuple[str, str | None]]]]] = {}  # table -> row key, fkid -> links
    for table, rowid, parent, fkid in validate_foreign_keys(conn):
        if table not in keys:
            keys[table] = _row_key(conn, table), {}
            # The table name comes from SQLite's own report, never from the caller.
            for row in conn.execute(f"PRAGMA foreign_key_list({_ddl.quote(table)})").fetchall():
                keys[table][1].setdefault(row[0], []).append((row[3], row[4]))
        row_key, links = keys[table]
        columns = [column for column, _ in links.get(fkid, [])]
        parent_columns = [to or _row_key(conn, parent) for _, to in links.get(fkid, [])]
        row, values = rowid, []
        if rowid is not None and columns:
            # Names come from SQLite's own schema; the rowid is SQLite's own report.
            found = conn.execute(f"SELECT {_ddl.quote(row_key) if row_key != 'rowid' else 'rowid'}, "
                                 f"{', '.join(map(_ddl.quote, columns))} FROM {_ddl.quote(table)} WHERE rowid = ?",
                                 (rowid,)).fetchone()
            row, values = found[0], [_plain(value) for value in found[1:]]
        violations.append({"table": table, "rowid": rowid, "row_key": row_key, "row": row, "parent": parent,
                           "fkid": fkid, "columns": columns, "values": values, "parent_columns": parent_columns})
    summary = "no violations" if not violations else f"{len(violations)} violation(s)"
    return _result(not violations, summary, "point each row listed below at an existing row, set the column to "
                   "NULL where it may be, or delete the row", violations=violations)


def _row_key(conn: sqlite3.Connection, table: str) -> str:
    """Return the column naming a row of `table`: its one-column primary key, else ``rowid``."""
    keys = [row[1] for row in conn.execute(f"PRAGMA table_info({_ddl.quote(table)})") if row[5]]
    return keys[0] if len(keys) == 1 else "rowid"


def _query_plans(conn: sqlite3.Connection, files: list[schema.SchemaFile]) -> dict[str, Any]:
    results: list[dict[str, Any]] = [{"id": c.id, "ok": c.ok, "plan": c.plan, "problems": c.problems}
                                     for c in check_catalog(conn)]
    failed = [result["id"] for result in results if not result["ok"]]
    summary = f"{len(results) - len(failed)} of {len(results)} use their index"
    if failed:
        summary += "; failing: " + ", ".join(failed)
    present = _index_names(conn)
    missing = any(name not in present for query in CATALOG if query.id in failed for name in query.indexes)
    step = ("run with --repair" if missing else "a plan changed without a missing index (an index of yours, or "
            "ANALYZE statistics?): see the plans below and docs/verify.md")
    return _result(not failed, summary, step, failed=failed, queries=results)


def render_text(report: dict[str, Any]) -> str:
    """Return `report` as the human-readable table that verify prints."""
    versions = report["versions"]
    lines = [f"abathur_db verify: {report['path']}",
             f"  abathur_db {versions['abathur_db']}, SQLite {versions['sqlite']}",
             *(f"  {line}" for line in _write_lines(report)), ""]
    width = max(map(len, CHECKS)) + 2
    lines.append(f"{'CHECK'.ljust(width)}RESULT  DETAIL")
    for name, check in report["checks"].items():
        summary = check["summary"] + (_NEXT + check["next_step"] if not check["ok"] else "")
        lines.append(f"{name.ljust(width)}{'PASS' if check['ok'] else 'FAIL':<8}{summary}")
        lines.extend("    " + detail for detail in _detail_lines(name, check))
    if report["skipped"]:
        lines.append(f"{'(others)'.ljust(width)}{'-':<8}not run until the schema is current: "
                     + ", ".join(report["skipped"]))
    lines.append(f"{'wal_file'.ljust(width)}{'-':<8}{report['wal_bytes']} bytes")
    failed = [name for name, check in report["checks"].items() if not check["ok"]]
    lines += ["", "result: PASS, every check passed" if not failed else
              f"result: FAIL: {', '.join(failed)} (each FAIL line says what to do next)"]
    return "\n".join(lines)


def _write_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    if report["created"]:
        lines.append("created: applied " + ", ".join(report["created"]["applied"]))
    if report["upgraded"]:
        upgraded = report["upgraded"]
        lines.append(f"upgraded: applied {', '.join(upgraded['applied'])}; backup written to {upgraded['backup_path']}")
    if report["repaired"] is not None:
        created = report["repaired"]["created"]
        lines.append("repaired: recreated " + ", ".join(created) if created else
                     "repaired: nothing to do, no index of the schema was missing")
    if not report["writes_allowed"]:
        lines.append("opened read-only: nothing was written (--create, --upgrade and --repair write)")
    elif not lines:
        why = "" if report["checks"]["schema"]["ok"] else ", the schema check below says why"
        lines.append(f"--{', --'.join(report['writes_allowed'])}: nothing written{why}")
    return lines


def _detail_lines(name: str, check: dict[str, Any]) -> list[str]:
    if name == "schema":
        return [f"{row['name']:<40} sha256 {row['sha256'][:12]}  {row['file']}" for row in check["ledger"]]
    if name == "integrity_check":
        problems: list[str] = check["problems"]
        rows = check["rule_violations"]
        return problems[:_SHOWN_VIOLATIONS] + _hidden(len(problems)) + [
            f"{v['table']} {v['row_key']} {v['row']!r}: {v['column']} = {short_repr(v['value'])} breaks {v['rule']}"
            for v in rows[:_SHOWN_VIOLATIONS]] + _hidden(len(rows))
    if name == "foreign_key_check":
        return [_dangling(v) for v in check["violations"][:_SHOWN_VIOLATIONS]] + _hidden(len(check["violations"]))
    if name == "query_plans":
        return [f"{q['id']:<3} {'PASS' if q['ok'] else 'FAIL'}  "
                + ("; ".join(q["plan"]) if q["ok"] else "; ".join(q["problems"]))
                for q in check["queries"]]
    return []


def _dangling(v: dict[str, Any]) -> str:
    """Return one foreign-key violation as text: the row, the column and its value, the missing parent key."""
    if not v["values"]:  # a WITHOUT ROWID table: SQLite does not say which row
        return f"{v['table']} (a row without rowid): {', '.join(v['columns'])} -> no such {v['parent']} row"
    pairs = ", ".join(f"{column} = {short_repr(value)}" for column, value in zip(v["columns"], v["values"]))
    keys = ", ".join(f"{column} {short_repr(value)}" for column, value in zip(v["parent_columns"], v["values"]))
    return f"{v['table']} {v['row_key']} {v['row']!r}: {pairs}, but {v['parent']} has no row with {keys}"


def _hidden(total: int) -> list[str]:
    hidden = total - _SHOWN_VIOLATIONS
    return [f"... and {hidden} more (--json lists every one)"] if hidden > 0 else []


if __name__ == "__main__":  # pragma: no cover - run as a subprocess by the tests
    sys.exit(main())
