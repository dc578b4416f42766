"""The operator tool's text output: aligned tables and short lines, rendered from each command's JSON document."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from abathur_db.tasks import JSON_COLUMNS

PROG = "python -m abathur_db"
_PROMPT_SHOWN = 40  # characters of a prompt in a table row


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Return `rows` under `headers` as aligned lines; a column of whole numbers is aligned right."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    numeric = [bool(rows) and all(row[i].isdigit() for row in rows) for i in range(len(headers))]
    return ["  ".join(cell.rjust(width) if right else cell.ljust(width)
                      for cell, width, right in zip(line, widths, numeric)).rstrip()
            for line in (headers, *rows)]


def size(count: int) -> str:
    """Return a byte count for people: ``168.0 KiB (172,032 bytes)``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit} ({count:,} bytes)"
    return f"{count} bytes"


def age(seconds: float) -> str:
    """Return a duration in its largest unit, and the next one unless zero: ``2d 3h``, ``2d``, ``5m 12s``, ``40s``.

    A zero next unit ends it: 2 days and 47 minutes are ``2d``, never ``2d 47m``.
    """
    sign, left = ("-" if seconds < 0 else ""), int(abs(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    i = next(i for i, (_, scale) in enumerate(units) if left >= scale or scale == 1)
    (unit, scale), rest = units[i], ""
    if i + 1 < len(units) and left % scale >= units[i + 1][1]:
        rest = f" {left % scale // units[i + 1][1]}{units[i + 1][0]}"
    return f"{sign}{left // scale}{unit}{rest}"


def _one_line(value: Any, limit: int) -> str:
    words = " ".join(str(value).split())
    return words if len(words) <= limit else words[:limit - 1] + "…"


def task_rows(found: list[dict[str, Any]]) -> list[str]:
    """Return tasks as a table, one line each."""
    return table(["ID", "STATUS", "PRI", "AGENT TYPE", "RETRIES", "SUBMITTED", "LAST UPDATE", "PROMPT"], [
        [task["id"], task["status"], str(task["priority"]), task["agent_type"],
         f"{task['retry_count']}/{task['max_retries']}", task["submitted_at"], task["last_updated_at"],
         _one_line(task["prompt"], _PROMPT_SHOWN)]
        for task in found])


def status(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `status`."""
    oldest = report["oldest_pending"]
    stale = report["stale"]
    stale_count = f"more than {len(stale)}" if report["stale_next_after"] else str(len(stale))
    lines = [
        f"abathur_db status: {report['path']}",
        *(f"  {name:<16}{value}" for name, value in (
            ("schema", f"version {report['schema_version']} (current)"),
            ("file", size(report["file_bytes"])),
            ("WAL", size(report["wal_bytes"])),
            ("oldest pending", "none" if oldest is None else
             f"{age(oldest['age_seconds'])} (task {oldest['id']}, submitted {oldest['submitted_at']})"),
            ("stale running", stale_count + (f" (take them back: {PROG} requeue-stale)" if stale else "")),
        )),
        "",
        *table(["STATUS", "TASKS"], [[name, str(count)] for name, count in report["counts"].items()]
               + [["total", str(sum(report["counts"].values()))]]),
    ]
    if stale:
        lines += ["", "STALE RUNNING TASKS (no update for longer than their timeout)", *task_rows(stale)]
    if report["stale_next_after"]:
        lines.append(f"more: {_command(args, ['tasks', 'list', '--stale', '--after', report['stale_next_after']])}")
    return "\n".join(lines)


def task_page(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `tasks list`, with the command that shows the next page under a full one."""
    if not report["tasks"]:
        return "no tasks" + (" after that one" if args.after else "")
    lines = task_rows(report["tasks"])
    if report["next_after"]:
        options = [option for name, value in (("--status", args.status), ("--session", args.session),
                                              ("--parent", args.parent), ("--since", args.since),
                                              ("--until", args.until)) if value is not None
                   for option in (name, value.isoformat() if hasattr(value, "isoformat") else value)]
        if args.stale:
            options.append("--stale")
        if args.limit != args.parser.get_default("limit"):
            options += ["--limit", str(args.limit)]
        lines.append(f"next page: {_command(args, ['tasks', 'list', *options, '--after', report['next_after']])}")
    return "\n".join(lines)


def _command(args: argparse.Namespace, words: list[str]) -> str:
    db = ["--db", args.db] if args.db else []
    return " ".join([PROG, *map(shlex.quote, [*db, *words])])


def task(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `tasks show`: every field, JSON values indented below their name."""
    found = report["task"]
    width = max(map(len, found)) + 2
    lines = []
    for name, value in found.items():
        shown = (json.dumps(value, indent=2, ensure_ascii=False) if name in JSON_COLUMNS
                 else "-" if value is None else str(value))
        first, *rest = shown.split("\n")
        lines.append(f"{name:<{width}}{first}".rstrip())
        lines.extend(" " * width + line for line in rest)
    return "\n".join(lines)


def changed_task(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `tasks retry|cancel|release`: what was done, and the task as it now is."""
    done = {"retry": "retried", "cancel": "cancelled", "release": "released"}[report["action"]]
    return "\n".join([f"{done} task {report['task']['id']}: now {report['task']['status']}",
                      *task_rows([report["task"]])])


def requeued(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `requeue-stale`."""
    found = report["tasks"]
    if not found:
        return "no stale running task"
    failed = sum(task["status"] == "failed" for task in found)
    return "\n".join([f"took back {len(found)} stale task(s): {len(found) - failed} back to pending, "
                      f"{failed} failed with no retries left", *task_rows(found)])


def pruned(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `prune`."""
    if report["table"] == "checkpoints":
        whose = "every task" if report["task_id"] is None else f"task {report['task_id']}"
        return (f"checkpoints: deleted {report['deleted']}, keeping the newest {report['keep_last']} of "
                f"{whose}")
    when = (f"stamped before {report['before']}" if report["before"] is not None
            else f"older than {age(report['older_than_seconds'])}")
    return f"{report['table']}: deleted {report['deleted']} row(s) {when}"


def backup(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `backup`."""
    return f"backup written to {report['backup']}: {size(report['bytes'])}"


def checkpoint(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Render `checkpoint`."""
    return (f"checkpoint {report['mode']}: done; the WAL was {size(report['wal_bytes_before'])}, is now "
            f"{size(report['wal_bytes'])}" + (" (only TRUNCATE empties it)" if report["mode"] != "TRUNCATE" else ""))
