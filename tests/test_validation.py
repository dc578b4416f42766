"""validation: foreign-key report, EXPLAIN QUERY PLAN of one statement, catalog plan checks."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

import abathur_db
from abathur_db import agents, audit, checkpoints, metrics, state, tasks, validation
from abathur_db.catalog import CATALOG, CatalogQuery
from abathur_db.errors import AbathurDBError, DatabaseFileError, ValidationError

CATALOG_BY_ID = {query.id: query for query in CATALOG}
_T = "2026-01-01T00:00:00.000Z"
_LEASE = "0" * 32
# The package's keyed statements outside the catalog, held to the same check.
OTHER_KEYED = (
    CatalogQuery("claim_next peek", "is a task claimable", tasks.PEEK_SQL, {}, ("idx_tasks_claimable",),
                 ordered_walk=True),
    CatalogQuery("claim_next peek by type", "is a task of one type claimable", tasks.PEEK_BY_AGENT_TYPE_SQL,
                 {"agent_type": "coder"}, ("idx_tasks_claimable_by_type",)),
    CatalogQuery("tasks after: rest of a priority", "tasks by status after a row, its priority",
                 tasks.LIST_SQL["status_rest"], {"status": "pending", "priority": 5, "start": _T, "start_rowid": 7,
                                                 "limit": 10}, ("idx_tasks_status_priority",)),
    CatalogQuery("tasks after: lower priorities", "tasks by status after a row, lower priorities",
                 tasks.LIST_SQL["status_below"], {"status": "pending", "priority": 5, "limit": 10},
                 ("idx_tasks_status_priority",)),
    CatalogQuery("tasks.counts", "tasks per status", tasks.COUNTS_SQL, {}, ("idx_tasks_status_priority",)),
    CatalogQuery("tasks after: rowid", "where a page after a task starts", tasks._ROWID_SQL, {"id": "t"},
                 ("sqlite_autoindex_tasks_1",)),
    *(CatalogQuery(f"tasks.{name}", f"{name} by id and lease", sql, {"id": "t", "lease": _LEASE, "now": _T,
                                                                    "result_data": None, "error_message": "x"},
                   ("sqlite_autoindex_tasks_1",))
      for name, sql in (("complete", tasks.COMPLETE_SQL), ("complete_and_claim", tasks.COMPLETE_ID_SQL),
                        ("fail", tasks._FAIL[0]), ("release", tasks._RELEASE[0]),
                        ("heartbeat", tasks._HEARTBEAT[0]), ("cancel", tasks._CANCEL[0]))),
    CatalogQuery("agents.get", "agent by id", agents.GET_SQL, {"id": "a"}, ("sqlite_autoindex_agents_1",)),
    CatalogQuery("agents after: rowid", "where a page after an agent starts", agents._ROWID_SQL, {"id": "a"},
                 ("sqlite_autoindex_agents_1",)),
    CatalogQuery("checkpoints.load", "one checkpoint", checkpoints.LOAD_SQL, {"task_id": "t", "iteration": 1},
                 ("idx_checkpoints_task_id_iteration",)),
    CatalogQuery("checkpoints after: rowid", "where a page after a checkpoint starts", checkpoints._ROWID_SQL,
                 {"task_id": "t", "iteration": 1}, ("idx_checkpoints_task_id_iteration",)),
    CatalogQuery("checkpoints by task", "checkpoints of a task", checkpoints.LIST_SQL["task_id"],
                 {"task_id": "t", "start": -1, "limit": 10}, ("idx_checkpoints_task_id_iteration",)),
    CatalogQuery("checkpoints.prune", "older checkpoints of a task", checkpoints._PRUNE,
                 {"task_id": "t", "keep_last": 2}, ("idx_checkpoints_task_id_iteration",)),
    CatalogQuery("state.delete", "one state key", state._DELETE, {"task_id": "t", "key": "k"},
                 ("sqlite_autoindex_state_1",)),
    CatalogQuery("audit.prune", "a batch of the oldest audit rows", audit.PRUNE_SQL,
                 {"before": "2026-01-01T00:00:00.000Z", "limit": 500}, ("idx_audit_timestamp",)),
    CatalogQuery("metrics.prune", "a batch of the oldest measurements", metrics.PRUNE_SQL,
                 {"before": "2026-01-01T00:00:00.000Z", "limit": 500}, ("idx_metrics_timestamp",)),
)
KEYED = CATALOG + OTHER_KEYED
# Every index these statements name that can be dropped (a primary key's automatic index cannot).
DROPPABLE = sorted({name for q in KEYED for name in q.indexes if not name.startswith("sqlite_autoindex")})


def _plant_orphan(conn) -> int:
    """Insert an agent whose task does not exist, foreign keys off; return its rowid."""
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("INSERT INTO agents (id, name, specialization, task_id, model) "
                 "VALUES ('a-orphan', 'n', 's', 'no-such-task', 'm')")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn.execute("SELECT rowid FROM agents WHERE id = 'a-orphan'").fetchone()[0]


def test_public_names_are_exported():
    """The validation functions and PlanCheck are importable from abathur_db and listed in __all__."""
    for name in ("validate_foreign_keys", "explain_query_plan", "check_plan", "check_catalog", "PlanCheck",
                 "integrity_check", "backup"):
        assert name in abathur_db.__all__
        assert getattr(abathur_db, name) is not None
    assert abathur_db.check_catalog is validation.check_catalog


def test_foreign_keys_of_a_fresh_database_are_clean(conn):
    """A new database has no foreign-key violations."""
    assert abathur_db.validate_foreign_keys(conn) == []


def test_foreign_key_violation_is_returned_as_table_rowid_parent_fkid(conn):
    """A planted orphan comes back as one (table, rowid, parent, fkid) tuple."""
    rowid = _plant_orphan(conn)
    fkid = next(row[0] for row in conn.execute("PRAGMA foreign_key_list(agents)") if row[3] == "task_id")
    assert abathur_db.validate_foreign_keys(conn) == [("agents", rowid, "tasks", fkid)]


def test_foreign_key_rows_are_tuples_whatever_the_row_factory(conn):
    """Rows are plain tuples even when the caller set sqlite3.Row as the row factory."""
    _plant_orphan(conn)
    conn.row_factory = sqlite3.Row
    try:
        assert all(type(row) is tuple for row in abathur_db.validate_foreign_keys(conn))
    finally:
        conn.row_factory = None


def test_explain_returns_the_plan_lines(conn):
    """explain_query_plan returns the detail text of each plan line."""
    assert abathur_db.explain_query_plan(conn, tasks.GET_SQL, {"id": "t"}) == [
        "SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)"
    ]


@pytest.mark.parametrize("sql, params", [
    ("DELETE FROM tasks", ()),
    ("DELETE FROM tasks WHERE id = ?", ("t1",)),
    ("UPDATE tasks SET prompt = 'changed'", ()),
    ("INSERT INTO tasks (id, prompt) VALUES ('t2', 'new')", ()),
    ("REPLACE INTO tasks (id, prompt) VALUES ('t1', 'replaced')", ()),
    (tasks.CLAIM_SQL, {"now": "2030-01-01T00:00:00.000Z", "lease": "0" * 32}),
])
def test_explain_never_executes_the_statement(conn, make_task, sql, params):
    """Explaining a write changes no row: the statement is planned, never run."""
    make_task("t1")
    before = conn.execute("SELECT * FROM tasks").fetchall()
    changes = conn.total_changes
    assert abathur_db.explain_query_plan(conn, sql, params)
    assert conn.execute("SELECT * FROM tasks").fetchall() == before
    assert conn.total_changes == changes


@pytest.mark.parametrize("sql", [
    "",
    "   \n",
    ";",
    "-- only a comment",
    "/* only a comment */ ;",
    "SELECT 1; SELECT 2",
    "SELECT 1; DELETE FROM tasks",
    "SELECT 1; garbage",
])
def test_explain_refuses_anything_but_one_statement(conn, make_task, sql):
    """An empty string, two statements or trailing text raise ValidationError and delete nothing."""
    make_task("t1")
    with pytest.raises(ValidationError, match="exactly one statement"):
        abathur_db.explain_query_plan(conn, sql)
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 1


@pytest.mark.parametrize("sql", [
    "PRAGMA foreign_keys = OFF",
    "PRAGMA ignore_check_constraints = ON",
    "ATTACH DATABASE 'other.db' AS other",
    "CREATE TABLE x (y)",
    "EXPLAIN SELECT 1",
    "VACUUM",
    "(SELECT 1)",
])
def test_explain_refuses_statements_that_act_when_prepared(conn, sql):
    """Statements other than queries and DML are refused: a flag PRAGMA acts while being prepared."""
    with pytest.raises(ValidationError, match="refused"):
        abathur_db.explain_query_plan(conn, sql)
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'x'").fetchone()[0] == 0


@pytest.mark.parametrize("sql", [
    "SELECT 1;",
    "SELECT 1;  -- a trailing comment",
    "/* leading */ -- comment\nSELECT 1",
    "SELECT ';' AS semicolon",
    "with x as (select 1) select * from x",
    "SELECT*FROM tasks",
])
def test_explain_accepts_one_statement_with_comments_and_semicolons(conn, sql):
    """Comments, a final semicolon and a ';' inside a string still make one statement."""
    assert abathur_db.explain_query_plan(conn, sql)


@pytest.mark.parametrize("sql, params, error", [
    (tasks.GET_SQL, {}, ValidationError),
    ("SELECT * FROM tasks WHERE id = ?", (1, 2), ValidationError),
    (b"SELECT 1", (), ValidationError),
    ("SELECT FROM WHERE", (), AbathurDBError),
    ("SELECT * FROM no_such_table", (), AbathurDBError),
])
def test_explain_errors_are_package_errors(conn, sql, params, error):
    """Bad parameters, a non-string, a syntax error or an unknown table raise a package error."""
    with pytest.raises(error) as caught:
        abathur_db.explain_query_plan(conn, sql, params)
    assert not isinstance(caught.value, sqlite3.Error)


@pytest.mark.parametrize("query", KEYED, ids=lambda query: query.id)
def test_query_is_served_by_its_index(conn, query):
    """Each catalog query, and each keyed statement beside them, uses its index: no full SCAN, no TEMP B-TREE."""
    check = abathur_db.check_plan(conn, query)
    assert check.ok and check.problems == [], (check.plan, check.problems)
    assert all(name in " | ".join(check.plan) for name in query.indexes), check.plan


def test_catalog_is_checked_in_catalog_order(conn):
    """check_catalog returns one passing check per catalog query, in catalog order."""
    checks = abathur_db.check_catalog(conn)
    assert [(check.id, check.ok) for check in checks] == [(query.id, True) for query in CATALOG]


@pytest.mark.parametrize("index", DROPPABLE)
def test_plan_check_fails_when_an_index_is_dropped(conn, index):
    """Dropping an index makes exactly the statements that rely on it fail, each naming it."""
    conn.execute(f"DROP INDEX {index}")
    checks = {query.id: abathur_db.check_plan(conn, query) for query in KEYED}
    failed = {key: check for key, check in checks.items() if not check.ok}
    assert set(failed) == {query.id for query in KEYED if index in query.indexes}
    assert {check.id for check in abathur_db.check_catalog(conn) if not check.ok} == set(failed) & set(CATALOG_BY_ID)
    for check in failed.values():
        assert any(index in problem for problem in check.problems), check.problems


def test_plan_is_not_replayed_from_the_statement_cache_after_a_drop(conn):
    """A check run before and after a DROP INDEX on one connection sees the new plan."""
    u2 = CATALOG_BY_ID["U2"]
    assert abathur_db.check_plan(conn, u2).ok
    conn.execute("DROP INDEX idx_audit_timestamp")
    assert not abathur_db.check_plan(conn, u2).ok


def test_missing_indexed_by_index_is_a_failed_check_not_a_crash(conn):
    """The claim pins its index with INDEXED BY: without it the plan fails to prepare, reported by name."""
    conn.execute("DROP INDEX idx_tasks_claimable")
    check = abathur_db.check_plan(conn, CATALOG_BY_ID["T2"])
    assert not check.ok and check.plan == []
    assert check.problems == ["cannot be planned: no such index: idx_tasks_claimable",
                              "index idx_tasks_claimable does not exist"]


def test_ordered_walk_is_refused_for_an_entry_without_ordered_walk(conn):
    """The claim's walk of its partial index fails once the entry does not allow an ordered walk."""
    claim = dataclasses.replace(CATALOG_BY_ID["T2"], ordered_walk=False)
    check = abathur_db.check_plan(conn, claim)
    assert not check.ok
    assert check.problems == [
        "walks all of idx_tasks_claimable instead of searching it (SCAN tasks USING INDEX idx_tasks_claimable)"
    ]


def test_ordered_walk_is_refused_through_another_index(conn):
    """An entry allowed an ordered walk of its own index may not walk a different one."""
    query = CatalogQuery("X1", "oldest task", "SELECT id FROM tasks ORDER BY submitted_at LIMIT 1", {},
                         ("idx_tasks_claimable",), ordered_walk=True)
    check = abathur_db.check_plan(conn, query)
    assert not check.ok
    assert check.problems == [
        "walks all of idx_tasks_submitted_at instead of searching it "
        "(SCAN tasks USING INDEX idx_tasks_submitted_at)",
        "does not use idx_tasks_claimable",
    ]


@pytest.mark.parametrize("sql, index, problem", [
    ("SELECT id FROM tasks WHERE prompt = :p", "idx_tasks_status_priority", "full scan of tasks (SCAN tasks)"),
    ("SELECT id FROM tasks WHERE status = :p ORDER BY prompt", "idx_tasks_status_priority",
     "sorts in a temporary b-tree (USE TEMP B-TREE FOR ORDER BY)"),
    ("SELECT t.id FROM tasks AS t JOIN agents AS a ON a.model = t.prompt", "sqlite_autoindex_tasks_1",
     "builds a temporary index, scanning the table to do so (SEARCH a USING AUTOMATIC COVERING INDEX (model=?))"),
    ("SELECT id FROM tasks WHERE id = :p", "idx_tasks_submitted_at", "does not use idx_tasks_submitted_at"),
])
def test_bad_plans_fail_with_the_reason(conn, sql, index, problem):
    """A full scan, a temporary b-tree, an automatic index or an unused index each fail the check."""
    check = abathur_db.check_plan(conn, CatalogQuery("X", "bad", sql, {"p": 1}, (index,)))
    assert not check.ok
    assert problem in check.problems


@pytest.mark.parametrize("plan, ok", [
    (["SCAN TABLE tasks"], False),  # SQLite < 3.36 spelling of a full scan
    (["SCAN TABLE tasks AS t"], False),
    (["SCAN t"], False),
    (["SEARCH TABLE tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)"], True),
    (["SEARCH tasks USING COVERING INDEX sqlite_autoindex_tasks_1 (id=?)"], True),
    (["SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)", "SCAN CONSTANT ROW"], True),
    (["SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)", "USE TEMP B-TREE FOR DISTINCT"], False),
    (["SCAN TABLE tasks USING COVERING INDEX sqlite_autoindex_tasks_1"], False),
])
def test_plan_lines_of_either_sqlite_spelling_are_judged_alike(conn, monkeypatch, plan, ok):
    """'SCAN TABLE t' (before 3.36) and 'SCAN t' are both full scans; SCAN CONSTANT ROW is not."""
    monkeypatch.setattr(validation, "explain_query_plan", lambda *args: plan)
    assert abathur_db.check_plan(conn, CATALOG_BY_ID["T1"]).ok is ok


def test_ordered_walk_of_its_own_index_passes_in_the_old_spelling(conn, monkeypatch):
    """The claim's ordered walk printed as 'SCAN TABLE tasks USING INDEX ...' is still accepted."""
    monkeypatch.setattr(validation, "explain_query_plan",
                        lambda *args: ["SCAN TABLE tasks USING COVERING INDEX idx_tasks_claimable"])
    assert abathur_db.check_plan(conn, CATALOG_BY_ID["T2"]).ok


@pytest.mark.parametrize("call", [
    lambda conn: abathur_db.validate_foreign_keys(conn),
    lambda conn: abathur_db.explain_query_plan(conn, "SELECT 1"),
    lambda conn: abathur_db.check_catalog(conn),
])
def test_closed_connection_raises_a_package_error(tmp_path, call):
    """A connection that cannot be used raises AbathurDBError with the sqlite3 error chained."""
    conn = abathur_db.connect(tmp_path / "closed.db")
    conn.close()
    with pytest.raises(AbathurDBError) as caught:
        call(conn)
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_a_query_that_cannot_be_planned_fails_its_check_with_ok_exactly_false(conn):
    """check_plan() of a query SQLite cannot prepare returns ok=False itself, no plan, and problems naming why."""
    query = CatalogQuery("X", "unplannable", "SELECT id FROM no_such_table", {}, ("idx_no_such_index",))
    check = abathur_db.check_plan(conn, query)
    assert check.ok is False and check.plan == []
    assert any("no_such_table" in problem for problem in check.problems), check.problems
    assert any("idx_no_such_index" in problem for problem in check.problems), check.problems


@pytest.mark.parametrize("call", [
    pytest.param(lambda conn: abathur_db.validate_foreign_keys(conn), id="validate_foreign_keys"),
    pytest.param(lambda conn: abathur_db.explain_query_plan(conn, "SELECT 1"), id="explain_query_plan"),
    pytest.param(lambda conn: abathur_db.check_catalog(conn), id="check_catalog"),
    pytest.param(lambda conn: validation.rule_violations(conn), id="rule_violations"),
])
def test_a_file_that_is_not_a_database_raises_database_file_error(tmp_path, call):
    """Each check of a file that is not SQLite raises DatabaseFileError, sqlite3's error chained."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pages you are looking for " * 100)
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(DatabaseFileError) as caught:
            call(conn)
    finally:
        conn.close()
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_explaining_an_unknown_table_is_a_package_error_naming_it(conn):
    """A statement naming a table that does not exist raises AbathurDBError (not a refusal of the SQL), naming it."""
    with pytest.raises(AbathurDBError) as caught:
        abathur_db.explain_query_plan(conn, "SELECT * FROM no_such_table")
    assert not isinstance(caught.value, ValidationError)
    assert "no_such_table" in str(caught.value) and isinstance(caught.value.__cause__, sqlite3.OperationalError)


@pytest.mark.parametrize("without_rowid, row_key, row", [(True, "a, b", '["x","y"]'), (False, "rowid", 1)])
def test_a_rule_broken_in_a_table_of_yours_names_its_row_by_its_key(conn, without_rowid, row_key, row):
    """A table with a key of several columns names its row by them (a JSON array of their values) if it has no
    rowid, by its rowid otherwise."""
    conn.execute(f"CREATE TABLE pairs (a TEXT, b TEXT, n INTEGER CHECK (n >= 0), PRIMARY KEY (a, b))"
                 f"{' WITHOUT ROWID' if without_rowid else ''}")
    conn.execute("PRAGMA ignore_check_constraints = 1")
    conn.execute("INSERT INTO pairs VALUES ('x', 'y', -1)")
    conn.execute("PRAGMA ignore_check_constraints = 0")
    found = [v for v in validation.rule_violations(conn) if v["table"] == "pairs"]
    assert found == [{"table": "pairs", "row_key": row_key, "row": row, "column": "n", "value": -1,
                      "rule": "CHECK"}]
