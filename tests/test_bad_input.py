"""Bad input to every public function of every table module: stored verbatim, or refused by name.

One table, built from a specification per function: each parameter has a kind (stored
text, a key of a new row, a reference to a row, an integer range, a number, JSON, an
enumeration, a time) and each kind its own catalogue of awkward values, each with what
must happen to it. A refusal must be the package's specific error (never a raw
``sqlite3`` error, TypeError, OverflowError or UnicodeEncodeError), must leave every row
of every table as it was, and its message must name the table, the field and the offending
value, and stay short even for a 1 MB value.

The same table drives the transaction tests: each function that writes does so in a
BEGIN IMMEDIATE … COMMIT of its own when called alone, and inside the caller's
transaction() block when called in one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import inspect
import re
import shutil
import sqlite3
from typing import Any, Callable

import pytest

import abathur_db
from abathur_db import agents, audit, checkpoints, metrics, sessions, state, tasks, transaction
from abathur_db.errors import (
    AbathurDBError,
    ForeignKeyError,
    LeaseLostError,
    NotFoundError,
    TransitionError,
    UniqueError,
    ValidationError,
    short_repr,
)
from helpers import tracing

MODULES = (sessions, tasks, agents, audit, checkpoints, state, metrics)
INT64_MAX = 2**63 - 1
MEGABYTE = "x" * (1 << 20)
UTC = dt.timezone.utc


# ---------------------------------------------------------------------------------------
# What may happen to a value.


@dataclasses.dataclass(frozen=True)
class Stored:
    """The call succeeds and the row returned, and read again, holds `value` in `field`."""

    field: str
    value: Any


@dataclasses.dataclass(frozen=True)
class Returns:
    """The call succeeds and returns `value` (what an unknown key finds: nothing)."""

    value: Any


ACCEPTED = Returns(...)  # the call succeeds; what it returns is not examined
NOTHING = object()  # no value to quote: the refusal is that nothing was given


@dataclasses.dataclass(frozen=True)
class Refused:
    """The call raises `error`, its message naming the table, `field` and `value`.

    A kind may yield the bare error class instead: the field is then the parameter's
    (or the column it is stored in) and the value the argument itself. Here `field` and
    `value` name the part of the argument at fault, when that is not the whole of it.
    """

    error: type
    field: str | None = None
    value: Any = ...


# ---------------------------------------------------------------------------------------
# The catalogues of values.

# Text that must be stored and returned exactly as given.
TEXT = {
    "quotes": "it's \"quoted\" `twice`",
    "sql": "'; DROP TABLE tasks; --",
    "keywords": "SELECT * FROM tasks WHERE 1=1 OR ''=''",
    "unicode": "ünïcødé — 日本語 — 👩‍💻 — \u202eevil",
    "nul": "nul\x00inside",
    "1MB": MEGABYTE,
    "space": " ",
    "control": "\t\r\n\x1b[0m",
}
# Values a text parameter refuses. None is left out where the parameter is optional.
NOT_TEXT = {
    "none": None,
    "empty": "",
    "int": 5,
    "huge-int": 2**64,
    "unprintable-int": 10**5000,  # past sys.get_int_max_str_digits(): repr() raises ValueError
    "float": 1.5,
    "bool": True,
    "bytes": b"bytes",
    "list": ["x"],
    "dict": {"a": 1},
    "object": object(),
    "lone-surrogate": "\ud800",
}
# JSON values that must come back equal (a str is a JSON string, not parsed).
JSON_VALUES = {
    "object": {"k": [1, 2.5, None, True, "x"], "nested": {"a": {"b": []}}},
    "array": [1, "two", [3.0], {}],
    "empty-object": {},
    "empty-array": [],
    "zero": 0,
    "negative": -1,
    "negative-float": -3.25,
    "big-int": 2**70,
    "big-float": 1e308,
    "false": False,
    "text-not-parsed": "{oops",
    "empty-text": "",
    "odd-text": TEXT["quotes"] + TEXT["sql"] + TEXT["unicode"] + TEXT["nul"],
    "quotes-keys": {"it's \"q\"": "'; DROP TABLE tasks; --"},
    "nul-unicode": {"nul": "a\x00b", "u": "日本語 🚀", "ключ \x00 🔑": "keys too"},
    "1MB": {"blob": MEGABYTE},
    "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
}
NOT_JSON = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "nested-nan": {"x": [float("nan")]},
    "set": {1, 2},
    "object": object(),
    "bytes": b"bytes",
    "datetime": {"when": dt.datetime(2024, 1, 1, tzinfo=UTC)},
    "decimal": decimal.Decimal("1.5"),
    "tuple-key": {("a", "b"): 1},
    "lone-surrogate": {"k": "\ud800"},
    "surrogate-key": {"\udfff": 1},
    "unprintable-int": {"n": 10**5000},
}
GOOD_TIMES = {
    "aware-datetime": (dt.datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                       "2024-06-01T10:00:00.123Z"),
    "offset-text": ("2024-06-01T12:00:00+02:00", "2024-06-01T10:00:00.000Z"),
    "stored-format": ("2024-06-01T10:00:00.000Z", "2024-06-01T10:00:00.000Z"),
    "year-999": ("0999-06-01T10:00:00+00:00", "0999-06-01T10:00:00.000Z"),
    "z-suffix": ("2024-06-01T10:00:00Z", "2024-06-01T10:00:00.000Z"),
}
class OddZone(dt.tzinfo):
    """A time zone of the caller's whose utcoffset() gives `answer`, or raises it if it is an exception."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def utcoffset(self, moment):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


BAD_TIMES = {
    "naive-datetime": dt.datetime(2024, 6, 1),
    "zone-of-30-hours": dt.datetime(2024, 6, 1, tzinfo=OddZone(dt.timedelta(hours=30))),
    "zone-answering-text": dt.datetime(2024, 6, 1, tzinfo=OddZone("x")),
    "zone-raising": dt.datetime(2024, 6, 1, tzinfo=OddZone(KeyError("zone"))),
    "naive-text": "2024-06-01T10:00:00",
    "date": dt.date(2024, 6, 1),
    "garbage": "yesterday",
    "empty": "",
    "epoch-int": 1_700_000_000,
    "float": 1.5,
    "bytes": b"2024-06-01T10:00:00Z",
    "list": ["2024-06-01T10:00:00Z"],
    "month-13": "2024-13-01T00:00:00Z",
    "impossible-in-stored-format": "2024-99-99T99:99:99.999Z",
    "before-year-1-in-utc": "0001-01-01T00:00:00+14:00",
    "after-year-9999-in-utc": "9999-12-31T23:59:59-05:00",
    "lone-surrogate": "2024-06-01T10:00:00Z\ud800",
    "1MB": MEGABYTE,
}


def bad_ints(low: int, high: int) -> dict[str, Any]:
    """Return the values an integer parameter in [low, high] refuses."""
    values = {
        "below": low - 1,
        "int64-overflow": 2**63,
        "huge": 2**64,
        "unprintable": 10**5000,
        "very-negative": -(2**63) - 1,
        "bool": True,
        "float": float(low),
        "fraction": low + 0.5,
        "nan": float("nan"),
        "text": str(low),
        "list": [low],
    }
    if high != INT64_MAX:
        values["above"] = high + 1
    return values


# ---------------------------------------------------------------------------------------
# Kinds of parameters. Each yields (case id, value, what must happen).


@dataclasses.dataclass(frozen=True)
class Text:
    """Free text stored in `field`."""

    field: str
    optional: bool = False

    def cases(self):
        for name, value in TEXT.items():
            yield name, value, Stored(self.field, value)
        for name, value in NOT_TEXT.items():
            if value is None and self.optional:
                yield name, value, Stored(self.field, None)
            else:
                yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class NewKey:
    """The optional key of a new row: stored verbatim; the key of an existing row is a duplicate."""

    existing: str
    field = "id"  # the column, as messages name it

    def cases(self):
        for name, value in TEXT.items():
            yield name, value, Stored("id", value)
        yield "existing", self.existing, UniqueError
        for name, value in NOT_TEXT.items():
            if value is not None:
                yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class Ref:
    """A reference to a row; `unknown` is what a key that matches no row gets."""

    unknown: Any  # an error class, a Refused(...) or a Returns(...)
    optional: bool = False
    field: str | None = None  # the name messages give it, when not the parameter's (a row's own key: "id")

    def cases(self):
        yield "unknown", "ghost", self.unknown
        for name, value in TEXT.items():
            yield name, value, self.unknown
        for name, value in NOT_TEXT.items():
            if value is None and self.optional:
                continue  # None means "no reference": the baseline's own business
            yield name, value, ValidationError  # None and "" too: no row can have them as its key


@dataclasses.dataclass(frozen=True)
class IntRef:
    """A reference by integer id (memory entries): ids >= 1."""

    unknown: Any

    def cases(self):
        yield "unknown", INT64_MAX, self.unknown
        for name, value in bad_ints(1, INT64_MAX).items():
            yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer in [low, high]; stored in `field` when given, else only accepted."""

    low: int
    high: int = INT64_MAX
    field: str | None = None
    optional: bool = False
    at_low: Any = None  # what the lowest value gets, when not simply accepted
    at_high: Any = None  # likewise for the highest

    def cases(self):
        for name, value, special in (("lowest", self.low, self.at_low), ("highest", self.high, self.at_high)):
            if special is not None:
                yield name, value, special
            else:
                yield name, value, Stored(self.field, value) if self.field else ACCEPTED
        values = bad_ints(self.low, self.high)
        if not self.optional:
            values["none"] = None
        for name, value in values.items():
            yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite number >= 0, returned as a float."""

    field: str

    def cases(self):
        for name, value in {"zero": 0, "fraction": 0.5, "largest-float": 1.7976931348623157e308,
                            "int64-overflow": 2**63, "huge-int": 10**30}.items():
            yield name, value, Stored(self.field, float(value))
        for name, value in {"negative": -1, "tiny-negative": -1e-300, "nan": float("nan"),
                            "inf": float("inf"), "-inf": float("-inf"), "too-big-for-float": 10**400,
                            "unprintable-int": 10**5000,
                            "bool": True, "text": "1", "bytes": b"1", "none": None, "list": [1],
                            "decimal": decimal.Decimal("1")}.items():
            yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class Json:
    """A JSON value (or only an array / only an object) stored in `field` (and returned, when `returned`)."""

    field: str
    kind: type | None = None
    returned: bool = True

    def cases(self):
        for name, value in JSON_VALUES.items():
            if self.kind is None or isinstance(value, self.kind):
                yield name, value, Stored(self.field, value) if self.returned else ACCEPTED
            else:
                yield name, value, ValidationError
        for name, value in NOT_JSON.items():
            yield name, value, ValidationError
        if self.kind is not None:
            yield "json-text", "[]" if self.kind is list else "{}", ValidationError


@dataclasses.dataclass(frozen=True)
class Anything:
    """A value handed back as it is, never stored (state.get's default)."""

    def cases(self):
        for name, value in {"nan": float("nan"), "object": object(), "none": None, "1MB": MEGABYTE}.items():
            yield name, value, ACCEPTED


@dataclasses.dataclass(frozen=True)
class Lease:
    """The lease of a running task: its own is accepted, any other well-formed one is no longer the task's."""

    current: str

    def cases(self):
        yield "current", self.current, ACCEPTED
        yield "another", "0" * 32, LeaseLostError
        for name, value in {**NOT_TEXT, "upper-case": self.current.upper(), "short": self.current[:31],
                            "long": self.current + "0", "not-hex": "g" * 32, "sql": TEXT["sql"],
                            "padded": f" {self.current}"}.items():
            yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class Wait:
    """Seconds to wait at most: a finite number >= 0."""

    def cases(self):
        for name, value in {"none": None, "zero": 0, "fraction": 0.05, "int": 1}.items():
            yield name, value, ACCEPTED
        for name, value in {"negative": -1, "tiny-negative": -1e-300, "nan": float("nan"), "inf": float("inf"),
                            "bool": True, "false": False, "text": "1", "empty": "", "list": [1]}.items():
            yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class After:
    """The last row of the previous page: `good` is one; a row of another shape is refused."""

    good: dict[str, Any]
    unknown: Any = None  # what a row whose key matches no row gets (None: the key is not looked up)

    def cases(self):
        yield "none", None, ACCEPTED
        yield "row", self.good, ACCEPTED
        yield "longer-row", {**self.good, "extra": object()}, ACCEPTED
        if self.unknown is not None:
            yield "unknown", {**self.good, "id": "ghost"}, Refused(self.unknown, value="ghost")
        for name, value in {"int": 5, "text": "x", "list": [self.good], "empty": {}, "object": object()}.items():
            yield name, value, ValidationError
        for key in self.good:
            yield f"without-{key}", {k: v for k, v in self.good.items() if k != key}, ValidationError
            yield f"{key}-list", {**self.good, key: [1]}, Refused(ValidationError, value=[1])
        for name, value in {"none": None, "bool": True, "empty": "", "bytes": b"1"}.items():
            yield f"every-value-{name}", dict.fromkeys(self.good, value), Refused(ValidationError, value=value)
        for key, value in self.good.items():
            if isinstance(value, int):  # past what SQLite stores: sqlite3 would raise OverflowError
                yield f"{key}-int64-overflow", {**self.good, key: 2**63}, Refused(ValidationError, value=2**63)


@dataclasses.dataclass(frozen=True)
class Dependencies:
    """A list of ids of existing tasks."""

    existing: str

    def cases(self):
        yield "none-listed", [], Stored("dependencies", [])
        yield "one", [self.existing], Stored("dependencies", [self.existing])
        for name, missing in {"unknown": "ghost", "sql": TEXT["sql"], "1MB": MEGABYTE}.items():
            yield name, [missing], Refused(ForeignKeyError, value=missing)
        yield "cancelled", [CANCELLED], Refused(ValidationError, value=CANCELLED)
        for name, value in {"text-not-list": self.existing, "none": None, "set": {self.existing},
                            "twice": [self.existing, self.existing]}.items():
            yield name, value, ValidationError
        for name, bad_id in {"empty-id": "", "int-id": 5, "huge-int-id": 2**64, "none-id": None,
                             "list-id": [self.existing], "surrogate-id": "\ud800"}.items():
            yield name, [bad_id], Refused(ValidationError, value=bad_id)


@dataclasses.dataclass(frozen=True)
class TaskList:
    """create_many's tasks: dicts of create()'s arguments, all stored or none."""

    existing: str

    def cases(self):
        yield "empty", [], Returns([])
        yield "one", [{"prompt": "p"}], ACCEPTED
        yield "chained", [{"prompt": "a", "task_id": "new-1"}, {"prompt": "b", "dependencies": ["new-1"]}], ACCEPTED
        yield "tuple", ({"prompt": TEXT["1MB"], "priority": 10},), ACCEPTED
        # The argument as a whole is named by its function (create_many() has no other), an item by its index.
        for name, value in {"none": None, "int": 5, "text": "p", "dict": {"prompt": "p"}}.items():
            yield name, value, Refused(ValidationError, "create_many()")
        for name, item in {"item-not-dict": "p", "no-prompt": {}, "unknown-key": {"prompt": "p", "colour": 1}}.items():
            yield name, [item], Refused(ValidationError, "item 0", item)
        yield "second-bad", [{"prompt": "a"}, {"prompt": "b", "priority": 11}], Refused(ValidationError, "priority", 11)
        yield "nan", [{"prompt": "p", "input_data": float("nan")}], Refused(ValidationError, "input_data", float("nan"))
        yield ("unknown-dependency", [{"prompt": "a"}, {"prompt": "b", "dependencies": ["ghost"]}],
               Refused(ForeignKeyError, "dependencies", "ghost"))
        yield ("same-id-twice", [{"prompt": "a", "task_id": "d"}, {"prompt": "b", "task_id": "d"}],
               Refused(UniqueError, "id", "d"))
        yield ("existing-id", [{"prompt": "a"}, {"prompt": "b", "task_id": self.existing}],
               Refused(UniqueError, "id", self.existing))


@dataclasses.dataclass(frozen=True)
class Enum:
    """One of `choices`; `good` are the ones accepted here (stored in `field` when given)."""

    choices: tuple[str, ...]
    good: tuple[str, ...] | None = None
    field: str | None = None
    optional: bool = False
    refused: dict[str, Any] = dataclasses.field(default_factory=dict)  # valid names refused here

    def cases(self):
        for value in self.choices if self.good is None else self.good:
            yield value, value, Stored(self.field, value) if self.field else ACCEPTED
        for value, outcome in self.refused.items():
            yield f"refused-{value}", value, outcome
        first = self.choices[0]
        bad = {"upper-case": first.upper(), "padded": f" {first}", "empty": "", "sql": TEXT["sql"],
               "int": 1, "list": [first], "lone-surrogate": "\ud800"}
        if not self.optional:
            bad["none"] = None
        for name, value in bad.items():
            yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class Time:
    """A moment: stored (normalised to UTC) in `field` when given, else only accepted."""

    field: str | None = None

    def cases(self):
        for name, (value, normalised) in GOOD_TIMES.items():
            yield name, value, Stored(self.field, normalised) if self.field else ACCEPTED
        for name, value in BAD_TIMES.items():
            yield name, value, ValidationError


@dataclasses.dataclass(frozen=True)
class Age:
    """A timedelta >= 0 counted back from now (a prune's older_than)."""

    def cases(self):
        for name, value in {"zero": dt.timedelta(0), "thirty-days": dt.timedelta(days=30),
                            "longest": dt.timedelta.max}.items():
            yield name, value, ACCEPTED
        for name, value in {"negative": dt.timedelta(seconds=-1), "none": None, "days-int": 30, "float": 1.5,
                            "text": "30d", "bool": True, "datetime": dt.datetime(2024, 1, 1, tzinfo=UTC),
                            "1MB": MEGABYTE}.items():
            yield name, value, ValidationError


# ---------------------------------------------------------------------------------------
# The world every case starts from, and each function's specification.

SESSION, TASK, RUNNING, FAILED, CANCELLED, AGENT = "s-1", "t-1", "t-run", "t-fail", "t-cancelled", "a-1"
LEASE = "1234567890abcdef" * 2  # the running task's
T0 = "2024-01-01T00:00:00.000Z"


def build_world(conn: sqlite3.Connection) -> None:
    """Create one row of everything the functions below refer to."""
    tasks.create(conn, "running", task_id=RUNNING, priority=10)
    tasks.claim_next(conn)
    conn.execute("UPDATE tasks SET lease = ? WHERE id = ?", (LEASE, RUNNING))
    tasks.create(conn, "failed", task_id=FAILED, priority=9)
    tasks.fail(conn, FAILED, tasks.claim_next(conn)["lease"], "boom")
    tasks.cancel(conn, tasks.create(conn, "cancelled", task_id=CANCELLED)["id"])
    sessions.create(conn, "app", "user", session_id=SESSION)
    tasks.create(conn, "pending", task_id=TASK, priority=0, session_id=SESSION)
    agents.spawn(conn, TASK, "worker", "coder", "model", agent_id=AGENT, session_id=SESSION)
    conn.execute("INSERT INTO memory_entries (id, namespace, key, value, memory_type) VALUES (1, 'ns', 'k', '1', 'semantic')")
    audit.record(conn, "spawned", task_id=TASK, agent_id=AGENT, memory_entry_id=1, memory_operation_type="create")
    checkpoints.save(conn, TASK, 0, {"step": 0}, session_id=SESSION)
    state.set(conn, TASK, "k", 1)
    metrics.record(conn, "m", 1.0, labels={"a": "b"})


def _find(rows: list[dict], row: dict) -> dict:
    return next(r for r in rows if r["id"] == row["id"])


def _metric_by_name(conn: sqlite3.Connection, row: dict) -> dict:
    """Return the measurement as a query for its own name finds it, among only measurements of that name."""
    found = metrics.query(conn, name=row["metric_name"])
    assert {r["metric_name"] for r in found} == {row["metric_name"]}
    return _find(found, row)


def _state_by_key(conn: sqlite3.Connection, row: dict) -> dict:
    """Return the state row as stored, its key only if state.get finds the row's value under it."""
    (key,) = conn.execute("SELECT key FROM state WHERE id = ?", (row["id"],)).fetchone()
    value = state.get(conn, row["task_id"], row["key"], NOTHING)
    return {**row, "key": key if value == row["value"] else NOTHING, "value": value}


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to call one function well, the kind of each parameter, and how to read its row again."""

    function: Callable
    baseline: dict[str, Any]
    params: dict[str, Any]
    reread: Callable[[sqlite3.Connection, dict], dict] | None = None  # the stored row, read again
    exclusive: tuple[tuple[str, ...], ...] = ()  # filter groups of which a call takes exactly one

    @property
    def name(self) -> str:
        return f"{self.function.__module__.rsplit('.', 1)[-1]}.{self.function.__name__}"

    def call(self, param: str, value: Any) -> dict[str, Any]:
        """Return the baseline arguments with `param` set to `value` (and rival filters dropped)."""
        rivals = set()
        if any(param in group for group in self.exclusive):
            rivals = {name for group in self.exclusive if param not in group for name in group}
        return {**{k: v for k, v in self.baseline.items() if k not in rivals}, param: value}


NOT_FOUND = NotFoundError
KEY = Ref(NOT_FOUND, field="id")  # a row's id, looked up
EMPTY = Returns([])

SPECS = [
    # sessions
    Spec(sessions.create, {"app_name": "app", "user_id": "user"}, {
        "app_name": Text("app_name"), "user_id": Text("user_id"), "session_id": NewKey(SESSION),
        "project_id": Text("project_id", optional=True),
        "status": Enum(sessions.STATUSES, field="status"),
        "events": Json("events", list), "state": Json("state", dict), "metadata": Json("metadata", dict),
    }, reread=lambda conn, row: sessions.get(conn, row["id"])),
    Spec(sessions.get, {"session_id": SESSION}, {"session_id": KEY}),
    Spec(sessions.set_status, {"session_id": SESSION, "status": "active"}, {
        "session_id": KEY,
        "status": Enum(sessions.STATUSES, good=("active", "paused", "terminated", "archived"), field="status",
                       refused={"created": TransitionError}),
    }, reread=lambda conn, row: sessions.get(conn, row["id"])),
    Spec(sessions.delete, {"session_id": SESSION}, {"session_id": KEY}),
    # tasks
    Spec(tasks.create, {"prompt": "p"}, {
        "prompt": Text("prompt"), "task_id": NewKey(TASK), "agent_type": Text("agent_type"),
        "priority": Int(0, 10, field="priority"), "input_data": Json("input_data"),
        "session_id": Ref(ForeignKeyError, optional=True), "parent_task_id": Ref(ForeignKeyError, optional=True),
        "dependencies": Dependencies(TASK), "max_retries": Int(0, field="max_retries"),
        "max_execution_timeout_seconds": Int(1, field="max_execution_timeout_seconds"),
        "created_by": Text("created_by", optional=True), "submitted_at": Time("submitted_at"),
    }, reread=lambda conn, row: tasks.get(conn, row["id"])),
    Spec(tasks.create_many, {"new_tasks": [{"prompt": "p"}]}, {"new_tasks": TaskList(TASK)}),
    Spec(tasks.get, {"task_id": TASK}, {"task_id": KEY}),
    Spec(tasks.get_with_session, {"task_id": TASK}, {"task_id": KEY}),
    Spec(tasks.list, {"status": "pending"}, {
        "status": Enum(tasks.STATUSES), "session_id": Ref(EMPTY), "parent_task_id": Ref(EMPTY),
        "submitted_since": Time(), "submitted_until": Time(), "limit": Int(1),
        "after": After({"id": TASK, "priority": 0, "submitted_at": T0}, NOT_FOUND),
    }, exclusive=(("status",), ("session_id",), ("parent_task_id",), ("submitted_since", "submitted_until"))),
    Spec(tasks.counts, {}, {}),
    Spec(tasks.stale, {}, {
        "now": Time(), "limit": Int(1),
        "after": After({"id": RUNNING, "last_updated_at": T0, "max_execution_timeout_seconds": 60}, NOT_FOUND),
    }),
    Spec(tasks.claim_next, {}, {"agent_type": Ref(Returns(None), optional=True), "wait": Wait()}),
    Spec(tasks.heartbeat, {"task_id": RUNNING, "lease": LEASE}, {"task_id": KEY, "lease": Lease(LEASE)}),
    Spec(tasks.complete, {"task_id": RUNNING, "lease": LEASE}, {
        "task_id": KEY, "lease": Lease(LEASE), "result": Json("result_data"),
    }, reread=lambda conn, row: tasks.get(conn, row["id"])),
    Spec(tasks.complete_and_claim, {"task_id": RUNNING, "lease": LEASE}, {
        "task_id": KEY, "lease": Lease(LEASE), "result": Json("result_data", returned=False),
        "agent_type": Ref(Returns(None), optional=True),
    }),
    Spec(tasks.fail, {"task_id": RUNNING, "lease": LEASE, "error_message": "boom"}, {
        "task_id": KEY, "lease": Lease(LEASE), "error_message": Text("error_message"),
    }, reread=lambda conn, row: tasks.get(conn, row["id"])),
    Spec(tasks.release, {"task_id": RUNNING, "lease": LEASE}, {"task_id": KEY, "lease": Lease(LEASE)}),
    Spec(tasks.cancel, {"task_id": TASK}, {"task_id": KEY}),
    Spec(tasks.retry, {"task_id": FAILED}, {"task_id": KEY}),
    Spec(tasks.requeue_stale, {}, {"now": Time()}),
    Spec(tasks.oldest_pending, {}, {}),
    Spec(tasks.force_release, {"task_id": RUNNING}, {"task_id": KEY}),
    # agents
    Spec(agents.spawn, {"task_id": TASK, "name": "n", "specialization": "s", "model": "m"}, {
        "task_id": Ref(ForeignKeyError), "name": Text("name"), "specialization": Text("specialization"),
        "model": Text("model"), "agent_id": NewKey(AGENT), "session_id": Ref(ForeignKeyError, optional=True),
        "state": Enum(agents.STATES, good=agents.SPAWN_STATES, field="state",
                      refused={"terminating": ValidationError, "terminated": ValidationError}),
        "resource_usage": Json("resource_usage"),
    }, reread=lambda conn, row: agents.get(conn, row["id"])),
    Spec(agents.get, {"agent_id": AGENT}, {"agent_id": KEY}),
    Spec(agents.list, {"task_id": TASK}, {
        "task_id": Ref(EMPTY), "session_id": Ref(EMPTY), "spawned_since": Time(), "spawned_until": Time(),
        "limit": Int(1), "after": After({"id": AGENT, "spawned_at": T0}, NOT_FOUND),
    }, exclusive=(("task_id",), ("session_id",), ("spawned_since", "spawned_until"))),
    Spec(agents.set_state, {"agent_id": AGENT, "state": "idle"}, {
        "agent_id": KEY,
        "state": Enum(agents.STATES, good=("idle", "busy", "terminating", "terminated"), field="state",
                      refused={"spawning": TransitionError}),
    }, reread=lambda conn, row: agents.get(conn, row["id"])),
    Spec(agents.terminate, {"agent_id": AGENT}, {
        "agent_id": KEY, "resource_usage": Json("resource_usage"),
    }, reread=lambda conn, row: agents.get(conn, row["id"])),
    # audit
    Spec(audit.record, {"action_type": "act"}, {
        "action_type": Text("action_type"), "task_id": Ref(ForeignKeyError, optional=True),
        "agent_id": Ref(ForeignKeyError, optional=True), "action_data": Json("action_data"),
        "result": Text("result", optional=True),
        "memory_operation_type": Enum(audit.MEMORY_OPERATION_TYPES, field="memory_operation_type", optional=True),
        "memory_namespace": Text("memory_namespace", optional=True), "memory_entry_id": IntRef(ForeignKeyError),
    }, reread=lambda conn, row: _find(audit.list(conn, limit=10), row)),
    Spec(audit.list, {}, {
        "task_id": Ref(EMPTY, optional=True), "memory_entry_id": IntRef(EMPTY),
        "memory_operation_type": Enum(audit.MEMORY_OPERATION_TYPES, optional=True),
        "since": Time(), "limit": Int(1), "after": After({"timestamp": T0, "id": 1}),
    }),
    Spec(audit.prune, {"before": "2000-01-01T00:00:00Z"}, {
        "before": Time(), "older_than": Age(), "batch_size": Int(1),
    }, exclusive=(("before",), ("older_than",))),
    # checkpoints
    Spec(checkpoints.save, {"task_id": TASK, "iteration": 1, "state": {"s": 1}}, {
        "task_id": Ref(ForeignKeyError), "iteration": Int(0, field="iteration", at_low=UniqueError),
        "state": Json("state"), "session_id": Ref(ForeignKeyError, optional=True),
    }, reread=lambda conn, row: checkpoints.load(conn, row["task_id"], row["iteration"])),
    Spec(checkpoints.load, {"task_id": TASK}, {
        # "no checkpoint for task 'ghost'": the message calls task_id "task".
        "task_id": Ref(Refused(NOT_FOUND, "task")),
        "iteration": Int(0, optional=True, field="iteration", at_high=NOT_FOUND),
    }, reread=lambda conn, row: checkpoints.load(conn, row["task_id"], row["iteration"])),
    Spec(checkpoints.list, {"task_id": TASK}, {
        "task_id": Ref(EMPTY), "session_id": Ref(EMPTY), "created_since": Time(), "created_until": Time(),
        "limit": Int(1), "after": After({"iteration": 0}),
    }, exclusive=(("task_id",), ("session_id",), ("created_since", "created_until"))),
    Spec(checkpoints.prune, {"task_id": TASK, "keep_last": 0}, {
        "task_id": Ref(Returns(0)), "keep_last": Int(0),
    }),
    Spec(checkpoints.prune_all, {"keep_last": 0}, {"keep_last": Int(0)}),
    # state
    Spec(state.set, {"task_id": TASK, "key": "k2", "value": 2}, {  # 2: not the value the world's key holds
        "task_id": Ref(ForeignKeyError), "key": Text("key"), "value": Json("value"),
    }, reread=_state_by_key),
    Spec(state.get, {"task_id": TASK, "key": "k", "default": "absent"}, {
        "task_id": Ref(Returns("absent")), "key": Ref(Returns("absent")),
        "default": Anything(),
    }),
    Spec(state.delete, {"task_id": TASK, "key": "k"}, {
        "task_id": Ref(Returns(False)), "key": Ref(Returns(False)),
    }),
    # metrics
    Spec(metrics.record, {"name": "m", "value": 1.0}, {
        "name": Text("metric_name"), "value": Number("metric_value"), "labels": Json("labels", dict),
        "timestamp": Time("timestamp"),
    }, reread=_metric_by_name),
    Spec(metrics.query, {}, {
        "name": Ref(EMPTY, optional=True, field="metric_name"), "since": Time(), "until": Time(), "limit": Int(1),
        "after": After({"timestamp": T0, "id": 1}),
    }),
    Spec(metrics.prune, {"before": "2000-01-01T00:00:00Z"}, {
        "before": Time(), "older_than": Age(), "batch_size": Int(1),
    }, exclusive=(("before",), ("older_than",))),
]


def _cases():
    for spec in SPECS:
        for param, kind in spec.params.items():
            for case, value, outcome in kind.cases():
                yield pytest.param(spec, param, value, outcome, id=f"{spec.name}-{param}-{case}")


# Each function that writes, with what its baseline call needs to change a row.
FUTURE = "2100-01-01T00:00:00Z"  # every row of the world is older; the running task is stale by then
WRITES: dict[str, dict[str, Any]] = {
    "sessions.create": {}, "sessions.set_status": {}, "sessions.delete": {},
    "tasks.create": {}, "tasks.create_many": {}, "tasks.claim_next": {}, "tasks.heartbeat": {},
    "tasks.complete": {}, "tasks.complete_and_claim": {}, "tasks.fail": {}, "tasks.release": {},
    "tasks.cancel": {}, "tasks.retry": {}, "tasks.requeue_stale": {"now": FUTURE}, "tasks.force_release": {},
    "agents.spawn": {}, "agents.set_state": {}, "agents.terminate": {},
    "audit.record": {}, "audit.prune": {"before": FUTURE},
    "checkpoints.save": {}, "checkpoints.prune": {}, "checkpoints.prune_all": {},
    "state.set": {}, "state.delete": {},
    "metrics.record": {}, "metrics.prune": {"before": FUTURE},
}


def _write_calls():
    for spec in SPECS:
        if spec.name in WRITES:
            yield pytest.param(spec, {**spec.baseline, **WRITES[spec.name]}, id=spec.name)
    create, upsert = (next(spec for spec in SPECS if spec.function is f) for f in (tasks.create, state.set))
    # With dependencies, create() reads them and inserts into two tables: still one transaction.
    yield pytest.param(create, {**create.baseline, "dependencies": [TASK]}, id="tasks.create-dependencies")
    # On a key the task holds already, set() updates the row instead: a rollback brings the old value back.
    yield pytest.param(upsert, {**upsert.baseline, "key": "k"}, id="state.set-existing-key")


WRITE_CALLS = list(_write_calls())
# These commit batch by batch, so they refuse to run inside a block (see test_retention).
BATCHED = {"audit.prune", "metrics.prune"}


# ---------------------------------------------------------------------------------------
# The tests.


def _public_functions(module) -> set[str]:
    return {name for name, obj in vars(module).items()
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_")}


def test_the_table_covers_every_public_function_and_parameter():
    """Each public function of each table module, and each of its parameters, has a row in the table."""
    specified = {spec.name: spec for spec in SPECS}
    public = {f"{m.__name__.rsplit('.', 1)[-1]}.{f}" for m in MODULES for f in _public_functions(m)}
    assert set(specified) == public
    for name, spec in specified.items():
        parameters = list(inspect.signature(spec.function).parameters)[1:]  # all but the connection
        assert set(spec.params) == set(parameters), name


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Return a database file holding the world, its WAL folded in, to copy for each case."""
    path = tmp_path_factory.mktemp("bad-input") / "world.db"
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        build_world(conn)
        abathur_db.checkpoint(conn)
    return path


@pytest.fixture(scope="module")
def copy_of_the_world(template):
    """Return a connection to a copy of the world, kept for every case, and the connection to restore it from."""
    path = template.with_name("case.db")
    shutil.copyfile(template, path)
    conn = abathur_db.connect(path)  # the copy's schema is current: no need for open()'s check
    source = sqlite3.connect(template)
    yield conn, source
    source.close()
    conn.close()


@pytest.fixture
def world(copy_of_the_world):
    """Return a connection to the world as build_world() made it: a case that wrote is undone after it."""
    conn, source = copy_of_the_world
    changes = conn.total_changes
    yield conn
    if conn.total_changes != changes:
        source.backup(conn)  # every page of the world, over whatever the case wrote


def snapshot(conn: sqlite3.Connection) -> dict[str, list]:
    """Return every row of every table (the whole database's content)."""
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {table: sorted(map(repr, conn.execute(f"SELECT * FROM {table}"))) for table in tables}


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_the_baseline_call_succeeds(world, spec):
    """The well-formed call each row of the table varies succeeds; it changes rows exactly when WRITES lists it."""
    changes = world.total_changes
    spec.function(world, **{**spec.baseline, **WRITES.get(spec.name, {})})
    assert (world.total_changes > changes) == (spec.name in WRITES)


def assert_names(message: str, table: str, field: str, value: Any) -> None:
    """Assert that `message` begins with `table` and names `field` and `value` (unless NOTHING)."""
    assert message.startswith((f"{table}:", f"{table}.")), message
    assert re.search(rf"(?<!\w){re.escape(field)}(?!\w)", message), f"{field!r} not named: {message}"
    if value is not NOTHING:
        assert short_repr(value)[:40] in message, f"{short_repr(value)} not quoted: {message}"


def refusal(spec: Spec, param: str, value: Any, outcome: Any) -> Refused:
    """Return what a refusal of `value` for `param` must raise and name."""
    refused = outcome if isinstance(outcome, Refused) else Refused(outcome)
    kind = spec.params[param]
    field = refused.field or getattr(kind, "field", None) or param
    named = value if refused.value is ... else refused.value
    if value is None and any(param in group for group in spec.exclusive):
        named = NOTHING  # None leaves list() without a filter: the refusal lists the filters
    return Refused(refused.error, field, named)


@pytest.mark.parametrize("spec, param, value, outcome", list(_cases()))
def test_bad_input_is_stored_verbatim_or_refused_with_the_package_error(world, spec, param, value, outcome):
    """The value is stored and read back unchanged, or refused with its error naming table, field and value."""
    kwargs = spec.call(param, value)
    before = snapshot(world)
    if isinstance(outcome, (type, Refused)):
        expected = refusal(spec, param, value, outcome)
        try:
            spec.function(world, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - any escape but the expected one fails
            assert type(exc) is expected.error, f"{type(exc).__name__}: {exc}"
            assert isinstance(exc, AbathurDBError)
            assert len(str(exc)) < 1000, f"{len(str(exc))}-character message"
            assert_names(str(exc), spec.name.split(".")[0], expected.field, expected.value)
        else:
            pytest.fail(f"accepted; expected {expected.error.__name__}")
        assert not world.in_transaction
        assert snapshot(world) == before
        return
    result = spec.function(world, **kwargs)
    if isinstance(outcome, Returns):
        if outcome is not ACCEPTED:
            assert result == outcome.value
        return
    assert result[outcome.field] == outcome.value
    assert spec.reread(world, result)[outcome.field] == outcome.value


def _verb(statement: str) -> str:
    return statement.split(None, 1)[0].upper()


@pytest.mark.parametrize("spec, kwargs", WRITE_CALLS)
def test_a_write_alone_runs_in_its_own_immediate_transaction(world, spec, kwargs):
    """Called outside a block, a write sends one BEGIN IMMEDIATE … COMMIT, last; only reads go outside it."""
    with tracing(world) as sent:
        spec.function(world, **kwargs)
    # One: the prunes commit batch by batch and task by task, and the world holds one batch and one task's worth.
    assert sent.count("BEGIN IMMEDIATE") == 1 and sent[-1] == "COMMIT", sent
    inside = False
    for statement in sent:
        if _verb(statement) in ("BEGIN", "COMMIT", "END", "ROLLBACK"):
            assert statement == ("COMMIT" if inside else "BEGIN IMMEDIATE"), sent
            inside = not inside
        else:
            assert inside or _verb(statement) in ("SELECT", "PRAGMA"), statement


class _CallerGivesUp(Exception):
    """Raised inside a block to roll it back."""


@pytest.mark.parametrize("ending", ["COMMIT", "ROLLBACK"])
@pytest.mark.parametrize("spec, kwargs", [call for call in WRITE_CALLS if call.id not in BATCHED])
def test_a_write_inside_a_block_joins_it(world, spec, kwargs, ending):
    """Inside the caller's block a write sends no BEGIN, COMMIT or ROLLBACK: it is kept or undone with the block."""
    before = snapshot(world)
    with tracing(world) as sent, contextlib.suppress(_CallerGivesUp), transaction(world):
        spec.function(world, **kwargs)
        if ending == "ROLLBACK":
            raise _CallerGivesUp
    assert [s for s in sent if _verb(s) in ("BEGIN", "COMMIT", "END", "ROLLBACK")] == ["BEGIN IMMEDIATE", ending]
    assert (snapshot(world) == before) == (ending == "ROLLBACK")
