"""python -m abathur_db: every command, its text and JSON output, exit codes, and files it must not touch."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib
import json
import os
import re
import runpy
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import abathur_db
from abathur_db import _cli_text, audit, checkpoints, cli, metrics, schema, tasks, verify
from abathur_db._values import format_datetime
from legacy import build_legacy

REPO = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.timezone.utc)
LONG_AGO = "2020-01-01T00:00:00.000Z"
LATEST = len(schema.load_files())

# Every command line that reaches the database, with what it needs besides --db.
READ_ONLY = [["status"], ["tasks", "list", "--status", "pending"], ["tasks", "show", "task-0"]]
WRITING = [["tasks", "retry", "task-0"], ["tasks", "cancel", "task-0"], ["tasks", "release", "task-0"],
           ["requeue-stale"], ["prune", "audit", "--older-than", "30d"], ["prune", "metrics", "--before", "2024-01-01"],
           ["prune", "checkpoints", "--keep-last", "1"], ["checkpoint"]]
COMMANDS = [*READ_ONLY, *WRITING, ["backup", "copy.db"], ["verify"]]
# Every command and group, for --help.
HELP = [[], ["status"], ["tasks"], ["tasks", "list"], ["tasks", "show"], ["tasks", "retry"], ["tasks", "cancel"],
        ["tasks", "release"], ["requeue-stale"], ["prune"], ["prune", "audit"], ["prune", "metrics"],
        ["prune", "checkpoints"], ["backup"], ["checkpoint"]]


def at(seconds: int) -> str:
    """Return the timestamp `seconds` after 2024-01-01."""
    return format_datetime(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds))


@contextlib.contextmanager
def _read(path):
    """Yield a read-only connection to `path`."""
    conn = abathur_db.connect(path, readonly=True)
    try:
        yield conn
    finally:
        conn.close()


def _run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *args, code: int = 0) -> dict:
    """Run with --json; check the exit status and that stdout is one JSON document; return it."""
    got, out, err = _run(capsys, "--json", *args)
    assert got == code, out + err
    return json.loads(out)


def _fails(capsys, *args, code: int = 1) -> str:
    """Run a command that must fail with `code` and one line on stderr; return that line."""
    got, out, err = _run(capsys, *args)
    assert got == code, out + err
    assert "Traceback" not in err
    if code == 1:
        assert out == "" and err.count("\n") == 1 and err.startswith("abathur_db: "), err
    return err


def _seed(path) -> None:
    """Write a database with a task in each status (ids task-0…), one stale, and audit, metrics, checkpoints."""
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        tasks.create(conn, "wait", task_id="task-0", submitted_at=LONG_AGO)
        for number, status in enumerate(("running", "stale", "completed", "failed", "cancelled"), start=1):
            tasks.create(conn, status, task_id=f"task-{number}", priority=9, max_execution_timeout_seconds=86400)
            claimed = tasks.claim_next(conn)
            if status == "completed":
                tasks.complete(conn, claimed["id"], claimed["lease"], {"ok": True})
            elif status == "failed":
                tasks.fail(conn, claimed["id"], claimed["lease"], "it broke")
            elif status == "cancelled":
                tasks.cancel(conn, claimed["id"])
        conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = 'task-2'", (LONG_AGO,))
        for iteration in range(3):
            checkpoints.save(conn, "task-1", iteration, {"step": iteration})
        audit.record(conn, "old", task_id="task-1")
        audit.record(conn, "new", task_id="task-1")
        metrics.record(conn, "old", 1.0, timestamp=LONG_AGO)
        metrics.record(conn, "new", 2.0)
        conn.execute("UPDATE audit SET timestamp = ? WHERE action_type = 'old'", (LONG_AGO,))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """Return the path of a seeded database, closed (no WAL left), to copy for each test."""
    path = tmp_path_factory.mktemp("seeded") / "abathur.db"
    _seed(path)
    return path


@pytest.fixture
def db(seeded, tmp_path) -> Path:
    """Return the path of a fresh copy of the seeded database."""
    path = tmp_path / "abathur.db"
    shutil.copyfile(seeded, path)
    os.chmod(path, 0o600)
    return path


def _files(path) -> dict[str, tuple[str, int] | None]:
    """Return the hash and mtime of the database file and of its WAL (None when absent or empty)."""
    found = {}
    for name in (str(path), f"{path}-wal"):
        data = Path(name).read_bytes() if os.path.exists(name) else b""
        found[name] = (hashlib.sha256(data).hexdigest(), os.stat(name).st_mtime_ns) if data else None
    return found


# --- status ---------------------------------------------------------------------------------


def test_status_json_reports_schema_sizes_counts_oldest_pending_and_stale(db, capsys):
    """status --json: schema version, file and WAL size, counts per status, the oldest pending and the stale tasks."""
    report = _json(capsys, "--db", db, "status")
    assert report["ok"] is True and report["path"] == str(db)
    assert report["schema_version"] == LATEST
    assert (report["file_bytes"], report["wal_bytes"]) == (db.stat().st_size, 0)
    assert report["counts"] == {"pending": 1, "running": 2, "completed": 1, "failed": 1, "cancelled": 1}
    oldest = report["oldest_pending"]
    assert oldest["id"] == "task-0" and oldest["submitted_at"] == LONG_AGO
    expected_age = (NOW - dt.datetime.fromisoformat(LONG_AGO)).total_seconds()
    assert expected_age <= oldest["age_seconds"] < expected_age + 600
    assert [task["id"] for task in report["stale"]] == ["task-2"] and report["stale_next_after"] is None


def test_status_text_is_an_aligned_table(db, capsys):
    """status prints one line per fact and the counts as a table whose numbers align on the right."""
    code, out, err = _run(capsys, "--db", db, "status")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"abathur_db status: {db}"
    assert f"  schema          version {LATEST} (current)" in lines
    assert f"  file            {_cli_text.size(db.stat().st_size)}" in lines
    assert "  WAL             0 bytes" in lines
    assert any(re.fullmatch(r"  oldest pending  \d+d( \d+h)? \(task task-0, submitted 2020-01-01T00:00:00.000Z\)",
                            line) for line in lines), out
    assert "  stale running   1 (take them back: python -m abathur_db requeue-stale)" in lines
    counts = lines[lines.index("STATUS     TASKS"):][:7]
    assert [line.split() for line in counts[1:]] == [
        ["pending", "1"], ["running", "2"], ["completed", "1"], ["failed", "1"], ["cancelled", "1"], ["total", "6"]]
    assert len({len(line) for line in counts}) == 1, counts
    stale = lines[lines.index("STALE RUNNING TASKS (no update for longer than their timeout)") + 2]
    assert stale.split()[:5] == ["task-2", "running", "9", "general", "0/3"]


def test_status_of_an_empty_queue(tmp_path, capsys):
    """With no task, status shows zero counts, no oldest pending and no stale task."""
    path = tmp_path / "empty.db"
    abathur_db.open(path).close()
    report = _json(capsys, "--db", path, "status")
    assert set(report["counts"].values()) == {0}
    assert (report["oldest_pending"], report["stale"]) == (None, [])
    code, out, _ = _run(capsys, "--db", path, "status")
    assert "  oldest pending  none" in out and "  stale running   0\n" in out and "STALE" not in out


def test_status_reads_every_figure_from_one_moment(tmp_path, capsys, monkeypatch):
    """A task committed while status reads is in none of its figures: counts and oldest pending agree."""
    path = tmp_path / "busy.db"
    abathur_db.open(path).close()
    oldest_pending = tasks.oldest_pending

    def after_a_commit(conn):
        with abathur_db.open(path) as writer:  # another connection commits between two of status's reads
            tasks.create(writer.connection(), "arrived meanwhile")
        return oldest_pending(conn)

    monkeypatch.setattr(tasks, "oldest_pending", after_a_commit)
    report = _json(capsys, "--db", path, "status")
    assert report["counts"]["pending"] == 0 and report["oldest_pending"] is None


def test_status_lists_some_stale_tasks_and_the_command_for_the_rest(tmp_path, capsys):
    """Past STALE_SHOWN stale tasks, status says "more than" and its hint command lists the rest."""
    path = tmp_path / "stale.db"
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        for number in range(cli.STALE_SHOWN + 3):
            tasks.create(conn, "work", task_id=f"s{number:02d}", submitted_at=at(number))
            tasks.claim_next(conn)
        conn.execute("UPDATE tasks SET last_updated_at = ?", (LONG_AGO,))
    report = _json(capsys, "--db", path, "status")
    shown = [task["id"] for task in report["stale"]]
    assert len(shown) == cli.STALE_SHOWN and report["stale_next_after"] == shown[-1]
    code, out, _ = _run(capsys, "--db", path, "status")
    assert f"  stale running   more than {cli.STALE_SHOWN} " in out
    hint = out.splitlines()[-1]
    assert hint == f"more: python -m abathur_db --db {path} tasks list --stale --after {shown[-1]}"
    rest = _json(capsys, *hint.split()[4:])
    assert len(rest["tasks"]) == 3 and not set(shown) & {task["id"] for task in rest["tasks"]}


# --- tasks list / show ----------------------------------------------------------------------


@pytest.mark.parametrize("options, expected", [
    pytest.param(["--status", "failed"], ["task-4"], id="status"),
    pytest.param(["--since", "2020-01-01", "--until", "2020-01-02"], ["task-0"], id="submitted-range"),
    pytest.param(["--since", "2024-06-01"], ["task-1", "task-2", "task-3", "task-4", "task-5"], id="since-only"),
    pytest.param(["--until", "2024-06-01"], ["task-0", "child", "in-session"], id="until-only"),
    pytest.param(["--stale"], ["task-2"], id="stale"),
    pytest.param(["--parent", "task-0"], ["child"], id="parent"),
    pytest.param(["--session", "SESSION"], ["in-session"], id="session"),
])
def test_tasks_list_by_each_filter(db, capsys, options, expected):
    """tasks list returns the tasks of one filter, as the library's list() (or stale()) does."""
    with abathur_db.open(db) as pool:
        conn = pool.connection()
        session = abathur_db.sessions.create(conn, "app", "user")["id"]
        tasks.create(conn, "child", task_id="child", parent_task_id="task-0", submitted_at=at(0))
        tasks.create(conn, "in session", task_id="in-session", session_id=session, submitted_at=at(1))
    options = [session if option == "SESSION" else option for option in options]
    report = _json(capsys, "--db", db, "tasks", "list", *options)
    assert [task["id"] for task in report["tasks"]] == expected and report["next_after"] is None
    code, out, _ = _run(capsys, "--db", db, "tasks", "list", *options)
    assert [line.split()[0] for line in out.splitlines()] == ["ID", *expected]


def test_tasks_list_pages_with_after_and_never_offset(tmp_path, capsys, monkeypatch):
    """Following next_after walks every task once, in the library's order, and no statement uses OFFSET."""
    path = tmp_path / "many.db"
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        ids = tasks.create_many(conn, [{"prompt": f"p{n}", "priority": n % 4, "submitted_at": at(n % 7)}
                                       for n in range(23)])
        expected = [task["id"] for task in tasks.list(conn, status="pending", limit=100)]
    sent: list[str] = []
    real_connect = cli.connect

    def traced(*args, **kwargs):
        opened = real_connect(*args, **kwargs)
        opened.set_trace_callback(sent.append)
        return opened

    monkeypatch.setattr(cli, "connect", traced)
    seen, after = [], []
    while True:
        page = _json(capsys, "--db", path, "tasks", "list", "--status", "pending", "--limit", "5", *after)
        seen += [task["id"] for task in page["tasks"]]
        if page["next_after"] is None:
            break
        after = ["--after", page["next_after"]]
    assert seen == expected and sorted(seen) == sorted(ids)
    assert sent and not any("OFFSET" in statement.upper() for statement in sent)
    code, out, _ = _run(capsys, "--db", path, "tasks", "list", "--status", "pending")
    assert len(out.splitlines()) == 1 + cli.LIST_LIMIT + 1
    assert out.splitlines()[-1] == (f"next page: python -m abathur_db --db {path} tasks list --status pending "
                                    f"--after {expected[cli.LIST_LIMIT - 1]}")


def test_tasks_list_text_ends_a_full_page_with_the_next_command(db, capsys):
    """Under a full page, the text output names the command of the next page; that command gives it."""
    code, out, _ = _run(capsys, "--db", db, "tasks", "list", "--since", "2019-12-31T00:00:00Z", "--limit", "2")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["task-0", "task-1"]
    assert lines[3] == (f"next page: python -m abathur_db --db {db} tasks list --since 2019-12-31T00:00:00+00:00 "
                        "--limit 2 --after task-1")
    following = _json(capsys, *lines[3].split()[5:])
    assert [task["id"] for task in following["tasks"]] == ["task-2", "task-3"]
    code, out, _ = _run(capsys, "--db", db, "tasks", "list", "--status", "pending", "--after", "task-0")
    assert out == "no tasks after that one\n"


def test_tasks_list_stale_pages_too(db, capsys):
    """The next-page command of a stale list keeps --stale and gives the rest."""
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = 'task-1'", (LONG_AGO,))
    conn.commit()
    conn.close()
    code, out, _ = _run(capsys, "--db", db, "tasks", "list", "--stale", "--limit", "1")
    hint = out.splitlines()[-1]
    assert hint == f"next page: python -m abathur_db --db {db} tasks list --stale --limit 1 --after task-1"
    assert [task["id"] for task in _json(capsys, *hint.split()[5:])["tasks"]] == ["task-2"]


@pytest.mark.parametrize("options, fragment", [
    pytest.param([], "give exactly one of --status, --session, --parent, --since/--until or --stale; got none",
                 id="no-filter"),
    pytest.param(["--status", "failed", "--stale"], "got --status and --stale", id="two-filters"),
    pytest.param(["--status", "waiting"], "invalid choice: 'waiting'", id="unknown-status"),
    pytest.param(["--status", "failed", "--limit", "0"], "'0' is not a whole number >= 1", id="zero-limit"),
    pytest.param(["--since", "yesterday"], "'yesterday' is not an ISO 8601 time", id="bad-time"),
    pytest.param(["--since", "0001-01-01T00:00:00+14:00"], "'0001-01-01T00:00:00+14:00' is out of range once moved"
                 " to UTC", id="time-before-year-1-in-utc"),
])
def test_tasks_list_usage_errors_exit_2(db, capsys, options, fragment):
    """A list without exactly one good filter is a usage error (exit 2) naming what is wrong."""
    err = _fails(capsys, "--db", db, "tasks", "list", *options, code=2)
    assert err.startswith("usage: python -m abathur_db tasks list") and fragment in err


def test_tasks_list_takes_the_largest_limit_sqlite_stores(db, capsys):
    """--limit 9223372036854775807 lists every task: the one more asked for, to see a next page, stays in range."""
    report = _json(capsys, "--db", db, "tasks", "list", "--status", "pending", "--limit", str(2**63 - 1))
    with abathur_db.open(db) as pool:
        expected = [task["id"] for task in tasks.list(pool.connection(), status="pending")]
    assert [task["id"] for task in report["tasks"]] == expected and report["next_after"] is None


def test_tasks_list_after_an_unknown_task_fails(db, capsys):
    """--after naming no task is a failure (exit 1) naming the id."""
    assert "no task with id 'nope'" in _fails(capsys, "--db", db, "tasks", "list", "--status", "failed",
                                              "--after", "nope")


def test_tasks_show_prints_the_whole_task(db, capsys):
    """tasks show --json gives the task as tasks.get() does; the text form shows every field, JSON indented."""
    with abathur_db.open(db) as pool:
        expected = tasks.get(pool.connection(), "task-3")
    assert _json(capsys, "--db", db, "tasks", "show", "task-3")["task"] == expected
    code, out, _ = _run(capsys, "--db", db, "tasks", "show", "task-3")
    fields = {line.split()[0] for line in out.splitlines() if not line.startswith(" ")}
    assert fields == set(tasks.COLUMNS)
    assert re.search(r"^result_data +\{\n +\"ok\": true\n +\}$", out, re.M), out
    assert re.search(r"^error_message +-$", out, re.M) and re.search(r"^prompt +completed$", out, re.M)


def test_a_legacy_blob_is_shown_not_a_traceback(db, capsys):
    """A value JSON cannot hold (a BLOB kept by an upgrade) is shown by its repr in --json and as text."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute("UPDATE tasks SET created_by = x'00ff' WHERE id = 'task-0'")
    conn.commit()
    conn.close()
    assert _json(capsys, "--db", db, "tasks", "show", "task-0")["task"]["created_by"] == "b'\\x00\\xff'"
    assert re.search(r"^created_by +b'\\x00\\xff'$", _run(capsys, "--db", db, "tasks", "show", "task-0")[1], re.M)


def test_tasks_show_of_an_unknown_task_fails(db, capsys):
    """tasks show of an unknown id exits 1 naming it."""
    assert "no task with id 'nope'" in _fails(capsys, "--db", db, "tasks", "show", "nope")


# --- tasks retry / cancel / release ---------------------------------------------------------


def _task(path, task_id) -> dict:
    with _read(path) as conn:
        return tasks.get(conn, task_id)


def test_tasks_retry_puts_a_failed_task_back(db, capsys):
    """tasks retry: failed -> pending with one more retry used; the text names what was done."""
    report = _json(capsys, "--db", db, "tasks", "retry", "task-4")
    assert report["action"] == "retry" and report["task"] == _task(db, "task-4")
    assert (report["task"]["status"], report["task"]["retry_count"]) == ("pending", 1)
    err = _fails(capsys, "--db", db, "tasks", "retry", "task-4")
    assert "cannot retry task 'task-4': its status is 'pending', must be 'failed'" in err


def test_tasks_cancel_ends_the_run(db, capsys, tmp_path):
    """tasks cancel: running -> cancelled; the worker's lease is lost."""
    code, out, _ = _run(capsys, "--db", db, "tasks", "cancel", "task-1")
    assert code == 0 and out.splitlines()[0] == "cancelled task task-1: now cancelled"
    assert out.splitlines()[2].split()[:2] == ["task-1", "cancelled"]
    assert _task(db, "task-1")["status"] == "cancelled" and _task(db, "task-1")["lease"] is None
    assert "cannot cancel task 'task-3'" in _fails(capsys, "--db", db, "tasks", "cancel", "task-3")


def test_tasks_release_without_a_lease_ends_any_run(db, capsys):
    """tasks release hands a running task back to pending without a retry; a task not running is refused."""
    before = _task(db, "task-1")
    report = _json(capsys, "--db", db, "tasks", "release", "task-1")
    assert report["action"] == "release"
    assert (report["task"]["status"], report["task"]["retry_count"], report["task"]["lease"]) == (
        "pending", before["retry_count"], None)
    assert "its status is 'pending', must be 'running'" in _fails(capsys, "--db", db, "tasks", "release", "task-1")


def test_tasks_release_with_a_lease_releases_only_that_run(db, capsys):
    """tasks release --lease refuses a lease that is not the task's (exit 1, nothing changed), accepts its own."""
    lease = _task(db, "task-1")["lease"]
    err = _fails(capsys, "--db", db, "tasks", "release", "task-1", "--lease", "0" * 32)
    assert "that lease is no longer the task's" in err and _task(db, "task-1")["lease"] == lease
    report = _json(capsys, "--db", db, "tasks", "release", "task-1", "--lease", lease)
    assert report["task"]["status"] == "pending"


# --- requeue-stale, prune -------------------------------------------------------------------


def test_requeue_stale_takes_back_stale_tasks(db, capsys):
    """requeue-stale moves the stale running task back to pending and lists it; a second run finds none."""
    code, out, _ = _run(capsys, "--db", db, "requeue-stale")
    lines = out.splitlines()
    assert lines[0] == "took back 1 stale task(s): 1 back to pending, 0 failed with no retries left"
    assert lines[2].split()[:5] == ["task-2", "pending", "9", "general", "1/3"]
    assert _task(db, "task-2")["status"] == "pending" and _task(db, "task-1")["status"] == "running"
    assert _json(capsys, "--db", db, "requeue-stale")["tasks"] == []
    assert _run(capsys, "--db", db, "requeue-stale")[1] == "no stale running task\n"


def _rows(path, table) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        name = "action_type" if table == "audit" else "metric_name"
        return [value for (value,) in conn.execute(f"SELECT {name} FROM {table} ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.parametrize("table", ["audit", "metrics"])
@pytest.mark.parametrize("option, value, shown", [
    pytest.param("--older-than", "30d", "older than 30d", id="older-than"),
    pytest.param("--before", "2021-01-01", "stamped before 2021-01-01T00:00:00.000Z", id="before"),
])
def test_prune_audit_and_metrics_delete_old_rows(db, capsys, table, option, value, shown):
    """prune audit|metrics deletes the rows older than the time given, and keeps the others."""
    code, out, _ = _run(capsys, "--db", db, "prune", table, option, value)
    assert (code, out) == (0, f"{table}: deleted 1 row(s) {shown}\n")
    assert _rows(db, table) == ["new"]
    report = _json(capsys, "--db", db, "prune", table, option, value, "--batch-size", "1")
    assert (report["table"], report["deleted"]) == (table, 0)


def test_prune_json_names_the_moment_or_the_age(db, capsys):
    """prune --json gives the moment in the stored format, or the age in seconds."""
    report = _json(capsys, "--db", db, "prune", "audit", "--before", "2021-01-01T02:00:00+02:00")
    assert (report["before"], report["older_than_seconds"], report["deleted"]) == ("2021-01-01T00:00:00.000Z", None, 1)
    report = _json(capsys, "--db", db, "prune", "metrics", "--older-than", "12h")
    assert (report["before"], report["older_than_seconds"], report["deleted"]) == (None, 43200, 1)


@pytest.mark.parametrize("options, fragment", [
    pytest.param([], "one of the arguments --before --older-than is required", id="neither"),
    pytest.param(["--before", "2021-01-01", "--older-than", "1d"], "not allowed with argument", id="both"),
    pytest.param(["--older-than", "30"], "'30' is not a duration", id="no-unit"),
    pytest.param(["--older-than", "1w"], "'1w' is not a duration", id="unknown-unit"),
    pytest.param(["--before", "2021-13-01"], "'2021-13-01' is not an ISO 8601 time", id="bad-time"),
    pytest.param(["--older-than", "1d", "--batch-size", "0"], "'0' is not a whole number >= 1", id="zero-batch"),
])
def test_prune_usage_errors_exit_2(db, capsys, options, fragment):
    """A prune without exactly one good --before / --older-than is a usage error, and deletes nothing."""
    assert fragment in _fails(capsys, "--db", db, "prune", "audit", *options, code=2)
    assert _rows(db, "audit") == ["old", "new"]


@pytest.mark.parametrize("text, expected", [
    ("30d", dt.timedelta(days=30)), ("12h", dt.timedelta(hours=12)), ("15m", dt.timedelta(minutes=15)),
    ("90s", dt.timedelta(seconds=90)), ("0d", dt.timedelta(0)), (" 7d ", dt.timedelta(days=7)),
])
def test_parse_duration_reads_a_number_and_a_unit(text, expected):
    """parse_duration turns 30d, 12h, 15m, 90s into timedeltas."""
    assert cli.parse_duration(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("30", "is not a duration"), ("d", "is not a duration"), ("1.5h", "is not a duration"),
    ("-1d", "is not a duration"), ("30 days", "is not a duration"), ("1d12h", "is not a duration"),
    ("999999999999d", "longer than Python's timedelta can hold"),
])
def test_parse_duration_refuses_anything_else(text, fragment):
    """parse_duration refuses other text with a message saying what a duration looks like."""
    with pytest.raises(argparse.ArgumentTypeError, match=fragment):
        cli.parse_duration(text)


def test_parse_time_takes_a_time_without_offset_as_utc():
    """parse_time keeps an offset and reads a time without one as UTC."""
    assert cli.parse_time("2026-01-31") == dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc)
    assert cli.parse_time("2026-01-31T12:00:00+02:00").utcoffset() == dt.timedelta(hours=2)


def test_prune_checkpoints_keeps_the_last_n_of_every_task_or_of_one(db, capsys):
    """prune checkpoints --keep-last N prunes every task, or with --task only that one."""
    with abathur_db.open(db) as pool:
        for iteration in range(4):
            checkpoints.save(pool.connection(), "task-3", iteration, {})
    report = _json(capsys, "--db", db, "prune", "checkpoints", "--keep-last", "2", "--task", "task-1")
    assert (report["deleted"], report["keep_last"], report["task_id"]) == (1, 2, "task-1")
    code, out, _ = _run(capsys, "--db", db, "prune", "checkpoints", "--keep-last", "1")
    assert out == "checkpoints: deleted 4, keeping the newest 1 of every task\n"
    with _read(db) as conn:
        assert [(c["task_id"], c["iteration"]) for c in checkpoints.list(conn, created_since=LONG_AGO)] == [
            ("task-1", 2), ("task-3", 3)]
    assert "--keep-last" in _fails(capsys, "--db", db, "prune", "checkpoints", code=2)
    assert "'-1' is not a whole number >= 0" in _fails(capsys, "--db", db, "prune", "checkpoints", "--keep-last",
                                                       "-1", code=2)


# --- backup, checkpoint, verify -------------------------------------------------------------


def test_backup_writes_a_copy_and_refuses_an_existing_file(db, tmp_path, capsys):
    """backup DEST writes a copy holding the same tasks; a DEST that exists is refused (exit 1)."""
    dest = tmp_path / "copy.db"
    report = _json(capsys, "--db", db, "backup", dest)
    assert report == {"ok": True, "backup": str(dest), "bytes": dest.stat().st_size}
    assert _task(dest, "task-3") == _task(db, "task-3")
    assert "backup destination already exists" in _fails(capsys, "--db", db, "backup", dest)


def test_backup_copies_a_database_that_needs_an_upgrade(tmp_path, capsys):
    """backup works on a legacy database, which it leaves as it was: the copy to take before upgrading."""
    path = tmp_path / "legacy.db"
    build_legacy(path)
    before = _files(path)
    code, out, _ = _run(capsys, "--db", path, "backup", tmp_path / "before-upgrade.db")
    assert code == 0 and out.startswith(f"backup written to {tmp_path / 'before-upgrade.db'}: ")
    assert _files(path) == before


def test_checkpoint_empties_the_wal(db, capsys):
    """checkpoint copies the WAL a live writer left into the database file and truncates it."""
    with abathur_db.open(db) as pool:
        tasks.create(pool.connection(), "more")
        assert os.path.getsize(f"{db}-wal") > 0
        before = os.path.getsize(f"{db}-wal")
        report = _json(capsys, "--db", db, "checkpoint")
        assert (report["mode"], report["wal_bytes_before"], report["wal_bytes"]) == ("TRUNCATE", before, 0)
        assert os.path.getsize(f"{db}-wal") == 0
        tasks.create(pool.connection(), "again")
        written = os.path.getsize(f"{db}-wal")
        code, out, _ = _run(capsys, "--db", db, "checkpoint", "--mode", "passive")
        assert out == (f"checkpoint PASSIVE: done; the WAL was {_cli_text.size(written)}, is now "
                       f"{_cli_text.size(written)} (only TRUNCATE empties it)\n")


def test_checkpoint_held_back_by_a_reader_fails(db, capsys):
    """A TRUNCATE checkpoint a reader's open snapshot keeps from finishing exits 1 saying so."""
    with abathur_db.open(db) as pool:
        reader = sqlite3.connect(db, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM tasks").fetchone()
            tasks.create(pool.connection(), "more")
            err = _fails(capsys, "--db", db, "checkpoint")
            assert "checkpoint TRUNCATE could not finish: another connection is reading or writing" in err
        finally:
            reader.close()


def test_verify_delegates_with_the_same_options(db, tmp_path, capsys):
    """verify runs abathur_db.verify on --db with the options given, --json and --create included."""
    code, out, _ = _run(capsys, "--db", db, "verify")
    assert code == 0 and out.splitlines()[0] == f"abathur_db verify: {db}" and "result: PASS" in out
    assert _json(capsys, "--db", db, "verify")["checks"]["schema"]["ok"] is True
    assert _json(capsys, "verify", "--db", db)["path"] == str(db)
    fresh = tmp_path / "fresh.db"
    code, out, _ = _run(capsys, "--db", fresh, "verify", "--create")
    assert code == 0 and fresh.exists() and "created: applied" in out
    assert _fails(capsys, "--db", db, "verify", "--frobnicate", code=2).startswith("usage: python -m abathur_db.verify")


def test_verify_help_is_verifys_own(capsys):
    """verify --help prints abathur_db.verify's help, which says what it writes."""
    code, out, _ = _run(capsys, "verify", "--help")
    assert code == 0 and out.startswith("usage: python -m abathur_db.verify")
    assert "What it writes: nothing, unless asked." in out


# --- never creating, never upgrading, never writing when reading ----------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_mistyped_path_fails_names_it_and_creates_nothing(tmp_path, capsys, monkeypatch, command):
    """Every command on a path that does not exist exits 1 naming it, and creates no file."""
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "abathru.db"
    code, out, err = _run(capsys, "--db", typo, *command)
    assert code == 1 and str(typo) in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("command", READ_ONLY + WRITING, ids=" ".join)
def test_a_database_that_needs_an_upgrade_is_refused_and_left_alone(tmp_path, capsys, command):
    """Every command but backup and verify refuses an older schema, naming verify --upgrade, and writes nothing."""
    older = tmp_path / "schema"
    older.mkdir()
    for file in sorted((REPO / "schema").glob("*.sql"))[:-1]:
        shutil.copy(file, older)
    path = tmp_path / "older.db"
    abathur_db.open(path, schema_dir=older).close()
    before = _files(path)
    err = _fails(capsys, "--db", path, *command)
    assert f"{path}: needs an upgrade: schema version {LATEST - 1} of {LATEST}; run python -m abathur_db.verify " \
           "--upgrade" in err
    assert _files(path) == before and not os.path.exists(f"{path}.v{LATEST - 1}")


@pytest.mark.parametrize("make, fragment", [
    pytest.param(build_legacy, "holds no abathur_db schema ledger: run python -m abathur_db.verify --upgrade for "
                 "a database of an earlier release", id="legacy"),
    pytest.param(lambda path: path.write_bytes(b""), "or --create for an empty file", id="empty-file"),
    pytest.param(lambda path: path.write_bytes(b"not sqlite " * 100), "file is not a database", id="not-sqlite"),
    pytest.param(lambda path: path.mkdir(), "is a directory, not a database file", id="directory"),
])
def test_a_file_that_is_not_a_current_database_is_refused(tmp_path, capsys, make, fragment):
    """A legacy database, an empty file, another file or a directory: exit 1 naming the path and what to do."""
    path = tmp_path / "odd.db"
    make(path)
    for command in (["status"], ["requeue-stale"]):
        err = _fails(capsys, "--db", path, *command)
        assert err.startswith(f"abathur_db: {path}: ") and fragment in err, err
    assert sorted(os.listdir(tmp_path)) in (["odd.db"], ["odd.db", "odd.db-shm", "odd.db-wal"])


def test_an_sqlite_error_is_a_one_line_failure(db, capsys):
    """An sqlite3 error from a damaged ledger (a column renamed) exits 1 with one line, not a traceback."""
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE schema_migrations RENAME COLUMN sha256 TO checksum")
    conn.close()
    assert "no such column: sha256" in _fails(capsys, "--db", db, "status")


def test_a_newer_schema_is_refused(db, capsys):
    """A database written by a newer release is refused, pointing at verify."""
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    err = _fails(capsys, "--db", db, "status")
    assert f"database schema version {LATEST + 1} is newer than this abathur_db knows" in err
    assert err.rstrip().endswith("run python -m abathur_db.verify for details")


@pytest.mark.parametrize("command", [*READ_ONLY, ["verify"], ["backup", "COPY"]], ids=" ".join)
def test_read_only_commands_never_write(db, tmp_path, capsys, monkeypatch, command):
    """Read-only commands leave the file and a live writer's WAL byte-identical, and open only read-only connections."""
    modes = []
    real_connect = cli.connect

    def recorded(path, **kwargs):
        modes.append(kwargs.get("readonly", False))
        return real_connect(path, **kwargs)

    monkeypatch.setattr(cli, "connect", recorded)
    monkeypatch.setattr(verify, "connect", recorded)
    command = [str(tmp_path / "copy.db") if word == "COPY" else word for word in command]
    closed = _files(db)
    os.chmod(db, 0o444)  # also a read-only file where the tests do not run as root
    try:
        assert _run(capsys, "--db", db, *command)[0] == 0
    finally:
        os.chmod(db, 0o600)
    assert _files(db) == {**closed, f"{db}-wal": None}  # a WAL, if left, is empty
    with abathur_db.open(db) as pool:
        tasks.create(pool.connection(), "in the WAL only")
        live = _files(db)
        assert live[f"{db}-wal"] is not None
        if command[0] == "backup":
            os.unlink(command[1])
        assert _run(capsys, "--db", db, *command)[0] == 0
        assert _files(db) == live
    assert modes and all(modes), modes


@pytest.mark.parametrize("command", WRITING, ids=" ".join)
def test_writing_commands_check_the_schema_read_only_first(db, capsys, monkeypatch, command):
    """A writing command reads the schema through a read-only connection before it opens one that writes."""
    modes = []
    real_connect = cli.connect
    monkeypatch.setattr(cli, "connect", lambda path, **kwargs: modes.append(kwargs.get("readonly", False))
                        or real_connect(path, **kwargs))
    _run(capsys, "--db", db, *command)
    assert modes == [True, False]


# --- the command line itself ----------------------------------------------------------------


@pytest.mark.parametrize("command", HELP, ids=lambda words: " ".join(words) or "top")
def test_help_of_every_command_says_what_it_writes(capsys, command):
    """--help exits 0 on every command and group, and says what it writes."""
    code, out, _ = _run(capsys, *command, "--help")
    assert code == 0 and out.startswith(f"usage: python -m abathur_db {' '.join(command)}".rstrip())
    assert ("what each command writes:" if not command else "Writes: ") in out


def test_top_level_help_lists_every_command_and_the_exit_codes(capsys):
    """python -m abathur_db --help names each command, the --db default and the exit codes."""
    out = " ".join(_run(capsys, "--help")[1].split())
    for name in ("status", "tasks", "requeue-stale", "prune", "backup", "checkpoint", "verify", "$ABATHUR_DB"):
        assert name in out
    assert "0 done" in out and "1 failed" in out and "2 usage error" in out


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["tasks"], ["prune"], ["status", "--frobnicate"],
                                  ["tasks", "show"], ["backup"]], ids=lambda words: " ".join(words) or "none")
def test_usage_errors_exit_2(db, capsys, args):
    """A missing or unknown command or option exits 2 with the usage on stderr."""
    assert _fails(capsys, "--db", db, *args, code=2).startswith("usage: python -m abathur_db")


def test_json_failure_is_one_document_too(capsys, tmp_path):
    """With --json, a failure still prints one JSON document (ok false, the error) besides its stderr line."""
    code, out, err = _run(capsys, "--json", "--db", tmp_path / "missing.db", "status")
    assert code == 1 and json.loads(out) == {"ok": False, "error": err.removeprefix("abathur_db: ").rstrip()}


def test_db_defaults_to_the_environment_then_the_current_directory(db, tmp_path, capsys, monkeypatch):
    """Without --db: $ABATHUR_DB, else ./abathur.db, as verify does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABATHUR_DB", str(tmp_path / "elsewhere.db"))
    assert str(tmp_path / "elsewhere.db") in _fails(capsys, "status")
    monkeypatch.delenv("ABATHUR_DB")
    assert _json(capsys, "status")["path"] == str(db)


def test_options_go_before_or_after_the_command(db, capsys):
    """--db and --json are taken before the command or after it."""
    assert _json(capsys, "tasks", "show", "task-0", "--db", db)["task"]["id"] == "task-0"
    code, out, _ = _run(capsys, "tasks", "show", "--json", "--db", db, "task-0")
    assert code == 0 and json.loads(out)["task"]["id"] == "task-0"


def test_running_the_package_calls_main(db, capsys, monkeypatch):
    """python -m abathur_db runs cli.main and exits with its status."""
    monkeypatch.setattr(sys, "argv", ["abathur_db", "--db", str(db), "tasks", "show", "nope"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("abathur_db", run_name="__main__")
    assert caught.value.code == 1 and "no task with id 'nope'" in capsys.readouterr().err


def test_command_line_runs_as_a_subprocess(db):
    """`python -m abathur_db --help` and a --json status run as real processes from the checkout."""
    env = {key: value for key, value in os.environ.items() if key not in ("ABATHUR_DB", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-m", "abathur_db", "--help"], env=env, cwd=db.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m abathur_db") and done.stderr == ""
    done = subprocess.run([sys.executable, "-m", "abathur_db", "--json", "status"], env=env, cwd=db.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["pending"] == 1


def test_a_reader_that_goes_away_ends_the_command_without_a_traceback(tmp_path):
    """`python -m abathur_db ... | head` ends quietly when the reader stops reading: no traceback on stderr."""
    path = tmp_path / "many.db"
    with abathur_db.open(path) as pool:
        tasks.create_many(pool.connection(), [{"prompt": "p" * 200} for _ in range(2_000)])
    env = {key: value for key, value in os.environ.items() if key not in ("ABATHUR_DB", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)
    # Far more than a pipe holds: the tool is still writing when the reader goes.
    command = [sys.executable, "-m", "abathur_db", "--db", str(path), "tasks", "list", "--status", "pending",
               "--limit", "2000"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout.readline().startswith(b"ID")
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


# --- text rendering -------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, shown", [
    (0, "0s"), (59.9, "59s"), (60, "1m"), (3725, "1h 2m"), (90061, "1d 1h"), (86400 * 400, "400d"), (-90, "-1m 30s"),
    (2 * 86400 + 47 * 60, "2d"), (3600 + 59, "1h"),
])
def test_age_shows_the_two_largest_units(seconds, shown):
    """age() shows a duration in its largest unit and the next one unless zero, never a unit further down."""
    assert _cli_text.age(seconds) == shown


@pytest.mark.parametrize("count, shown", [
    (0, "0 bytes"), (1023, "1023 bytes"), (4096, "4.0 KiB (4,096 bytes)"), (3 << 20, "3.0 MiB (3,145,728 bytes)"),
    (5 << 30, "5.0 GiB (5,368,709,120 bytes)"),
])
def test_size_shows_bytes_for_people(count, shown):
    """size() shows a byte count in the largest binary unit, with the exact count."""
    assert _cli_text.size(count) == shown


def test_table_aligns_text_left_and_numbers_right():
    """table() pads each column to its widest cell; columns of whole numbers are aligned right."""
    assert _cli_text.table(["NAME", "N", "NOTE"], [["a", "5", "x"], ["long name", "120", ""]]) == [
        "NAME         N  NOTE", "a            5  x", "long name  120"]


# --- the README -----------------------------------------------------------------------------


def _readme_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Operating it: `python -m abathur_db`")
    return text[start:text.index("\n## ", start + 1)]


@pytest.mark.parametrize("command", [words for words in HELP if len(words) == 2 or words in (
    ["status"], ["requeue-stale"], ["backup"], ["checkpoint"])] + [["verify"]], ids=" ".join)
def test_every_command_has_its_row_in_the_readme(command):
    """The README's table of commands has a row for every command."""
    rows = [line.split("`")[1].split() for line in _readme_section().splitlines() if line.startswith("| `")]
    assert any(row[0] == command[0] and (len(command) == 1 or command[1] in row[1].split("\\|")) for row in rows)


def test_the_readme_status_example_has_the_lines_status_prints(db, capsys):
    """The README's example of status shows the same lines, in the same order, as status prints today."""
    section = _readme_section()
    example = section[section.index("$ python -m abathur_db status\n"):].splitlines()[1:]
    printed = _run(capsys, "--db", db, "status")[1].splitlines()

    def shape(lines: list[str]) -> list[str]:
        return [line[:18].rstrip() if line.startswith("  ") else line.split()[0] if line else ""
                for line in lines[:lines.index("STALE RUNNING TASKS (no update for longer than their timeout)") + 2]]

    assert shape(example) == shape(printed)


def test_importing_the_main_module_runs_nothing(capsys):
    """Importing abathur_db.__main__ (as tools that list modules do) runs no command."""
    sys.modules.pop("abathur_db.__main__", None)
    importlib.import_module("abathur_db.__main__")
    assert capsys.readouterr() == ("", "")
