"""The schema runner: ordered files, the ledger, refusal of edits and newer databases."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import abathur_db
from abathur_db import pool as pool_module
from abathur_db import schema
from abathur_db.errors import ConfigurationError, SchemaError

SCHEMA_DIR = schema.schema_dir()
FILES = schema.load_files()
NEXT = FILES[-1].version + 1  # the version of a file a test adds


def _ledger(path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT version, name, sha256 FROM schema_migrations ORDER BY version").fetchall()
    finally:
        conn.close()


def _user_version(path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def _fingerprint(path) -> tuple[bytes, int]:
    return Path(path).read_bytes(), os.stat(path).st_mtime_ns


@pytest.fixture
def schema_copy(tmp_path):
    """Return a private copy of the schema folder that a test may edit."""
    return Path(shutil.copytree(SCHEMA_DIR, tmp_path / "schema"))


def test_new_database_gets_every_file_once_in_order(db_path):
    """Every schema file is applied once, in order; the ledger holds each file's sha256."""
    pool = abathur_db.open(db_path)
    assert pool.applied == [f.name for f in FILES]
    expected = [(f.version, f.name, hashlib.sha256((SCHEMA_DIR / f.name).read_bytes()).hexdigest())
                for f in FILES]
    assert _ledger(db_path) == expected
    assert _user_version(db_path) == FILES[-1].version
    assert pool.backup_path is None


def test_reopening_an_up_to_date_database_writes_nothing(db_path):
    """Opening a database that is up to date applies nothing and changes no byte."""
    abathur_db.open(db_path).close()
    before = _fingerprint(db_path)
    with abathur_db.open(db_path) as pool:
        assert pool.applied == []
        assert pool.connection().total_changes == 0
    assert _fingerprint(db_path) == before


def test_edited_applied_file_is_refused_and_nothing_changes(db_path, schema_copy):
    """An applied file whose text changed makes open() fail with SchemaError; the file is untouched."""
    abathur_db.open(db_path, schema_dir=schema_copy).close()
    before = _fingerprint(db_path)
    edited = schema_copy / FILES[-1].name
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(SchemaError, match=f"{FILES[-1].name} changed after it was applied"):
        abathur_db.open(db_path, schema_dir=schema_copy)
    assert _fingerprint(db_path) == before


@pytest.mark.parametrize("newer", ["user_version", "ledger"])
def test_database_newer_than_the_code_is_refused(db_path, newer):
    """A database whose schema version is beyond the known files is refused, unchanged."""
    abathur_db.open(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    if newer == "user_version":
        conn.execute("PRAGMA user_version = 99")
    else:
        conn.execute("INSERT INTO schema_migrations VALUES (99, '0099_future.sql', 'x', 'y')")
    conn.close()
    before = _fingerprint(db_path)
    with pytest.raises(SchemaError, match="version 99 is newer"):
        abathur_db.open(db_path)
    assert _fingerprint(db_path) == before


def test_pending_file_is_applied_after_a_backup(db_path, schema_copy):
    """A new file is applied to an existing database, after a private backup copy is written."""
    abathur_db.open(db_path, schema_dir=schema_copy).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('kept', 1)")
    conn.close()
    (schema_copy / f"{NEXT:04d}_extra.sql").write_text("CREATE TABLE extra (x INTEGER);\n")
    with abathur_db.open(db_path, schema_dir=schema_copy) as pool:
        assert pool.applied == [f"{NEXT:04d}_extra.sql"]
        backup = Path(pool.backup_path)
    assert backup.parent == db_path.parent
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    copy = sqlite3.connect(backup)
    assert copy.execute("PRAGMA user_version").fetchone()[0] == FILES[-1].version
    assert copy.execute("SELECT metric_name FROM metrics").fetchall() == [("kept",)]
    assert copy.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0
    copy.close()
    assert _user_version(db_path) == NEXT


def test_a_database_holding_only_the_ledger_gets_no_backup(db_path, tmp_path):
    """Upgrading a database whose only table is the schema ledger writes no backup copy: it holds nothing to keep."""
    first_only = tmp_path / "first-only"
    first_only.mkdir()
    shutil.copy(SCHEMA_DIR / FILES[0].name, first_only)
    abathur_db.open(db_path, schema_dir=first_only).close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("schema_migrations",)]
    conn.close()
    with abathur_db.open(db_path) as pool:
        assert pool.applied == [f.name for f in FILES[1:]]
        assert pool.backup_path is None
    assert not list(tmp_path.glob("*.bak*"))


def test_a_retried_upgrade_reuses_the_newest_complete_backup(db_path, schema_copy):
    """Of two complete backups of the same contents, a retried upgrade reuses the newest and writes no other."""
    abathur_db.open(db_path, schema_dir=schema_copy).close()
    pending = schema_copy / f"{NEXT:04d}_extra.sql"
    pending.write_text("INSERT INTO no_such_table VALUES (1);\n")
    with pytest.raises(SchemaError, match="no such table"):
        abathur_db.open(db_path, schema_dir=schema_copy)
    (newest,) = db_path.parent.glob("*.bak")
    older = db_path.parent / f"{db_path.name}.v{NEXT - 1}-20000101T000000000Z.bak"
    shutil.copy(newest, older)
    pending.write_text("CREATE TABLE extra (x INTEGER);\n")
    with abathur_db.open(db_path, schema_dir=schema_copy) as pool:
        assert pool.backup_path == str(newest)
    assert sorted(db_path.parent.glob("*.bak")) == sorted([newest, older])


def test_failing_file_leaves_no_trace(db_path, schema_copy):
    """A file that fails half way is rolled back whole: no table, no ledger row, same version."""
    abathur_db.open(db_path, schema_dir=schema_copy).close()
    (schema_copy / f"{NEXT:04d}_broken.sql").write_text(
        "CREATE TABLE half (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    with pytest.raises(SchemaError, match=f"{NEXT:04d}_broken.sql failed at 'INSERT INTO no_such_table"):
        abathur_db.open(db_path, schema_dir=schema_copy)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0
    conn.close()
    assert [v for v, _, _ in _ledger(db_path)] == [f.version for f in FILES]
    assert _user_version(db_path) == FILES[-1].version


def test_database_of_another_application_is_refused(db_path):
    """A database with tables but no ledger and no tasks table is not touched."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(SchemaError, match="not an Abathur database .* customers"):
        abathur_db.open(db_path)
    conn = sqlite3.connect(db_path)
    names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
    conn.close()
    assert names == ["customers"]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["0001_a.sql", "notes.sql"], "named NNNN_description.sql"),
        (["0001_a.sql", "0003_c.sql"], "without gaps"),
    ],
)
def test_badly_named_or_numbered_files_are_refused(tmp_path, names, message):
    """A schema folder with a misnamed file or a gap in versions is refused."""
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(SchemaError, match=message):
        schema.load_files(tmp_path)


@pytest.mark.parametrize("folder, says", [("empty", "holds no schema files (NNNN_description.sql)"),
                                          ("no-such-folder", "no such schema folder")])
def test_a_schema_folder_without_schema_files_is_refused(db_path, tmp_path, folder, says):
    """open() given an empty or missing schema folder raises SchemaError naming it; no database file is created."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError) as caught:
        abathur_db.open(db_path, schema_dir=tmp_path / folder)
    assert str(caught.value) == f"{tmp_path / folder}: {says}"
    assert not db_path.exists()


def test_an_empty_schema_folder_leaves_an_existing_database_alone(db_path, tmp_path):
    """An existing database opened with an empty schema folder is refused as such (not as "newer"), unchanged."""
    abathur_db.open(db_path).close()
    before = _fingerprint(db_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SchemaError, match="holds no schema files"):
        abathur_db.open(db_path, schema_dir=tmp_path / "empty")
    assert _fingerprint(db_path) == before


def test_statements_keep_triggers_strings_and_comments_whole():
    """Splitting a file keeps ';' inside trigger bodies, strings and comments."""
    sql = (
        "-- header; with a semicolon\n"
        "CREATE TABLE t (a TEXT DEFAULT 'x;y');\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  UPDATE t SET a = 'z;'; DELETE FROM t WHERE a = ';';\n"
        "END;\n"
        "SELECT 1 /* trailing; comment */"
    )
    parts = list(schema.statements(sql))
    assert len(parts) == 3
    assert parts[0].endswith("DEFAULT 'x;y');")
    assert parts[1].startswith("CREATE TRIGGER") and parts[1].endswith("END;")
    assert parts[2] == "SELECT 1 /* trailing; comment */"
    conn = sqlite3.connect(":memory:")  # a single connection: the test is about splitting
    for part in parts:
        conn.execute(part)
    conn.close()


def _open_at_barrier(path: str, barrier, results) -> None:
    barrier.wait(timeout=60)
    try:
        with abathur_db.open(path) as pool:
            results.put(("ok", pool.applied, pool.backup_path))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc)))


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_opening_a_new_file_at_once_both_succeed(tmp_path, round_):
    """Two processes creating one database at the same moment apply each file exactly once."""
    path = str(tmp_path / f"race{round_}.db")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    processes = [ctx.Process(target=_open_at_barrier, args=(path, barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [status for status, *_ in outcomes] == ["ok", "ok"], outcomes
    applied = sorted(name for _, names, _ in outcomes for name in names)
    assert applied == [f.name for f in FILES]
    # The loser finds nothing pending once it holds the lock: it neither applies nor backs up anything.
    assert sorted(len(names) for _, names, _ in outcomes) == [0, len(FILES)]
    assert [backup for *_, backup in outcomes] == [None, None]
    assert not list(tmp_path.glob("*.bak*"))
    assert [v for v, _, _ in _ledger(path)] == [f.version for f in FILES]
    assert _user_version(path) == FILES[-1].version


def test_package_folder_copied_next_to_a_script_finds_its_schema(tmp_path):
    """A script beside copies of abathur_db/ and schema/ opens a database without installing."""
    source = Path(abathur_db.__file__).parent
    shutil.copytree(source, tmp_path / "abathur_db", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SCHEMA_DIR, tmp_path / "schema")
    (tmp_path / "script.py").write_text(
        "import abathur_db\n"
        "with abathur_db.open('vendored.db') as pool:\n"
        "    print(len(pool.applied), abathur_db.schema.schema_dir())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(FILES)), str((tmp_path / "schema").resolve())]


def test_missing_schema_folder_is_reported(tmp_path, monkeypatch):
    """Without any schema folder, the error lists where it looked."""
    monkeypatch.setattr(schema, "__file__", str(tmp_path / "pkg" / "schema.py"))
    with pytest.raises(SchemaError, match="no schema folder"):
        schema.schema_dir()


def _crlf_copy(folder: Path) -> Path:
    """Return a copy of the schema files with CRLF line ends, as git's autocrlf checks them out."""
    folder.mkdir()
    for file in FILES:
        (folder / file.name).write_bytes((SCHEMA_DIR / file.name).read_bytes().replace(b"\n", b"\r\n"))
    return folder


def test_files_checked_out_with_crlf_are_the_same_files(db_path, tmp_path):
    """A database made from LF files opens with CRLF copies of them (and back), applying and changing nothing."""
    crlf = _crlf_copy(tmp_path / "crlf")
    assert [f.sha256 for f in schema.load_files(crlf)] == [f.sha256 for f in FILES]
    abathur_db.open(db_path).close()
    before = _fingerprint(db_path)
    with abathur_db.open(db_path, schema_dir=crlf) as pool:
        assert pool.applied == []
    assert _fingerprint(db_path) == before
    other = tmp_path / "from-crlf.db"
    abathur_db.open(other, schema_dir=crlf).close()
    assert _ledger(other) == _ledger(db_path)
    conn = sqlite3.connect(other)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE instr(sql, char(13))").fetchone()[0] == 0
    conn.close()


def test_ledger_rows_recorded_over_crlf_text_still_match(db_path):
    """A database whose ledger holds the checksums of CRLF text (an older CRLF checkout) opens unchanged."""
    abathur_db.open(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    for file in FILES:
        crlf = hashlib.sha256(file.sql.replace("\n", "\r\n").encode()).hexdigest()
        conn.execute("UPDATE schema_migrations SET sha256 = ? WHERE version = ?", (crlf, file.version))
    conn.close()
    with abathur_db.open(db_path) as pool:
        assert pool.applied == []


def test_an_edit_beyond_line_ends_is_still_refused(db_path, tmp_path):
    """A CRLF copy with one more character is a changed file, whatever its line ends."""
    abathur_db.open(db_path).close()
    crlf = _crlf_copy(tmp_path / "crlf")
    edited = crlf / FILES[1].name
    edited.write_bytes(edited.read_bytes() + b"-- edited\r\n")
    with pytest.raises(SchemaError, match=f"{FILES[1].name} changed after it was applied"):
        abathur_db.open(db_path, schema_dir=crlf)


def _vendored(tmp_path: Path, *, ours: str | None) -> Path:
    """Copy abathur_db/ into `tmp_path` beside a schema/ folder of the script's own; ours goes to `ours`."""
    shutil.copytree(Path(abathur_db.__file__).parent, tmp_path / "abathur_db",
                    ignore=shutil.ignore_patterns("__pycache__", "sql"))
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "0001_users.sql").write_text("CREATE TABLE users (id INTEGER PRIMARY KEY);\n")
    if ours is not None:
        shutil.copytree(SCHEMA_DIR, tmp_path / ours)
    return tmp_path


def _run_script(folder: Path, code: str) -> subprocess.CompletedProcess:
    (folder / "script.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "script.py"], cwd=folder, capture_output=True, text=True, env=env,
                          timeout=60)


def test_a_vendored_copy_passes_over_the_scripts_own_schema_folder(tmp_path):
    """Beside a script's unrelated schema/, a vendored copy uses its own files in abathur_db/sql."""
    folder = _vendored(tmp_path, ours="abathur_db/sql")
    result = _run_script(folder, "import abathur_db\n"
                                 "with abathur_db.open('vendored.db') as pool:\n"
                                 "    print(len(pool.applied), abathur_db.schema.schema_dir())\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(FILES)), str((folder / "abathur_db" / "sql").resolve())]


def test_a_foreign_schema_folder_is_never_applied(tmp_path):
    """With only a script's own schema/ in reach, open() refuses, naming every folder tried, and creates nothing."""
    folder = _vendored(tmp_path, ours=None)
    result = _run_script(folder, "import abathur_db\nabathur_db.open('vendored.db')\n")
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("abathur_db.errors.SchemaError: no schema folder of abathur_db: tried ")
    package = (folder / "abathur_db").resolve()
    assert f"{package / 'sql'} (no such folder)" in error
    assert f"{package.parent / 'schema'} (no 0001_schema_ledger.sql: not abathur_db's schema folder)" in error
    assert not (folder / "vendored.db").exists()


def test_a_foreign_first_file_of_the_same_name_is_recognised(tmp_path, monkeypatch):
    """A folder without the package's 0001_schema_ledger.sql, or with another file of that name, is passed over."""
    package = tmp_path / "pkg"
    package.mkdir()
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "0001_schema_ledger.sql").write_text("CREATE TABLE schema_migrations (x);\n")
    (package / "sql").mkdir()
    monkeypatch.setattr(schema, "__file__", str(package / "schema.py"))
    with pytest.raises(SchemaError) as caught:
        schema.schema_dir()
    assert f"tried {package / 'sql'} (no 0001_schema_ledger.sql: not abathur_db's schema folder); " \
           f"{tmp_path / 'schema'} (0001_schema_ledger.sql is not abathur_db's)" in str(caught.value)
    (package / "sql").rmdir()
    shutil.copytree(SCHEMA_DIR, package / "sql")
    assert schema.schema_dir() == package / "sql"


# A row each table accepts (the task "t1" exists), and values its CHECK constraints refuse.
VALID_ROWS = {
    "tasks": {"id": "t", "prompt": "p"},
    "agents": {"id": "a", "name": "w", "specialization": "s", "task_id": "t1", "model": "m"},
    "audit": {"action_type": "x"},
    "checkpoints": {"task_id": "t1", "iteration": 0, "state": "{}"},
    "state": {"task_id": "t1", "key": "k", "value": "1"},
    "metrics": {"metric_name": "x", "metric_value": 1},
}
REFUSED_VALUES = [
    ("tasks", "input_data", "{not json"),
    ("tasks", "dependencies", '{"an": "object"}'),
    ("tasks", "status", "done"),
    ("tasks", "priority", "high"),
    ("tasks", "priority", 5.5),
    ("tasks", "priority", 11),
    ("tasks", "submitted_at", "2024-01-01 00:00:00"),  # SQL's CURRENT_TIMESTAMP shape, not ours
    ("agents", "state", "sleeping"),
    ("agents", "resource_usage", "{not json"),
    ("agents", "spawned_at", "2024-01-01 00:00:00"),
    ("audit", "memory_operation_type", "erase"),
    ("audit", "action_data", "{not json"),
    ("audit", "timestamp", "2024-01-01T00:00:00+00:00"),
    ("checkpoints", "state", "{not json"),
    ("checkpoints", "state", ""),
    ("checkpoints", "iteration", "one"),
    ("checkpoints", "created_at", "2024-01-01"),
    ("state", "value", "{not json"),
    ("state", "value", "NaN"),
    ("state", "updated_at", "2024-01-01T00:00:00Z"),
    ("metrics", "metric_value", -1),
    ("metrics", "metric_value", "abc"),
    ("metrics", "labels", "{not json"),
    ("metrics", "labels", "[1, 2]"),
    ("metrics", "timestamp", "2024-01-01T00:00:00"),
]


def _insert(conn, table: str, row: dict) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


@pytest.mark.parametrize("table", VALID_ROWS)
def test_the_valid_rows_are_accepted(conn, make_task, table):
    """Each table stores its valid row by raw SQL: the refusals below are the bad value's doing."""
    make_task("t1")
    before = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    _insert(conn, table, VALID_ROWS[table])
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == before + 1


@pytest.mark.parametrize(("table", "column", "value"), REFUSED_VALUES,
                         ids=[f"{table}.{column}={value!r}" for table, column, value in REFUSED_VALUES])
def test_database_itself_rejects_bad_values(conn, make_task, table, column, value):
    """Raw SQL cannot store invalid JSON, a value outside its enumeration or range, a wrong type or a foreign time shape."""
    make_task("t1")
    before = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    with pytest.raises(sqlite3.IntegrityError, match=f"constraint failed: .*{column}"):
        _insert(conn, table, {**VALID_ROWS[table], column: value})
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda conn: abathur_db.tasks.create(conn, "p", priority="high"), "tasks.priority"),
        (lambda conn: abathur_db.tasks.create(conn, "p", input_data={"x": float("nan")}), "tasks.input_data"),
        (lambda conn: abathur_db.sessions.create(conn, "app", "u", status="done"), "sessions.status"),
    ],
)
def test_the_same_values_through_the_package_raise_its_validation_error(conn, call, message):
    """Through the package, the same bad values raise ValidationError naming the field."""
    with pytest.raises(abathur_db.ValidationError, match=message):
        call(conn)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0


def test_a_new_database_with_every_pending_file_in_one_transaction(db_path, monkeypatch):
    """Creating a database sends one BEGIN IMMEDIATE ... COMMIT for all files and their ledger rows."""
    sent: list[str] = []
    connect = pool_module.connect

    def traced(path, **kwargs):
        conn = connect(path, **kwargs)
        conn.set_trace_callback(sent.append)
        return conn

    monkeypatch.setattr(pool_module, "connect", traced)
    abathur_db.open(db_path).close()
    control = [s for s in sent if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")]
    assert control == ["BEGIN IMMEDIATE", "COMMIT"]
    assert sum(s.startswith("INSERT INTO schema_migrations") for s in sent) == len(FILES)


def test_a_failure_in_a_later_file_undoes_the_earlier_ones(db_path, schema_copy):
    """When the last pending file fails, the files before it in the same upgrade are not applied either."""
    (schema_copy / f"{NEXT:04d}_broken.sql").write_text("INSERT INTO no_such_table VALUES (1);\n")
    with pytest.raises(SchemaError, match="no such table"):
        abathur_db.open(db_path, schema_dir=schema_copy)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    conn.close()


def _hold_write_lock(path, held: threading.Event, release: threading.Event, sql: str = "") -> None:
    """Hold the write lock on `path` until `release` is set, then run `sql` and commit."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    held.set()
    release.wait(timeout=60)
    for statement in schema.statements(sql):
        holder.execute(statement)
    holder.execute("COMMIT")
    holder.close()


class _SetWhenWaiting(logging.Handler):
    """Set an event `delay` seconds after the package logs that it waits for another connection."""

    def __init__(self, event: threading.Event, delay: float = 0) -> None:
        super().__init__()
        self.event, self.delay = event, delay

    def emit(self, record: logging.LogRecord) -> None:
        if f"another connection is writing (upgrading the schema?); waiting up to {schema.UPGRADE_WAIT_SECONDS} s" \
                in record.getMessage():
            threading.Timer(self.delay, self.event.set).start()


def _open_while_another_connection_writes(db_path, sql: str, schema_dir=None, hold: float = 0):
    """Open `db_path` while a raw connection holds the write lock; it commits `sql` `hold` s after the opener waits."""
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_path, held, release, sql))
    handler = _SetWhenWaiting(release, hold)
    logger = logging.getLogger("abathur_db")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    holder.start()
    try:
        assert held.wait(timeout=60)
        with abathur_db.open(db_path, schema_dir=schema_dir) as pool:
            assert release.is_set()  # the opener said it waited; only then did the writer commit
            return pool.applied
    finally:
        release.set()
        holder.join(timeout=60)
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def one_file_behind(db_path, tmp_path):
    """Return a schema folder holding one file more than the database at `db_path` has applied."""
    abathur_db.open(db_path).close()
    folder = tmp_path / "newer-schema"
    shutil.copytree(SCHEMA_DIR, folder)
    (folder / f"{NEXT:04d}_extra.sql").write_text("CREATE TABLE extra (x INTEGER);\n")
    return folder


def test_an_opener_that_finds_the_file_locked_waits_then_applies(db_path, one_file_behind):
    """An opener with a file to apply waits for the writer (logging that it does), then applies the file."""
    assert _open_while_another_connection_writes(db_path, "", one_file_behind) == [f"{NEXT:04d}_extra.sql"]
    assert _user_version(db_path) == NEXT


@pytest.mark.slow
def test_an_opener_waits_for_an_upgrade_longer_than_busy_timeout(db_path, one_file_behind):
    """An opener waits for another writer past busy_timeout (up to UPGRADE_WAIT_SECONDS), then applies its file."""
    hold = pool_module.BUSY_TIMEOUT_SECONDS + 1
    assert _open_while_another_connection_writes(db_path, "", one_file_behind, hold) == [f"{NEXT:04d}_extra.sql"]


def test_an_opener_works_out_pending_files_again_once_it_has_waited(db_path, one_file_behind):
    """When the writer it waited for applied the pending file, the opener applies nothing itself."""
    file = schema.load_files(one_file_behind)[-1]
    applied_by_the_writer = (
        f"{file.sql}\nINSERT INTO schema_migrations VALUES ({NEXT}, '{file.name}', '{file.sha256}', 'x');\n"
        f"PRAGMA user_version = {NEXT};")
    assert _open_while_another_connection_writes(db_path, applied_by_the_writer, one_file_behind) == []
    assert [v for v, _, _ in _ledger(db_path)] == list(range(1, NEXT + 1))


def test_an_opener_refuses_what_the_writer_it_waited_for_left(db_path, one_file_behind):
    """When the writer it waited for made the database newer than the code, the opener refuses it."""
    with pytest.raises(SchemaError, match="version 99 is newer"):
        _open_while_another_connection_writes(db_path, "PRAGMA user_version = 99;", one_file_behind)


def test_an_opener_gives_up_after_the_upgrade_wait(db_path, monkeypatch):
    """An opener still locked out after UPGRADE_WAIT_SECONDS raises BusyError saying how long it waited."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    monkeypatch.setattr(schema, "UPGRADE_WAIT_SECONDS", 0.2)
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_path, held, release))
    holder.start()
    try:
        assert held.wait(timeout=60)
        with pytest.raises(abathur_db.BusyError, match="for over 0.2 s while this one waited"):
            abathur_db.open(db_path)
    finally:
        release.set()
        holder.join(timeout=60)


@pytest.mark.parametrize("schema_dir, problem", [(5, "must be a str, bytes or os.PathLike"),
                                                 ("schema\x00", "cannot hold a NUL character")])
def test_a_schema_dir_of_another_type_or_holding_nul_is_refused_before_any_file_is_created(db_path, schema_dir,
                                                                                          problem):
    """schema_dir must be a path: anything else raises ConfigurationError naming it, and no database is created."""
    with pytest.raises(ConfigurationError, match=f"schema_dir {problem}"):
        abathur_db.open(db_path, schema_dir=schema_dir)
    assert not db_path.exists()
