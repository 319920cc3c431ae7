"""docs/FORMULAS.md, the map from the method to the code: every row names the
function that computes one formula of docs/METHOD.md and the ``file:line`` of its
definition. The tests read the code's syntax trees, so the table cannot drift:
each row must point at its function's ``def`` line, each function it names must
be defined exactly once in the project, and every section of the method must
have rows.

After code moved: ``python -m tests.scripts.fix_formulas`` rewrites the table's
line numbers (it never changes which function a row names)."""

from __future__ import annotations

import re
from collections import defaultdict

from tests.formulas import ROOT, ROW, TABLE, definitions, rows

PACKAGES = ("unpack", "app", "ingest")
# every row of the table's body: it starts with a section sign
BODY = re.compile(r"^\| *§\d")


def test_the_row_pattern_reads_every_row_of_the_table():
    body = [line for line in TABLE.read_text().splitlines() if BODY.match(line)]
    unread = [line for line in body if not ROW.match(line)]
    assert body and not unread, "rows the checks cannot read (fix their shape):\n" + "\n".join(
        unread
    )


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
    assert not wrong, (
        "docs/FORMULAS.md is stale; run python -m tests.scripts.fix_formulas:\n" + "\n".join(wrong)
    )


def test_each_function_of_the_table_is_defined_once():
    counts = package_counts()
    twice = sorted({name for _, name, _, _ in rows() if counts[name] != 1})
    assert not twice, f"defined more than once (or not at all) in {PACKAGES}: {twice}"


def test_every_section_of_the_method_has_formulas_in_the_table():
    method = (ROOT / "docs" / "METHOD.md").read_text()
    sections = set(re.findall(r"^## §(\d+) ", method, flags=re.M))
    assert sections == {str(i) for i in range(1, 11)}
    assert {s for s, _, _, _ in rows()} == sections
