"""Where and on what the suite ran: the machine, the code's commit, the test coverage it quotes."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def machine() -> dict:
    """Return cores, memory, CPU model, Python and SQLite versions and the load average."""
    info = {"cores": os.cpu_count(), "memory_kib": None, "cpu_model": platform.processor() or None,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(), "load_average_start": list(os.getloadavg())}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_kib"] = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def code_version() -> dict:
    """Return the checkout's commit and whether the package or schema have uncommitted changes."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "abathur_db", "schema")
    # Porcelain lines are "XY path": the status letters may start with a space.
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
            "uncommitted_changes": [line[3:] for line in changed.splitlines() if line.strip()]}


def read_coverage(path: str | None) -> dict:
    """Return the total coverage of a coverage.py JSON or XML (Cobertura) report, if one is given."""
    if not path:
        return {"percent": None, "source": None}
    text = Path(path).read_text()
    if text.lstrip().startswith("{"):
        totals = json.loads(text)["totals"]
        return {"percent": round(float(totals["percent_covered"]), 1), "source": path}
    root = ElementTree.fromstring(text)
    return {"percent": round(float(root.get("line-rate", 0)) * 100, 1), "source": path}

