"""python -m abathur_db.verify: exit codes and report lines."""

from __future__ import annotations

import sqlite3

from abathur_db import verify


def test_fresh_database_passes(db_path, capsys):
    """verify creates a new database and reports every check as passed (exit 0)."""
    assert verify.main([str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "PASS  core indexes: all 15 present" in out


def test_dropped_index_fails(db_path, capsys):
    """A missing core index is named and makes verify exit 1."""
    verify.main([str(db_path)])
    conn = sqlite3.connect(db_path)
    conn.execute("DROP INDEX idx_audit_timestamp")
    conn.close()
    assert verify.main([str(db_path)]) == 1
    assert "FAIL  core indexes: missing idx_audit_timestamp" in capsys.readouterr().out


def test_unusable_file_is_one_line_on_stderr(tmp_path, capsys):
    """A file that is not SQLite gives a one-line error on stderr and exit 1, no traceback."""
    path = tmp_path / "notes.txt"
    path.write_text("not a database" * 1000)
    assert verify.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
