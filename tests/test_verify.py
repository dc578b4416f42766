"""python -m abathur_db.verify: the report, its JSON form, exit codes, and --check-only changing nothing."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import abathur_db
from abathur_db import verify
from abathur_db.catalog import CATALOG
from abathur_db.pool import PRAGMAS
from abathur_db.errors import DatabaseFileError
from abathur_db.schema import load_files
from abathur_db.validation import rule_violations
from legacy import NON_JSON, OUT_OF_ENUM, TABLE_ROWS, build_legacy

REPO = Path(__file__).resolve().parent.parent
CHECKS = ["schema", "pragmas", "tables", "core_indexes", "integrity_check", "foreign_key_check", "query_plans"]
FILE_NAMES = [file.name for file in load_files()]


def _run(capsys, *args) -> tuple[int, str, str]:
    code = verify.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def _create(path) -> None:
    abathur_db.open(path).close()


def _raw(path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _check_line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name + " "))


def _assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("verify: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def _plant_orphans(path, count: int = 1) -> None:
    """Insert `count` agents whose task does not exist, with foreign keys off on a raw connection."""
    conn = _raw(path)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.executemany("INSERT INTO agents (id, name, specialization, task_id, model) "
                         "VALUES (?, 'n', 's', 'no-such-task', 'm')", [(f"orphan-{i}",) for i in range(count)])
    finally:
        conn.close()


def _fingerprint(path) -> tuple[str, int]:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


def test_fresh_database_passes_every_check(db_path, capsys):
    """verify creates a new database, says which files it applied, and passes every check (exit 0)."""
    code, out, err = _run(capsys, db_path)
    assert code == 0, out
    assert err == ""
    assert db_path.exists()
    assert f"upgrade: applied {', '.join(FILE_NAMES)}; no backup (the database was new)" in out
    for name in CHECKS:
        assert _check_line(out, name).split()[1] == "PASS", name
    assert "core_indexes       PASS    15 of 15 present" in out
    assert f"query_plans        PASS    {len(CATALOG)} of {len(CATALOG)} use their index" in out
    assert f"abathur_db {abathur_db.__version__}, SQLite {sqlite3.sqlite_version}" in out
    assert out.count(" match\n") == len(FILE_NAMES)
    assert out.rstrip().endswith("result: PASS, every check passed")


def test_second_run_applies_nothing(db_path, capsys):
    """On an up-to-date database verify applies nothing and says so."""
    _create(db_path)
    code, out, _ = _run(capsys, db_path)
    assert code == 0
    assert "upgrade: nothing to apply, the schema was up to date" in out


def test_default_path_is_the_environment_variable(tmp_path, monkeypatch, capsys):
    """Without PATH, verify uses $ABATHUR_DB."""
    target = tmp_path / "from-env.db"
    monkeypatch.setenv("ABATHUR_DB", str(target))
    assert verify.main([]) == 0
    assert target.exists()
    assert f"abathur_db verify: {target}" in capsys.readouterr().out


def test_default_path_is_abathur_db_in_the_current_directory(tmp_path, monkeypatch, capsys):
    """Without PATH or $ABATHUR_DB, verify uses ./abathur.db."""
    monkeypatch.delenv("ABATHUR_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert verify.main([]) == 0
    assert (tmp_path / "abathur.db").exists()


def test_foreign_key_violation_fails_and_is_listed(db_path, capsys):
    """A planted orphan makes verify exit 1 and is listed with its table, rowid, column and parent."""
    _create(db_path)
    _plant_orphans(db_path)
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _check_line(out, "foreign_key_check").split()[1:4] == ["FAIL", "1", "violation(s)"]
    assert "    agents rowid 1: task_id -> no such tasks row" in out
    assert out.rstrip().endswith("result: FAIL: foreign_key_check")


def test_many_violations_are_cut_short_in_text_but_not_in_json(db_path, capsys):
    """The text lists the first 20 violations and counts the rest; --json lists every one."""
    _create(db_path)
    _plant_orphans(db_path, 25)
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert out.count("-> no such tasks row") == 20
    assert "... and 5 more (--json lists every one)" in out
    code, out, _ = _run(capsys, db_path, "--json")
    assert len(json.loads(out)["checks"]["foreign_key_check"]["violations"]) == 25


def test_dropped_indexes_are_named_with_the_queries_they_break(db_path, capsys):
    """Dropping idx_tasks_claimable and idx_audit_timestamp fails verify, naming both and T2, U2."""
    _create(db_path)
    conn = _raw(db_path)
    conn.execute("DROP INDEX idx_tasks_claimable")
    conn.execute("DROP INDEX idx_audit_timestamp")
    conn.close()
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert "core_indexes       FAIL    14 of 15 present; missing idx_audit_timestamp" in out
    assert f"query_plans        FAIL    {len(CATALOG) - 2} of {len(CATALOG)} use their index; failing: T2, U2" in out
    assert ("    T2  FAIL  cannot be planned: no such index: idx_tasks_claimable; "
            "index idx_tasks_claimable does not exist") in out
    u2 = next(line for line in out.splitlines() if line.startswith("    U2 "))
    assert "FAIL" in u2 and "full scan of audit" in u2 and "does not use idx_audit_timestamp (no such index)" in u2
    assert out.rstrip().endswith("result: FAIL: core_indexes, query_plans")


def _corrupt_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size // 2)
        file.write(b"\xa5" * 8192)


def _truncate_half(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_corrupt_middle, _truncate_half])
@pytest.mark.parametrize("mode", [[], ["--check-only"]])
def test_corrupted_database_is_a_one_line_error(db_path, capsys, damage, mode):
    """A database whose b-tree pages are overwritten or cut off gives one line on stderr and exit 1."""
    with abathur_db.open(db_path) as pool:
        conn = pool.connection()
        with abathur_db.transaction(conn):
            for i in range(200):
                task = abathur_db.tasks.create(conn, f"task {i} " + "x" * 200)
                abathur_db.audit.record(conn, "note", task_id=task["id"], action_data={"pad": "y" * 200})
    damage(db_path)
    code, out, err = _run(capsys, db_path, *mode)
    assert code == 1
    assert out == ""
    _assert_one_line_error(err, str(db_path), "malformed")


@pytest.mark.parametrize("mode", [[], ["--check-only"]])
def test_file_that_is_not_sqlite_is_a_one_line_error_and_is_left_alone(tmp_path, capsys, mode):
    """A text file gives 'file is not a database' on one stderr line, exit 1, and is not modified."""
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 1000)
    before = _fingerprint(path)
    code, out, err = _run(capsys, path, *mode)
    assert code == 1 and out == ""
    _assert_one_line_error(err, str(path), "file is not a database")
    assert _fingerprint(path) == before


@pytest.mark.parametrize("make_path, fragment", [
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: tmp / "missing-folder" / "abathur.db", "cannot create the database file"),
    (lambda tmp: tmp / "afile" / "abathur.db", "cannot create the database file"),
])
def test_unusable_path_is_a_one_line_error(tmp_path, capsys, make_path, fragment):
    """A directory, or a path under a missing folder or under a file, gives one stderr line and exit 1."""
    (tmp_path / "afile").write_text("x")
    path = make_path(tmp_path)
    code, out, err = _run(capsys, path)
    assert code == 1 and out == ""
    _assert_one_line_error(err, str(path), fragment)


def test_missing_file_with_check_only_is_a_one_line_error(db_path, capsys):
    """--check-only on a missing file exits 1 with one stderr line and creates nothing."""
    code, out, err = _run(capsys, db_path, "--check-only")
    assert code == 1 and out == ""
    _assert_one_line_error(err, str(db_path), "no such file")
    assert list(db_path.parent.iterdir()) == []


def test_edited_schema_file_is_a_one_line_error_without_check_only(db_path, capsys):
    """A ledger checksum that no longer matches its file makes the upgrade refuse: one line, exit 1."""
    _create(db_path)
    conn = _raw(db_path)
    conn.execute("UPDATE schema_migrations SET sha256 = 'abc' WHERE version = 2")
    conn.close()
    code, out, err = _run(capsys, db_path)
    assert code == 1 and out == ""
    _assert_one_line_error(err, "0002_legacy_tables.sql changed after it was applied")


@pytest.mark.parametrize("sql, shown", [
    ("UPDATE schema_migrations SET sha256 = 'abc' WHERE version = 2", "0002_legacy_tables.sql"),
    ("INSERT INTO schema_migrations VALUES (99, '0099_from_the_future.sql', 'def', '2030-01-01T00:00:00.000Z')",
     "0099_from_the_future.sql"),
])
def test_check_only_reports_ledger_rows_against_the_files(db_path, capsys, sql, shown):
    """--check-only shows each ledger row as match, changed or missing file, and fails on a mismatch."""
    _create(db_path)
    conn = _raw(db_path)
    conn.execute(sql)
    conn.close()
    code, out, _ = _run(capsys, db_path, "--check-only")
    assert code == 1
    assert _check_line(out, "schema").split()[1] == "FAIL"
    ledger = {row["name"]: row["file"] for row in verify.gather(str(db_path), check_only=True)
              ["checks"]["schema"]["ledger"]}
    assert ledger[shown] == ("changed" if shown.startswith("0002") else "missing file")
    assert ledger["0001_schema_ledger.sql"] == "match"
    assert f"{shown:<40} sha256 " in out


def test_check_only_leaves_the_file_byte_identical(db_path, capsys):
    """--check-only passes on a good database and leaves its bytes, mtime and WAL content unchanged."""
    with abathur_db.open(db_path) as pool:
        abathur_db.tasks.create(pool.connection(), "keep me")
    wal = Path(f"{db_path}-wal")
    before = _fingerprint(db_path)
    code, out, _ = _run(capsys, db_path, "--check-only")
    assert code == 0, out
    assert "upgrade: not attempted (--check-only: opened read-only)" in out
    assert _fingerprint(db_path) == before
    # SQLite needs the -shm index to read a WAL database and may create it with an
    # empty -wal beside it; it must never write frames into the -wal.
    assert not wal.exists() or wal.stat().st_size == 0


def test_check_only_reports_a_legacy_database_without_upgrading_it(tmp_path, capsys):
    """A database that needs an upgrade fails --check-only, and is left as it was, with no backup."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    before = _fingerprint(path)
    code, out, _ = _run(capsys, path, "--check-only")
    assert code == 1
    assert "needs an upgrade, pending: 0001_schema_ledger.sql" in _check_line(out, "schema")
    assert "FAIL" in _check_line(out, "pragmas") and "expected journal_mode=wal" in out
    assert "missing schema_migrations, sessions" in _check_line(out, "tables")
    assert _fingerprint(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.db"]
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()


def test_upgraded_legacy_database_without_orphans_passes(tmp_path, capsys):
    """A legacy database without orphans is upgraded (backup written, said so) and passes every check."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    conn = _raw(path)
    conn.execute("DELETE FROM agents WHERE task_id = 'no-such-task'")
    conn.close()
    code, out, _ = _run(capsys, path)
    assert code == 0, out
    assert "upgrade: applied 0001_schema_ledger.sql" in out
    assert f"backup written to {path}.v0-" in out
    conn = _raw(path)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == len(TABLE_ROWS["tasks"])
    conn.close()


def test_upgraded_legacy_database_with_an_orphan_fails_and_lists_it(tmp_path, capsys):
    """The legacy orphan agent survives the upgrade and verify lists it (exit 1)."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    code, out, _ = _run(capsys, path)
    assert code == 1
    assert "    agents rowid 2: task_id -> no such tasks row" in out
    assert out.rstrip().endswith("result: FAIL: foreign_key_check")


def test_legacy_value_breaking_a_check_fails_integrity_check(tmp_path, capsys):
    """A legacy row kept despite a CHECK it breaks is reported by integrity_check (exit 1)."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    conn = _raw(path)
    conn.execute("UPDATE metrics SET timestamp = 'yesterday-ish' WHERE id = 2")
    conn.execute("DELETE FROM agents WHERE task_id = 'no-such-task'")
    conn.close()
    code, out, _ = _run(capsys, path)
    assert code == 1
    assert "integrity_check    FAIL    1 problem(s); 1 value(s) break a CHECK or NOT NULL rule" in out
    assert "    CHECK constraint failed in metrics" in out
    assert "    metrics id 2: timestamp = 'yesterday-ish' breaks CHECK timestamp" in out


def _legacy_with_rule_breakers(tmp_path) -> Path:
    """Return an upgraded legacy database whose only problems are kept legacy values that break a rule."""
    path = tmp_path / "legacy.db"
    build_legacy(path, "non_json", "out_of_enum")
    conn = _raw(path)
    conn.execute("DELETE FROM agents WHERE task_id = 'no-such-task'")
    conn.close()
    _create(path)
    return path


@pytest.mark.parametrize("mode", [[], ["--check-only"]])
def test_kept_legacy_values_are_listed_by_row_column_and_value(tmp_path, capsys, mode):
    """Every kept legacy value that breaks a rule is listed with table, row, column and value, read-only too."""
    path = _legacy_with_rule_breakers(tmp_path)
    code, out, _ = _run(capsys, path, *mode)
    assert code == 1
    expected = {**NON_JSON, **OUT_OF_ENUM}
    assert f"{len(expected)} value(s) break a CHECK or NOT NULL rule" in _check_line(out, "integrity_check")
    assert "    tasks id 't-json': input_data = '{not json' breaks CHECK input_data" in out
    assert "    checkpoints rowid 3: state = '{{' breaks CHECK state" in out
    assert "    agents id 'a-dirty': state = '--dirty' breaks CHECK state" in out
    assert "    fix or delete these rows: an upgrade keeps such values as they were" in out
    assert out.rstrip().endswith("result: FAIL: integrity_check")
    code, out, _ = _run(capsys, path, "--json", *mode)
    rows = json.loads(out)["checks"]["integrity_check"]["rule_violations"]
    assert {(r["table"], r["row_key"], r["row"], r["column"]): r["value"] for r in rows} == expected
    assert {r["rule"] for r in rows} >= {"CHECK input_data", "CHECK status", "CHECK state"}


def test_many_rule_breakers_are_cut_short_in_text_but_not_in_json(db_path, capsys):
    """The text lists the first 20 rule breakers and counts the rest; --json lists every one."""
    _create(db_path)
    conn = _raw(db_path)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.executemany("INSERT INTO metrics (metric_name, metric_value) VALUES ('m', ?)", [(-i,) for i in range(1, 26)])
    conn.close()
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert out.count("breaks CHECK metric_value") == 20
    assert "    ... and 5 more (--json lists every one)" in out
    code, out, _ = _run(capsys, db_path, "--json")
    assert len(json.loads(out)["checks"]["integrity_check"]["rule_violations"]) == 25


def test_long_and_binary_values_are_shortened_in_json(db_path, capsys):
    """A kept value too long, or not text, is shown shortened in --json rather than whole."""
    _create(db_path)
    conn = _raw(db_path)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute("INSERT INTO tasks (id, prompt, input_data) VALUES ('long', 'p', ?)", ("x" * 1000,))
    conn.execute("INSERT INTO tasks (id, prompt, input_data) VALUES ('blob', 'p', ?)", (b"\x00\x01",))
    conn.close()
    code, out, _ = _run(capsys, db_path, "--json")
    rows = {r["row"]: r["value"] for r in json.loads(out)["checks"]["integrity_check"]["rule_violations"]}
    assert rows["long"].startswith("'xxx") and rows["long"].endswith("(1002 characters)")
    assert rows["blob"] == "b'\\x00\\x01'"


def test_extra_tables_are_shown_but_do_not_fail(db_path, capsys):
    """A table the schema does not define is listed, and verify still passes."""
    _create(db_path)
    conn = _raw(db_path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    code, out, _ = _run(capsys, db_path)
    assert code == 0
    assert "tables             PASS    10 of 10 present; also found notes" in out


def test_json_report_is_one_document_checked_key_by_key(db_path, capsys):
    """--json prints one JSON document with versions, upgrade, every check's data and the WAL size."""
    code, out, err = _run(capsys, db_path, "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert set(report) == {"path", "ok", "check_only", "versions", "upgrade", "checks", "wal_bytes"}
    assert report["path"] == str(db_path) and report["ok"] is True and report["check_only"] is False
    assert report["versions"] == {"sqlite": sqlite3.sqlite_version, "abathur_db": abathur_db.__version__}
    assert report["upgrade"] == {"applied": FILE_NAMES, "backup_path": None}
    checks = report["checks"]
    assert list(checks) == CHECKS
    assert all(check["ok"] is True and isinstance(check["summary"], str) for check in checks.values())
    schema = checks["schema"]
    assert schema["user_version"] == schema["latest_version"] == len(FILE_NAMES) and schema["pending"] == []
    assert [row["file"] for row in schema["ledger"]] == ["match"] * len(FILE_NAMES)
    assert all(len(row["sha256"]) == 64 for row in schema["ledger"])
    assert checks["pragmas"]["found"] == dict(PRAGMAS) == checks["pragmas"]["expected"]
    assert checks["pragmas"]["wrong"] == []
    tables = checks["tables"]
    assert tables["missing"] == [] and tables["extra"] == []
    assert sorted(tables["expected"]) == tables["found"]
    assert checks["core_indexes"]["missing"] == []
    assert checks["integrity_check"]["problems"] == [] and checks["integrity_check"]["rule_violations"] == []
    assert checks["foreign_key_check"]["violations"] == []
    plans = checks["query_plans"]
    assert plans["failed"] == []
    assert [q["id"] for q in plans["queries"]] == [q.id for q in CATALOG]
    assert all(q["ok"] and q["plan"] and q["problems"] == [] for q in plans["queries"])
    assert isinstance(report["wal_bytes"], int) and report["wal_bytes"] >= 0


def test_json_report_of_failures(db_path, capsys):
    """--json on a failing database has ok false and the violation and failing query as data."""
    _create(db_path)
    _plant_orphans(db_path)
    conn = _raw(db_path)
    conn.execute("DROP INDEX idx_metrics_timestamp")
    conn.close()
    code, out, _ = _run(capsys, db_path, "--json", "--check-only")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["check_only"] is True and report["upgrade"] is None
    (violation,) = report["checks"]["foreign_key_check"]["violations"]
    assert set(violation) == {"table", "rowid", "parent", "fkid", "columns"}
    assert (violation["table"], violation["rowid"], violation["parent"], violation["columns"]) == (
        "agents", 1, "tasks", ["task_id"])
    assert isinstance(violation["fkid"], int)
    assert report["checks"]["core_indexes"]["missing"] == ["idx_metrics_timestamp"]
    assert report["checks"]["query_plans"]["failed"] == ["M1"]
    assert [name for name, check in report["checks"].items() if not check["ok"]] == [
        "core_indexes", "foreign_key_check", "query_plans"]


def test_json_error_is_a_document_too(tmp_path, capsys):
    """With --json, an unusable file still prints one JSON document, plus one line on stderr."""
    path = tmp_path / "missing.db"
    code, out, err = _run(capsys, path, "--json", "--check-only")
    assert code == 1
    assert json.loads(out) == {"path": str(path), "ok": False,
                               "error": f"{path}: no such file (--check-only never creates one)"}
    _assert_one_line_error(err, "no such file")


@pytest.mark.parametrize("args", [["--bogus"], ["a.db", "b.db"], ["--json=yes"]])
def test_usage_errors_exit_2(capsys, args):
    """Unknown options or extra arguments are usage errors: argparse exits 2 with a usage line."""
    with pytest.raises(SystemExit) as caught:
        verify.main(args)
    assert caught.value.code == 2
    assert "usage: python -m abathur_db.verify" in capsys.readouterr().err


def test_help_describes_the_options(capsys):
    """--help lists PATH, --json and --check-only and exits 0."""
    with pytest.raises(SystemExit) as caught:
        verify.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "PATH" in out and "--json" in out and "--check-only" in out


def test_command_line_runs_as_the_readme_shows(db_path):
    """`python -m abathur_db.verify PATH` from a checkout creates the database and exits 0."""
    env = {key: value for key, value in os.environ.items() if key != "ABATHUR_DB"}
    done = subprocess.run([sys.executable, "-m", "abathur_db.verify", str(db_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: PASS, every check passed" in done.stdout
    assert done.stderr == ""


# rule_violations(): the rows behind the report's lines.


def test_rule_violations_names_each_rows_key_and_each_rule(tmp_path):
    """Composite keys of WITHOUT ROWID tables, table CHECKs (named or not) and NOT NULL are all reported."""
    path = tmp_path / "rules.db"
    conn = _raw(path)
    conn.executescript("""
        CREATE TABLE pairs (a TEXT, b TEXT, n INTEGER CHECK (n > 0), PRIMARY KEY (a, b)) WITHOUT ROWID;
        CREATE TABLE spans (lo INTEGER, hi INTEGER, CONSTRAINT ordered CHECK (lo <= hi), CHECK (hi < 100));
        CREATE TABLE names (label TEXT NOT NULL);
        PRAGMA ignore_check_constraints = ON;
        INSERT INTO pairs VALUES ('x', 'y', 0), ('x', 'z', 1);
        INSERT INTO spans VALUES (5, 1), (1, 500);
        INSERT INTO names VALUES ('kept');
        PRAGMA writable_schema = ON;
        UPDATE sqlite_master SET sql = 'CREATE TABLE names (label TEXT NOT NULL, extra TEXT NOT NULL)'
        WHERE name = 'names';
    """)
    conn.close()
    conn = _raw(path)
    try:
        assert rule_violations(conn) == [
            {"table": "names", "row_key": "rowid", "row": 1, "column": "extra", "value": None, "rule": "NOT NULL"},
            {"table": "pairs", "row_key": "a, b", "row": '["x","y"]', "column": "n", "value": 0, "rule": "CHECK"},
            {"table": "spans", "row_key": "rowid", "row": 1, "column": "ordered", "value": None,
             "rule": "CHECK ordered"},
            {"table": "spans", "row_key": "rowid", "row": 2, "column": None, "value": None, "rule": "CHECK"},
        ]
    finally:
        conn.close()


def test_rule_violations_of_a_file_that_is_not_a_database(tmp_path):
    """A file that is not SQLite raises the package's DatabaseFileError, not a bare sqlite3 error."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database " * 100)
    conn = _raw(path)
    try:
        with pytest.raises(DatabaseFileError, match="not a database"):
            rule_violations(conn)
    finally:
        conn.close()
