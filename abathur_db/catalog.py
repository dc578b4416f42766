"""The query catalog (SPEC §5, and T9 and T10 of the worker contract): each query the package runs, and its index.

Every entry's SQL is the very constant the table module executes, so a check of
the catalog's plans is a check of the package's own reads and claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _paging, agents, audit, checkpoints, metrics, sessions, state, tasks

__all__ = ["CATALOG", "CatalogQuery"]

_T = "2026-01-01T00:00:00.000Z"
_LATER = "2026-01-02T00:00:00.000Z"


@dataclass(frozen=True)
class CatalogQuery:
    """One catalog query: its id, what it answers, its SQL, sample parameters, the indexes it must use."""

    id: str
    title: str
    sql: str
    params: dict[str, Any] = field(hash=False)
    indexes: tuple[str, ...]
    # The plan may walk its index in order ("SCAN t USING INDEX i") because the query
    # stops after LIMIT rows: the claim walks only the partial index of claimable tasks.
    ordered_walk: bool = False


# Where a first page starts (see _paging): oldest first, newest first.
_FIRST = {"start": _paging.FIRST, "start_rowid": _paging.ROWID_MIN}
_NEWEST = {"start": _paging.LAST, "start_rowid": _paging.ROWID_MAX}

CATALOG: tuple[CatalogQuery, ...] = (
    CatalogQuery("T1", "task by id", tasks.GET_SQL, {"id": "t"}, ("sqlite_autoindex_tasks_1",)),
    CatalogQuery("T2", "next claimable task", tasks.CLAIM_SQL, {"now": _T, "lease": "0" * 32},
                 ("idx_tasks_claimable",), ordered_walk=True),
    CatalogQuery("T3", "tasks by status, most urgent first", tasks.LIST_SQL["status"],
                 {"status": "pending", "limit": 100}, ("idx_tasks_status_priority",)),
    CatalogQuery("T4", "tasks of a session, newest first", tasks.LIST_SQL["session_id"],
                 {"session_id": "s", "limit": 100, **_NEWEST}, ("idx_tasks_session_id",)),
    CatalogQuery("T5", "tasks submitted in a time range", tasks.LIST_SQL["submitted"],
                 {"start": _T, "start_rowid": _paging.ROWID_MIN, "until": _LATER, "limit": 100},
                 ("idx_tasks_submitted_at",)),
    CatalogQuery("T6", "children of a parent task", tasks.LIST_SQL["parent_task_id"],
                 {"parent_task_id": "t", "limit": 100, **_FIRST}, ("idx_tasks_parent_task_id",)),
    CatalogQuery("T7", "stale running tasks (requeue)", tasks.REQUEUE_STALE_SQL, {"now": _T},
                 ("idx_tasks_running_deadline",)),
    CatalogQuery("T8", "task by id with its session", tasks.GET_WITH_SESSION_SQL, {"id": "t"},
                 ("sqlite_autoindex_tasks_1", "sqlite_autoindex_sessions_1")),
    CatalogQuery("T9", "next claimable task of one agent type", tasks.CLAIM_BY_AGENT_TYPE_SQL,
                 {"now": _T, "lease": "0" * 32, "agent_type": "coder"}, ("idx_tasks_claimable_by_type",)),
    CatalogQuery("T10", "stale running tasks, read only", tasks.STALE_SQL,
                 {"now": _T, "limit": 100, **_FIRST}, ("idx_tasks_running_deadline",)),
    CatalogQuery("A1", "agents of a task", agents.LIST_SQL["task_id"],
                 {"task_id": "t", "limit": 100, **_FIRST}, ("idx_agents_task_id",)),
    CatalogQuery("A2", "agents of a session, newest first", agents.LIST_SQL["session_id"],
                 {"session_id": "s", "limit": 100, **_NEWEST}, ("idx_agents_session_id",)),
    CatalogQuery("A3", "agents spawned in a time range", agents.LIST_SQL["spawned"],
                 {"start": _T, "start_rowid": _paging.ROWID_MIN, "until": _LATER, "limit": 100},
                 ("idx_agents_spawned_at",)),
    CatalogQuery("U1", "audit of a task, newest first", audit.LIST_SQL["task_id"],
                 {"task_id": "t", "since": "", "limit": 100, **_NEWEST}, ("idx_audit_task_id",)),
    CatalogQuery("U2", "latest audit rows", audit.LIST_SQL["latest"],
                 {"since": "", "limit": 100, **_NEWEST}, ("idx_audit_timestamp",)),
    CatalogQuery("U3", "audit of one memory operation type since a time",
                 audit.LIST_SQL["memory_operation_type"],
                 {"memory_operation_type": "update", "since": _T, "limit": 100, **_NEWEST},
                 ("idx_audit_memory_operation",)),
    CatalogQuery("U4", "audit of a memory entry", audit.LIST_SQL["memory_entry_id"],
                 {"memory_entry_id": 1, "since": "", "limit": 100, **_NEWEST}, ("idx_audit_memory_entry_id",)),
    CatalogQuery("C1", "latest checkpoint of a task", checkpoints.LOAD_LATEST_SQL, {"task_id": "t"},
                 ("idx_checkpoints_task_id_iteration",)),
    CatalogQuery("C2", "checkpoints of a session", checkpoints.LIST_SQL["session_id"],
                 {"session_id": "s", "limit": 100, **_FIRST}, ("idx_checkpoints_session_id",)),
    CatalogQuery("C3", "checkpoints created in a time range", checkpoints.LIST_SQL["created"],
                 {"start": _T, "start_rowid": _paging.ROWID_MIN, "until": _LATER, "limit": 100},
                 ("idx_checkpoints_created_at",)),
    CatalogQuery("M1", "metrics in a time range", metrics.QUERY_SQL["range"],
                 {"start": _T, "start_rowid": _paging.ROWID_MIN, "until": _LATER, "limit": 100},
                 ("idx_metrics_timestamp",)),
    CatalogQuery("M2", "one metric in a time range", metrics.QUERY_SQL["name"],
                 {"metric_name": "m", "start": _T, "start_rowid": _paging.ROWID_MIN, "until": _LATER, "limit": 100},
                 ("idx_metrics_name_timestamp",)),
    CatalogQuery("S1", "session by id", sessions.GET_SQL, {"id": "s"}, ("sqlite_autoindex_sessions_1",)),
    CatalogQuery("K1", "state value by task and key", state.GET_SQL, {"task_id": "t", "key": "k"},
                 ("sqlite_autoindex_state_1",)),
)
