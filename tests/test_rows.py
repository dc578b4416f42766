"""The package's typing: the row TypedDicts match the tables and the rows returned, and every function is annotated."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing

import pytest

import abathur_db
from abathur_db import agents, audit, checkpoints, metrics, rows, sessions, state, tasks, validation
from helpers import unchecked

TABLES = [
    (sessions, rows.SessionRow),
    (tasks, rows.TaskRow),
    (agents, rows.AgentRow),
    (audit, rows.AuditRow),
    (checkpoints, rows.CheckpointRow),
    (state, rows.StateRow),
    (metrics, rows.MetricRow),
]


def _conforms(value: object, hint: object) -> bool:
    """Tell whether `value` is of the type `hint` (the kinds of type the row TypedDicts use)."""
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    if isinstance(hint, types.UnionType):
        return any(_conforms(value, option) for option in typing.get_args(hint))
    if typing.is_typeddict(hint):
        return _mismatches(value, hint) == []
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return isinstance(value, list) and all(_conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(key, args[0]) and _conforms(item, args[1])
                                               for key, item in value.items())
    assert isinstance(hint, type), hint
    return isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool)


def _mismatches(row: object, shape: type) -> list[str]:
    """Return what in `row` disagrees with the TypedDict `shape`: missing or extra keys, values of another type."""
    if not isinstance(row, dict):
        return [f"not a dict: {row!r}"]
    hints = typing.get_type_hints(shape)
    found = [f"missing {key}" for key in hints if key not in row] + [f"extra {key}" for key in row if key not in hints]
    return found + [f"{key} = {row[key]!r} is not {hint}" for key, hint in hints.items()
                    if key in row and not _conforms(row[key], hint)]


@pytest.mark.parametrize(("module", "shape"), TABLES, ids=[module.TABLE for module, _ in TABLES])
def test_each_row_typeddict_has_its_tables_columns_in_order(module, shape):
    """A table's row TypedDict has one key per column of the module's COLUMNS, in order, every one required."""
    assert tuple(shape.__annotations__) == module.COLUMNS
    assert shape.__required_keys__ == frozenset(module.COLUMNS) and not shape.__optional_keys__


def test_the_task_with_session_and_counts_typeddicts_follow_the_task_module():
    """TaskWithSessionRow is a task's columns plus session; TaskCounts has one key per task status."""
    assert tuple(rows.TaskWithSessionRow.__annotations__) == (*tasks.COLUMNS, "session")
    assert tuple(rows.TaskCounts.__annotations__) == tasks.STATUSES


def test_rows_returned_by_every_table_have_the_keys_and_value_types_of_their_typeddict(conn):
    """Rows the table functions return, with their optional columns empty and filled, match their TypedDicts."""
    session = sessions.create(conn, "app", "user", events=[{"a": 1}], metadata={"k": [1, 2]})
    task = tasks.create(conn, "first", session_id=session["id"], input_data=[1, "two"])
    child = tasks.create(conn, "second", parent_task_id=task["id"], dependencies=[task["id"]], created_by="me")
    claimed = tasks.claim_next(conn)
    assert claimed is not None
    agent = agents.spawn(conn, task["id"], "worker", "code", "model", session_id=session["id"])
    memory_id = conn.execute("INSERT INTO memory_entries (namespace, key, value, memory_type)"
                             " VALUES ('n', 'k', '1', 'semantic') RETURNING id").fetchone()[0]
    found = {
        rows.SessionRow: [session, sessions.set_status(conn, session["id"], "terminated")],
        rows.TaskRow: [task, child, claimed, tasks.fail(conn, claimed["id"], claimed["lease"], "boom"),
                       *tasks.list(conn, parent_task_id=task["id"])],
        rows.TaskWithSessionRow: [tasks.get_with_session(conn, task["id"]), tasks.get_with_session(conn, child["id"])],
        rows.TaskCounts: [tasks.counts(conn)],
        rows.AgentRow: [agent, agents.terminate(conn, agent["id"], {"tokens": 3})],
        rows.AuditRow: [audit.record(conn, "spoke"),
                        audit.record(conn, "remembered", task_id=task["id"], agent_id=agent["id"], action_data={},
                                     result="ok", memory_operation_type="create", memory_namespace="n",
                                     memory_entry_id=memory_id)],
        rows.CheckpointRow: [checkpoints.save(conn, task["id"], 0, {"step": 1}, session_id=session["id"]),
                             checkpoints.save(conn, task["id"], 1, None)],
        rows.StateRow: [state.set(conn, task["id"], "k", {"v": 1})],
        rows.MetricRow: [metrics.record(conn, "m", 3), metrics.record(conn, "m", 0.5, labels={"l": "x"}),
                         *metrics.query(conn, name="m")],
    }
    assert found[rows.TaskWithSessionRow][0]["session"] is not None
    assert found[rows.TaskWithSessionRow][1]["session"] is None
    for shape, returned in found.items():
        for row in returned:
            assert _mismatches(row, shape) == [], (shape.__name__, row)


def test_rule_violations_are_rows_of_the_rule_violation_typeddict(conn, make_task):
    """rule_violations() reports each broken rule with exactly RuleViolation's keys and value types."""
    with unchecked(conn):
        make_task("bad", priority=11)
    found = validation.rule_violations(conn)
    assert [row["column"] for row in found] == ["priority"]
    assert _mismatches(found[0], rows.RuleViolation) == []


def _package_modules() -> list[types.ModuleType]:
    names = [f"abathur_db.{info.name}" for info in pkgutil.iter_modules(abathur_db.__path__)]
    return [abathur_db, *(importlib.import_module(name) for name in names)]


def _public_functions() -> list[tuple[str, object]]:
    """Return every public function and public method defined in the package, by qualified name."""
    found = []
    for module in _package_modules():
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(value):
                found.append((f"{module.__name__}.{name}", value))
            elif inspect.isclass(value):
                found += [(f"{module.__name__}.{name}.{method}", function)
                          for method, function in vars(value).items()
                          if not method.startswith("_") and inspect.isfunction(function)]
    return found


def test_every_public_function_of_the_package_is_annotated():
    """Every public function and method of every module states its return type and the types of its parameters."""
    functions = _public_functions()
    assert len(functions) > 100  # the search found the package's functions
    missing = []
    for name, function in functions:
        signature = inspect.signature(function)
        if signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{name} (return)")
        missing += [f"{name} ({parameter.name})" for parameter in signature.parameters.values()
                    if parameter.annotation is inspect.Parameter.empty and parameter.name not in ("self", "cls")]
    assert missing == []


def test_the_row_typeddicts_are_exported_by_the_package():
    """Each row TypedDict the table functions return can be imported from abathur_db itself."""
    for name in ("SessionRow", "TaskRow", "TaskWithSessionRow", "TaskCounts", "AgentRow", "AuditRow",
                 "CheckpointRow", "StateRow", "MetricRow"):
        assert getattr(abathur_db, name) is getattr(rows, name) and name in abathur_db.__all__
