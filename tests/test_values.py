"""Values to and from the database: timestamps, JSON, ids, validators, row decoding."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from abathur_db import _values, agents, audit, checkpoints, metrics, sessions, state, tasks
from abathur_db.errors import StoredValueError, TransitionError, ValidationError, short_repr
from helpers import unchecked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(_values.__file__)))
FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UTC = dt.timezone.utc


def test_now_is_fixed_width_utc_and_ordered():
    """now() has the one timestamp format and never goes backwards in text order."""
    stamps = [_values.now() for _ in range(200)]
    assert all(FORMAT.fullmatch(s) for s in stamps)
    assert stamps == sorted(stamps)


def test_sql_default_and_python_write_the_same_format():
    """The SQL default expression and Python produce identical shapes for the same instant."""
    conn = sqlite3.connect(":memory:")  # one connection: only SQL's strftime is under test
    sql_value = conn.execute(
        "SELECT strftime(?, '2024-05-06 07:08:09.010')", (_values.TIMESTAMP_SQL_FORMAT,)
    ).fetchone()[0]
    conn.close()
    python_value = _values.format_datetime(dt.datetime(2024, 5, 6, 7, 8, 9, 10_000, tzinfo=UTC))
    assert sql_value == python_value == "2024-05-06T07:08:09.010Z"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05.000Z"),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC), "2024-01-02T03:04:05.999Z"),
        (dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2024-01-02T03:04:05.000Z"),
        ("2024-01-02T03:04:05+00:00", "2024-01-02T03:04:05.000Z"),
        ("2024-01-02T03:04:05.123456-01:00", "2024-01-02T04:04:05.123Z"),
        ("2024-01-02T03:04:05.120Z", "2024-01-02T03:04:05.120Z"),
    ],
)
def test_timestamp_accepts_aware_values_and_normalises_to_utc(value, expected):
    """Aware datetimes and ISO strings with an offset become the fixed-width UTC form."""
    assert _values.timestamp(value, "t", "f") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (dt.datetime(2024, 1, 2), "no time zone"),
        ("2024-01-02T03:04:05", "no time zone"),
        ("yesterday", "not an ISO 8601 timestamp"),
        (1700000000, "expected a datetime"),
        (None, "expected a datetime"),
    ],
)
def test_timestamp_rejects_naive_and_garbage(value, message):
    """Naive or unparseable times are refused, naming table and field."""
    with pytest.raises(ValidationError, match=rf"t\.f: .*{message}"):
        _values.timestamp(value, "t", "f")


def test_to_json_is_compact_and_keeps_unicode():
    """JSON text is compact and keeps non-ASCII characters as they are."""
    assert _values.to_json({"a": ["é", 1, None]}, "t", "f") == '{"a":["é",1,null]}'


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [
        (float("nan"), None, "not valid JSON"),
        ({"x": float("inf")}, None, "not valid JSON"),
        ({1, 2}, None, "not valid JSON"),
        (object(), None, "not valid JSON"),
        ({"a": 1}, list, "expected a JSON array"),
        ([1], dict, "expected a JSON object"),
    ],
)
def test_to_json_rejects_what_json_cannot_hold(value, kind, message):
    """NaN, infinities, sets and wrong container kinds are refused before reaching SQL."""
    with pytest.raises(ValidationError, match=rf"t\.f: .*{message}"):
        _values.to_json(value, "t", "f", kind)


def test_new_ids_are_version_7_uuids_ordered_by_time():
    """Generated ids are distinct RFC 4122 version-7 UUIDs whose text grows with time."""
    ids = [_values.new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    parsed = [uuid.UUID(i) for i in ids]
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (lambda v: _values.require_text(v, "t", "f"), "", "non-empty string"),
        (lambda v: _values.require_text(v, "t", "f"), 5, "non-empty string"),
        (lambda v: _values.require_int(v, "t", "f", 0, 10), True, "expected an integer"),
        (lambda v: _values.require_int(v, "t", "f", 0, 10), "5", "expected an integer"),
        (lambda v: _values.require_int(v, "t", "f", 0, 10), 11, "between 0 and 10"),
        (lambda v: _values.require_int(v, "t", "f", 1), 0, ">= 1"),
        (lambda v: _values.require_number(v, "t", "f"), -0.5, "finite and >= 0"),
        (lambda v: _values.require_number(v, "t", "f"), float("nan"), "finite and >= 0"),
        (lambda v: _values.require_number(v, "t", "f"), "1", "expected a number"),
        (lambda v: _values.require_number(v, "t", "f"), 10**400, "finite and >= 0"),
        (lambda v: _values.require_int(v, "t", "f", 0), 2**63, ">= 0"),
        (lambda v: _values.require_choice(v, ("a", "b"), "t", "f"), "c", "not one of a, b"),
    ],
)
def test_validators_name_table_field_and_value(check, value, message):
    """Each validator refuses a bad value with a message naming table, field and value."""
    with pytest.raises(ValidationError, match=rf"t\.f: .*{re.escape(message)}"):
        check(value)


def test_validators_accept_good_values():
    """Good values pass every validator (and numbers come back as floats)."""
    _values.require_text(None, "t", "f", optional=True)
    _values.require_text("x", "t", "f")
    _values.require_int(10, "t", "f", 0, 10)
    _values.require_choice("a", ("a",), "t", "f")
    assert _values.require_number(3, "t", "f") == 3.0


def test_long_values_are_shortened_in_messages():
    """A 1 MB value is quoted only in part, so messages stay readable."""
    with pytest.raises(ValidationError) as info:
        _values.require_int("x" * 1_000_000, "t", "f", 0)
    assert len(str(info.value)) < 300
    assert "1000002 characters" in str(info.value)


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [("soon", None, "t.x_since"), (None, dt.datetime(2024, 1, 1), "t.x_until")],
)
def test_time_range_names_the_bad_end(since, until, message):
    """A bad end of a time range is reported under the caller's argument name."""
    with pytest.raises(ValidationError, match=re.escape(message)):
        _values.time_range(since, until, "t", "x")


def test_time_range_open_ends_enclose_every_timestamp():
    """Open ends sort before and after every timestamp, so a range query stays one statement."""
    bounds = _values.time_range(None, None, "t")
    assert bounds["since"] < "0000-01-01T00:00:00.000Z" < "9999-12-31T23:59:59.999Z" < bounds["until"]
    assert _values.time_range("2024-01-01T00:00:00Z", None, "t")["since"] == "2024-01-01T00:00:00.000Z"


def test_only_one_filter_group():
    """only_one returns the single group given and refuses none or several."""
    assert _values.only_one("t", a=False, b=True) == "b"
    for groups in ({"a": False, "b": False}, {"a": True, "b": True}):
        with pytest.raises(ValidationError, match="t: list\\(\\) takes exactly one of a, b"):
            _values.only_one("t", **groups)


def test_decoder_decodes_json_columns_only():
    """Rows become dicts; JSON columns are decoded, NULLs and other columns left alone."""
    decode = _values.decoder("t", ("id", "data", "note"), iter(["data"]))
    assert decode((1, '{"a": [1]}', '{"not": "json column"}')) == {
        "id": 1, "data": {"a": [1]}, "note": '{"not": "json column"}'}
    assert decode((2, None, None)) == {"id": 2, "data": None, "note": None}


@pytest.mark.parametrize(("value", "key"), [
    ({1: "a", "1": "b"}, "1"),
    ({None: 1}, "None"),
    ({True: 1}, "True"),
    ({1.5: 1}, "1.5"),
    ({"outer": [{"fine": 1}, {2: "deep inside"}]}, "2"),
])
def test_to_json_refuses_object_keys_that_are_not_text(value, key):
    """A non-string key, which JSON would turn into text (losing a value to a clash), is refused by name."""
    with pytest.raises(ValidationError, match=rf"t\.f: .*object key {re.escape(key)}, of type"):
        _values.to_json(value, "t", "f")


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_to_json_accepts_the_documented_nesting_depth():
    """Arrays and objects nested MAX_JSON_DEPTH (100, as documented) levels deep are stored, and decode back equal."""
    assert _values.MAX_JSON_DEPTH == 100
    text = _values.to_json({"a": _nested(_values.MAX_JSON_DEPTH - 1)}, "t", "f")
    assert _values.decode_json(text, "t", "f", {}, ()) == {"a": _nested(_values.MAX_JSON_DEPTH - 1)}


@pytest.mark.parametrize("depth", [_values.MAX_JSON_DEPTH + 1, 995, 5000])
def test_to_json_refuses_deeper_nesting_with_a_validation_error(depth):
    """Nesting beyond MAX_JSON_DEPTH raises ValidationError, never RecursionError, however deep."""
    with pytest.raises(ValidationError, match=rf"t\.f: .*deeper than {_values.MAX_JSON_DEPTH} levels"):
        _values.to_json(_nested(depth), "t", "f")


def test_to_json_refuses_a_value_that_contains_itself():
    """A list that contains itself is refused as too deep, not looped over forever."""
    looped: list = [1]
    looped.append(looped)
    with pytest.raises(ValidationError, match="contains itself"):
        _values.to_json(looped, "t", "f")


def test_decoder_names_table_row_column_and_value_of_text_that_is_not_json():
    """A stored value that is not JSON raises StoredValueError naming the table, the row's key, the column and value."""
    decode = _values.decoder("checkpoints", ("task_id", "iteration", "state"), ["state"], key=("task_id", "iteration"))
    with pytest.raises(StoredValueError) as caught:
        decode(("t1", 3, "{not json"))
    assert str(caught.value).startswith("checkpoints: row task_id 't1', iteration 3: state holds '{not json'")
    assert isinstance(caught.value.__cause__, ValueError)


def test_decoder_returns_a_bare_number_as_the_json_number_it_is():
    """A number stored without its JSON text (SQLite's json_valid accepts it) comes back as that number."""
    assert _values.decoder("t", ("id", "data"), ["data"])((1, 42)) == {"id": 1, "data": 42}


def test_decoding_never_raises_recursion_error_even_from_a_deep_stack():
    """Text nested deeper than the stack allows raises StoredValueError, never RecursionError."""
    text = "[" * 990 + "]" * 990  # what an earlier release could store
    with pytest.raises(StoredValueError, match="nested too deeply"):
        _values.decode_json(text, "t", "f", {"id": "r1"}, ("id",))
    stored = _values.to_json(_nested(_values.MAX_JSON_DEPTH), "t", "f")

    def at_depth(frames: int):
        if frames:
            return at_depth(frames - 1)
        return _values.decode_json(stored, "t", "f", {"id": "r1"}, ("id",))

    room = sys.getrecursionlimit() - len(inspect.stack()) - _values.MAX_JSON_DEPTH // 2
    with pytest.raises(StoredValueError, match="nested too deeply"):
        at_depth(room)


# Rows that break today's rules, as an upgrade keeps them (CHECK constraints were off).
LEGACY_ROWS = {
    "tasks.input_data": (
        "INSERT INTO tasks (id, prompt, input_data) VALUES ('t1', 'p', 'not json')",
        lambda conn: tasks.get(conn, "t1"), "tasks: row id 't1': input_data holds 'not json'"),
    "tasks.input_data in a list": (
        "INSERT INTO tasks (id, prompt, input_data) VALUES ('t1', 'p', '[oops')",
        lambda conn: tasks.list(conn, status="pending"), "tasks: row id 't1': input_data holds '[oops'"),
    "tasks.result_data with its session": (
        "INSERT INTO tasks (id, prompt, result_data) VALUES ('t1', 'p', '{')",
        lambda conn: tasks.get_with_session(conn, "t1"), "tasks: row id 't1': result_data holds '{'"),
    "sessions.metadata": (
        "INSERT INTO sessions (id, app_name, user_id, metadata) VALUES ('s1', 'a', 'u', 'nope')",
        lambda conn: sessions.get(conn, "s1"), "sessions: row id 's1': metadata holds 'nope'"),
    "agents.resource_usage": (
        "INSERT INTO agents (id, name, specialization, task_id, model, resource_usage)"
        " VALUES ('a1', 'n', 's', 'ok', 'm', 'tokens: 5')",
        lambda conn: agents.get(conn, "a1"), "agents: row id 'a1': resource_usage holds 'tokens: 5'"),
    "audit.action_data": (
        "INSERT INTO audit (id, action_type, action_data) VALUES (7, 'x', '[1,')",
        lambda conn: audit.list(conn), "audit: row id 7: action_data holds '[1,'"),
    "checkpoints.state": (
        "INSERT INTO checkpoints (task_id, iteration, state) VALUES ('ok', 2, 'nan')",
        lambda conn: checkpoints.load(conn, "ok"), "checkpoints: row task_id 'ok', iteration 2: state holds 'nan'"),
    "state.value": (
        "INSERT INTO state (task_id, key, value) VALUES ('ok', 'k', 'undefined')",
        lambda conn: state.get(conn, "ok", "k"), "state: row task_id 'ok', key 'k': value holds 'undefined'"),
    "metrics.labels": (
        "INSERT INTO metrics (id, metric_name, metric_value, labels) VALUES (3, 'm', 1, '{''a'': 1}')",
        lambda conn: metrics.query(conn), "metrics: row id 3: labels holds \"{'a': 1}\""),
    "deeply nested": (
        "INSERT INTO tasks (id, prompt, input_data) VALUES ('t1', 'p', '" + "[" * 990 + "]" * 990 + "')",
        lambda conn: tasks.get(conn, "t1"), "tasks: row id 't1': input_data holds '[[["),
}


@pytest.mark.parametrize("insert, read, message", LEGACY_ROWS.values(), ids=LEGACY_ROWS.keys())
def test_reading_a_stored_value_that_breaks_the_rules_raises_stored_value_error(conn, insert, read, message):
    """Text that is not JSON in a JSON column raises StoredValueError naming table, row, column and value."""
    conn.execute("INSERT INTO tasks (id, prompt) VALUES ('ok', 'p')")
    with unchecked(conn):
        conn.execute(insert)
    with pytest.raises(StoredValueError) as caught:
        read(conn)
    assert str(caught.value).startswith(message), str(caught.value)


# ---------------------------------------------------------------------------------------
# Ids and clocks, checked against the system clock.


def _to_the_millisecond(moment: dt.datetime) -> dt.datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _epoch_millis(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)


def test_a_new_ids_time_part_is_the_current_unix_time_in_milliseconds():
    """A UUIDv7's leading 48 bits are the Unix time in milliseconds at which it was made."""
    for _ in range(50):
        before = time.time_ns() // 1_000_000
        made = uuid.UUID(_values.new_id()).int >> 80
        after = time.time_ns() // 1_000_000
        assert before <= made <= after


def test_new_ids_fill_their_random_bits():
    """Apart from the time, version and variant bits, an id's 74 bits are random: each of them varies."""
    randoms = [uuid.UUID(_values.new_id()).int & ((1 << 80) - 1) for _ in range(2000)]
    varying = 0
    for value in randoms:
        varying |= value ^ randoms[0]
    assert varying == ((1 << 12) - 1) << 64 | (1 << 62) - 1  # rand_a (12 bits) and rand_b (62 bits)


def test_now_is_the_system_clocks_utc_time():
    """now() is the system clock's current UTC time, to the millisecond."""
    for _ in range(20):
        before = _to_the_millisecond(dt.datetime.now(UTC))
        stamp = _values.now()
        after = dt.datetime.now(UTC)
        assert before <= dt.datetime.fromisoformat(stamp) <= after, (before, stamp, after)


class _NoOffset(dt.tzinfo):
    """A time zone that does not know its offset: datetimes in it are as good as naive."""

    def utcoffset(self, moment):
        return None

    def tzname(self, moment):
        return "unknown"

    def dst(self, moment):
        return None


def test_a_tzinfo_without_an_offset_is_refused():
    """A datetime whose tzinfo returns no offset is refused like a naive one, naming table, field and value."""
    moment = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=_NoOffset())
    with pytest.raises(ValidationError, match=r"t\.f: .*no time zone") as caught:
        _values.timestamp(moment, "t", "f")
    assert "datetime.datetime(2024, 1, 2, 3, 4, 5" in str(caught.value)


@pytest.mark.parametrize("text", ["2024-06-01T10:00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-05:00"])
def test_a_refused_time_quotes_the_text_given(text):
    """A time text refused after parsing (no offset, out of range in UTC) is quoted as given, not as parsed."""
    with pytest.raises(ValidationError, match=r"t\.f: ") as caught:
        _values.timestamp(text, "t", "f")
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize("value", [{"k": "\ud800"}, ["ok", "\udfff"], {"\udfff": 1}])
def test_a_json_value_with_a_lone_surrogate_is_quoted_as_given(value):
    """A JSON value holding a lone surrogate is refused quoting the value passed, not its JSON text."""
    with pytest.raises(ValidationError, match=r"t\.f: .*lone surrogate") as caught:
        _values.to_json(value, "t", "f")
    assert short_repr(value) in str(caught.value)


def test_a_refused_transition_names_the_field_and_both_values():
    """A status change the state machine refuses names the row, the field, the current and the wanted value."""
    with pytest.raises(TransitionError) as caught:
        _values.require_transition({"a": ("b",)}, "a", "c", "t: row 'r1'", "status")
    message = str(caught.value)
    assert message.startswith("t: row 'r1'") and "status" in message and "'a'" in message and "'c'" in message


_IN_ANOTHER_TIME_ZONE = """
    import datetime as dt, json, sqlite3, time, uuid
    from abathur_db import _values

    made = uuid.UUID(_values.new_id()).int >> 80
    local = dt.datetime(2024, 7, 1, 12, 0).astimezone()  # noon on the local clock, an aware datetime
    conn = sqlite3.connect(":memory:")
    sql_now = conn.execute("SELECT strftime(?, 'now')", (_values.TIMESTAMP_SQL_FORMAT,)).fetchone()[0]
    print(json.dumps({
        "offset": time.localtime().tm_gmtoff,
        "now": _values.now(),
        "id_millis": made,
        "sql_now": sql_now,
        "local_noon": _values.timestamp(local, "t", "f"),
        "local_noon_text": _values.timestamp(local.isoformat(), "t", "f"),
    }))
"""


@pytest.mark.parametrize("zone, noon_in_utc", [
    ("XST-05:30", "2024-07-01T06:30:00.000Z"),  # 5 h 30 east of UTC (POSIX signs are reversed)
    ("YST+08", "2024-07-01T20:00:00.000Z"),
])
def test_times_are_utc_whatever_the_local_time_zone(zone, noon_in_utc):
    """Under another TZ, now(), new ids, SQL's default and stored times are all UTC, never local time."""
    env = {**os.environ, "TZ": zone, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = _to_the_millisecond(dt.datetime.now(UTC))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_IN_ANOTHER_TIME_ZONE)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    after = dt.datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["offset"] != 0  # the child really ran in another time zone
    for key in ("now", "sql_now"):
        assert before <= dt.datetime.fromisoformat(seen[key]) <= after, (key, seen[key])
    assert _epoch_millis(before) <= seen["id_millis"] <= _epoch_millis(after)
    assert seen["local_noon"] == seen["local_noon_text"] == noon_in_utc
