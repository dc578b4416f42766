"""The package logger: silent unless the application configures logging; INFO lines for backups and requeues."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import abathur_db
from abathur_db import tasks
from legacy import build_legacy

ROOT = Path(abathur_db.__file__).resolve().parent.parent
FUTURE = "2100-01-01T00:00:00.000Z"  # every running task is stale by then


def _info_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "abathur_db" and record.levelno == logging.INFO]


def test_the_logger_prints_nothing_without_the_applications_configuration():
    """A warning of the package's logger reaches no stream unless the application adds a handler."""
    code = ("import logging, abathur_db\n"
            "logging.getLogger('abathur_db').warning('should go nowhere')\n"
            "logging.getLogger('other').warning('printed by the last-resort handler')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "printed by the last-resort handler\n"
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("abathur_db").handlers)


def test_backup_logs_one_info_line(conn, db_path, tmp_path, caplog):
    """backup() logs one INFO line naming the source, the copy and its size."""
    dest = tmp_path / "copy.db"
    with caplog.at_level(logging.INFO, logger="abathur_db"):
        abathur_db.backup(conn, dest)
    (line,) = _info_lines(caplog)
    assert line.startswith(f"{db_path}: backup written to {dest} ({dest.stat().st_size} bytes in ")


def test_an_upgrade_logs_its_backup_once_and_never_repeats_the_logger_name(tmp_path, caplog):
    """An upgrade's lines start with the file's path, not "abathur_db:", and name the backup once."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    with caplog.at_level(logging.INFO, logger="abathur_db"):
        abathur_db.open(path).close()
    lines = _info_lines(caplog)
    assert lines and all(line.startswith(f"{path}: ") for line in lines), lines
    assert sum("backup written to" in line for line in lines) == 1


def test_requeue_stale_logs_what_it_changed(conn, caplog):
    """requeue_stale logs one INFO line counting tasks requeued and failed, and nothing when none were stale."""
    for retries in (3, 0):
        tasks.create(conn, f"{retries} retries", max_retries=retries)
        tasks.claim_next(conn)
    with caplog.at_level(logging.INFO, logger="abathur_db"):
        tasks.requeue_stale(conn)  # nothing is stale yet
        assert _info_lines(caplog) == []
        assert len(tasks.requeue_stale(conn, now=FUTURE)) == 2
    assert _info_lines(caplog) == [
        "tasks: requeue_stale sent 1 stale task(s) back to pending, 1 failed with no retries left"]
