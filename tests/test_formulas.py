"""docs/FORMULAS.md, the map from the method to the code: every row names the
function that computes one formula of docs/METHOD.md and the ``file:line`` of its
definition. The tests read the code's syntax trees, so the table cannot drift:
each row must point at its function's ``def`` line, each function it names must
be defined exactly once in the project, and every section of the method must
have rows.

After code moved: ``python tests/test_formulas.py --fix`` rewrites the table's
line numbers (it never changes which function a row names)."""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "FORMULAS.md"
PACKAGES = ("unpack", "app", "ingest")
# | §3 | formula | `name` | `path.py:line` |, or | §3, §6 | ... for a formula of two sections
ROW = re.compile(r"^\| *(§\d+(?: *, *§\d+)*) *\|.*\| *`([\w.]+)` *\| *`([\w/]+\.py):(\d+)` *\|$")
# every row of the table's body: it starts with a section sign
BODY = re.compile(r"^\| *§\d")


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


def test_the_row_pattern_reads_every_row_of_the_table():
    body = [line for line in TABLE.read_text().splitlines() if BODY.match(line)]
    unread = [line for line in body if not ROW.match(line)]
    assert body and not unread, "rows the checks cannot read (fix their shape):\n" + "\n".join(unread)


def package_counts() -> dict[str, int]:
    """How many times each qualified name is defined across the project's packages."""
    counts: dict[str, int] = defaultdict(int)
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for name, lines in definitions(path).items():
                counts[name] += len(lines)
    return counts


def test_every_row_points_at_the_definition_of_its_function():
    table = rows()
    assert len(table) >= 40
    wrong = []
    for name, file, line in sorted({r[1:] for r in table}):
        lines = definitions(ROOT / file).get(name, [])
        if line not in lines:
            wrong.append(f"{name} at {file}:{line} (defined there at {lines or 'no line'})")
    assert not wrong, "docs/FORMULAS.md is stale; run python tests/test_formulas.py --fix:\n" + "\n".join(wrong)


def test_each_function_of_the_table_is_defined_once():
    counts = package_counts()
    twice = sorted({name for _, name, _, _ in rows() if counts[name] != 1})
    assert not twice, f"defined more than once (or not at all) in {PACKAGES}: {twice}"


def test_every_section_of_the_method_has_formulas_in_the_table():
    method = (ROOT / "docs" / "METHOD.md").read_text()
    sections = set(re.findall(r"^## §(\d+) ", method, flags=re.M))
    assert sections == {str(i) for i in range(1, 11)}
    assert {s for s, _, _, _ in rows()} == sections


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


if __name__ == "__main__":
    sys.exit(fix() if sys.argv[1:] == ["--fix"] else print(__doc__) or 2)
