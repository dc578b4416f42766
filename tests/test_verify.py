"""python -m abathur_db.verify: the report and its JSON form, exit codes, writing only when asked, next steps."""

from __future__ import annotations

import hashlib
import json
import os
import re
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
from abathur_db.schema import indexes as schema_indexes
from abathur_db.schema import load_files
from abathur_db.validation import PlanCheck, rule_violations
from legacy import NON_JSON, OUT_OF_ENUM, TABLE_ROWS, build_legacy

REPO = Path(__file__).resolve().parent.parent
CHECKS = ["schema", "pragmas", "tables", "core_indexes", "integrity_check", "foreign_key_check", "query_plans"]
FILE_NAMES = [file.name for file in load_files()]
SCHEMA_INDEXES = schema_indexes(load_files())


def _run(capsys, *args) -> tuple[int, str, str]:
    code = verify.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def _create(path) -> None:
    abathur_db.open(path).close()


def _raw(path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _execute(path, script: str) -> None:
    """Run `script` on a raw connection to `path`, which keeps none of the package's settings."""
    conn = _raw(path)
    try:
        conn.executescript(script)
    finally:
        conn.close()


def _check_line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name + " "))


def _assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("verify: "), err
    assert "Traceback" not in err and "; next: " in err, err
    for fragment in fragments:
        assert fragment in err


def _fail_lines(out: str) -> list[str]:
    """Return the report's check lines that FAIL."""
    return [line for line in out.splitlines() if line.split()[1:2] == ["FAIL"] and not line.startswith(" ")]


def _listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


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


# --- creating: only with --create ---------------------------------------------------------


def test_create_makes_a_new_database_that_passes_every_check(db_path, capsys):
    """--create creates the file, says which files it applied, and passes every check (exit 0)."""
    code, out, err = _run(capsys, db_path, "--create")
    assert code == 0, out
    assert err == ""
    assert f"  created: applied {', '.join(FILE_NAMES)}" in out
    for name in CHECKS:
        assert _check_line(out, name).split()[1] == "PASS", name
    assert f"core_indexes       PASS    15 of 15 core present, {len(SCHEMA_INDEXES)} of {len(SCHEMA_INDEXES)} " \
           "of the schema" in out
    assert f"query_plans        PASS    {len(CATALOG)} of {len(CATALOG)} use their index" in out
    assert f"abathur_db {abathur_db.__version__}, SQLite {sqlite3.sqlite_version}" in out
    assert "\nCHECK              RESULT  DETAIL\n" in out
    assert out.count(" match\n") == len(FILE_NAMES)
    assert _check_line(out, "schema") == (f"schema             PASS    version {len(FILE_NAMES)} of {len(FILE_NAMES)}; "
                                          f"{len(FILE_NAMES)} of {len(FILE_NAMES)} files applied, none pending")
    assert _check_line(out, "tables") == "tables             PASS    10 of 10 present"
    assert out.rstrip().endswith("result: PASS, every check passed")


@pytest.mark.parametrize("options", [[], ["--check-only"], ["--upgrade"], ["--repair"], ["--json"]])
def test_a_mistyped_path_fails_names_it_and_creates_nothing(tmp_path, capsys, options):
    """Without --create, a path that does not exist is a failure naming it and suggesting --create (exit 1)."""
    _create(tmp_path / "abathur.db")
    before = _listing(tmp_path)
    typo = tmp_path / "abathru.db"
    code, out, err = _run(capsys, typo, *options)
    assert code == 1
    _assert_one_line_error(err, f"verify: {typo}: no such file", "run with --create")
    assert _listing(tmp_path) == before
    if "--json" in options:
        assert json.loads(out) == {"path": str(typo), "ok": False, "error": err[len("verify: "):].rstrip("\n")}
    else:
        assert out == ""


def test_create_on_an_up_to_date_database_writes_nothing(db_path, capsys):
    """--create on a database that exists and is current changes no byte and says there was nothing to do."""
    _create(db_path)
    before = _fingerprint(db_path)
    code, out, _ = _run(capsys, db_path, "--create")
    assert code == 0, out
    assert "  --create: nothing written\n" in out
    assert _fingerprint(db_path) == before


def test_an_empty_file_fails_until_created(db_path, capsys):
    """A file holding no tables fails with "run with --create" and stays empty; --create gives it the schema."""
    db_path.write_bytes(b"")
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _fail_lines(out) == [
        "schema             FAIL    an empty database: it holds no tables; next: run with --create to create "
        "the schema in it"]
    assert db_path.stat().st_size == 0
    code, out, _ = _run(capsys, db_path, "--upgrade")
    assert code == 1 and "next: run with --create" in out and db_path.stat().st_size == 0
    code, out, _ = _run(capsys, db_path, "--create")
    assert code == 0, out
    assert f"created: applied {FILE_NAMES[0]}" in out


def test_default_path_is_the_environment_variable(tmp_path, monkeypatch, capsys):
    """Without PATH, verify uses $ABATHUR_DB."""
    target = tmp_path / "from-env.db"
    monkeypatch.setenv("ABATHUR_DB", str(target))
    assert verify.main(["--create"]) == 0
    assert target.exists()
    assert f"abathur_db verify: {target}" in capsys.readouterr().out


def test_default_path_is_abathur_db_in_the_current_directory(tmp_path, monkeypatch, capsys):
    """Without PATH or $ABATHUR_DB, verify uses ./abathur.db, and without --create only names it."""
    monkeypatch.delenv("ABATHUR_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert verify.main([]) == 1
    assert "verify: abathur.db: no such file" in capsys.readouterr().err
    assert verify.main(["--create"]) == 0
    assert (tmp_path / "abathur.db").exists()


# --- read-only by default ------------------------------------------------------------------


@pytest.mark.parametrize("options", [[], ["--check-only"], ["--create"], ["--upgrade"], ["--repair"]])
def test_a_good_database_is_left_byte_identical(db_path, capsys, options):
    """On a good database verify passes and leaves its bytes, mtime and WAL content as they were, whatever the flags."""
    with abathur_db.open(db_path) as pool:
        abathur_db.tasks.create(pool.connection(), "keep me")
    wal = Path(f"{db_path}-wal")
    before = _fingerprint(db_path)
    code, out, _ = _run(capsys, db_path, *options)
    assert code == 0, out
    if not options or options == ["--check-only"]:
        assert "  opened read-only: nothing was written (--create, --upgrade and --repair write)" in out
    assert _fingerprint(db_path) == before
    # SQLite needs the -shm index to read a WAL database and may create it with an
    # empty -wal beside it; it must never write frames into the -wal.
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_legacy_database_is_one_failure_saying_run_with_upgrade(tmp_path, capsys):
    """A database that needs an upgrade gives one FAIL line ending "run with --upgrade", and is left as it was."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    before = _fingerprint(path)
    for options in ([], ["--create"], ["--repair"]):
        code, out, err = _run(capsys, path, *options)
        assert code == 1 and err == ""
        (line,) = _fail_lines(out)
        assert line.startswith(f"schema             FAIL    version 0 of {len(FILE_NAMES)} (a database of an "
                               f"earlier Abathur release); {len(FILE_NAMES)} file(s) pending: {FILE_NAMES[0]}")
        assert line.endswith("; next: run with --upgrade (it writes a backup copy first)")
        assert "not run until the schema is current: pragmas, tables, core_indexes" in out
        assert out.rstrip().endswith("result: FAIL: schema (each FAIL line says what to do next)")
    assert "  --repair: nothing written, the schema check below says why\n" in out  # it waits for a current schema
    assert _fingerprint(path) == before
    assert _listing(tmp_path) == ["legacy.db"]


def test_upgrade_upgrades_a_legacy_database_and_checks_it(tmp_path, capsys):
    """--upgrade applies every file after a backup, says so, keeps every row, and the checks run."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    _execute(path, "DELETE FROM agents WHERE task_id = 'no-such-task'")
    code, out, _ = _run(capsys, path, "--upgrade")
    assert code == 0, out
    assert f"  upgraded: applied {', '.join(FILE_NAMES)}; backup written to {path}.v0-" in out
    conn = _raw(path)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == len(TABLE_ROWS["tasks"])
    conn.close()
    code, out, _ = _run(capsys, path, "--upgrade")
    assert code == 0 and "  --upgrade: nothing written\n" in out


def test_an_upgraded_legacy_orphan_is_listed_with_its_missing_key(tmp_path, capsys):
    """The legacy orphan agent survives the upgrade and is listed with its id, column, value and missing key."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    code, out, _ = _run(capsys, path, "--upgrade")
    assert code == 1
    assert "    agents id 'a-orphan': task_id = 'no-such-task', but tasks has no row with id 'no-such-task'" in out
    assert out.rstrip().endswith("result: FAIL: foreign_key_check (each FAIL line says what to do next)")


# --- --repair --------------------------------------------------------------------------------


def test_repair_recreates_dropped_indexes_from_the_schema_files(db_path, capsys):
    """Dropped indexes fail with "run with --repair"; --repair recreates them as the schema files write them."""
    _create(db_path)
    _execute(db_path, "DROP INDEX idx_tasks_claimable; DROP INDEX idx_audit_timestamp")
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _fail_lines(out) == [
        f"core_indexes       FAIL    14 of 15 core present, {len(SCHEMA_INDEXES) - 2} of {len(SCHEMA_INDEXES)} of "
        "the schema; missing idx_audit_timestamp, idx_tasks_claimable; next: run with --repair",
        f"query_plans        FAIL    {len(CATALOG) - 2} of {len(CATALOG)} use their index; failing: T2, U2;"
        " next: run with --repair"]
    assert ("    T2  FAIL  cannot be planned: no such index: idx_tasks_claimable; "
            "index idx_tasks_claimable does not exist") in out
    code, out, _ = _run(capsys, db_path, "--repair")
    assert code == 0, out
    assert "  repaired: recreated idx_audit_timestamp, idx_tasks_claimable" in out
    conn = _raw(db_path)
    stored = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    conn.close()
    assert stored == SCHEMA_INDEXES
    code, out, _ = _run(capsys, db_path, "--repair", "--json")
    assert json.loads(out)["repaired"] == {"created": [], "sql": []}


def test_each_catalog_query_has_its_own_pass_or_fail_line(db_path, capsys):
    """Under query_plans, each catalog query has one line: PASS with its plan, or FAIL with its problems."""
    _create(db_path)
    _execute(db_path, "DROP INDEX idx_audit_timestamp")
    code, out, _ = _run(capsys, db_path, "--json")
    queries = json.loads(out)["checks"]["query_plans"]["queries"]
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    labels = dict(re.findall(r"^    (\w+) +(PASS|FAIL)  ", out, re.MULTILINE))
    assert labels == {query.id: "FAIL" if query.id == "U2" else "PASS" for query in CATALOG}
    for query in queries:
        shown = "; ".join(query["plan"] if query["ok"] else query["problems"])
        assert f"    {query['id']:<3} {labels[query['id']]}  {shown}\n" in out


def test_repair_says_what_it_created_in_json(db_path, capsys):
    """--json names each recreated index and the statement that made it."""
    _create(db_path)
    _execute(db_path, "DROP INDEX idx_metrics_timestamp")
    code, out, _ = _run(capsys, db_path, "--repair", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["repaired"] == {"created": ["idx_metrics_timestamp"],
                                  "sql": [SCHEMA_INDEXES["idx_metrics_timestamp"]]}
    assert report["writes_allowed"] == ["repair"] and report["created"] is None and report["upgraded"] is None


def test_a_repair_that_cannot_run_is_a_one_line_error(db_path, capsys):
    """An index whose table is gone cannot be recreated: one stderr line, exit 1."""
    _create(db_path)
    _execute(db_path, "DROP TABLE metrics")
    code, out, err = _run(capsys, db_path, "--repair")
    assert code == 1 and out == ""
    _assert_one_line_error(err, "--repair could not recreate the missing indexes", "no such table")


# --- every failure says what to do next -------------------------------------------------------


ORPHAN = ("PRAGMA foreign_keys = OFF; INSERT INTO agents (id, name, specialization, task_id, model)"
          " VALUES ('orphan-0', 'n', 's', 'no-such-task', 'm')")
EDITED_LEDGER = "UPDATE schema_migrations SET sha256 = 'abc' WHERE version = 2"
NEWER_LEDGER = "INSERT INTO schema_migrations VALUES (99, '0099_from_the_future.sql', 'def', 'x')"
# A table of the user's whose index no longer matches its definition: integrity_check finds rows missing from it.
INDEX_OUT_OF_STEP = """
    CREATE TABLE notes (a, b); INSERT INTO notes VALUES (1, 2), (3, 4); CREATE INDEX notes_a ON notes (a);
    PRAGMA writable_schema = ON;
    UPDATE sqlite_master SET sql = 'CREATE INDEX notes_a ON notes (b)' WHERE name = 'notes_a';
"""


@pytest.mark.parametrize("damage, check, step", [
    pytest.param(ORPHAN, "foreign_key_check", "point each row listed below at an existing row", id="orphan"),
    pytest.param("PRAGMA ignore_check_constraints = ON; INSERT INTO metrics (metric_name, metric_value)"
                 " VALUES ('m', -5)", "integrity_check", "fix or delete the rows listed below", id="rule"),
    pytest.param(INDEX_OUT_OF_STEP, "integrity_check", "restore the newest backup, or salvage the rows with the "
                 "sqlite3 shell's .recover", id="index-out-of-step"),
    pytest.param("DROP TABLE metrics", "tables", "restore the newest backup: a table of the schema was dropped",
                 id="dropped-table"),
    pytest.param("PRAGMA journal_mode = DELETE", "pragmas", "open the database once with abathur_db.open(), "
                 "which switches it to WAL", id="journal-mode"),
    pytest.param("PRAGMA user_version = 3", "schema", "restore the newest backup", id="user-version"),
    pytest.param(EDITED_LEDGER, "schema", "restore each changed file as it was applied", id="edited-file"),
    pytest.param(NEWER_LEDGER, "schema", "use the abathur_db release that wrote this database, or a newer one",
                 id="newer"),
])
def test_every_failure_ends_with_its_next_step(db_path, capsys, damage, check, step):
    """Each FAIL line ends with what to do next, and --json carries it as next_step."""
    _create(db_path)
    _execute(db_path, damage)
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    lines = _fail_lines(out)
    assert lines and all("; next: " in line for line in lines), lines
    assert "; next: " + step in _check_line(out, check)
    code, out, _ = _run(capsys, db_path, "--json")
    checks = json.loads(out)["checks"]
    assert checks[check]["ok"] is False and checks[check]["next_step"].startswith(step)
    assert all(c["next_step"] is None for c in checks.values() if c["ok"])


@pytest.mark.parametrize("damage, says", [
    pytest.param("PRAGMA user_version = 3", f"version 3 of {len(FILE_NAMES)}; user_version 3 disagrees with the ledger",
                 id="user-version"),
    pytest.param(EDITED_LEDGER, f"schema file {FILE_NAMES[1]} changed after it was applied (ledger sha256 abc…",
                 id="edited-file"),
    pytest.param(NEWER_LEDGER, "database schema version 99 is newer than this abathur_db knows", id="newer"),
])
def test_a_schema_that_disagrees_with_the_files_says_how(db_path, capsys, damage, says):
    """The schema check's FAIL line says what disagrees: user_version, the changed file, or the newer version."""
    _create(db_path)
    _execute(db_path, damage)
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _check_line(out, "schema").startswith(f"schema             FAIL    {says}")


def test_a_pragma_this_sqlite_does_not_keep_is_reported(db_path, capsys, monkeypatch):
    """A per-connection setting that does not read back as expected says to report it."""
    _create(db_path)
    monkeypatch.setattr(verify, "PRAGMAS", (*PRAGMAS, ("cache_spill", 0)))
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _check_line(out, "pragmas").endswith("expected cache_spill=0; next: this SQLite does not keep these "
                                                "settings: report it with this output")


def test_a_plan_that_fails_with_every_index_present_points_to_the_docs(db_path, capsys, monkeypatch):
    """A query that stops using its index while the index exists is not sent to --repair."""
    _create(db_path)
    monkeypatch.setattr(verify, "check_catalog", lambda conn: [
        PlanCheck("T1", False, ["SCAN tasks"], ["full scan of tasks (SCAN tasks)"])])
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _check_line(out, "query_plans").endswith(
        "next: a plan changed without a missing index (an index of yours, or ANALYZE statistics?): see the plans "
        "below and docs/verify.md")


def test_a_plan_that_fails_beside_a_missing_index_is_sent_to_repair(db_path, capsys, monkeypatch):
    """When any failing query lacks an index, the step is --repair, even if another one fails with its index present."""
    _create(db_path)
    _execute(db_path, "DROP INDEX idx_metrics_timestamp")
    check_catalog = verify.check_catalog
    monkeypatch.setattr(verify, "check_catalog", lambda conn: [
        PlanCheck("T1", False, ["SCAN tasks"], ["full scan of tasks (SCAN tasks)"]), *check_catalog(conn)])
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    line = _check_line(out, "query_plans")
    assert "; failing: T1, M1; next: run with --repair" in line


@pytest.mark.parametrize("script, tables, ledger", [
    ("CREATE TABLE customers (id INTEGER PRIMARY KEY)", "customers", "no schema ledger"),
    ((abathur_db.schema.schema_dir() / "0001_schema_ledger.sql").read_text(), "schema_migrations",
     "an empty schema ledger"),
])
def test_a_database_of_another_application_is_named_as_such(db_path, capsys, script, tables, ledger):
    """Tables without an applied file or a tasks table: "not an Abathur database", even with --upgrade, untouched."""
    _execute(db_path, script)
    before = _fingerprint(db_path)
    code, out, _ = _run(capsys, db_path, "--upgrade", "--create")
    assert code == 1
    assert _fail_lines(out) == [f"schema             FAIL    not an Abathur database: {ledger} and no tasks "
                                f"table (it holds {tables}); next: check the path"]
    assert _fingerprint(db_path) == before


# --- foreign keys and rule breakers: table, row, column, value ---------------------------------


def test_a_dangling_reference_names_the_row_the_column_the_value_and_the_missing_key(db_path, capsys):
    """A planted orphan is listed by its id, column, value and the parent key that does not exist."""
    _create(db_path)
    _plant_orphans(db_path)
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _check_line(out, "foreign_key_check").split()[1:4] == ["FAIL", "1", "violation(s);"]
    assert "    agents id 'orphan-0': task_id = 'no-such-task', but tasks has no row with id 'no-such-task'" in out


@pytest.mark.parametrize("table, line", [
    pytest.param("CREATE TABLE notes (k TEXT PRIMARY KEY, task_id TEXT REFERENCES tasks (id)) WITHOUT ROWID;"
                 " INSERT INTO notes VALUES ('n1', 'gone')",
                 "notes (a row without rowid): task_id -> no such tasks row", id="without-rowid"),
    pytest.param("CREATE TABLE notes (task TEXT REFERENCES tasks); INSERT INTO notes VALUES ('gone')",
                 "notes rowid 1: task = 'gone', but tasks has no row with id 'gone'", id="parent-key-left-implicit"),
])
def test_a_dangling_reference_in_a_user_table_is_still_listed(db_path, capsys, table, line):
    """A user table's orphan is listed: without rowid, by table, column and parent; an implicit parent key, by name."""
    _create(db_path)
    _execute(db_path, table)
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert f"\n    {line}\n" in out


def _more_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.lstrip().startswith("... and ")]


# How many are planted, and the line counting those the text leaves out (none up to the cap of 20).
AROUND_THE_CAP = [(20, []), (21, ["... and 1 more (--json lists every one)"]),
                  (25, ["... and 5 more (--json lists every one)"])]


@pytest.mark.parametrize("planted, more", AROUND_THE_CAP)
def test_many_violations_are_cut_short_in_text_but_not_in_json(db_path, capsys, planted, more):
    """The text lists the first 20 violations and counts the rest; --json lists every one."""
    _create(db_path)
    _plant_orphans(db_path, planted)
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert f"foreign_key_check  FAIL    {planted} violation(s); next: " in out
    assert out.count("but tasks has no row with id 'no-such-task'") == 20
    assert _more_lines(out) == more
    code, out, _ = _run(capsys, db_path, "--json")
    assert len(json.loads(out)["checks"]["foreign_key_check"]["violations"]) == planted


def test_legacy_value_breaking_a_check_fails_integrity_check(tmp_path, capsys):
    """A legacy row kept despite a CHECK it breaks is listed by table, row, column and value (exit 1)."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    _execute(path, "UPDATE metrics SET timestamp = 'yesterday-ish' WHERE id = 2;"
                   " DELETE FROM agents WHERE task_id = 'no-such-task'")
    code, out, _ = _run(capsys, path, "--upgrade")
    assert code == 1
    assert _check_line(out, "integrity_check").startswith(
        "integrity_check    FAIL    1 value(s) break a CHECK or NOT NULL rule; next: fix or delete the rows")
    assert "    metrics id 2: timestamp = 'yesterday-ish' breaks CHECK timestamp" in out


def _legacy_with_rule_breakers(tmp_path) -> Path:
    """Return an upgraded legacy database whose only problems are kept legacy values that break a rule."""
    path = tmp_path / "legacy.db"
    build_legacy(path, "non_json", "out_of_enum")
    _execute(path, "DELETE FROM agents WHERE task_id = 'no-such-task'")
    _create(path)
    return path


def test_kept_legacy_values_are_listed_by_row_column_and_value(tmp_path, capsys):
    """Every kept legacy value that breaks a rule is listed with table, row, column and value."""
    path = _legacy_with_rule_breakers(tmp_path)
    code, out, _ = _run(capsys, path)
    assert code == 1
    expected = {**NON_JSON, **OUT_OF_ENUM}
    assert f"{len(expected)} value(s) break a CHECK or NOT NULL rule" in _check_line(out, "integrity_check")
    assert "    tasks id 't-json': input_data = '{not json' breaks CHECK input_data" in out
    assert "    checkpoints rowid 3: state = '{{' breaks CHECK state" in out
    assert "    agents id 'a-dirty': state = '--dirty' breaks CHECK state" in out
    assert out.rstrip().endswith("result: FAIL: integrity_check (each FAIL line says what to do next)")
    code, out, _ = _run(capsys, path, "--json")
    rows = json.loads(out)["checks"]["integrity_check"]["rule_violations"]
    assert {(r["table"], r["row_key"], r["row"], r["column"]): r["value"] for r in rows} == expected
    assert {r["rule"] for r in rows} >= {"CHECK input_data", "CHECK status", "CHECK state"}


@pytest.mark.parametrize("planted, more", AROUND_THE_CAP)
def test_many_rule_breakers_are_cut_short_in_text_but_not_in_json(db_path, capsys, planted, more):
    """The text lists the first 20 rule breakers and counts the rest; --json lists every one."""
    _create(db_path)
    conn = _raw(db_path)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.executemany("INSERT INTO metrics (metric_name, metric_value) VALUES ('m', ?)",
                     [(-i,) for i in range(1, planted + 1)])
    conn.close()
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert out.count("breaks CHECK metric_value") == 20
    assert _more_lines(out) == more
    code, out, _ = _run(capsys, db_path, "--json")
    assert len(json.loads(out)["checks"]["integrity_check"]["rule_violations"]) == planted


@pytest.mark.parametrize("rows, more", [(21, []), (30, ["... and 9 more (--json lists every one)"])])
def test_many_integrity_problems_are_cut_short_in_text_but_not_in_json(db_path, capsys, rows, more):
    """Problems integrity_check reports beyond the first 20 are counted in the text, and all listed in --json."""
    _create(db_path)
    # Rows 2.. of the user's table go missing from its index (row 1's key matches either definition).
    _execute(db_path, "CREATE TABLE notes (a, b); CREATE INDEX notes_a ON notes (a);"
                      + "".join(f"INSERT INTO notes VALUES ({i}, {-i});" for i in range(rows))
                      + "PRAGMA writable_schema = ON;"
                      " UPDATE sqlite_master SET sql = 'CREATE INDEX notes_a ON notes (b)' WHERE name = 'notes_a';")
    code, out, _ = _run(capsys, db_path, "--json")
    problems = json.loads(out)["checks"]["integrity_check"]["problems"]
    assert len(problems) == rows - 1
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _check_line(out, "integrity_check").startswith(f"integrity_check    FAIL    {rows - 1} problem(s); next: ")
    assert out.count("missing from index notes_a") == 20
    assert _more_lines(out) == more


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
    _execute(db_path, "CREATE TABLE notes (body TEXT)")
    code, out, _ = _run(capsys, db_path)
    assert code == 0
    assert "tables             PASS    10 of 10 present; also found notes" in out


# --- files that cannot be used ----------------------------------------------------------------


def _corrupt_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size // 2)
        file.write(b"\xa5" * 8192)


def _truncate_half(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_corrupt_middle, _truncate_half])
@pytest.mark.parametrize("mode", [[], ["--upgrade"]])
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
    _assert_one_line_error(err, str(db_path), "malformed", "restore its newest backup")


def test_a_corrupt_schema_ledger_is_the_package_s_error_naming_the_check(db_path):
    """A ledger (schema_migrations) page overwritten: gather() raises DatabaseFileError saying the schema check could
    not run, as for every other check, not sqlite3's own error."""
    abathur_db.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'schema_migrations'").fetchone()
    conn.close()
    with open(db_path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)
    with pytest.raises(DatabaseFileError, match=f"^{re.escape(str(db_path))}: schema could not run: "):
        verify.gather(str(db_path))


@pytest.mark.parametrize("mode", [[], ["--create", "--upgrade"]])
def test_file_that_is_not_sqlite_is_a_one_line_error_and_is_left_alone(tmp_path, capsys, mode):
    """A text file gives 'file is not a database' on one stderr line, exit 1, and is not modified."""
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 1000)
    before = _fingerprint(path)
    code, out, err = _run(capsys, path, *mode)
    assert code == 1 and out == ""
    _assert_one_line_error(err, str(path), "file is not a database", "check the path")
    assert _fingerprint(path) == before


@pytest.mark.parametrize("make_path, fragment", [
    (lambda tmp: tmp, "is a directory, not a database file; next: give the database file's path"),
    (lambda tmp: tmp / "missing-folder" / "abathur.db", "cannot create the database file"),
    (lambda tmp: tmp / "afile" / "abathur.db", "cannot create the database file"),
])
def test_unusable_path_is_a_one_line_error(tmp_path, capsys, make_path, fragment):
    """A directory, or --create under a missing folder or under a file, gives one stderr line and exit 1."""
    (tmp_path / "afile").write_text("x")
    path = make_path(tmp_path)
    code, out, err = _run(capsys, path, "--create")
    assert code == 1 and out == ""
    _assert_one_line_error(err, str(path), fragment)


@pytest.mark.parametrize("error, step", [
    (abathur_db.BusyError("locked"), "another connection holds the write lock"),
    (abathur_db.StorageFullError("full"), "free some disk space"),
    (abathur_db.SchemaError("would lose column x"), "nothing was changed"),
    (abathur_db.AbathurDBError("odd"), "see docs/verify.md"),
    (PermissionError(13, "Permission denied"), "check the path and its permissions"),
    ("raw", "check the path; a damaged file: restore its newest backup"),
])
def test_errors_that_stop_verify_say_what_to_do_next(db_path, capsys, monkeypatch, error, step):
    """An error raised before the report is one stderr line naming the path and ending with a next step."""
    def fail(*args, **kwargs):
        if error == "raw":  # sqlite3's own error, as a first read of a file that is not a database raises it
            db_path.write_bytes(b"not a database " * 100)
            sqlite3.connect(db_path).execute("SELECT 1 FROM sqlite_master")
        raise error

    monkeypatch.setattr(verify, "gather", fail)
    code, out, err = _run(capsys, db_path)
    assert code == 1 and out == ""
    _assert_one_line_error(err, f"verify: {db_path}: ", "; next: " + step)


# --- the report as data -----------------------------------------------------------------------


def test_a_dropped_table_is_counted_and_named(db_path, capsys):
    """A table of the schema that is gone fails `tables` with "9 of 10 present; missing <it>", in text and JSON."""
    _create(db_path)
    _execute(db_path, "DROP TABLE metrics; CREATE TABLE notes (body TEXT)")
    code, out, _ = _run(capsys, db_path)
    assert code == 1
    assert _check_line(out, "tables").startswith(
        "tables             FAIL    9 of 10 present; missing metrics; also found notes; next: ")
    code, out, _ = _run(capsys, db_path, "--json")
    tables = json.loads(out)["checks"]["tables"]
    assert tables["ok"] is False and tables["missing"] == ["metrics"] and tables["extra"] == ["notes"]
    assert tables["found"] == sorted({*verify.EXPECTED_TABLES, "notes"} - {"metrics"})


def test_json_ledger_rows_are_the_ledgers_own(db_path, capsys):
    """--json lists each ledger row with its version, name, sha256 and applied_at as stored, and `file`."""
    _create(db_path)
    conn = _raw(db_path)
    stored = conn.execute("SELECT version, name, sha256, applied_at FROM schema_migrations ORDER BY version").fetchall()
    conn.close()
    code, out, _ = _run(capsys, db_path, "--json")
    assert json.loads(out)["checks"]["schema"]["ledger"] == [
        {"version": version, "name": name, "sha256": sha256, "applied_at": applied_at, "file": "match"}
        for version, name, sha256, applied_at in stored]
    assert [name for _, name, _, _ in stored] == FILE_NAMES


def test_wal_bytes_is_the_size_of_the_wal_file(db_path, capsys):
    """wal_bytes, and the wal_file line, give the size of the -wal file another connection keeps."""
    with abathur_db.open(db_path) as pool:
        abathur_db.tasks.create(pool.connection(), "kept in the WAL while the pool is open")
        code, out, _ = _run(capsys, db_path, "--json")
        size = os.path.getsize(f"{db_path}-wal")
        assert code == 0 and size > 0
        assert json.loads(out)["wal_bytes"] == size
        code, out, _ = _run(capsys, db_path)
        assert f"\nwal_file           -       {size} bytes\n" in out


def test_wal_bytes_is_0_without_a_wal_file(db_path):
    """A database with no -wal file beside it (journal_mode DELETE here) reports wal_bytes 0."""
    _create(db_path)
    _execute(db_path, "PRAGMA journal_mode = DELETE")
    report = verify.gather(str(db_path))
    assert not os.path.exists(f"{db_path}-wal") and report["wal_bytes"] == 0


def test_gather_writes_nothing_by_default(tmp_path, db_path):
    """gather(path) without flags creates, upgrades and repairs nothing, as the command line without options."""
    with pytest.raises(DatabaseFileError, match="no such file"):
        verify.gather(str(db_path))
    assert not db_path.exists()
    legacy = tmp_path / "legacy.db"
    build_legacy(legacy)
    before = _fingerprint(legacy)
    report = verify.gather(str(legacy))
    assert report["checks"]["schema"]["ok"] is False and report["upgraded"] is None
    assert _fingerprint(legacy) == before
    _create(db_path)
    _execute(db_path, "DROP INDEX idx_metrics_timestamp")
    report = verify.gather(str(db_path))
    assert report["repaired"] is None and report["checks"]["core_indexes"]["missing"] == ["idx_metrics_timestamp"]
    assert report["writes_allowed"] == []


def test_ledger_rows_are_shown_against_the_files(db_path, capsys):
    """Each ledger row is shown as match, changed or missing file."""
    _create(db_path)
    _execute(db_path, EDITED_LEDGER + ";" + NEWER_LEDGER)
    report = verify.gather(str(db_path))
    ledger = {row["name"]: row["file"] for row in report["checks"]["schema"]["ledger"]}
    assert ledger[FILE_NAMES[0]] == "match"
    assert ledger[FILE_NAMES[1]] == "changed"
    assert ledger["0099_from_the_future.sql"] == "missing file"


def test_json_report_is_one_document_checked_key_by_key(db_path, capsys):
    """--json prints one JSON document with versions, what was written, every check's data and the WAL size."""
    code, out, err = _run(capsys, db_path, "--json", "--create")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert set(report) == {"path", "ok", "writes_allowed", "versions", "created", "upgraded", "repaired", "checks",
                           "skipped", "wal_bytes"}
    assert report["path"] == str(db_path) and report["ok"] is True and report["writes_allowed"] == ["create"]
    assert report["versions"] == {"sqlite": sqlite3.sqlite_version, "abathur_db": abathur_db.__version__}
    assert report["created"] == {"applied": FILE_NAMES}
    assert report["upgraded"] is None and report["repaired"] is None and report["skipped"] == []
    checks = report["checks"]
    assert list(checks) == CHECKS
    assert all(check["ok"] is True and isinstance(check["summary"], str) and check["next_step"] is None
               for check in checks.values())
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
    """--json on a failing database has ok false, and each violation and failing query as data."""
    _create(db_path)
    _plant_orphans(db_path)
    _execute(db_path, "DROP INDEX idx_metrics_timestamp")
    code, out, _ = _run(capsys, db_path, "--json", "--check-only")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["writes_allowed"] == [] and report["repaired"] is None
    (violation,) = report["checks"]["foreign_key_check"]["violations"]
    assert {key: violation[key] for key in ("table", "rowid", "row_key", "row", "parent", "columns", "values",
                                            "parent_columns")} == {
        "table": "agents", "rowid": 1, "row_key": "id", "row": "orphan-0", "parent": "tasks",
        "columns": ["task_id"], "values": ["no-such-task"], "parent_columns": ["id"]}
    assert isinstance(violation["fkid"], int)
    assert report["checks"]["core_indexes"]["missing"] == ["idx_metrics_timestamp"]
    assert report["checks"]["query_plans"]["failed"] == ["M1"]
    assert [name for name, check in report["checks"].items() if not check["ok"]] == [
        "core_indexes", "foreign_key_check", "query_plans"]
    assert report["checks"]["core_indexes"]["next_step"] == "run with --repair"


def test_json_of_a_database_that_needs_an_upgrade_lists_the_skipped_checks(tmp_path, capsys):
    """--json on a legacy file has the schema check only, its next step, and the checks it skipped."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    code, out, _ = _run(capsys, path, "--json")
    assert code == 1
    report = json.loads(out)
    assert list(report["checks"]) == ["schema"] and report["skipped"] == CHECKS[1:]
    assert report["checks"]["schema"]["pending"] == FILE_NAMES
    assert report["checks"]["schema"]["next_step"] == "run with --upgrade (it writes a backup copy first)"


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--bogus"], ["a.db", "b.db"], ["--json=yes"], ["--check-only", "--create"],
                                  ["--check-only", "--upgrade"], ["--check-only", "--repair"]])
def test_usage_errors_exit_2(capsys, args):
    """Unknown options, extra arguments, or --check-only with a writing option exit 2 with a usage line."""
    with pytest.raises(SystemExit) as caught:
        verify.main(args)
    assert caught.value.code == 2
    assert "usage: python -m abathur_db.verify" in capsys.readouterr().err


def test_help_says_what_it_writes_and_the_exit_codes(capsys):
    """--help lists every option, says what verify writes, and gives the exit codes."""
    with pytest.raises(SystemExit) as caught:
        verify.main(["--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("PATH", "--create", "--upgrade", "--repair", "--check-only", "--json"):
        assert option in out
    assert "What it writes: nothing, unless asked." in out
    assert "0 every check passed" in out and "1 a check failed" in out and "2 usage error" in out


def test_command_line_runs_as_the_readme_shows(tmp_path):
    """The README's first command, `python -m abathur_db.verify --create abathur.db`, passes on a fresh folder."""
    env = {key: value for key, value in os.environ.items() if key not in ("ABATHUR_DB", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)  # the checkout, as when the command runs from its root
    readme = (REPO / "README.md").read_text()
    command = "python -m abathur_db.verify --create abathur.db"
    assert f"\n{command} " in readme
    done = subprocess.run([sys.executable, *command.split()[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: PASS, every check passed" in done.stdout
    assert done.stderr == ""
    assert (tmp_path / "abathur.db").exists()


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
