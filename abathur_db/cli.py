"""The operator's tool: ``python -m abathur_db [--db PATH] COMMAND``.

It parses the command line, calls the package's functions and prints what they
return: an aligned table for people, or with ``--json`` one JSON document. Exit
status: 0 done, 1 failed (one line on stderr), 2 usage error. The database is
never created and never upgraded here (``python -m abathur_db.verify --create``
or ``--upgrade`` does that); read-only commands open it read-only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import sqlite3
import sys
from typing import Any, Callable, Iterator

import abathur_db
from abathur_db import _cli_text as text
from abathur_db import _values, audit, checkpoints, metrics, schema, tasks, verify
from abathur_db._retention import BATCH_SIZE
from abathur_db.errors import AbathurDBError, DatabaseFileError, SchemaError, translate, translated
from abathur_db.maintenance import CHECKPOINT_MODES
from abathur_db.pool import connect
from abathur_db.rows import TaskRow
from abathur_db.transaction import hold

__all__ = ["main", "parse_duration", "parse_time"]

LIST_LIMIT = 20  # rows per page of `tasks list`
STALE_SHOWN = 10  # stale running tasks listed by `status`

_DESCRIPTION = """\
Look at an abathur_db database and act on it: the queue's state, single tasks,
stale work, retention, backups. The database is --db PATH, else $ABATHUR_DB,
else ./abathur.db; no command here creates or upgrades it (python -m
abathur_db.verify --create / --upgrade does)."""
_EPILOG = """\
what each command writes:
  status, tasks list, tasks show   nothing: the file is opened read-only
  tasks retry|cancel|release       that task's status (cancel: its pending dependents too)
  requeue-stale                    stale running tasks back to pending, or failed
  prune audit|metrics              deletes rows older than a time, in short batches
  prune checkpoints                deletes all but the newest N checkpoints of each task
  backup DEST                      a new file DEST; the database is only read
  checkpoint                       copies the WAL's pages into the database file
  verify                           nothing unless asked: see verify --help

exit status:
  0  done
  1  failed (one line on stderr): no such file, a database that needs an
     upgrade, an unknown task, a change the task's status does not allow
  2  usage error"""

_Run = Callable[[str, argparse.Namespace], dict[str, Any]]  # a command: the database path, the arguments
_Render = Callable[[dict[str, Any], argparse.Namespace], str]  # its text output
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class _UsageError(Exception):
    """A combination of options the parser cannot refuse on its own."""


def parse_duration(value: str) -> _dt.timedelta:
    """Return the timedelta of a duration such as ``30d``, ``12h``, ``15m`` or ``90s``."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration: give a whole number and a unit (s, m, h or d), e.g. 30d, 12h or 15m")
    try:
        return _dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{value!r} is longer than Python's timedelta can hold") from None


def parse_time(value: str) -> _dt.datetime:
    """Return the aware datetime of an ISO 8601 time; one without an offset is taken as UTC."""
    try:
        moment = _dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time, e.g. 2026-01-31 or 2026-01-31T12:00:00Z") from None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=_dt.timezone.utc)
    try:
        moment.astimezone(_dt.timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is in year 0 in UTC
        raise argparse.ArgumentTypeError(f"{value!r} is out of range once moved to UTC") from None
    return moment


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return int(value)


def _keep(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Run one command of the operator's tool and return its exit status."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "verify":
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    path = args.db or os.environ.get("ABATHUR_DB") or "abathur.db"
    if args.command == "verify":
        try:
            return verify.main([path, *extra, *(["--json"] if args.json else [])])
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
    try:
        report = args.run(path, args)
    except _UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (AbathurDBError, sqlite3.Error, OSError) as exc:
        if isinstance(exc, sqlite3.Error):
            exc = translate(exc)
        message = " ".join(str(exc).split())
        if args.json:
            print(json.dumps({"ok": False, "error": message}))
        print(f"abathur_db: {message}", file=sys.stderr)
        return 1
    # default=repr: a legacy row an upgrade kept as it was may hold a value JSON has no type for (a BLOB).
    print(json.dumps({"ok": True, **report}, indent=2, default=repr) if args.json else args.render(report, args))
    return 0


@contextlib.contextmanager
def _opened(path: str, *, write: bool = False, any_schema: bool = False) -> Iterator[sqlite3.Connection]:
    """Open the existing database at `path`, read-only unless `write`; never create or upgrade it.

    Unless `any_schema`, a database whose schema is not the current one is refused.
    """
    if not os.path.exists(path):
        raise DatabaseFileError(f"{path}: no such database file (this command never creates one); check --db "
                                f"or $ABATHUR_DB, or create it with python -m abathur_db.verify --create {path}")
    if os.path.isdir(path):
        raise DatabaseFileError(f"{path}: is a directory, not a database file")
    conn = connect(path, readonly=True)
    try:
        if not any_schema:
            _require_current(conn, path)
        if write:
            conn.close()
            conn = connect(path)
        yield conn
    finally:
        conn.close()


def _require_current(conn: sqlite3.Connection, path: str) -> None:
    files = schema.load_files()
    current = schema.status(conn, files)
    if current.problems:
        raise SchemaError(f"{path}: {'; '.join(current.problems)}; run python -m abathur_db.verify for details")
    if current.pending and current.applied:
        raise SchemaError(f"{path}: needs an upgrade: schema version {current.user_version} of {len(files)}; run "
                          "python -m abathur_db.verify --upgrade (it writes a backup copy first)")
    if current.pending:
        raise SchemaError(f"{path}: holds no abathur_db schema ledger: run python -m abathur_db.verify --upgrade "
                          "for a database of an earlier release (it writes a backup copy first), or --create for "
                          "an empty file")


# --- commands: each returns the JSON document (without "ok") that its renderer prints ------


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Read inside one read transaction, so that every figure comes from the same moment of the file."""
    with hold(conn), translated():
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")


def _status(path: str, args: argparse.Namespace) -> dict[str, Any]:
    with _opened(path) as conn, _snapshot(conn):
        version = schema.status(conn, schema.load_files()).user_version
        counts = tasks.counts(conn)
        oldest = tasks.oldest_pending(conn)
        stale = tasks.stale(conn, limit=STALE_SHOWN + 1)
    wal = path + "-wal"
    shown: dict[str, Any] | None = None
    if oldest is not None:
        waited = _dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(oldest["submitted_at"])
        shown = {**oldest, "age_seconds": round(waited.total_seconds(), 3)}
    return {
        "path": os.path.abspath(path),
        "schema_version": version,
        "file_bytes": os.path.getsize(path),
        "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0,
        "counts": counts,
        "oldest_pending": shown,
        "stale": stale[:STALE_SHOWN],
        "stale_next_after": stale[STALE_SHOWN - 1]["id"] if len(stale) > STALE_SHOWN else None,
    }


def _tasks_list(path: str, args: argparse.Namespace) -> dict[str, Any]:
    given = [option for option, value in (("--status", args.status), ("--session", args.session),
                                          ("--parent", args.parent), ("--since/--until", args.since or args.until),
                                          ("--stale", args.stale or None)) if value is not None]
    if len(given) != 1:
        raise _UsageError("give exactly one of --status, --session, --parent, --since/--until or --stale; got "
                          + (" and ".join(given) or "none"))
    fetched = min(args.limit + 1, _values.INT64_MAX)  # one more than a page tells whether another follows
    with _opened(path) as conn:
        after = None if args.after is None else tasks.get(conn, args.after)
        if args.stale:
            found = tasks.stale(conn, limit=fetched, after=after)
        else:
            found = tasks.list(conn, status=args.status, session_id=args.session, parent_task_id=args.parent,
                               submitted_since=args.since, submitted_until=args.until, limit=fetched,
                               after=after)
    page = found[:args.limit]
    return {"tasks": page, "next_after": page[-1]["id"] if len(found) > args.limit else None}


def _tasks_show(path: str, args: argparse.Namespace) -> dict[str, Any]:
    with _opened(path) as conn:
        return {"task": tasks.get(conn, args.task_id)}


def _tasks_change(change: Callable[[sqlite3.Connection, str], TaskRow]) -> _Run:
    def run(path: str, args: argparse.Namespace) -> dict[str, Any]:
        with _opened(path, write=True) as conn:
            return {"action": args.tasks_command, "task": change(conn, args.task_id)}
    return run


def _tasks_release(path: str, args: argparse.Namespace) -> dict[str, Any]:
    with _opened(path, write=True) as conn:
        if args.lease is None:
            return {"action": "release", "task": tasks.force_release(conn, args.task_id)}
        return {"action": "release", "task": tasks.release(conn, args.task_id, args.lease)}


def _requeue_stale(path: str, args: argparse.Namespace) -> dict[str, Any]:
    with _opened(path, write=True) as conn:
        return {"tasks": tasks.requeue_stale(conn)}


def _prune(path: str, args: argparse.Namespace) -> dict[str, Any]:
    with _opened(path, write=True) as conn:
        if args.table == "checkpoints":
            deleted = (checkpoints.prune_all(conn, args.keep_last) if args.task is None
                       else checkpoints.prune(conn, args.task, args.keep_last))
            return {"table": "checkpoints", "deleted": deleted, "keep_last": args.keep_last, "task_id": args.task}
        prune = audit.prune if args.table == "audit" else metrics.prune
        deleted = prune(conn, before=args.before, older_than=args.older_than, batch_size=args.batch_size)
    return {
        "table": args.table,
        "deleted": deleted,
        "before": None if args.before is None else _values.format_datetime(args.before),
        "older_than_seconds": None if args.older_than is None else args.older_than.total_seconds(),
    }


def _backup(path: str, args: argparse.Namespace) -> dict[str, Any]:
    # Any schema: a copy of a database that needs an upgrade is what to take before upgrading it.
    with _opened(path, any_schema=True) as conn:
        written = abathur_db.backup(conn, args.dest)
    return {"backup": written, "bytes": os.path.getsize(written)}


def _checkpoint(path: str, args: argparse.Namespace) -> dict[str, Any]:
    wal = path + "-wal"
    with _opened(path, write=True) as conn:
        before = os.path.getsize(wal) if os.path.exists(wal) else 0
        done = abathur_db.checkpoint(conn, args.mode)
        after = os.path.getsize(wal) if os.path.exists(wal) else 0
    if done.busy:
        raise AbathurDBError(f"{path}: checkpoint {args.mode} could not finish: another connection is reading "
                             "or writing; run it again once it is done")
    # After TRUNCATE, SQLite reports the frames of the emptied WAL (0): the sizes say more.
    return {"mode": args.mode, "wal_bytes_before": before, "wal_bytes": after,
            "wal_frames": done.log, "checkpointed": done.checkpointed}


# --- the parser --------------------------------------------------------------------------------


def _common(sub: bool) -> argparse.ArgumentParser:
    """Return the options every level takes; a subcommand's leave the top level's value alone when absent."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS if sub else None,
                         help="database file (default: $ABATHUR_DB, else ./abathur.db)")
    options.add_argument("--json", action="store_true", default=argparse.SUPPRESS if sub else False,
                         help="print one JSON document instead of text")
    return options


def _parser() -> argparse.ArgumentParser:
    common = _common(sub=True)
    parser = argparse.ArgumentParser(prog=text.PROG, description=_DESCRIPTION, epilog=_EPILOG, parents=[_common(False)],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(group: Any, name: str, summary: str, writes: str, run: _Run | None = None,
                render: _Render | None = None, **extra: Any) -> argparse.ArgumentParser:
        leaf: argparse.ArgumentParser = group.add_parser(
            name, help=summary, description=f"{summary}\n\nWrites: {writes}", parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter, **extra)
        leaf.set_defaults(run=run, render=render, parser=leaf)
        return leaf

    command(commands, "status", "Show the schema version, file and WAL size, tasks per status, the oldest "
            "pending task and stale running tasks.", "nothing: the file is opened read-only.", _status, text.status)

    task_group = commands.add_parser(
        "tasks", help="List, show, retry, cancel or release tasks.", parents=[common],
        description="List, show, retry, cancel or release tasks.\n\nWrites: list and show nothing (read-only); "
        "retry, cancel and release the task's status.", formatter_class=argparse.RawDescriptionHelpFormatter)
    task_commands = task_group.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    listing = command(task_commands, "list", "List one page of tasks chosen by one filter.",
                      "nothing: the file is opened read-only.", _tasks_list, text.task_page)
    listing.add_argument("--status", choices=tasks.STATUSES, help="tasks in this status, most urgent first")
    listing.add_argument("--session", metavar="ID", help="tasks of this session, newest first")
    listing.add_argument("--parent", metavar="ID", help="children of this task, oldest first")
    listing.add_argument("--since", type=parse_time, metavar="TIME",
                         help="tasks submitted at or after TIME (ISO 8601; UTC if no offset), oldest first")
    listing.add_argument("--until", type=parse_time, metavar="TIME", help="tasks submitted before TIME")
    listing.add_argument("--stale", action="store_true",
                         help="running tasks past their timeout (what requeue-stale takes back), earliest first")
    listing.add_argument("--limit", type=_count, default=LIST_LIMIT, metavar="N",
                         help=f"tasks per page (default {LIST_LIMIT})")
    listing.add_argument("--after", metavar="ID", help="the page after this task (the hint under a full page)")
    show = command(task_commands, "show", "Show one task whole.", "nothing: the file is opened read-only.",
                   _tasks_show, text.task)
    show.add_argument("task_id", metavar="ID")
    for name, run, summary, writes in (
        ("retry", _tasks_change(tasks.retry), "Put a failed task back to pending, using one of its retries.",
         "the task's status."),
        ("cancel", _tasks_change(tasks.cancel), "Cancel a pending or running task, ending its run.",
         "the task's status, and that of the pending tasks that wait on it (cancelled too)."),
        ("release", _tasks_release, "Hand a running task back to pending without using a retry; its worker "
         "loses it.", "the task's status."),
    ):
        changing = command(task_commands, name, summary, writes, run, text.changed_task)
        changing.add_argument("task_id", metavar="ID")
    changing.add_argument("--lease", help="release only while the task still runs under this lease "
                          "(as its worker would): the task's status is then left alone if the run ended")

    command(commands, "requeue-stale", "Take back running tasks not updated for longer than their timeout.",
            "each stale task goes back to pending (retry_count + 1), or to failed once its retries are used up.",
            _requeue_stale, text.requeued)

    prune_group = commands.add_parser(
        "prune", help="Delete old audit rows, metrics or checkpoints.", parents=[common],
        description="Delete old audit rows, metrics or checkpoints.\n\nWrites: deletes those rows.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    prune_tables = prune_group.add_subparsers(dest="table", metavar="TABLE", required=True)
    for table in ("audit", "metrics"):
        pruning = command(prune_tables, table, f"Delete the {table} rows older than a time.",
                          "deletes rows, oldest first, in short batches of their own transaction.", _prune,
                          text.pruned)
        moment = pruning.add_mutually_exclusive_group(required=True)
        moment.add_argument("--before", type=parse_time, metavar="TIME",
                            help="rows stamped before TIME (ISO 8601; UTC if no offset)")
        moment.add_argument("--older-than", type=parse_duration, metavar="AGE",
                            help="rows older than AGE: a whole number and s, m, h or d (30d, 12h, 15m)")
        pruning.add_argument("--batch-size", type=_count, default=BATCH_SIZE, metavar="N",
                             help="rows per transaction (default %(default)s)")
    pruning = command(prune_tables, "checkpoints", "Delete all but the newest N checkpoints of every task (or of "
                      "one task).", "deletes checkpoints, one task per transaction.", _prune, text.pruned)
    pruning.add_argument("--keep-last", type=_keep, required=True, metavar="N",
                         help="checkpoints kept per task: its N highest iterations")
    pruning.add_argument("--task", metavar="ID", help="prune this task's checkpoints only")

    backup = command(commands, "backup", "Copy the database to a new file with SQLite's online backup.",
                     "a new file DEST (never replacing one); the database is only read.", _backup, text.backup)
    backup.add_argument("dest", metavar="DEST")
    checkpoint = command(commands, "checkpoint", "Copy the WAL's pages into the database file.",
                         "the database file, and the WAL (TRUNCATE empties it).", _checkpoint, text.checkpoint)
    checkpoint.add_argument("--mode", type=str.upper, choices=CHECKPOINT_MODES,
                            default="TRUNCATE", help="SQLite's checkpoint mode (default TRUNCATE)")
    command(commands, "verify", "Check the database (python -m abathur_db.verify, the same options).",
            "nothing unless --create, --upgrade or --repair: see verify --help.", add_help=False)
    return parser
