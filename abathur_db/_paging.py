"""Keyset paging, the same for every list(): one rule for `limit`, and where a page after a given row starts.

Each list is ordered by a column and then by the rowid, which no two rows share, and
each of its statements reads from a lower (or, newest first, an upper) bound on both:
``col >= :start AND (col > :start OR rowid > :start_rowid)``. Its index is searched
from that bound, so a page costs the same however deep it lies, and rows that tie on
the column are neither skipped nor repeated. The first page starts at the open end.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from . import _values
from .errors import NotFoundError, ValidationError, short_repr
from .transaction import one

DEFAULT_LIMIT = 100
ROWID_MIN, ROWID_MAX = -(2**63), 2**63 - 1
# Every timestamp sorts after FIRST and before LAST (see _values.time_range).
FIRST, LAST = "", "~"


def ascending(column: str) -> str:
    """Return the WHERE terms of an oldest-first page: rows after (:start, :start_rowid) in (column, rowid) order."""
    return f"{column} >= :start AND ({column} > :start OR rowid > :start_rowid)"


def descending(column: str) -> str:
    """Return the WHERE terms of a newest-first page: rows before (:start, :start_rowid) in (column, rowid) order."""
    return f"{column} <= :start AND ({column} < :start OR rowid < :start_rowid)"


def require_limit(limit: int, table: str) -> int:
    """Return `limit` if it is an int >= 1 (the rule of every list()), else raise ValidationError."""
    _values.require_int(limit, table, "limit", 1)
    return limit


def anchor(after: Any, table: str, kinds: dict[str, type | tuple[type, ...]]) -> tuple[Any, ...]:
    """Return the values of the columns `kinds` names from `after`, the last row of the previous page.

    Each value must be of its kind (a bool is no int): anything else is not a row the
    list returned.
    """
    if not isinstance(after, dict) or not all(column in after for column in kinds):
        raise ValidationError(
            f"{table}.after: expected the last row of the previous page, a dict with {', '.join(kinds)};"
            f" got {short_repr(after)}"
        )
    values = []
    for column, kind in kinds.items():
        value = after[column]
        if (isinstance(value, bool) or not isinstance(value, kind) or value == ""
                or isinstance(value, int) and not ROWID_MIN <= value <= ROWID_MAX):
            raise ValidationError(f"{table}.after: {column} {short_repr(value)} is not one a row of {table} holds")
        values.append(value)
    return tuple(values)


def set_start(params: dict[str, Any], last: tuple[Any, int] | None, *, newest_first: bool = False) -> None:
    """Set ``start`` and ``start_rowid`` in `params`: just past `last` (the previous page's last key and rowid).

    Without `last`, the page starts at the open end. An oldest-first page never
    starts before ``params["since"]`` (taken out: ``start`` stands for it).
    """
    if newest_first:
        params["start"], params["start_rowid"] = last or (LAST, ROWID_MAX)
        return
    since = params.pop("since", FIRST)
    params["start"], params["start_rowid"] = (since, ROWID_MIN) if last is None or last[0] < since else last


def rowid_of(conn: sqlite3.Connection, table: str, sql: str, key: dict[str, Any]) -> int:
    """Return the rowid of the `after` row, found by its `key` with `sql`; raise NotFoundError if it is gone."""
    found = one(conn, table, sql, key)
    if found is None:
        described = ", ".join(f"{name} {short_repr(value)}" for name, value in key.items())
        raise NotFoundError(f"{table}: the row given as after ({described}) no longer exists: the page it ended"
                            " cannot be followed; start again from the first page")
    rowid: int = found[0]
    return rowid
