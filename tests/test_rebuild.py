"""_rebuild: how a schema file's table rebuild keeps the user's objects, shown on small made-up files."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

import abathur_db
from abathur_db import _rebuild, schema
from abathur_db.errors import SchemaError

THINGS = "CREATE TABLE things (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, obsolete TEXT);\n"
REBUILD = """
ALTER TABLE things DROP COLUMN obsolete;
ALTER TABLE things RENAME TO old_things;
CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL CHECK (name <> ''));
INSERT INTO things (id, name) SELECT id, name FROM old_things;
DROP TABLE old_things;
"""


def _prepare(tmp_path, user_sql: str, rebuild: str = REBUILD, first: str = THINGS):
    """Create a database from the ledger file and `first`, let the user run `user_sql`; return its path and folder."""
    folder = tmp_path / "schema"
    folder.mkdir()
    shutil.copy(schema.schema_dir() / "0001_schema_ledger.sql", folder)
    (folder / "0002_first.sql").write_text(first)
    path = tmp_path / "made-up.db"
    abathur_db.open(path, schema_dir=folder).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.executescript("INSERT INTO things (name, obsolete) VALUES ('a', 'x'), ('b', 'y'), ('c', 'z');" + user_sql)
    raw.close()
    (folder / "0003_rebuild.sql").write_text(rebuild)
    return path, folder


def _refused(path, folder) -> str:
    with pytest.raises(SchemaError, match="nothing was changed") as caught:
        abathur_db.open(path, schema_dir=folder)
    return str(caught.value)


def test_a_column_the_file_drops_is_dropped_and_the_users_is_kept_with_values_breaking_its_check(tmp_path):
    """The file's own DROP COLUMN removes its column; the user's column stays, values as they were."""
    path, folder = _prepare(tmp_path, """
        ALTER TABLE things ADD COLUMN note TEXT CHECK (note <> 'bad');
        UPDATE things SET note = 'fine' WHERE name = 'a';
        PRAGMA ignore_check_constraints = ON;
        UPDATE things SET note = 'bad' WHERE name = 'b';
    """)
    with abathur_db.open(path, schema_dir=folder) as pool:
        conn = pool.connection()
        assert [c[1] for c in conn.execute("PRAGMA table_info(things)")] == ["id", "name", "note"]
        assert conn.execute("SELECT id, name, note FROM things ORDER BY id").fetchall() == [
            (1, "a", "fine"), (2, "b", "bad"), (3, "c", None)]
        assert conn.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 0


def test_a_generated_column_is_added_back_and_computes_again(tmp_path):
    """A user's generated column is defined again on the new table; its values are computed, not copied."""
    path, folder = _prepare(tmp_path, "ALTER TABLE things ADD COLUMN shout TEXT GENERATED ALWAYS AS (upper(name));")
    with abathur_db.open(path, schema_dir=folder) as pool:
        conn = pool.connection()
        assert conn.execute("SELECT shout FROM things ORDER BY id").fetchall() == [("A",), ("B",), ("C",)]


def test_autoincrement_is_written_after_the_whole_primary_key_clause(tmp_path):
    """AUTOINCREMENT goes after PRIMARY KEY ASC ON CONFLICT ..., where SQLite's grammar wants it."""
    rebuild = REBUILD.replace("id INTEGER PRIMARY KEY,", "id INTEGER PRIMARY KEY ASC ON CONFLICT ABORT,")
    path, folder = _prepare(tmp_path, "DELETE FROM things WHERE id = 3;", rebuild)
    with abathur_db.open(path, schema_dir=folder) as pool:
        conn = pool.connection()
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'things'").fetchone()[0]
        assert "id INTEGER PRIMARY KEY ASC ON CONFLICT ABORT AUTOINCREMENT," in sql
        conn.execute("INSERT INTO things (name) VALUES ('d')")
        assert conn.execute("SELECT max(id) FROM things").fetchone()[0] == 4


@pytest.mark.parametrize("new_key", ["id TEXT PRIMARY KEY,", "id INTEGER, PRIMARY KEY (id),"])
def test_autoincrement_that_cannot_be_kept_stops_the_upgrade(tmp_path, new_key):
    """An old AUTOINCREMENT with no INTEGER PRIMARY KEY column to carry it to stops the upgrade."""
    rebuild = REBUILD.replace("id INTEGER PRIMARY KEY,", new_key)
    if "PRIMARY KEY (id)" in new_key:
        rebuild = rebuild.replace("id INTEGER, PRIMARY KEY (id), name TEXT NOT NULL CHECK (name <> '')",
                                  "id INTEGER, name TEXT NOT NULL CHECK (name <> ''), PRIMARY KEY (id)")
    path, folder = _prepare(tmp_path, "", rebuild)
    assert "things: AUTOINCREMENT cannot be kept" in _refused(path, folder)


def test_a_user_column_of_a_table_without_primary_key_stops_the_upgrade(tmp_path):
    """Without a key to match old rows to new ones, a user's column cannot be carried: the upgrade stops."""
    first = "CREATE TABLE things (name TEXT NOT NULL, obsolete TEXT);\n"
    rebuild = REBUILD.replace("id INTEGER PRIMARY KEY, ", "").replace("id, name", "name")
    path, folder = _prepare(tmp_path, "ALTER TABLE things ADD COLUMN note TEXT;", rebuild, first)
    assert "things: has no primary key to match rows by, so column(s) note cannot be carried over" in \
        _refused(path, folder)


def test_a_copy_that_names_no_columns_stops_the_upgrade_of_a_table_with_user_columns(tmp_path):
    """A copy written as INSERT INTO t SELECT ... leaves no room for the user's columns: the upgrade stops."""
    rebuild = REBUILD.replace("INSERT INTO things (id, name) SELECT", "INSERT INTO things SELECT")
    path, folder = _prepare(tmp_path, "ALTER TABLE things ADD COLUMN note TEXT;", rebuild)
    assert "things: the upgrade copies its rows without naming their columns, so column(s) note" in \
        _refused(path, folder)


def test_renaming_onto_an_existing_name_stops_the_upgrade(tmp_path):
    """A user table with the name the file renames an owned table to stops the upgrade, named."""
    path, folder = _prepare(tmp_path, "CREATE TABLE old_things (x);")
    assert "table old_things exists already; the upgrade renames things to that name" in _refused(path, folder)


def test_a_table_the_file_itself_creates_and_rebuilds_holds_nothing_of_the_users(tmp_path):
    """A table that does not exist before the file runs is rebuilt as written, with nothing to keep."""
    rebuild = """
    CREATE TABLE fresh (x INTEGER);
    INSERT INTO fresh VALUES (1);
    ALTER TABLE fresh RENAME TO old_fresh;
    CREATE TABLE fresh (x INTEGER, y INTEGER DEFAULT 2);
    INSERT INTO fresh (x) SELECT x FROM old_fresh;
    DROP TABLE old_fresh;
    """
    path, folder = _prepare(tmp_path, "", rebuild)
    with abathur_db.open(path, schema_dir=folder) as pool:
        assert pool.connection().execute("SELECT x, y FROM fresh").fetchall() == [(1, 2)]


def test_the_plan_of_a_file_without_rebuilds_is_its_statements():
    """A file that rebuilds nothing runs exactly its own statements, and says so."""
    conn = sqlite3.connect(":memory:")  # a single connection: the plan only reads
    statements = ["CREATE TABLE a (x);", "CREATE INDEX a_x ON a (x);"]
    plan = _rebuild.plan(conn, statements)
    assert plan.script == [(s, {}) for s in statements] and plan.tables == [] and plan.problems == []
    conn.close()


def test_a_plain_rename_is_not_a_rebuild(tmp_path):
    """A table renamed for good (no CREATE TABLE of the old name after it) keeps its indexes, as SQLite does."""
    path, folder = _prepare(tmp_path, "CREATE INDEX user_things_name ON things (name);",
                            "ALTER TABLE things RENAME TO stuff;\n")
    with abathur_db.open(path, schema_dir=folder) as pool:
        conn = pool.connection()
        assert conn.execute("SELECT tbl_name FROM sqlite_master WHERE name = 'user_things_name'").fetchone() == (
            "stuff",)


def test_a_copy_without_column_list_and_other_inserts_work_when_nothing_is_the_users(tmp_path):
    """Without columns of the user's, a copy naming no columns is fine, and other inserts into t are left alone."""
    rebuild = REBUILD.replace("INSERT INTO things (id, name) SELECT", "INSERT INTO things SELECT") + \
        "INSERT INTO things (name) VALUES ('added by the file');\n"
    path, folder = _prepare(tmp_path, "", rebuild)
    with abathur_db.open(path, schema_dir=folder) as pool:
        names = pool.connection().execute("SELECT name FROM things ORDER BY id").fetchall()
    assert names == [("a",), ("b",), ("c",), ("added by the file",)]
