"""Sanity-check an abathur_db database from the command line.

Usage::

    python -m abathur_db.verify [PATH] [--json] [--check-only]

PATH defaults to the ``ABATHUR_DB`` environment variable, else ``abathur.db`` in
the current directory. Without ``--check-only`` the database is first created or
upgraded, exactly as ``abathur_db.open(PATH)`` does (a backup copy is written
before an existing database is changed), then checked. With ``--check-only`` the
file is opened read-only and nothing is written: a database that needs an upgrade
is reported as a failed check.

The report (a table, or one JSON document with ``--json``) covers the SQLite and
package versions, the schema ledger against the schema files, the PRAGMAs of a
pooled connection, tables, the 15 core indexes, ``integrity_check``,
``foreign_key_check``, the query plan of every catalog query and the WAL size.

Exit status: 0 when every check passes, 1 when one fails or the file cannot be
used (a one-line error on stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys

import abathur_db
from abathur_db import schema
from abathur_db.errors import AbathurDBError, DatabaseFileError, short_repr
from abathur_db.maintenance import integrity_check
from abathur_db.pool import PRAGMAS, Pool, connect
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
_SHOWN_VIOLATIONS = 20  # the text report lists this many; --json lists every one


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print the report and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m abathur_db.verify",
        description="Check an abathur_db database: schema, PRAGMAs, indexes, integrity, "
                    "foreign keys and query plans.",
    )
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help="database file (default: $ABATHUR_DB, else ./abathur.db)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--check-only", action="store_true",
                        help="open the file read-only; never create, upgrade or write it")
    args = parser.parse_args(argv)
    path = args.path or os.environ.get("ABATHUR_DB") or "abathur.db"
    try:
        report = gather(path, check_only=args.check_only)
    except (AbathurDBError, sqlite3.Error, OSError) as exc:
        message = " ".join(str(exc).split())
        if path not in message:
            message = f"{path}: {message}"
        if args.json:
            print(json.dumps({"path": path, "ok": False, "error": message}))
        print(f"verify: {message}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0 if report["ok"] else 1


def gather(path: str, *, check_only: bool = False) -> dict:
    """Open (and, unless `check_only`, create or upgrade) the database; return the report as plain data.

    :raises AbathurDBError: the file cannot be opened or upgraded, or a check cannot run.
    """
    upgrade = None
    if os.path.isdir(path):
        raise DatabaseFileError(f"{path}: is a directory, not a database file")
    if check_only:
        if not os.path.exists(path):
            raise DatabaseFileError(f"{path}: no such file (--check-only never creates one)")
        conn = connect(path, readonly=True)
        try:
            checks, wal_bytes = _run_checks(conn, path)
        finally:
            conn.close()
    else:
        with abathur_db.open(path) as pool:
            upgrade = {"applied": pool.applied, "backup_path": pool.backup_path}
        # The checks read the PRAGMAs of a fresh pooled connection, the kind the
        # application gets, not of the one that ran the upgrade.
        with Pool(path) as pool:
            checks, wal_bytes = _run_checks(pool.connection(), path)
    return {
        "path": path,
        "ok": all(check["ok"] for check in checks.values()),
        "check_only": check_only,
        "versions": {"sqlite": sqlite3.sqlite_version, "abathur_db": abathur_db.__version__},
        "upgrade": upgrade,
        "checks": checks,
        "wal_bytes": wal_bytes,
    }


def _run_checks(conn: sqlite3.Connection, path: str) -> tuple[dict, int]:
    checks = {}
    for name, check in (("schema", _schema), ("pragmas", _pragmas), ("tables", _tables),
                        ("core_indexes", _core_indexes), ("integrity_check", _integrity),
                        ("foreign_key_check", _foreign_keys), ("query_plans", _query_plans)):
        try:
            checks[name] = check(conn)
        except (AbathurDBError, sqlite3.Error) as exc:
            # A corrupt page usually makes the check itself fail: say which one.
            raise AbathurDBError(f"{path}: {name} could not run: {exc}") from exc
    wal = path + "-wal"
    return checks, os.path.getsize(wal) if os.path.exists(wal) else 0


def _schema(conn: sqlite3.Connection) -> dict:
    files = schema.load_files()
    status = schema.status(conn, files)
    by_version = {file.version: file for file in files}
    ledger = []
    for version, (name, sha256, applied_at) in sorted(status.applied.items()):
        file = by_version.get(version)
        state = "missing file" if file is None else "match" if file.matches(sha256) else "changed"
        ledger.append({"version": version, "name": name, "sha256": sha256,
                       "applied_at": applied_at, "file": state})
    latest = max(by_version, default=0)
    pending = [file.name for file in status.pending]
    ok = not pending and not status.problems and status.user_version == latest
    summary = f"version {status.user_version} of {latest}; {len(status.applied)} of {len(files)} files applied"
    summary += "; needs an upgrade, pending: " + ", ".join(pending) if pending else ", none pending"
    if status.problems:
        summary += "; " + "; ".join(status.problems)
    return {"ok": ok, "summary": summary, "user_version": status.user_version, "latest_version": latest,
            "ledger": ledger, "pending": pending}


def _pragmas(conn: sqlite3.Connection) -> dict:
    # Names come from the fixed PRAGMAS table: PRAGMA takes no bound parameters.
    found = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name, _ in PRAGMAS}
    wrong = [name for name, wanted in PRAGMAS if found[name] != wanted]
    summary = " ".join(f"{name}={value}" for name, value in found.items())
    if wrong:
        summary += "; expected " + " ".join(f"{name}={wanted}" for name, wanted in PRAGMAS if name in wrong)
    return {"ok": not wrong, "summary": summary, "found": found, "expected": dict(PRAGMAS), "wrong": wrong}


def _tables(conn: sqlite3.Connection) -> dict:
    found = sorted(name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"))
    missing = [name for name in EXPECTED_TABLES if name not in found]
    extra = [name for name in found if name not in EXPECTED_TABLES]
    summary = f"{len(EXPECTED_TABLES) - len(missing)} of {len(EXPECTED_TABLES)} present"
    if missing:
        summary += "; missing " + ", ".join(missing)
    if extra:
        summary += "; also found " + ", ".join(extra)
    return {"ok": not missing, "summary": summary, "expected": list(EXPECTED_TABLES), "found": found,
            "missing": missing, "extra": extra}


def _core_indexes(conn: sqlite3.Connection) -> dict:
    found = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = [name for name in CORE_INDEXES if name not in found]
    summary = f"{len(CORE_INDEXES) - len(missing)} of {len(CORE_INDEXES)} present"
    if missing:
        summary += "; missing " + ", ".join(missing)
    return {"ok": not missing, "summary": summary, "missing": missing}


def _integrity(conn: sqlite3.Connection) -> dict:
    problems = integrity_check(conn)
    # integrity_check counts rule breakers per table only, and a read-only
    # connection (--check-only) skips CHECK constraints: list the rows themselves.
    rows = [{**row, "value": _plain(row["value"])} for row in rule_violations(conn)]
    found = ([f"{len(problems)} problem(s)"] if problems else []) + (
        [f"{len(rows)} value(s) break a CHECK or NOT NULL rule"] if rows else [])
    return {"ok": not found, "summary": "; ".join(found) or "ok", "problems": problems, "rule_violations": rows}


def _plain(value: object) -> object:
    """Return `value` as JSON can hold it: numbers and short text as they are, the rest shortened."""
    if value is None or isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 200):
        return value
    return short_repr(value, 200)


def _foreign_keys(conn: sqlite3.Connection) -> dict:
    violations = []
    columns: dict[str, dict[int, list[str]]] = {}  # table -> fkid -> child columns
    for table, rowid, parent, fkid in validate_foreign_keys(conn):
        if table not in columns:
            columns[table] = {}
            # The table name comes from SQLite's own report, never from the caller.
            for row in conn.execute(f"PRAGMA foreign_key_list({table})").fetchall():
                columns[table].setdefault(row[0], []).append(row[3])
        violations.append({"table": table, "rowid": rowid, "parent": parent, "fkid": fkid,
                           "columns": columns[table].get(fkid, [])})
    summary = "no violations" if not violations else f"{len(violations)} violation(s)"
    return {"ok": not violations, "summary": summary, "violations": violations}


def _query_plans(conn: sqlite3.Connection) -> dict:
    results = [{"id": c.id, "ok": c.ok, "plan": c.plan, "problems": c.problems} for c in check_catalog(conn)]
    failed = [result["id"] for result in results if not result["ok"]]
    summary = f"{len(results) - len(failed)} of {len(results)} use their index"
    if failed:
        summary += "; failing: " + ", ".join(failed)
    return {"ok": not failed, "summary": summary, "failed": failed, "queries": results}


def render_text(report: dict) -> str:
    """Return `report` as the human-readable table that verify prints."""
    versions = report["versions"]
    lines = [f"abathur_db verify: {report['path']}",
             f"  abathur_db {versions['abathur_db']}, SQLite {versions['sqlite']}",
             f"  {_upgrade_line(report)}", ""]
    width = max(map(len, report["checks"])) + 2
    lines.append(f"{'CHECK'.ljust(width)}RESULT  DETAIL")
    for name, check in report["checks"].items():
        lines.append(f"{name.ljust(width)}{'PASS' if check['ok'] else 'FAIL':<8}{check['summary']}")
        lines.extend("    " + detail for detail in _detail_lines(name, check))
    lines.append(f"{'wal_file'.ljust(width)}{'-':<8}{report['wal_bytes']} bytes")
    failed = [name for name, check in report["checks"].items() if not check["ok"]]
    lines += ["", "result: PASS, every check passed" if not failed else "result: FAIL: " + ", ".join(failed)]
    return "\n".join(lines)


def _upgrade_line(report: dict) -> str:
    upgrade = report["upgrade"]
    if upgrade is None:
        return "upgrade: not attempted (--check-only: opened read-only)"
    if not upgrade["applied"]:
        return "upgrade: nothing to apply, the schema was up to date"
    line = "upgrade: applied " + ", ".join(upgrade["applied"])
    if upgrade["backup_path"]:
        return line + f"; backup written to {upgrade['backup_path']}"
    return line + "; no backup (the database was new)"


def _detail_lines(name: str, check: dict) -> list[str]:
    if name == "schema":
        return [f"{row['name']:<40} sha256 {row['sha256'][:12]}  {row['file']}" for row in check["ledger"]]
    if name == "integrity_check":
        rows = check["rule_violations"]
        lines = check["problems"][:_SHOWN_VIOLATIONS] + [
            f"{v['table']} {v['row_key']} {v['row']!r}: {v['column']} = {short_repr(v['value'])} breaks {v['rule']}"
            for v in rows[:_SHOWN_VIOLATIONS]]
        hidden = len(rows) - _SHOWN_VIOLATIONS
        lines += [f"... and {hidden} more (--json lists every one)"] if hidden > 0 else []
        return lines + (["fix or delete these rows: an upgrade keeps such values as they were"] if rows else [])
    if name == "foreign_key_check":
        lines = [f"{v['table']} rowid {v['rowid']}: {', '.join(v['columns'])} -> no such {v['parent']} row"
                 for v in check["violations"][:_SHOWN_VIOLATIONS]]
        hidden = len(check["violations"]) - _SHOWN_VIOLATIONS
        return lines + ([f"... and {hidden} more (--json lists every one)"] if hidden > 0 else [])
    if name == "query_plans":
        return [f"{q['id']:<3} {'PASS' if q['ok'] else 'FAIL'}  "
                + ("; ".join(q["plan"]) if q["ok"] else "; ".join(q["problems"]))
                for q in check["queries"]]
    return []


if __name__ == "__main__":  # pragma: no cover - run as a subprocess by the tests
    sys.exit(main())
