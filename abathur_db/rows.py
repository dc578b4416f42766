"""The shapes of the rows the table functions return, for type checkers.

Each is a ``TypedDict``: at run time a row is the plain dict it always was, one key
per column of its table (the module's ``COLUMNS``), JSON columns decoded. The types
are those today's schema stores; a legacy row an upgrade kept as it was may break
them (``verify`` lists such rows). A status or state is a ``str``: one this version
does not know is returned as stored.
"""

from __future__ import annotations

from typing import Any, TypedDict

__all__ = ["AgentRow", "AuditRow", "CheckpointRow", "JSONValue", "MetricRow", "RuleViolation", "SessionRow",
           "StateRow", "TaskCounts", "TaskRow", "TaskWithSessionRow"]

# Any value json.loads returns (dict, list, str, int, float, bool or None): what a
# JSON column holds is the caller's, so its type is left to the caller.
JSONValue = Any


class SessionRow(TypedDict):
    """A row of ``sessions``."""

    id: str
    app_name: str
    user_id: str
    project_id: str | None
    status: str
    events: list[JSONValue]
    state: dict[str, JSONValue]
    metadata: dict[str, JSONValue]
    created_at: str
    last_update_time: str
    terminated_at: str | None
    archived_at: str | None


class TaskRow(TypedDict):
    """A row of ``tasks``."""

    id: str
    prompt: str
    agent_type: str
    priority: int
    status: str
    input_data: JSONValue
    result_data: JSONValue  # None until a result is stored
    error_message: str | None
    retry_count: int
    max_retries: int
    max_execution_timeout_seconds: int
    submitted_at: str
    started_at: str | None
    completed_at: str | None
    last_updated_at: str
    created_by: str | None
    parent_task_id: str | None
    dependencies: list[str]
    session_id: str | None
    unmet_dependencies: int
    lease: str | None  # the current run's, while running; None otherwise


class TaskWithSessionRow(TaskRow):
    """A task as ``tasks.get_with_session`` returns it: its session (or None) under ``session``."""

    session: SessionRow | None


class TaskCounts(TypedDict):
    """What ``tasks.counts`` returns: how many tasks are in each status."""

    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int


class AgentRow(TypedDict):
    """A row of ``agents``."""

    id: str
    name: str
    specialization: str
    task_id: str
    state: str
    model: str
    spawned_at: str
    terminated_at: str | None
    resource_usage: JSONValue
    session_id: str | None


class AuditRow(TypedDict):
    """A row of ``audit``."""

    id: int
    timestamp: str
    agent_id: str | None
    task_id: str | None
    action_type: str
    action_data: JSONValue
    result: str | None
    memory_operation_type: str | None
    memory_namespace: str | None
    memory_entry_id: int | None


class CheckpointRow(TypedDict):
    """A row of ``checkpoints``."""

    task_id: str
    iteration: int
    state: JSONValue
    created_at: str
    session_id: str | None


class StateRow(TypedDict):
    """A row of ``state``."""

    id: int
    task_id: str
    key: str
    value: JSONValue
    created_at: str
    updated_at: str


class MetricRow(TypedDict):
    """A row of ``metrics``."""

    id: int
    timestamp: str
    metric_name: str
    metric_value: float
    labels: dict[str, JSONValue] | None


class RuleViolation(TypedDict):
    """One value that breaks a CHECK or NOT NULL rule, as ``validation.rule_violations`` reports it."""

    table: str
    row_key: str  # what names the row: its one-column primary key, else rowid
    row: int | float | str | bytes | None  # the row's value of row_key
    column: str
    value: int | float | str | bytes | None  # the stored value, as SQLite holds it
    rule: str
