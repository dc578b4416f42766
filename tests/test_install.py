"""The installed layout: pip puts the schema files in abathur_db/sql, and an installed copy uses them from there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import abathur_db
from abathur_db import schema

ROOT = Path(abathur_db.__file__).resolve().parent.parent
# What an installation is built from: the package, the schema files and the packaging settings.
SOURCES = ("abathur_db", "schema", "setup.cfg", "pyproject.toml", "README.md")

_FROM_THE_INSTALLED_COPY = """
    import json, sys
    import abathur_db
    from abathur_db import schema, tasks

    with abathur_db.open(sys.argv[1]) as pool:
        task = tasks.create(pool.connection(), "stored by the installed copy")
        print(json.dumps({"package": abathur_db.__file__, "schema_dir": str(schema.schema_dir()),
                          "applied": pool.applied, "status": task["status"]}))
"""


def _run(*command, **options) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **options)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_an_installed_copy_opens_a_database_from_the_schema_files_it_carries(tmp_path):
    """pip install of the checkout into a new venv ships the schema in abathur_db/sql; open() applies it from there."""
    source = tmp_path / "checkout"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    environment = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", str(environment), timeout=300)
    python = environment / ("Scripts" if os.name == "nt" else "bin") / "python"
    _run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-cache-dir", str(source), timeout=600)
    shutil.rmtree(source)  # nothing beside the installed package to fall back on

    # -I: neither the working directory nor PYTHONPATH can put the checkout on the path.
    result = _run(str(python), "-I", "-c", textwrap.dedent(_FROM_THE_INSTALLED_COPY), str(tmp_path / "new.db"),
                  cwd=tmp_path, timeout=120)
    seen = json.loads(result.stdout)
    installed = Path(seen["package"]).resolve().parent
    assert installed.is_relative_to(environment.resolve()), installed
    assert Path(seen["schema_dir"]).resolve() == installed / "sql"
    files = schema.load_files()
    assert seen["applied"] == [file.name for file in files] and seen["status"] == "pending"
    assert sorted(path.name for path in (installed / "sql").glob("*.sql")) == [file.name for file in files]
    for file in files:
        assert (installed / "sql" / file.name).read_text(encoding="utf-8") == file.sql, file.name
    _run(str(python), "-I", "-m", "abathur_db.verify", "--check-only", str(tmp_path / "new.db"), cwd=tmp_path,
         timeout=120)
