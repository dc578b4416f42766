"""Numeric measurements with labels: record, and query by name and/or time range."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, cast

from . import _paging, _retention, _values
from .rows import MetricRow
from .transaction import Row, rows, write

TABLE = "metrics"
COLUMNS = ("id", "timestamp", "metric_name", "metric_value", "labels")
JSON_COLUMNS = ("labels",)
decode_row = cast("Callable[[Row], MetricRow]", _values.decoder(TABLE, COLUMNS, JSON_COLUMNS))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM metrics"

# Pages: see _paging. id (the rowid, last column of each index) breaks ties without a sort.
_PAGE = _paging.ascending("timestamp") + " AND timestamp < :until ORDER BY timestamp, id LIMIT :limit"
QUERY_SQL = {
    "range": _SELECT + " WHERE " + _PAGE,  # M1
    "name": _SELECT + " WHERE metric_name = :metric_name AND " + _PAGE,  # M2
}

# Kept with RETURNING although the row is known: it gives the statement a journal of its own,
# without which a full disk midway makes SQLite roll back the caller's whole transaction.
_INSERT = (
    "INSERT INTO metrics (timestamp, metric_name, metric_value, labels)"
    " VALUES (:timestamp, :metric_name, :metric_value, :labels)"
    " RETURNING " + ", ".join(COLUMNS)
)


def record(
    conn: sqlite3.Connection,
    name: str,
    value: int | float,
    *,
    labels: dict[str, Any] | None = None,
    timestamp: Any = None,
) -> MetricRow:
    """Store one measurement of `name` (at `timestamp`, default now) and return it.

    `value` must be a finite number >= 0; `labels` a dict of JSON values.
    """
    _values.require_text(name, TABLE, "metric_name")
    params = {
        "timestamp": _values.now() if timestamp is None else _values.timestamp(timestamp, TABLE, "timestamp"),
        "metric_name": name,
        "metric_value": _values.require_number(value, TABLE, "metric_value"),
        "labels": None if labels is None else _values.to_json(labels, TABLE, "labels", dict),
    }
    return write(conn, TABLE, _INSERT, params, _decode_recorded)[0]


def _decode_recorded(row: Row) -> MetricRow:
    recorded = decode_row(row)
    # SQLite 3.40 hands RETURNING a whole-number REAL as an integer (3 for 3.0),
    # while a SELECT of the same row gives 3.0: give back what a read would.
    recorded["metric_value"] = float(recorded["metric_value"])
    return recorded


def query(
    conn: sqlite3.Connection,
    *,
    name: str | None = None,
    since: Any = None,
    until: Any = None,
    limit: int = _paging.DEFAULT_LIMIT,
    after: MetricRow | None = None,
) -> list[MetricRow]:
    """Return at most `limit` measurements in [`since`, `until`), of `name` only when given, oldest first.

    Either end of the range may be open. `after` is the last measurement of the
    previous page.
    """
    _values.require_text(name, TABLE, "metric_name", optional=True)
    params: dict[str, Any] = _values.time_range(since, until, TABLE)
    params["limit"] = _paging.require_limit(limit, TABLE)
    _paging.set_start(params, None if after is None else _paging.anchor(after, TABLE, {"timestamp": str, "id": int}))
    if name is None:
        query_sql = QUERY_SQL["range"]
    else:
        query_sql = QUERY_SQL["name"]
        params["metric_name"] = name
    return rows(conn, TABLE, query_sql, params, decode_row)


PRUNE_SQL = _retention.prune_sql(TABLE)


def prune(conn: sqlite3.Connection, *, before: Any = None, older_than: Any = None,
          batch_size: int = _retention.BATCH_SIZE) -> int:
    """Delete the measurements stamped before `before`, or older than `older_than`; return how many went.

    Exactly one of the two: `before` an aware datetime or ISO 8601 string, `older_than`
    a ``datetime.timedelta`` back from now. See ``_retention.prune`` for the batches.
    """
    return _retention.prune(conn, TABLE, PRUNE_SQL, before, older_than, batch_size)
