"""metrics: record, and query by name and/or time range."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from abathur_db import metrics
from abathur_db.errors import ValidationError

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def count(conn) -> int:
    return conn.execute("SELECT count(*) FROM metrics").fetchone()[0]


def ids(rows: list[dict]) -> list[int]:
    return [row["id"] for row in rows]


@pytest.mark.parametrize("value", [0, 3, 2.5, 1e300, 2**53])
def test_record_returns_the_row_as_a_query_reads_it(conn, value):
    """record returns the stored row, value as a float, exactly as query returns it."""
    row = metrics.record(conn, "tokens", value, labels={"model": "m", "n": 1})
    assert metrics.query(conn) == [row]
    assert row["metric_value"] == value and type(row["metric_value"]) is float
    assert row["metric_name"] == "tokens" and row["labels"] == {"model": "m", "n": 1}
    assert TIMESTAMP.fullmatch(row["timestamp"]) and isinstance(row["id"], int)


def test_record_without_labels_stores_null(conn):
    """No labels is SQL NULL."""
    assert metrics.record(conn, "x", 1)["labels"] is None
    assert conn.execute("SELECT labels IS NULL FROM metrics").fetchone()[0] == 1


def test_empty_labels_are_stored_as_an_empty_object_not_null(conn):
    """labels={} is stored as the JSON text '{}', not as SQL NULL."""
    assert metrics.record(conn, "x", 1, labels={})["labels"] == {}
    assert conn.execute("SELECT labels, typeof(labels) FROM metrics").fetchone() == ("{}", "text")


@pytest.mark.parametrize("moment, stored", [
    pytest.param("2024-03-01T12:00:00.250Z", "2024-03-01T12:00:00.250Z", id="schema-format"),
    pytest.param("2024-03-01T13:00:00+01:00", "2024-03-01T12:00:00.000Z", id="offset-string"),
    pytest.param(dt.datetime(2024, 3, 1, 7, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
                 "2024-03-01T12:00:00.123Z", id="aware-datetime"),
])
def test_record_at_a_given_time(conn, moment, stored):
    """A given timestamp is stored in the one UTC format."""
    assert metrics.record(conn, "x", 1, timestamp=moment)["timestamp"] == stored


def test_a_name_selects_only_its_own_measurements(conn):
    """Names that differ by a suffix or by case, or hold LIKE or GLOB wildcards, each select only their own rows."""
    names = ["n", "n?", "n%", "n_", "n*", "N"]
    recorded = {name: metrics.record(conn, name, 1)["id"] for name in names}
    assert {name: ids(metrics.query(conn, name=name)) for name in names} == {n: [i] for n, i in recorded.items()}


BAD_RECORDS = [
    pytest.param({"value": -1}, "metric_value", "-1", id="negative"),
    pytest.param({"value": -0.001}, "metric_value", "-0.001", id="negative-float"),
    pytest.param({"value": float("nan")}, "metric_value", "nan", id="nan"),
    pytest.param({"value": float("inf")}, "metric_value", "inf", id="inf"),
    pytest.param({"value": float("-inf")}, "metric_value", "-inf", id="minus-inf"),
    pytest.param({"value": True}, "metric_value", "True", id="bool"),
    pytest.param({"value": "3"}, "metric_value", "'3'", id="text"),
    pytest.param({"value": None}, "metric_value", "None", id="none"),
    pytest.param({"name": ""}, "metric_name", "''", id="empty-name"),
    pytest.param({"name": 5}, "metric_name", "5", id="int-name"),
    pytest.param({"labels": ["a"]}, "labels", "['a']", id="labels-array"),
    pytest.param({"labels": "k=v"}, "labels", "'k=v'", id="labels-text"),
    pytest.param({"labels": {"x": float("nan")}}, "labels", "nan", id="labels-nan"),
    pytest.param({"labels": {"x": {1}}}, "labels", "{1}", id="labels-set"),
    pytest.param({"timestamp": dt.datetime(2024, 1, 1)}, "timestamp", "2024", id="naive-datetime"),
    pytest.param({"timestamp": "yesterday"}, "timestamp", "'yesterday'", id="not-a-timestamp"),
    pytest.param({"timestamp": 1700000000}, "timestamp", "1700000000", id="epoch-int"),
]


@pytest.mark.parametrize("override, field, shown", BAD_RECORDS)
def test_record_rejects_bad_input(conn, override, field, shown):
    """Bad input raises ValidationError naming table, field and value, and stores nothing."""
    metrics.record(conn, "before", 1)
    args = {"name": "x", "value": 1, **override}
    with pytest.raises(ValidationError) as caught:
        metrics.record(conn, args.pop("name"), args.pop("value"), **args)
    assert f"metrics.{field}" in str(caught.value) and shown in str(caught.value)
    assert count(conn) == 1


@pytest.fixture
def series(conn):
    """Six measurements of two names on four days; return their ids in insertion order."""
    points = [("a", "2024-01-01"), ("b", "2024-01-01"), ("a", "2024-01-03"), ("a", "2024-01-02"),
              ("b", "2024-01-04"), ("a", "2024-01-02")]
    return [metrics.record(conn, name, i, timestamp=f"{day}T00:00:00.000Z")["id"]
            for i, (name, day) in enumerate(points)]


@pytest.mark.parametrize("kwargs, expected", [
    pytest.param({}, [0, 1, 3, 5, 2, 4], id="all-oldest-first"),
    pytest.param({"name": "a"}, [0, 3, 5, 2], id="one-name"),
    pytest.param({"name": "c"}, [], id="unknown-name"),
    pytest.param({"since": "2024-01-02T00:00:00.000Z", "until": "2024-01-04T00:00:00.000Z"}, [3, 5, 2],
                 id="half-open-range"),
    pytest.param({"name": "a", "since": "2024-01-02T00:00:00Z", "until": "2024-01-03T00:00:00Z"}, [3, 5],
                 id="name-and-range"),
    pytest.param({"since": dt.datetime(2024, 1, 3, tzinfo=dt.timezone.utc)}, [2, 4], id="open-end"),
    pytest.param({"name": "b", "until": "2024-01-04T00:00:00+00:00"}, [1], id="open-start"),
    pytest.param({"limit": 2}, [0, 1], id="limit"),
])
def test_query_by_name_and_range(conn, series, kwargs, expected):
    """query filters by name and [since, until), orders by time then insertion, honours limit."""
    assert ids(metrics.query(conn, **kwargs)) == [series[i] for i in expected]


@pytest.mark.parametrize("kwargs, shown", [
    pytest.param({"name": ""}, "metrics.metric_name", id="empty-name"),
    pytest.param({"name": 1}, "metrics.metric_name", id="int-name"),
    pytest.param({"since": "soon"}, "metrics.since", id="bad-since"),
    pytest.param({"until": dt.datetime(2024, 1, 1)}, "metrics.until", id="naive-until"),
    pytest.param({"limit": -1}, "metrics.limit", id="negative-limit"),
    pytest.param({"limit": 0}, "metrics.limit", id="zero-limit"),
    pytest.param({"limit": None}, "metrics.limit", id="none-limit"),
    pytest.param({"limit": "5"}, "metrics.limit", id="text-limit"),
])
def test_query_rejects_bad_arguments(conn, kwargs, shown):
    """query names the table and argument it cannot accept."""
    with pytest.raises(ValidationError) as caught:
        metrics.query(conn, **kwargs)
    assert shown in str(caught.value)
