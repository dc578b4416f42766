"""Retention: audit.prune and metrics.prune delete old rows in short batches, each its own transaction."""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import threading

import pytest

import abathur_db
from abathur_db import _retention, _values, audit, metrics, transaction
from abathur_db.errors import ConfigurationError, ForeignKeyError, ValidationError
from helpers import tracing

MODULES = [pytest.param(audit, id="audit"), pytest.param(metrics, id="metrics")]
INSERT = {
    "audit": "INSERT INTO audit (timestamp, action_type) VALUES (?, 'note')",
    "metrics": "INSERT INTO metrics (timestamp, metric_name, metric_value) VALUES (?, 'm', 1)",
}
CUTOFF = "2024-06-01T00:00:00.000Z"
TIMEOUT = 60  # seconds; reached only when something hangs


def _seed(conn, module, moments: list[str]) -> list[int]:
    """Insert one row of `module`'s table per moment by raw SQL; return their ids."""
    return [conn.execute(INSERT[module.TABLE] + " RETURNING id", (moment,)).fetchone()[0] for moment in moments]


def _ids(conn, module) -> list[int]:
    return [row_id for (row_id,) in conn.execute(f"SELECT id FROM {module.TABLE} ORDER BY id")]


def _day(n: int) -> str:
    return f"2024-05-{n:02d}T12:00:00.000Z"


@pytest.mark.parametrize("module", MODULES)
def test_prune_deletes_only_rows_before_the_moment(conn, module):
    """Rows stamped before `before` go, the one stamped exactly then and later ones stay; the count is returned."""
    old = _seed(conn, module, [_day(3), _day(1), _day(2)])
    kept = _seed(conn, module, [CUTOFF, "2024-06-01T00:00:00.001Z", "2030-01-01T00:00:00.000Z"])
    assert module.prune(conn, before=CUTOFF) == len(old)
    assert _ids(conn, module) == kept
    assert module.prune(conn, before=CUTOFF) == 0


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("before", [
    pytest.param(dt.datetime(2024, 6, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))), id="aware-datetime"),
    pytest.param("2024-06-01T02:00:00+02:00", id="iso-with-offset"),
])
def test_prune_takes_the_moment_as_any_time_does(conn, module, before):
    """`before` is an aware datetime or an ISO 8601 string with an offset, compared in UTC."""
    _seed(conn, module, [_day(31)])
    kept = _seed(conn, module, [CUTOFF])
    assert module.prune(conn, before=before) == 1
    assert _ids(conn, module) == kept


@pytest.mark.parametrize("module", MODULES)
def test_older_than_counts_back_from_now(conn, module):
    """older_than=timedelta deletes what is older than now minus it, and keeps what is younger."""
    now = dt.datetime.now(dt.timezone.utc)
    _seed(conn, module, [_values.format_datetime(now - dt.timedelta(days=31))])
    kept = _seed(conn, module, [_values.format_datetime(now - dt.timedelta(days=29)), _values.now()])
    assert module.prune(conn, older_than=dt.timedelta(days=30)) == 1
    assert _ids(conn, module) == kept


@pytest.mark.parametrize("module", MODULES)
def test_an_age_beyond_the_calendar_deletes_nothing(conn, module):
    """older_than=timedelta.max reaches back before year 1: nothing is that old, and nothing overflows."""
    kept = _seed(conn, module, ["0001-01-01T00:00:00.000Z", _day(1)])
    assert module.prune(conn, older_than=dt.timedelta.max) == 0
    assert _ids(conn, module) == kept


@pytest.mark.parametrize("module", MODULES)
def test_each_batch_is_its_own_write_transaction(conn, module):
    """Seven old rows with batch_size=3 go in three BEGIN IMMEDIATE … COMMIT blocks."""
    ids = _seed(conn, module, [_day(n) for n in (7, 1, 6, 2, 5, 3, 4)])
    with tracing(conn) as sent:
        assert module.prune(conn, before=CUTOFF, batch_size=3) == 7
    assert [s.split()[0] for s in sent] == ["BEGIN", "DELETE", "COMMIT"] * 3
    assert sent.count("BEGIN IMMEDIATE") == 3
    assert _ids(conn, module) == [] and len(ids) == 7


def test_the_pause_after_a_batch_lasts_as_long_as_the_batch_held_the_lock_not_as_it_waited(conn, db_path,
                                                                                           monkeypatch):
    """A batch that first waited for another connection's write lock pauses only for the time it held it."""
    _seed(conn, audit, [_day(n) for n in range(1, 5)])
    pauses: list[float] = []
    monkeypatch.setattr(_retention.time, "sleep", pauses.append)
    holder = abathur_db.connect(str(db_path))
    holder.execute("BEGIN IMMEDIATE")
    releasing = threading.Timer(0.3, holder.rollback)
    releasing.start()
    try:
        assert audit.prune(conn, before=CUTOFF, batch_size=2) == 4
    finally:
        releasing.join()
        holder.close()
    assert len(pauses) == 2 and all(0 <= pause < 0.15 for pause in pauses), pauses  # not the 0.3 s waited


@pytest.mark.parametrize("module", MODULES)
def test_batches_take_the_oldest_rows_first(conn, module):
    """A prune stopped after its first batch has removed the oldest rows, not arbitrary ones."""
    ids = _seed(conn, module, [_day(n) for n in (4, 1, 3, 2)])
    deleted = [row_id for (row_id,) in conn.execute(module.PRUNE_SQL, {"before": CUTOFF, "limit": 2})]
    assert sorted(deleted) == sorted([ids[1], ids[3]])


@pytest.mark.parametrize("module", MODULES)
def test_prune_logs_one_info_line(conn, module, caplog):
    """A prune logs one INFO line: the table, the count, the moment and the batches."""
    _seed(conn, module, [_day(1), _day(2), _day(3)])
    with caplog.at_level(logging.INFO, logger="abathur_db"):
        module.prune(conn, before=CUTOFF, batch_size=2)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "abathur_db"]
    assert line.startswith(f"{module.TABLE}: pruned 3 row(s) older than {CUTOFF} in 2 batch(es), ")


@pytest.mark.parametrize("module", MODULES)
def test_prune_refuses_to_run_inside_a_transaction(conn, module):
    """Inside the caller's transaction the batches could not commit on their own: refused, nothing deleted."""
    _seed(conn, module, [_day(1)])
    with transaction(conn):
        with pytest.raises(ConfigurationError, match=f"{module.TABLE}: prune\\(\\) runs each batch"):
            module.prune(conn, before=CUTOFF)
    assert len(_ids(conn, module)) == 1


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("kwargs, shown", [
    pytest.param({}, "exactly one of before or older_than", id="neither"),
    pytest.param({"before": CUTOFF, "older_than": dt.timedelta(days=1)}, "exactly one of", id="both"),
    pytest.param({"before": dt.datetime(2024, 6, 1)}, ".before: ", id="naive"),
    pytest.param({"before": "last tuesday"}, ".before: 'last tuesday' is not an ISO 8601", id="not-a-time"),
    pytest.param({"older_than": 30}, ".older_than: expected a timedelta >= 0, got 30", id="number"),
    pytest.param({"older_than": "30d"}, ".older_than: expected a timedelta >= 0, got '30d'", id="text"),
    pytest.param({"older_than": dt.timedelta(days=-1)}, ".older_than: expected a timedelta >= 0", id="negative"),
    pytest.param({"before": CUTOFF, "batch_size": 0}, ".batch_size: 0 is out of range", id="batch-zero"),
    pytest.param({"before": CUTOFF, "batch_size": True}, ".batch_size: expected an integer", id="batch-bool"),
])
def test_prune_rejects_bad_arguments(conn, module, kwargs, shown):
    """Bad arguments raise ValidationError naming the table and the argument, and delete nothing."""
    _seed(conn, module, [_day(1)])
    with pytest.raises(ValidationError) as caught:
        module.prune(conn, **kwargs)
    assert f"{module.TABLE}" in str(caught.value) and shown in str(caught.value)
    assert len(_ids(conn, module)) == 1


def test_no_table_of_the_schema_refers_to_audit_or_metrics(conn):
    """No foreign key of the schema points at audit or metrics, so pruning them never orphans a row."""
    tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    parents = {row[2] for table in tables for row in conn.execute(f"PRAGMA foreign_key_list({table})")}
    assert parents and not parents & {"audit", "metrics"}


def test_a_row_a_table_of_yours_refers_to_stops_the_prune(conn):
    """A user table's reference to an old audit row makes its batch fail with ForeignKeyError; earlier batches stay."""
    ids = _seed(conn, audit, [_day(1), _day(2), _day(3)])
    conn.execute("CREATE TABLE reviews (audit_id INTEGER REFERENCES audit (id))")
    conn.execute("INSERT INTO reviews VALUES (?)", (ids[2],))
    with pytest.raises(ForeignKeyError):
        audit.prune(conn, before=CUTOFF, batch_size=2)
    assert _ids(conn, audit) == [ids[2]]


def _write_until(path: str, started, stop, table: str) -> None:
    """Record rows in `table` through a pool of this thread or process until `stop` is set."""
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        started.set()
        while not stop.is_set():
            if table == "audit":
                audit.record(conn, "beside the prune")
            else:
                metrics.record(conn, "beside_the_prune", 1)


def _count_new(db_path, module) -> int:
    """Return how many rows the writer has committed, read through a connection of its own."""
    reader = abathur_db.connect(db_path, readonly=True)
    try:
        return reader.execute(f"SELECT count(*) FROM {module.TABLE} WHERE timestamp >= ?", (CUTOFF,)).fetchone()[0]
    finally:
        reader.close()


@pytest.mark.parametrize("module, kind", [
    pytest.param(audit, "thread", id="audit-thread"),
    pytest.param(metrics, "thread", id="metrics-thread"),
    pytest.param(audit, "process", id="audit-process"),  # the same code as metrics: one process test is enough
])
def test_writers_go_on_between_the_batches_of_a_prune(db_path, conn, module, kind):
    """A writer (thread or process) beside a prune of 2,000 rows commits between its batches and keeps its rows."""
    conn.executemany(INSERT[module.TABLE], [(_day(1 + i % 28),) for i in range(2_000)])
    if kind == "thread":
        started, stop = threading.Event(), threading.Event()
        writer = threading.Thread(target=_write_until, args=(str(db_path), started, stop, module.TABLE))
    else:
        context = multiprocessing.get_context("spawn")
        started, stop = context.Event(), context.Event()
        writer = context.Process(target=_write_until, args=(str(db_path), started, stop, module.TABLE))
    writer.start()
    # At each of the prune's commits, how many rows the writer has committed so far.
    seen: list[int] = []
    try:
        assert started.wait(TIMEOUT)
        conn.set_trace_callback(lambda sql: seen.append(_count_new(db_path, module)) if sql == "COMMIT" else None)
        # 80 batches, some 200 ms: longer than the sleeps of SQLite's busy handler, in which
        # a writer process's first wait for the lock can miss every gap of a shorter prune.
        assert module.prune(conn, before=CUTOFF, batch_size=25) == 2_000
    finally:
        conn.set_trace_callback(None)
        stop.set()
        writer.join(TIMEOUT)
    assert len(seen) == 81  # 80 full batches, then one that finds nothing left
    assert len(set(seen)) > 1, f"no write landed between two of the prune's batches: {seen}"
    assert conn.execute(f"SELECT count(*) FROM {module.TABLE} WHERE timestamp < ?", (CUTOFF,)).fetchone()[0] == 0
    assert _count_new(db_path, module) >= seen[-1] > 0
