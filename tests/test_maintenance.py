"""maintenance: backup(), checkpoint() and integrity_check()."""

from __future__ import annotations

import datetime as dt
import errno
import multiprocessing
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

import abathur_db
from abathur_db import (
    agents,
    audit,
    checkpoints,
    integrity_check,
    maintenance,
    metrics,
    schema,
    sessions,
    state,
    transaction,
)
from abathur_db.errors import ConfigurationError, DatabaseFileError, StorageFullError
from abathur_db.maintenance import backup
from abathur_db.pool import connect
from helpers import tracing, unchecked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(abathur_db.__file__)))


@pytest.fixture
def filled(conn, make_task):
    """Put a few rows in every table."""
    session = sessions.create(conn, "app", "user")["id"]
    task = make_task("t1", session_id=session)
    make_task("t2", dependencies='["t1"]')
    agent = agents.spawn(conn, task, "w", "s", "m", session_id=session)["id"]
    audit.record(conn, "x", task_id=task, agent_id=agent, action_data={"secret": "it's \x00 here"})
    checkpoints.save(conn, task, 0, {"step": 1}, session_id=session)
    state.set(conn, task, "k", [1, 2])
    metrics.record(conn, "m", 1.5, labels={"a": "b"})
    conn.execute(
        "INSERT INTO memory_entries (namespace, key, value, memory_type) VALUES ('ns', 'k', '1', 'semantic')"
    )
    return conn


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def break_a_check(conn) -> None:
    """Store a row that violates a CHECK constraint, as a buggy writer could."""
    with unchecked(conn):
        conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('bad', -1)")


def test_backup_copies_every_row_and_passes_integrity_check(filled, tmp_path):
    """The copy holds the same schema and rows as the source and is sound."""
    dest = tmp_path / "copy.db"
    assert backup(filled, dest) == str(dest)
    copy = sqlite3.connect(dest)
    try:
        assert list(copy.iterdump()) == list(filled.iterdump())
        assert integrity_check(copy) == [] and integrity_check(copy, quick=True) == []
    finally:
        copy.close()
    assert filled.execute("SELECT count(*) FROM agents").fetchone()[0] == 1


@pytest.mark.parametrize("source_mode, expected", [
    pytest.param(0o600, 0o600, id="600"),
    pytest.param(0o400, 0o400, id="400"),
    pytest.param(0o640, 0o600, id="640"),
    pytest.param(0o644, 0o600, id="644"),
    pytest.param(0o200, 0o200, id="200"),
])
def test_backup_is_owner_only_and_never_wider_than_the_source(conn, db_path, tmp_path, source_mode, expected):
    """The copy is readable by its owner only and gets no permission the source lacks."""
    os.chmod(db_path, source_mode)
    try:
        dest = backup(conn, tmp_path / "copy.db")
    finally:
        os.chmod(db_path, 0o600)
    assert mode_of(dest) == expected
    assert mode_of(dest) & 0o077 == 0 and mode_of(dest) & ~source_mode == 0


def test_the_copy_is_written_owner_only_under_a_temporary_name_beside_the_destination(conn, tmp_path, monkeypatch):
    """While it is written the copy is <dest>.<random>.partial beside dest, owner-only whatever the umask."""
    dest = tmp_path / "copy.db"
    seen = []
    real = maintenance._copy_and_check

    def watched(source, partial, final):
        seen.append((partial, mode_of(partial), dest.exists()))
        real(source, partial, final)
        seen.append((partial, mode_of(partial), dest.exists()))

    monkeypatch.setattr(maintenance, "_copy_and_check", watched)
    old = os.umask(0)
    try:
        assert backup(conn, dest) == str(dest)
    finally:
        os.umask(old)
    (partial, mode, named), (_, mode_written, named_written) = seen
    assert os.path.dirname(partial) == str(tmp_path)
    assert re.fullmatch(r"copy\.db\.[^./]+\.partial", os.path.basename(partial)), partial
    assert mode & 0o077 == 0 and mode_written & 0o077 == 0, (oct(mode), oct(mode_written))
    assert not named and not named_written
    assert not os.path.exists(partial) and mode_of(dest) == 0o600


def test_backup_ignores_a_permissive_umask(conn, tmp_path):
    """A umask of 0 does not widen the copy."""
    old = os.umask(0)
    try:
        dest = backup(conn, tmp_path / "copy.db")
    finally:
        os.umask(old)
    assert mode_of(dest) == 0o600


# A UTC time to the millisecond, with or without separators: 2024-05-06T07:08:09.010Z or 20240506T070809010Z.
_UTC_TIME = re.compile(r"(\d{4})-?(\d\d)-?(\d\d)T(\d\d):?(\d\d):?(\d\d)\.?(\d{3})Z")


def _to_the_millisecond(moment: dt.datetime) -> dt.datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def test_each_upgrade_backup_is_named_after_the_old_version_and_the_utc_time(tmp_path):
    """An upgrade's backup is <db>.v<old version>-<UTC time>.bak, timed when written: two never share a name."""
    older = tmp_path / "schema-v3"
    older.mkdir()
    for file in schema.load_files()[:3]:
        (older / file.name).write_text(file.sql, encoding="utf-8")
    pristine = tmp_path / "v3.db"
    abathur_db.open(pristine, schema_dir=older).close()
    db_path = tmp_path / "abathur.db"
    written = []
    for rows in (1, 2):  # other row counts, so the second upgrade cannot reuse the first backup
        shutil.copyfile(pristine, db_path)
        plain = sqlite3.connect(db_path)
        plain.executemany("INSERT INTO tasks (id, prompt) VALUES (?, 'p')", [(f"t{i}",) for i in range(rows)])
        plain.commit()
        plain.close()
        before = _to_the_millisecond(dt.datetime.now(dt.timezone.utc))
        with abathur_db.open(db_path) as pool:
            name = pool.backup_path
        after = dt.datetime.now(dt.timezone.utc)
        assert name.startswith(f"{db_path}.v3-") and name.endswith(".bak"), name
        stamp = _UTC_TIME.fullmatch(name[len(f"{db_path}.v3-"):-len(".bak")])
        assert stamp, name
        *fields, millis = map(int, stamp.groups())
        assert before <= dt.datetime(*fields, millis * 1000, tzinfo=dt.timezone.utc) <= after, (before, name, after)
        written.append(name)
    assert written[0] != written[1]
    for rows, name in zip((1, 2), written):
        copy = sqlite3.connect(name)
        try:
            assert copy.execute("SELECT count(*) FROM tasks").fetchone()[0] == rows
            assert copy.execute("PRAGMA user_version").fetchone()[0] == 3
        finally:
            copy.close()


@pytest.mark.parametrize("dest, problem", [(None, "must be a str, bytes or os.PathLike"), (3, "must be a str"),
                                           ("copy\x00.db", "cannot hold a NUL character")])
def test_backup_refuses_a_path_of_another_type_or_holding_nul(conn, tmp_path, monkeypatch, dest, problem):
    """A backup's path must be text, bytes or os.PathLike without a NUL character; nothing is written otherwise."""
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ConfigurationError, match=f"a backup's path {problem}"):
        backup(conn, dest)
    assert sorted(os.listdir(tmp_path)) == before


def test_backup_to_a_bytes_path_returns_it_as_text(conn, tmp_path):
    """A bytes path is decoded as the file system does, like a database path; the copy's path comes back as text."""
    dest = tmp_path / "copy.db"
    assert backup(conn, os.fsencode(dest)) == str(dest) and dest.exists()


def test_backup_refuses_an_existing_destination(conn, tmp_path):
    """An existing file at the destination raises ConfigurationError and is left untouched."""
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"precious")
    with pytest.raises(ConfigurationError) as caught:
        backup(conn, dest)
    assert str(dest) in str(caught.value) and "exists" in str(caught.value)
    assert dest.read_bytes() == b"precious"


def test_backup_refuses_a_connection_inside_a_transaction(conn, make_task, tmp_path):
    """backup inside a transaction on the same connection raises ConfigurationError, creating nothing."""
    dest = tmp_path / "copy.db"
    with transaction(conn):
        make_task()
        with pytest.raises(ConfigurationError, match="transaction"):
            backup(conn, dest)
    assert not dest.exists()


def test_backup_refuses_another_threads_connection(conn, tmp_path):
    """backup() through a connection another thread owns is refused, and writes nothing."""
    import concurrent.futures

    dest = tmp_path / "copy.db"
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        with pytest.raises(ConfigurationError, match="belongs to thread"):
            other.submit(backup, conn, dest).result(timeout=30)
    assert not dest.exists()


def _deny_pragmas(conn) -> None:
    def authorize(action, *names):
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_PRAGMA else sqlite3.SQLITE_OK

    conn.set_authorizer(authorize)


@pytest.mark.parametrize("opened_by", [abathur_db.connect, sqlite3.connect], ids=["package", "sqlite3"])
@pytest.mark.parametrize("spoil, error", [
    pytest.param(lambda conn: conn.close(), ConfigurationError, id="closed by hand"),
    pytest.param(_deny_pragmas, abathur_db.AbathurDBError, id="PRAGMA refused"),
])
def test_an_sqlite3_error_inside_backup_is_the_package_error(tmp_path, opened_by, spoil, error):
    """A source connection SQLite refuses to read raises the package's error, sqlite3's chained, and leaves no file."""
    source = opened_by(tmp_path / "source.db")
    spoil(source)
    dest = tmp_path / "copy.db"
    try:
        with pytest.raises(error) as caught:
            backup(source, dest)
    finally:
        source.close()
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert not dest.exists() and _no_partial_copies(tmp_path)


def test_backup_into_a_missing_directory(conn, tmp_path):
    """A destination that cannot be created raises DatabaseFileError naming it."""
    dest = tmp_path / "no such dir" / "copy.db"
    with pytest.raises(DatabaseFileError) as caught:
        backup(conn, dest)
    assert str(dest) in str(caught.value)


def _no_partial_copies(folder) -> bool:
    return not [name for name in os.listdir(folder) if ".partial" in name]


def test_backup_of_a_database_whose_only_problems_are_rows_breaking_a_rule(conn, tmp_path):
    """A source holding rows that break a CHECK backs up fine: the copy has those problems and no other."""
    break_a_check(conn)
    dest = backup(conn, tmp_path / "copy.db")
    copy = sqlite3.connect(dest)
    try:
        assert integrity_check(copy) == integrity_check(conn) == ["CHECK constraint failed in metrics"]
        assert copy.execute("SELECT metric_value FROM metrics").fetchall() == [(-1.0,)]
    finally:
        copy.close()
    assert _no_partial_copies(tmp_path)


def test_backup_through_a_read_only_connection_of_such_a_database(db_path, conn, tmp_path):
    """A read-only source connection, which skips CHECK constraints in integrity_check, backs up such a database too."""
    break_a_check(conn)
    reader = connect(db_path, readonly=True)
    try:
        assert integrity_check(reader) == []  # SQLite does not parse CHECKs of a read-only database
        dest = backup(reader, tmp_path / "copy.db")
    finally:
        reader.close()
    assert os.path.exists(dest)


class _Tampered(sqlite3.Connection):
    """A copy whose rows change after the backup API wrote them, as a failing disk could change them."""

    tampered = False

    def execute(self, sql, *args):
        if sql.startswith("PRAGMA integrity_check") and not self.tampered:
            self.tampered = True
            super().execute("PRAGMA ignore_check_constraints = ON")
            super().execute("UPDATE metrics SET metric_value = -5")
            super().execute("PRAGMA ignore_check_constraints = OFF")
        return super().execute(sql, *args)


def test_copy_with_a_rule_breaker_the_source_lacks_is_refused(filled, tmp_path, monkeypatch):
    """A copy that breaks a rule where the source does not raises DatabaseFileError; nothing is left."""
    monkeypatch.setattr(maintenance, "_open_copy", lambda path: sqlite3.connect(path, factory=_Tampered))
    dest = tmp_path / "copy.db"
    with pytest.raises(DatabaseFileError, match=r"metrics id 1: metric_value breaks CHECK metric_value") as caught:
        backup(filled, dest)
    assert str(dest) in str(caught.value)
    assert not dest.exists() and _no_partial_copies(tmp_path)


def damage_an_index(conn, make_task) -> None:
    """Make idx_tasks_submitted_at disagree with its table (the tables themselves stay sound)."""
    for i in range(5):
        make_task(f"t{i}", priority=i)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = replace(sql, 'submitted_at)', 'prompt)')"
                 " WHERE name = 'idx_tasks_submitted_at'")
    conn.execute("PRAGMA writable_schema = OFF")


def test_copy_of_a_structurally_broken_database_is_refused(conn, make_task, tmp_path):
    """An index that disagrees with its table is a structural problem: refused even though the source has it."""
    damage_an_index(conn, make_task)
    dest = tmp_path / "copy.db"
    with pytest.raises(DatabaseFileError, match="idx_tasks_submitted_at"):
        backup(conn, dest)
    assert not dest.exists() and _no_partial_copies(tmp_path)


def test_full_disk_while_copying_raises_storage_full_and_leaves_nothing(filled, tmp_path, monkeypatch):
    """A copy that runs out of room raises StorageFullError; neither the copy nor its partial file stays."""
    def tiny(path):
        target = sqlite3.connect(path)
        target.execute("PRAGMA max_page_count = 2").fetchall()
        return target

    monkeypatch.setattr(maintenance, "_open_copy", tiny)
    dest = tmp_path / "copy.db"
    with pytest.raises(StorageFullError, match="full"):
        backup(filled, dest)
    assert not dest.exists() and _no_partial_copies(tmp_path)


@pytest.mark.parametrize("error, raised", [(errno.ENOSPC, StorageFullError), (errno.EACCES, DatabaseFileError)])
def test_a_partial_file_that_cannot_be_created(conn, tmp_path, monkeypatch, error, raised):
    """No room for the partial file raises StorageFullError; another OS refusal DatabaseFileError, naming the copy."""
    def refuse(**kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(maintenance.tempfile, "mkstemp", refuse)
    dest = tmp_path / "copy.db"
    with pytest.raises(raised, match="cannot create the backup") as caught:
        backup(conn, dest)
    assert str(dest) in str(caught.value) and os.strerror(error) in str(caught.value)
    assert not dest.exists()


def test_destination_that_appears_during_the_copy_is_never_replaced(conn, tmp_path, monkeypatch):
    """A file created at the destination while the copy runs is kept; the backup raises ConfigurationError."""
    dest = tmp_path / "copy.db"

    def racing(path):
        dest.write_bytes(b"someone else's")
        return sqlite3.connect(path)

    monkeypatch.setattr(maintenance, "_open_copy", racing)
    with pytest.raises(ConfigurationError, match="exists") as caught:
        backup(conn, dest)
    assert str(dest) in str(caught.value)
    assert dest.read_bytes() == b"someone else's" and _no_partial_copies(tmp_path)


def test_a_name_that_cannot_be_given_is_a_database_file_error(conn, tmp_path, monkeypatch):
    """When the finished copy cannot be linked to its name, DatabaseFileError names it and nothing stays."""
    def no_links(source, target):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(maintenance.os, "link", no_links)
    dest = tmp_path / "copy.db"
    with pytest.raises(DatabaseFileError, match="cannot name the finished backup") as caught:
        backup(conn, dest)
    assert str(dest) in str(caught.value)
    assert not dest.exists() and _no_partial_copies(tmp_path)


_KILLED_BACKUP = """
    import sys, time
    import abathur_db
    from abathur_db import maintenance

    real = maintenance._copy_and_check

    def copy_then_stall(*args):
        real(*args)
        print("copied", flush=True)
        time.sleep(60)

    maintenance._copy_and_check = copy_then_stall
    with abathur_db.open(sys.argv[1]) as pool:
        abathur_db.backup(pool.connection(), sys.argv[2])
"""


def test_a_backup_killed_before_it_is_named_leaves_nothing_that_looks_like_one(filled, db_path, tmp_path):
    """SIGKILL after the whole copy is written but before it is named leaves no file at the destination."""
    dest = tmp_path / "copy.bak"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED_BACKUP), str(db_path), str(dest)],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "copied\n"
    finally:
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
    assert not dest.exists()
    (partial,) = [name for name in os.listdir(tmp_path) if name.startswith("copy.bak.")]
    assert partial.endswith(".partial")


@pytest.mark.parametrize("quick", [False, True])
def test_integrity_check_of_a_sound_database_is_empty(filled, quick):
    """A sound database has no problems."""
    assert integrity_check(filled, quick=quick) == []


@pytest.mark.parametrize("quick", [False, True])
def test_integrity_check_reports_a_violated_check(conn, quick):
    """A row breaking a CHECK constraint is reported, naming its table."""
    break_a_check(conn)
    problems = integrity_check(conn, quick=quick)
    assert problems and any("metrics" in problem for problem in problems), problems


def test_only_the_full_integrity_check_compares_indexes_with_their_tables(conn, make_task, db_path):
    """integrity_check() (by default) finds an index that disagrees with its table; quick=True skips that check."""
    damage_an_index(conn, make_task)
    damaged = connect(db_path)  # a new connection reads the changed schema
    try:
        problems = integrity_check(damaged)
        assert problems and all("idx_tasks_submitted_at" in problem for problem in problems), problems
        assert integrity_check(damaged, quick=False) == problems
        assert integrity_check(damaged, quick=True) == []
    finally:
        damaged.close()


def test_backup_of_an_in_memory_database_is_owner_only(tmp_path):
    """A source without a file (nothing to compare modes with) still gives an owner-only copy."""
    source = sqlite3.connect(":memory:", isolation_level=None)
    try:
        source.execute("CREATE TABLE t (x)")
        source.execute("INSERT INTO t VALUES ('kept')")
        dest = backup(source, tmp_path / "copy.db")
    finally:
        source.close()
    assert mode_of(dest) == 0o600
    copy = sqlite3.connect(dest)
    try:
        assert copy.execute("SELECT x FROM t").fetchall() == [("kept",)]
    finally:
        copy.close()


@pytest.fixture
def not_a_database(tmp_path):
    """Return a connection to a file that holds text, not an SQLite database."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"not an SQLite database " * 20)
    junk = sqlite3.connect(path, isolation_level=None)
    yield junk
    junk.close()


def test_backup_of_a_file_that_is_not_a_database(not_a_database, tmp_path):
    """A source that is not a database raises DatabaseFileError and leaves no copy behind."""
    dest = tmp_path / "copy.db"
    with pytest.raises(DatabaseFileError, match="not a database"):
        backup(not_a_database, dest)
    assert not dest.exists()


@pytest.mark.parametrize("quick", [False, True])
def test_integrity_check_of_a_file_that_is_not_a_database(not_a_database, quick):
    """Checking a file that is not a database raises DatabaseFileError, not a bare sqlite3 error."""
    with pytest.raises(DatabaseFileError, match="not a database"):
        integrity_check(not_a_database, quick=quick)


# checkpoint(): the WAL copied back into the database file.


def _wal_bytes(db_path) -> int:
    return os.path.getsize(f"{db_path}-wal")


def test_checkpoint_truncate_empties_the_wal_and_keeps_every_row(filled, db_path):
    """The default mode copies every frame back and cuts the WAL file to zero bytes."""
    from abathur_db import checkpoint
    from abathur_db.maintenance import CheckpointResult

    assert _wal_bytes(db_path) > 0
    dump = list(filled.iterdump())
    result = checkpoint(filled)
    assert isinstance(result, CheckpointResult) and result == (0, 0, 0)
    assert (result.busy, result.log, result.checkpointed) == (0, 0, 0)
    assert _wal_bytes(db_path) == 0
    assert list(filled.iterdump()) == dump


@pytest.mark.parametrize("mode", ["PASSIVE", "FULL", "RESTART", "passive", "Restart"])
def test_checkpoint_modes_copy_every_frame_without_truncating(filled, db_path, mode):
    """PASSIVE, FULL and RESTART (any case) copy every frame of a quiet database and leave the file's size."""
    from abathur_db.maintenance import checkpoint

    size = _wal_bytes(db_path)
    result = checkpoint(filled, mode)
    assert result.busy == 0 and result.log == result.checkpointed > 0, result
    assert _wal_bytes(db_path) == size


@pytest.mark.parametrize("mode", ["truncate!", "", None, 3, ["TRUNCATE"], "FULL; DROP TABLE tasks"])
def test_checkpoint_refuses_an_unknown_mode(conn, mode):
    """A mode that is not one of SQLite's four raises ValidationError naming it, sending nothing."""
    from abathur_db.errors import ValidationError
    from abathur_db.maintenance import checkpoint

    with tracing(conn) as sent:
        with pytest.raises(ValidationError, match="PASSIVE, FULL, RESTART, TRUNCATE") as caught:
            checkpoint(conn, mode)
    assert repr(mode) in str(caught.value)
    assert sent == []


def test_checkpoint_refuses_a_connection_inside_a_transaction(conn, make_task):
    """Inside a transaction on the same connection checkpoint raises ConfigurationError, not a lock error."""
    from abathur_db.maintenance import checkpoint

    with transaction(conn):
        make_task()
        with pytest.raises(ConfigurationError, match="transaction"):
            checkpoint(conn)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1


def test_checkpoint_reports_a_reader_that_holds_the_wal(pool, db_path):
    """A read transaction on another connection keeps its frames: busy is 1 and the WAL keeps its size."""
    from abathur_db import connect
    from abathur_db.maintenance import checkpoint

    conn = pool.connection()
    metrics.record(conn, "before the reader", 1)
    reader = connect(db_path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM metrics").fetchall()
        metrics.record(conn, "after the reader", 2)
        conn.execute("PRAGMA busy_timeout = 50")  # this connection only: TRUNCATE waits for the reader
        size = _wal_bytes(db_path)
        held = checkpoint(conn)
        assert held.busy == 1 and held.checkpointed < held.log, held
        assert _wal_bytes(db_path) == size
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert checkpoint(conn) == (0, 0, 0)


@pytest.mark.parametrize("busy_timeout, waited", [(5000, maintenance.CHECKPOINT_WAIT_MS), (20, 20)])
def test_checkpoint_waits_at_most_checkpoint_wait_ms_and_gives_busy_timeout_back(conn, busy_timeout, waited):
    """checkpoint() waits CHECKPOINT_WAIT_MS (100 ms, as documented) or less, around its PRAGMA only."""
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout}")
    with tracing(conn) as sent:
        abathur_db.checkpoint(conn, "passive")
    assert maintenance.CHECKPOINT_WAIT_MS == 100
    assert sent == ["PRAGMA busy_timeout", f"PRAGMA busy_timeout = {waited}", "PRAGMA wal_checkpoint(PASSIVE)",
                    f"PRAGMA busy_timeout = {busy_timeout}"]
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == busy_timeout


# SQLite's checkpoint lock: byte 120 + 1 of the -shm file (WALINDEX_LOCK_OFFSET + WAL_CKPT_LOCK).
_CHECKPOINT_LOCK_BYTE = 121


def _hold_checkpoint_lock(shm: str, held, release) -> None:  # pragma: no cover - runs in the child
    """In another process: hold SQLite's checkpoint lock, as a checkpoint under way does, until told to release."""
    fd = os.open(shm, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, _CHECKPOINT_LOCK_BYTE)
    held.set()
    release.wait(60)
    os.close(fd)


@pytest.mark.skipif(fcntl is None, reason="POSIX locks")
@pytest.mark.parametrize("released_after", [0.03, None], ids=["ends-in-time", "never-ends"])
def test_checkpoint_waits_for_another_checkpoint_under_way(filled, db_path, released_after):
    """Another process's checkpoint under way is waited for, up to CHECKPOINT_WAIT_MS; then ``busy`` is 1."""
    fork = multiprocessing.get_context("fork")
    held, release = fork.Event(), fork.Event()
    child = fork.Process(target=_hold_checkpoint_lock, args=(f"{db_path}-shm", held, release))
    child.start()
    try:
        assert held.wait(30)
        if released_after is not None:
            threading.Timer(released_after, release.set).start()
        started = time.monotonic()
        result = abathur_db.checkpoint(filled, "passive")
        waited = time.monotonic() - started
    finally:
        release.set()
        child.join(30)
    if released_after is None:
        assert result == (1, -1, -1) and waited >= maintenance.CHECKPOINT_WAIT_MS / 1000
    else:
        assert result.busy == 0 and result.log == result.checkpointed > 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_the_backups_name_is_made_durable(conn, tmp_path, monkeypatch):
    """Once the copy has its name, its folder is synced to disk, so a crash cannot forget the name."""
    events = []
    real_link, real_fsync = os.link, os.fsync

    def link(source, target):
        real_link(source, target)
        events.append(("link", os.fspath(target)))

    def fsync(handle):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{handle}")))
        real_fsync(handle)

    monkeypatch.setattr(maintenance.os, "link", link)
    monkeypatch.setattr(maintenance.os, "fsync", fsync)
    dest = backup(conn, tmp_path / "copy.db")
    folder = os.path.realpath(tmp_path)
    assert ("link", dest) in events and ("fsync", folder) in events
    assert events.index(("link", dest)) < events.index(("fsync", folder))


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_backup_leaves_no_file_descriptor_open(conn, tmp_path):
    """A backup closes every file it opened: the process holds as many descriptors after it as before."""
    backup(conn, tmp_path / "warm-up.db")  # SQLite opens what it keeps for the connection's life once
    before = _open_descriptors()
    backup(conn, tmp_path / "copy.db")
    assert _open_descriptors() == before


def test_checkpoint_of_a_database_not_in_wal_mode(tmp_path):
    """Without a WAL there is nothing to copy: SQLite reports -1 frames."""
    from abathur_db.maintenance import checkpoint

    plain = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    try:
        plain.execute("CREATE TABLE t (x)")
        assert checkpoint(plain) == (0, -1, -1)
    finally:
        plain.close()


def test_checkpoint_of_a_file_that_is_not_a_database(not_a_database):
    """Checkpointing a file that is not a database raises DatabaseFileError."""
    from abathur_db.maintenance import checkpoint

    with pytest.raises(DatabaseFileError, match="not a database"):
        checkpoint(not_a_database)


def test_a_checkpoint_waiting_for_a_reader_holds_writers_back_only_briefly(pool, db_path):
    """A TRUNCATE checkpoint blocked by a reader gives up after CHECKPOINT_WAIT_MS: writers never wait busy_timeout."""
    import concurrent.futures
    import threading

    from abathur_db import connect
    from abathur_db.maintenance import CHECKPOINT_WAIT_MS, checkpoint

    conn = pool.connection()
    metrics.record(conn, "before the reader", 1)
    reader = connect(db_path)
    probe = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM metrics").fetchall()
        metrics.record(conn, "after the reader", 2)  # frames the reader's snapshot must keep
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            done = executor.submit(lambda: checkpoint(pool.connection()))  # busy_timeout 5000 on that connection
            while not done.done():  # until the checkpoint holds the write lock, or has finished
                try:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    break
                threading.Event().wait(0.001)
            conn.execute("PRAGMA busy_timeout = 2000")  # this connection only: well under the 5 s default
            assert metrics.record(conn, "while it waited", 3)["metric_name"] == "while it waited"
            assert done.result(timeout=30).busy == 1
    finally:
        probe.close()
        reader.execute("COMMIT")
        reader.close()
    assert CHECKPOINT_WAIT_MS < 2000
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2000  # the caller's setting, untouched
