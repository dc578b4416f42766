"""maintenance: backup(), checkpoint() and integrity_check()."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from abathur_db import agents, audit, checkpoints, integrity_check, metrics, sessions, state, transaction
from abathur_db.errors import ConfigurationError, DatabaseFileError
from abathur_db.maintenance import backup


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
        "INSERT INTO memory_entries (namespace, key, value, memory_type) VALUES ('ns', 'k', '1', 't')"
    )
    return conn


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def break_a_check(conn) -> None:
    """Store a row that violates a CHECK constraint, as a buggy writer could."""
    conn.execute("PRAGMA ignore_check_constraints = ON")
    try:
        conn.execute("INSERT INTO metrics (metric_name, metric_value) VALUES ('bad', -1)")
    finally:
        conn.execute("PRAGMA ignore_check_constraints = OFF")


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


def test_backup_ignores_a_permissive_umask(conn, tmp_path):
    """A umask of 0 does not widen the copy."""
    old = os.umask(0)
    try:
        dest = backup(conn, tmp_path / "copy.db")
    finally:
        os.umask(old)
    assert mode_of(dest) == 0o600


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


def test_backup_into_a_missing_directory(conn, tmp_path):
    """A destination that cannot be created raises DatabaseFileError naming it."""
    dest = tmp_path / "no such dir" / "copy.db"
    with pytest.raises(DatabaseFileError) as caught:
        backup(conn, dest)
    assert str(dest) in str(caught.value)


def test_backup_of_a_database_breaking_a_check_is_refused_and_removed(conn, tmp_path):
    """A copy that fails integrity_check raises DatabaseFileError and leaves no file behind."""
    break_a_check(conn)
    dest = tmp_path / "copy.db"
    with pytest.raises(DatabaseFileError, match="integrity_check"):
        backup(conn, dest)
    assert not dest.exists()


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

    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    try:
        with pytest.raises(ValidationError, match="PASSIVE, FULL, RESTART, TRUNCATE"):
            checkpoint(conn, mode)
    finally:
        conn.set_trace_callback(None)
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
