"""Python values to and from the database: timestamps, JSON, ids, and rows."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import time
from itertools import compress, repeat
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .errors import ConfigurationError, StoredValueError, TransitionError, ValidationError, short_repr

if TYPE_CHECKING:
    from .transaction import Row

# One timestamp format everywhere, UTC, fixed width, so that text order is time
# order. SQL defaults write the same with strftime('%Y-%m-%dT%H:%M:%fZ', 'now').
TIMESTAMP_SQL_FORMAT = "%Y-%m-%dT%H:%M:%fZ"
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Open ends of a time range: every timestamp sorts after "" and before "~", so a
# range query stays one statement and one range search on its index.
_EARLIEST, _LATEST = "", "~"
INT64_MAX = 2**63 - 1  # the largest integer SQLite stores
# Arrays and objects within each other, at most. Decoding recurses once per level, so a
# limit far below Python's recursion limit (1000) lets any stored value be read back
# from any reasonable depth of the caller's stack.
MAX_JSON_DEPTH = 100
_CONTAINERS = (dict, list, tuple)
_ANY_CONTAINER = repeat(_CONTAINERS)
_SCALARS = frozenset((str, int, float, bool, type(None)))
# Made once: json.dumps() with these options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


_second: tuple[int, str] = (-1, "")  # the last second now() formatted, and its text


def now() -> str:
    """Return the current UTC time as a timestamp string."""
    global _second
    seconds, rest = divmod(time.time_ns(), 1_000_000_000)
    last = _second  # one read: another thread may replace it, never half of it
    if last[0] != seconds:
        last = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{last[1]}.{rest // 1_000_000:03d}Z"


def format_datetime(moment: _dt.datetime) -> str:
    """Return an aware datetime as a timestamp string (UTC, milliseconds)."""
    utc = moment.astimezone(_dt.timezone.utc)
    # isoformat() would drop the fraction when it is zero, and strftime's %Y the
    # leading zeros of a year before 1000: either would break the fixed width.
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
            f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z")


def timestamp(value: Any, table: str, field: str) -> str:
    """Return `value` (an aware datetime or an ISO 8601 string with an offset) as a timestamp."""
    given = value  # messages quote what the caller passed, not what it was parsed into
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{table}.{field}: {short_repr(value)} is not an ISO 8601 timestamp") from None
        if _TIMESTAMP.fullmatch(value):  # already in the stored format (and a real moment)
            return value
        value = parsed
    if not isinstance(value, _dt.datetime):
        raise ValidationError(f"{table}.{field}: expected a datetime or ISO 8601 string, got {short_repr(value)}")
    try:
        offset = value.utcoffset()  # a tzinfo of the caller's may raise anything, or answer nonsense
    except Exception as exc:
        raise ValidationError(f"{table}.{field}: the time zone of {short_repr(given)} fails: {exc!r}") from exc
    if offset is None:
        raise ValidationError(f"{table}.{field}: {short_repr(given)} has no time zone; pass an aware datetime")
    try:
        return format_datetime(value)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00, which is in year 0 in UTC
        raise ValidationError(f"{table}.{field}: {short_repr(given)} is out of range once moved to UTC") from None


def time_range(since: Any, until: Any, table: str, prefix: str = "") -> dict[str, str]:
    """Return the bound parameters ``since`` and ``until`` of [since, until); None leaves an end open.

    Errors name the caller's arguments: ``<prefix>_since`` and ``<prefix>_until``.
    """
    names = (f"{prefix}_since", f"{prefix}_until") if prefix else ("since", "until")
    return {
        "since": _EARLIEST if since is None else timestamp(since, table, names[0]),
        "until": _LATEST if until is None else timestamp(until, table, names[1]),
    }


def to_json(value: Any, table: str, field: str, kind: type | None = None) -> str:
    """Return `value` as JSON text; `kind` (list or dict) requires an array or an object."""
    if kind is list and not isinstance(value, (list, tuple)):
        raise ValidationError(f"{table}.{field}: expected a JSON array (list), got {short_repr(value)}")
    if kind is dict and not isinstance(value, dict):
        raise ValidationError(f"{table}.{field}: expected a JSON object (dict), got {short_repr(value)}")
    if isinstance(value, _CONTAINERS):
        _check_containers(value, table, field)
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{table}.{field}: {short_repr(value)} is not valid JSON: {exc}") from None
    _require_utf8(text, table, field, value)
    return text


def _check_containers(value: Any, table: str, field: str) -> None:
    """Refuse object keys that are not text and nesting deeper than MAX_JSON_DEPTH.

    json.dumps would turn a key 1 into "1" (so {1: 'a', '1': 'b'} loses a value),
    and recurse until RecursionError on deep nesting. The scans of keys and items
    run in C: only nested containers cost Python steps.
    """
    level, depth = [value], 1
    while level:
        if depth > MAX_JSON_DEPTH:
            raise ValidationError(
                f"{table}.{field}: the {type(value).__name__} given nests arrays and objects deeper than"
                f" {MAX_JSON_DEPTH} levels (or contains itself)"
            )
        deeper: list[Any] = []
        for container in level:
            if isinstance(container, dict):
                try:
                    "".join(container)  # fails unless every key is a str
                except TypeError:
                    key = next(k for k in container if not isinstance(k, str))
                    raise ValidationError(
                        f"{table}.{field}: {short_repr(value)} has the object key {short_repr(key)}, of type"
                        f" {type(key).__name__}: JSON keys are text, and as text it could overwrite another key"
                    ) from None
                container = container.values()
            if not _SCALARS.issuperset(map(type, container)):
                deeper += compress(container, map(isinstance, container, _ANY_CONTAINER))
        level = deeper
        depth += 1


def new_id() -> str:
    """Return a new time-ordered UUID (version 7 layout) as a string.

    Ids that grow with time land at the right edge of the primary-key B-tree,
    which keeps inserts cheap in a large table.
    """
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    # 48 bits of milliseconds, version 7, 12 random bits, variant 0b10, 62 random bits.
    value = ((millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68) << 64
             | 0x2 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF)
    text = f"{value:032x}"
    # Formatted by hand: uuid.UUID() costs more than the rest of an insert's Python work.
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def require_text(value: Any, table: str, field: str, *, optional: bool = False) -> None:
    """Raise ValidationError unless `value` is a non-empty str (or None when optional)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{table}.{field}: expected a non-empty string, got {short_repr(value)}")
    _require_utf8(value, table, field)


def _require_utf8(text: str, table: str, field: str, value: Any = None) -> None:
    # SQLite stores text as UTF-8, which cannot hold a lone surrogate ("\ud800"):
    # sqlite3 would raise UnicodeEncodeError while binding it.
    if text.isascii():  # O(1): CPython knows it already
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # `value`, when given, is what the caller passed and `text` its JSON.
        shown, place = (text, "") if value is None else (value, " of its JSON text")
        raise ValidationError(
            f"{table}.{field}: {short_repr(shown)} holds a lone surrogate at index {exc.start}{place},"
            " which UTF-8 text cannot store"
        ) from None


def require_int(value: Any, table: str, field: str, low: int, high: int = INT64_MAX) -> None:
    """Raise ValidationError unless `value` is an int (not a bool) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{table}.{field}: expected an integer, got {short_repr(value)}")
    if not low <= value <= high:
        bounds = f"between {low} and {high}" if high != INT64_MAX else f">= {low}"
        raise ValidationError(f"{table}.{field}: {short_repr(value)} is out of range (must be {bounds})")


def require_number(value: Any, table: str, field: str) -> float:
    """Return `value` as a float; raise ValidationError unless it is finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{table}.{field}: expected a number, got {short_repr(value)}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or value < 0:
        raise ValidationError(f"{table}.{field}: {short_repr(value)} is not allowed (must be finite and >= 0)")
    return float(value)


def require_choice(value: Any, choices: Iterable[str], table: str, field: str) -> None:
    """Raise ValidationError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValidationError(
            f"{table}.{field}: {short_repr(value)} is not one of {', '.join(sorted(choices))}"
        )


def require_transition(transitions: Mapping[str, Iterable[str]], current: Any, wanted: str, row: str,
                       field: str) -> None:
    """Raise TransitionError unless `wanted` may follow `current` (which may be a value this version does not know).

    `row` names the row in the message ("agents: agent 'a1'"), `field` the column.
    """
    if wanted not in transitions.get(current, ()):
        known = "" if current in transitions else (
            f" (a {field} this version does not know: not one of {', '.join(transitions)})")
        raise TransitionError(f"{row}: {field} cannot go from {short_repr(current)}{known} to {wanted!r}")


def only_one(table: str, **groups: bool) -> str:
    """Return the name of the one filter group given; raise ValidationError unless exactly one is."""
    chosen = [name for name, given in groups.items() if given]
    if len(chosen) != 1:
        raise ValidationError(
            f"{table}: list() takes exactly one of {', '.join(groups)}; got {', '.join(chosen) or 'none'}"
        )
    return chosen[0]


def list_filter(
    table: str, limit: Any, keys: dict[str, Any], range_name: str, since: Any, until: Any, *, min_limit: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Pick a list() call's one filter group, a key column of `keys` or the time range; return it and its parameters.

    The range group is named `range_name`; its ends are the caller's ``<range_name>_since``
    and ``<range_name>_until`` arguments.
    """
    group = only_one(table, **{name: value is not None for name, value in keys.items()},
                     **{range_name: since is not None or until is not None})
    require_int(limit, table, "limit", min_limit)
    if group == range_name:
        params = time_range(since, until, table, range_name)
    else:
        require_text(keys[group], table, group)
        params = {group: keys[group]}
    params["limit"] = limit
    return group, params


def decoder(
    table: str, columns: tuple[str, ...], json_columns: Iterable[str], key: tuple[str, ...] = ("id",),
) -> Callable[[Row], dict[str, Any]]:
    """Return a function that turns one row of `columns` into a dict, JSON decoded.

    A stored value that is not JSON raises StoredValueError naming `table`, the row
    (by its `key` columns), the column and the value.
    """
    wanted = set(json_columns)
    decoded = [name for name in columns if name in wanted]

    def row_to_dict(row: Row) -> dict[str, Any]:
        result = dict(zip(columns, row))
        for name in decoded:
            text = result[name]
            if text is not None:
                result[name] = decode_json(text, table, name, result, key)
        return result

    return row_to_dict


def decode_json(text: Any, table: str, column: str, row: Mapping[str, Any], key: tuple[str, ...]) -> Any:
    """Decode the JSON text stored in `column` of `row` (named by its `key` columns, for errors).

    The empty array and object, the commonest values, skip the parser.
    """
    if text == "[]":
        return []
    if text == "{}":
        return {}
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        if isinstance(text, (int, float)):  # SQLite's json_valid() accepts a bare number: it is one
            return text
        reason = "nested too deeply to decode" if isinstance(exc, RecursionError) else f"not valid JSON: {exc}"
        where = ", ".join(f"{name} {short_repr(row[name])}" for name in key)
        raise StoredValueError(f"{table}: row {where}: {column} holds {short_repr(text)}, {reason}") from exc


def file_path(path: Any, what: str) -> str:
    """Return `path` as text (bytes decoded as the file system does); refuse other types and NUL characters."""
    try:
        text = os.fsdecode(path)
    except TypeError:
        raise ConfigurationError(f"{short_repr(path)}: {what} must be a str, bytes or os.PathLike") from None
    if "\x00" in text:
        raise ConfigurationError(f"{short_repr(text)}: {what} cannot hold a NUL character")
    return text
