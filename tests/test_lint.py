"""Ruff over the whole tree, as configured in pyproject.toml ([tool.ruff]): the
lint rules pass and the code is formatted as ``ruff format`` writes it. Run
``ruff check --fix .`` and ``ruff format .`` with the virtual environment's ruff
to fix what these report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"


def ruff(*args: str) -> subprocess.CompletedProcess:
    assert RUFF.exists(), f"no ruff at {RUFF}: install the test extra, pip install -e '.[test]'"
    return subprocess.run([str(RUFF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_passes():
    r = ruff("check", "--no-cache", "--output-format", "concise", ".")
    assert r.returncode == 0, f"ruff check . found:\n{r.stdout}{r.stderr}"


def test_ruff_format_leaves_the_tree_unchanged():
    r = ruff("format", "--no-cache", "--check", "--output-format", "concise", ".")
    assert r.returncode == 0, (
        f"ruff format would change (ruff format --diff . shows how):\n{r.stdout}{r.stderr}"
    )
