"""Reading docs/FORMULAS.md, the map from the method to the code: each row's
section, function name and ``file:line``, and the ``def`` lines of the project's
functions read from their syntax trees (tests/test_formulas.py checks the table;
``python -m tests.scripts.fix_formulas`` rewrites its line numbers)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "FORMULAS.md"
# | §3 | formula | `name` | `path.py:line` |, or | §3, §6 | ... for a formula of two sections
ROW = re.compile(r"^\| *(§\d+(?: *, *§\d+)*) *\|.*\| *`([\w.]+)` *\| *`([\w/]+\.py):(\d+)` *\|$")


def definitions(path: Path) -> dict[str, list[int]]:
    """Qualified name (``Class.method`` or ``function``) → the lines that define it."""
    out: dict[str, list[int]] = defaultdict(list)

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[prefix + child.name].append(child.lineno)

    walk(ast.parse(path.read_text()), "")
    return out


def rows() -> list[tuple[str, str, str, int]]:
    """``(section, name, file, line)`` of every row of the table, once per section
    the row names (``| §3, §6 |`` gives two)."""
    out = []
    for line in TABLE.read_text().splitlines():
        if m := ROW.match(line):
            for sec in re.findall(r"§(\d+)", m[1]):
                out.append((sec, m[2], m[3], int(m[4])))
    return out


def fix() -> int:
    """Rewrite each row's line number to its function's current definition."""
    text = TABLE.read_text().splitlines()
    for i, line in enumerate(text):
        if m := ROW.match(line):
            lines = definitions(ROOT / m[3]).get(m[2])
            if not lines:
                print(f"{m[2]} is not defined in {m[3]}: fix that row by hand")
                continue
            text[i] = line.replace(f"`{m[3]}:{m[4]}`", f"`{m[3]}:{lines[0]}`")
    TABLE.write_text("\n".join(text) + "\n")
    return 0
