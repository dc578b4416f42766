"""Keyset paging: every list() of every table pages with after=<last row>, and one rule for limit."""

from __future__ import annotations

import random

import pytest

import abathur_db
from abathur_db import agents, audit, checkpoints, metrics, sessions, tasks
from abathur_db.errors import NotFoundError, ValidationError

# Few distinct values, so that many rows tie on what a list is ordered by.
MOMENTS = ("2024-01-01T00:00:00.000Z", "2024-01-01T00:00:01.000Z", "2024-01-02T00:00:00.000Z")
ROWS = 23


@pytest.fixture(scope="module", params=range(3))
def world(request, tmp_path_factory):
    """Fill every table with rows that tie on their list's order (seeded at random); return the file and seed."""
    seed = request.param
    rng = random.Random(seed)
    path = tmp_path_factory.mktemp(f"paging-{seed}") / "world.db"
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        session = sessions.create(conn, "app", "user", session_id="s")["id"]
        parent = tasks.create(conn, "parent", task_id="parent")["id"]
        conn.execute("INSERT INTO memory_entries (id, namespace, key, value, memory_type)"
                     " VALUES (1, 'n', 'k', '1', 'semantic')")
        for i in range(ROWS):
            task = tasks.create(conn, f"task {i}", task_id=f"t{i:02d}", priority=rng.choice((3, 7)),
                                session_id=session, parent_task_id=parent, submitted_at=rng.choice(MOMENTS),
                                max_execution_timeout_seconds=60)
            agent = agents.spawn(conn, task["id"] if i % 2 else "t00", "a", "s", "m", agent_id=f"a{i:02d}",
                                 session_id=session)
            audit.record(conn, "act", task_id="t00", agent_id=agent["id"], memory_operation_type="update",
                         memory_entry_id=1)
            checkpoints.save(conn, "t00" if i % 2 else task["id"], i, {"i": i}, session_id=session)
            metrics.record(conn, "m", i, timestamp=rng.choice(MOMENTS))
        for table, column in (("agents", "spawned_at"), ("audit", "timestamp"), ("checkpoints", "created_at")):
            for (rowid,) in conn.execute(f"SELECT rowid FROM {table}").fetchall():
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (rng.choice(MOMENTS), rowid))
        running = [tasks.claim_next(conn) for _ in range(ROWS // 2)]
        for task in running:
            conn.execute("UPDATE tasks SET last_updated_at = ? WHERE id = ?", (rng.choice(MOMENTS), task["id"]))
    return path, seed


@pytest.fixture
def reader(world):
    """Return a connection to the world's file (the tests only read) and the world's seed."""
    path, seed = world
    conn = abathur_db.connect(path)
    yield conn, seed
    conn.close()


def _key(row: dict) -> object:
    return (row["task_id"], row["iteration"]) if "iteration" in row else row["id"]


# (list call, keyword arguments, how the rows must be ordered: a sort key of (row, its rowid)).
LISTS = [
    (tasks.list, {"status": "pending"}, lambda r, rowid: (-r["priority"], r["submitted_at"], rowid)),
    (tasks.list, {"status": "running"}, lambda r, rowid: (-r["priority"], r["submitted_at"], rowid)),
    (tasks.list, {"session_id": "s"}, lambda r, rowid: (r["submitted_at"], rowid), True),
    (tasks.list, {"parent_task_id": "parent"}, lambda r, rowid: (r["submitted_at"], rowid)),
    (tasks.list, {"submitted_since": MOMENTS[0]}, lambda r, rowid: (r["submitted_at"], rowid)),
    (tasks.list, {"submitted_since": MOMENTS[1], "submitted_until": MOMENTS[2]},
     lambda r, rowid: (r["submitted_at"], rowid)),
    (tasks.stale, {"now": "2100-01-01T00:00:00Z"}, lambda r, rowid: (r["last_updated_at"], rowid)),
    (agents.list, {"task_id": "t00"}, lambda r, rowid: (r["spawned_at"], rowid)),
    (agents.list, {"session_id": "s"}, lambda r, rowid: (r["spawned_at"], rowid), True),
    (agents.list, {"spawned_until": MOMENTS[2]}, lambda r, rowid: (r["spawned_at"], rowid)),
    (checkpoints.list, {"task_id": "t00"}, lambda r, rowid: r["iteration"]),
    (checkpoints.list, {"session_id": "s"}, lambda r, rowid: (r["created_at"], rowid)),
    (checkpoints.list, {"created_since": MOMENTS[1]}, lambda r, rowid: (r["created_at"], rowid)),
    (audit.list, {}, lambda r, rowid: (r["timestamp"], rowid), True),
    (audit.list, {"task_id": "t00"}, lambda r, rowid: (r["timestamp"], rowid), True),
    (audit.list, {"memory_operation_type": "update", "since": MOMENTS[1]}, lambda r, rowid: (r["timestamp"], rowid),
     True),
    (audit.list, {"memory_entry_id": 1}, lambda r, rowid: (r["timestamp"], rowid), True),
    (metrics.query, {}, lambda r, rowid: (r["timestamp"], rowid)),
    (metrics.query, {"name": "m", "until": MOMENTS[2]}, lambda r, rowid: (r["timestamp"], rowid)),
]


def _name(case) -> str:
    function, kwargs = case[0], case[1]
    return f"{function.__module__.rsplit('.', 1)[-1]}.{function.__name__}({', '.join(kwargs)})"


def _rowids(conn, function) -> dict:
    """Return each row's rowid by its key, for the table `function` lists."""
    table = function.__module__.rsplit(".", 1)[-1]
    if table == "checkpoints":
        return {(t, i): rowid for rowid, t, i in conn.execute("SELECT rowid, task_id, iteration FROM checkpoints")}
    return {key: rowid for rowid, key in conn.execute(f"SELECT rowid, id FROM {table}")}


@pytest.mark.parametrize("case", LISTS, ids=_name)
@pytest.mark.parametrize("limit", [1, 2, 5])
def test_pages_return_every_row_once_in_order(reader, case, limit):
    """Paging with after=<last row> returns every row exactly once, in the list's order, ties included."""
    conn, world = reader
    function, kwargs, order, *newest_first = case
    whole = function(conn, **kwargs, limit=1000)
    rowids = _rowids(conn, function)
    expected = sorted(whole, key=lambda row: order(row, rowids[_key(row)]), reverse=bool(newest_first))
    assert [_key(r) for r in whole] == [_key(r) for r in expected], f"seed {world}"
    assert len(whole) >= 5, f"seed {world}: too few rows to page through"
    pages = [function(conn, **kwargs, limit=limit)]
    while len(pages[-1]) == limit and len(pages) <= len(whole):  # a page that repeats rows must not loop forever
        pages.append(function(conn, **kwargs, limit=limit, after=pages[-1][-1]))
    assert all(len(page) <= limit for page in pages)
    assert [_key(row) for page in pages for row in page] == [_key(row) for row in whole], f"seed {world}"


def test_a_page_after_a_row_before_the_range_starts_at_the_range(conn):
    """An `after` row older than the range's start does not widen the range: the page starts at `since`."""
    for moment in MOMENTS:
        metrics.record(conn, "m", 1, timestamp=moment)
    first = metrics.query(conn)[0]
    assert [r["timestamp"] for r in metrics.query(conn, since=MOMENTS[1], after=first)] == list(MOMENTS[1:])


@pytest.mark.parametrize("function, kwargs, row", [
    (tasks.list, {"status": "pending"}, {"id": "gone", "priority": 5, "submitted_at": MOMENTS[0]}),
    (agents.list, {"task_id": "t"}, {"id": "gone", "spawned_at": MOMENTS[0]}),
    (checkpoints.list, {"session_id": "s"}, {"task_id": "t", "iteration": 0, "created_at": MOMENTS[0]}),
])
def test_a_page_after_a_row_that_is_gone_is_refused(conn, function, kwargs, row):
    """A row given as `after` that no longer exists (a pruned checkpoint) raises NotFoundError naming it."""
    tasks.create(conn, "p", task_id="t")
    with pytest.raises(NotFoundError, match="the row given as after .* no longer exists"):
        function(conn, **kwargs, after=row)


# Lists that start a page from the `after` row's own values, not from its place in the table.
BY_VALUES = {
    "checkpoints by task": (lambda conn, n: checkpoints.save(conn, "t", n, {"n": n}),
                            lambda conn, **kw: checkpoints.list(conn, task_id="t", **kw),
                            "DELETE FROM checkpoints WHERE task_id = 't' AND iteration = :iteration"),
    "audit": (lambda conn, n: audit.record(conn, f"action {n}"), audit.list, "DELETE FROM audit WHERE id = :id"),
    "metrics": (lambda conn, n: metrics.record(conn, "m", n, timestamp=MOMENTS[n]), metrics.query,
                "DELETE FROM metrics WHERE id = :id"),
}


@pytest.mark.parametrize("add, listed, delete", BY_VALUES.values(), ids=BY_VALUES.keys())
def test_a_page_after_a_row_that_is_gone_goes_on_after_its_values(conn, add, listed, delete):
    """Where a page starts from the `after` row's values (iteration; time and id), a row deleted since still places
    the page: it holds the rows that came after that one."""
    tasks.create(conn, "p", task_id="t")
    for n in range(3):
        add(conn, n)
    whole = listed(conn)
    conn.execute(delete, whole[1])
    assert len(listed(conn)) == 2
    assert listed(conn, after=whole[1]) == whole[2:]


LIST_CALLS = [
    (tasks.list, {"status": "pending"}), (tasks.stale, {}), (agents.list, {"task_id": "t"}),
    (checkpoints.list, {"task_id": "t"}), (audit.list, {}), (metrics.query, {}),
]


@pytest.mark.parametrize("function, kwargs", LIST_CALLS, ids=lambda v: getattr(v, "__qualname__", ""))
@pytest.mark.parametrize("limit", [0, -1, None, True, 1.5, "10"])
def test_every_list_refuses_a_limit_below_one(conn, function, kwargs, limit):
    """Every list() takes the same limit: an int >= 1; 0, negatives, None and other types raise ValidationError."""
    with pytest.raises(ValidationError, match=r"\.limit: "):
        function(conn, **kwargs, limit=limit)


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """Return a file with more rows than a default page (100) for every list() and each of its filters."""
    path = tmp_path_factory.mktemp("crowd") / "crowd.db"
    with abathur_db.open(path) as pool:
        conn = pool.connection()
        with abathur_db.transaction(conn):
            sessions.create(conn, "app", "user", session_id="s")
            tasks.create(conn, "parent", task_id="parent", priority=0)
            conn.execute("INSERT INTO memory_entries (id, namespace, key, value, memory_type)"
                         " VALUES (1, 'n', 'k', '1', 'semantic')")
            for i in range(101):
                tasks.create(conn, f"task {i}", session_id="s", parent_task_id="parent",
                             max_execution_timeout_seconds=1)
                agents.spawn(conn, "parent", "a", "s", "m", session_id="s")
                audit.record(conn, "act", task_id="parent", memory_operation_type="update", memory_entry_id=1)
                checkpoints.save(conn, "parent", i, {"i": i}, session_id="s")
                metrics.record(conn, "m", i)
            for _ in range(101):
                tasks.claim_next(conn)
    return path


DEFAULT_PAGES = [
    (tasks.list, {"status": "running"}), (tasks.list, {"session_id": "s"}), (tasks.list, {"parent_task_id": "parent"}),
    (tasks.list, {"submitted_since": MOMENTS[0]}), (tasks.stale, {"now": "2100-01-01T00:00:00Z"}),
    (agents.list, {"task_id": "parent"}), (agents.list, {"session_id": "s"}),
    (agents.list, {"spawned_since": MOMENTS[0]}),
    (checkpoints.list, {"task_id": "parent"}), (checkpoints.list, {"session_id": "s"}),
    (checkpoints.list, {"created_since": MOMENTS[0]}),
    (audit.list, {}), (audit.list, {"task_id": "parent"}), (audit.list, {"memory_entry_id": 1}),
    (audit.list, {"memory_operation_type": "update"}),
    (metrics.query, {}), (metrics.query, {"name": "m"}),
]


@pytest.mark.parametrize("case", DEFAULT_PAGES, ids=_name)
def test_every_list_returns_its_first_100_rows_by_default(crowd, case):
    """Without a limit, every list() returns the first 100 of the rows it could return, in its order."""
    function, kwargs = case
    conn = abathur_db.connect(crowd)
    try:
        whole = function(conn, **kwargs, limit=1000)
        assert len(whole) > 100
        assert function(conn, **kwargs) == whole[:100]
    finally:
        conn.close()
