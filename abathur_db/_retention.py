"""Retention: delete a table's rows older than a moment in short batches, each its own write transaction."""

from __future__ import annotations

import datetime as _dt
import logging
import sqlite3
import time
from typing import Any

from . import _values
from .errors import ConfigurationError, ValidationError, short_repr
from .transaction import in_block, transaction, write

log = logging.getLogger("abathur_db")

# Rows per transaction. A row costs a few index pages (20-40 µs in a 1M-row audit
# table), so a batch holds the write lock for 10-20 ms; writers beside a prune of
# 1M rows kept their p99 at 13-21 ms (tools/benchsuite, workload "prune"). In a
# trial on such a table, 1,000-row batches gave a writer thread a p99 of 39 ms,
# and batches without the pause between them 128 ms.
BATCH_SIZE = 500
_EARLIEST = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


def prune_sql(table: str) -> str:
    """Return the statement deleting one batch of `table`'s oldest rows before :before (at most :limit)."""
    # The subquery walks the timestamp index from its start and stops after :limit
    # entries; the DELETE then finds each row by its rowid.
    return f"""
        DELETE FROM {table}
         WHERE id IN (SELECT id
                        FROM {table}
                       WHERE timestamp < :before
                       ORDER BY timestamp
                       LIMIT :limit)
        RETURNING id
    """.strip()


def prune(conn: sqlite3.Connection, table: str, sql: str, before: Any, older_than: Any, batch_size: Any) -> int:
    """Delete `table`'s rows stamped before a moment, batch by batch; return how many went.

    The moment is `before`, or the current time less `older_than`: exactly one is
    given. Rows go oldest first, each batch one write transaction of at most
    `batch_size` rows, and the write lock stays free for as long again before the
    next, so other writers never wait behind more than one batch. Rows deleted by
    earlier batches stay deleted if a later one fails.

    :raises ConfigurationError: `conn` is inside a transaction (the batches could not commit).
    :raises ForeignKeyError: a table of the user's refers to a row of the batch.
    """
    cutoff = _cutoff(table, before, older_than)
    _values.require_int(batch_size, table, "batch_size", 1)
    if in_block(conn):
        raise ConfigurationError(
            f"{table}: prune() runs each batch in a transaction of its own; call it outside a transaction")
    started = time.monotonic()
    deleted = batches = 0
    while True:
        with transaction(conn):
            held_from = time.monotonic()  # the batch holds the write lock from here; waiting for it was not holding it
            count = len(write(conn, table, sql, {"before": cutoff, "limit": batch_size}))
        deleted += count
        batches += 1
        if count < batch_size:
            break
        # A writer of this process waiting on the in-process lock, or of another
        # process waiting for the write lock or its process's turn, writes meanwhile.
        time.sleep(time.monotonic() - held_from)
    log.info("%s: pruned %d row(s) older than %s in %d batch(es), %.1f s", table, deleted, cutoff, batches,
             time.monotonic() - started)
    return deleted


def _cutoff(table: str, before: Any, older_than: Any) -> str:
    if (before is None) == (older_than is None):
        raise ValidationError(f"{table}: prune() takes exactly one of before or older_than")
    if before is not None:
        return _values.timestamp(before, table, "before")
    if not isinstance(older_than, _dt.timedelta) or older_than < _dt.timedelta(0):
        raise ValidationError(f"{table}.older_than: expected a timedelta >= 0, got {short_repr(older_than)}")
    now = _dt.datetime.now(_dt.timezone.utc)
    # An age beyond the calendar's start (timedelta.max) leaves nothing old enough.
    moment = now - older_than if older_than < now - _EARLIEST else _EARLIEST
    return _values.format_datetime(moment)
