"""The shape of the test suite itself, read from the syntax trees of tests/*.py:
one import root (the ``tests`` package: every module of this folder is imported
as ``tests.<name>``), no test module imported by another (shared pieces live in
conftest.py and helper modules not named ``test_*``), no ``sys.path`` edits, no
test file that doubles as a script (scripts live in tests/scripts/), and no
assertion on a wall-clock time (timings belong to ``unpack bench``)."""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCAL = {p.stem for p in HERE.glob("*.py")}  # modules of this folder: helpers, models, test_*, ...
CLOCKS = {"perf_counter", "time", "monotonic", "perf_counter_ns", "monotonic_ns", "time_ns"}


def imported(nodes) -> list[list[str]]:
    """The module names each import statement among ``nodes`` may reach (``from a import b``
    gives ``a`` and ``a.b``), one list per imported name."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                node.module
                if node.level == 0  # relative: from . import x, from .x import y
                else "tests" + (f".{node.module}" if node.module else "")
            )
            out += [[base, f"{base}.{a.name}"] for a in node.names]
    return out


def import_problems(nodes) -> list[str]:
    bad = set()
    for names in imported(nodes):
        for name in names:
            parts = name.split(".")
            module = ".".join(parts[:2]) if parts[0] == "tests" else parts[0]
            if module.split(".")[-1].startswith("test_"):
                bad.add(
                    f"imports the test module {module!r} (share pieces through conftest.py "
                    "or a helper module not named test_*)"
                )
            elif parts[0] in LOCAL:
                bad.add(f"imports {parts[0]!r} by its bare name (import it as tests.{parts[0]})")
    return sorted(bad)


def path_edits(nodes) -> list[str]:
    return [
        f"line {n.lineno}: touches sys.path"
        for n in nodes
        if isinstance(n, ast.Attribute)
        and n.attr == "path"
        and isinstance(n.value, ast.Name)
        and n.value.id == "sys"
    ]


def script_mains(nodes) -> list[str]:
    return [
        f"line {n.lineno}: runs as a script (move that part to tests/scripts/)"
        for n in nodes
        if isinstance(n, ast.If)
        and isinstance(n.test, ast.Compare)
        and "__name__" in ast.unparse(n.test)
        and "__main__" in ast.unparse(n.test)
    ]


def clock_asserts(nodes) -> list[str]:
    """Asserts that compare a clock reading, or a name assigned from one, with anything."""

    def reads_clock(node) -> bool:
        return any(
            isinstance(c, ast.Call)
            and isinstance(c.func, ast.Attribute)
            and c.func.attr in CLOCKS
            and isinstance(c.func.value, ast.Name)
            and c.func.value.id == "time"
            for c in ast.walk(node)
        )

    timed = {
        t.id
        for n in nodes
        if isinstance(n, ast.Assign) and reads_clock(n.value)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    bad = []
    for n in nodes:
        if isinstance(n, ast.Assert) and any(isinstance(c, ast.Compare) for c in ast.walk(n.test)):
            names = {x.id for x in ast.walk(n.test) if isinstance(x, ast.Name)}
            if reads_clock(n.test) or names & timed:
                bad.append(f"line {n.lineno}: asserts on a wall-clock time: {ast.unparse(n.test)}")
    return bad


def test_test_modules_import_no_test_module_and_leave_sys_path_alone():
    problems = []
    for path in sorted(HERE.glob("*.py")) + sorted((HERE / "scripts").glob("*.py")):
        nodes = list(ast.walk(ast.parse(path.read_text(), filename=str(path))))
        found = import_problems(nodes) + path_edits(nodes)
        if path.name.startswith("test_"):
            found += script_mains(nodes) + clock_asserts(nodes)
        problems += [f"{path.relative_to(HERE.parent)}: {p}" for p in found]
    assert not problems, "\n".join(problems)


def test_the_checks_see_what_they_look_for():
    """Each check flags a small sample of what it forbids (so the test above can fail)."""
    sample = list(
        ast.walk(
            ast.parse(
                "import sys\nsys.path.insert(0, 'x')\nfrom test_app import build_store\n"
                "from tests.test_ingest import sql\nfrom tests import test_graphs\n"
                "import helpers\nimport time\nt0 = time.monotonic()\n"
                "took = time.monotonic() - t0\nassert took < 15.0\n"
                "assert time.perf_counter() - t0 < 1\n"
                "if __name__ == '__main__':\n    pass\n"
            )
        )
    )
    assert len(import_problems(sample)) == 4
    assert len(path_edits(sample)) == 1
    assert len(clock_asserts(sample)) == 2
    assert len(script_mains(sample)) == 1
    fine = list(
        ast.walk(
            ast.parse("from tests.helpers import rel\nimport numpy\nassert rel(1, 1) < 1e-9\n")
        )
    )
    assert not import_problems(fine) + path_edits(fine) + clock_asserts(fine)
