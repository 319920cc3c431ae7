"""The layers (docs/API.md, "Layers"): ``unpack`` (the method) < ``migrations``
(the schema history) < ``ingest`` (the store and everything that writes or runs
a model for it) < ``app`` (the read side). An import goes down or sideways, never
up, and no two modules import each other, directly or around a circle. The
commands on top (:data:`ENTRY_POINTS`) may reach every layer; nothing imports them.

The graph is read from the source with ``ast``: imports at module level and
inside functions, relative ones resolved, ``importlib.import_module("...")``
with a literal name included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"unpack": 0, "migrations": 1, "ingest": 2, "app": 3}

# The commands above every layer: the console script's table of subcommand
# modules (each registers its subcommands, importing its own layer lazily), and
# ``python -m migrations``, which checks the file through the store before Alembic.
ENTRY_POINTS = {"unpack.cli", "migrations.__main__"}

# Circles known and not yet taken apart (each a set of modules); any other fails.
KNOWN_CIRCLES: list = []

# What the app may not import: the model loaders and the tracer (it never loads a
# model; a trace on demand goes through unpack.on_demand, which stores nothing)
# and every writing module of ingest (it may use only the store's reading side).
APP_FORBIDDEN = (
    "unpack.loading",
    "unpack.tracer",
    "unpack.capture",
    "unpack.intervene",
    "unpack.models",
)
APP_MAY_USE_FROM_INGEST = {"ingest", "ingest.store", "ingest.queries"}
STORE_WRITERS = {"connect", "transaction", "writer_lock", "insert_arrow", "next_id"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` is, or lies in (None: not the project's)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(mod: str) -> list[tuple[str, str, int]]:
    """``(module, imported name or '', line)`` for every import in ``mod``."""
    path = MODULES[mod]
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(
                    (sub, "", node.lineno) if sub in MODULES else (base, a.name, node.lineno)
                )
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            out.append((node.args[0].value, "", node.lineno))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):  # a table of
            names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]  # modules
            if names and all(isinstance(n, str) and n in MODULES for n in names):
                out += [(n, "", node.lineno) for n in names]
    return [(t, name, line) for m, name, line in out if (t := _resolve(m)) and t != mod]


GRAPH = {m: imports(m) for m in MODULES}


def _circles() -> list[set]:
    """Strongly connected parts of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while not part or v not in part:
                part.add(stack.pop())
            on.difference_update(part)
            if len(part) > 1:
                found.append(part)

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_import_unpack_loads_no_store_app_or_ingest():
    code = (
        "import sys, unpack\nfrom unpack import Tracer\n"
        "print(' '.join(m for m in ('duckdb', 'streamlit', 'ingest', 'app', 'sqlalchemy') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"`import unpack` loaded {out.stdout.strip()}"


def test_no_import_circle():
    new = [sorted(c) for c in _circles() if c not in KNOWN_CIRCLES]
    assert not new, f"modules that import each other (directly or around a circle): {new}"


def test_imports_go_down_the_layers():
    up = [
        f"{m}:{line} imports {t}"
        for m, out in GRAPH.items()
        if m not in ENTRY_POINTS
        for t, _, line in out
        if LAYERS[t.split(".")[0]] > LAYERS[m.split(".")[0]]
    ]
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(up)
    into = [
        f"{m}:{line} imports {t}"
        for m, out in GRAPH.items()
        for t, _, line in out
        if t in ENTRY_POINTS
    ]
    assert not into, "modules that import a command entry point:\n" + "\n".join(into)


def test_app_loads_no_model_and_writes_nothing():
    bad = []
    for m, out in GRAPH.items():
        if not m.startswith("app"):
            continue
        for t, name, line in out:
            if t in APP_FORBIDDEN or (t == "unpack" and name in ("Tracer", "TraceResult")):
                bad.append(f"{m}:{line} imports {t}{'.' + name if name else ''} (model side)")
            elif t.startswith("ingest") and t not in APP_MAY_USE_FROM_INGEST:
                bad.append(f"{m}:{line} imports {t} (a writing module of ingest)")
            elif t == "ingest.store" and name in STORE_WRITERS:
                bad.append(f"{m}:{line} imports ingest.store.{name} (a write path)")
    assert not bad, "the app reaches the model or a write path:\n" + "\n".join(bad)


def test_app_opens_the_store_read_only():
    """Every ``connect(...)`` under app/ says ``read_only=True``."""
    bad = []
    for m, path in MODULES.items():
        if not m.startswith("app"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "connect"
            ):
                ro = [k for k in node.keywords if k.arg == "read_only"]
                if not (ro and isinstance(ro[0].value, ast.Constant) and ro[0].value.value is True):
                    bad.append(f"{m}:{node.lineno}")
    assert not bad, f"connections opened without read_only=True under app/: {bad}"


def test_the_graph_sees_imports():
    """The checks above see what they check: the app's database module reaches the
    store, the tracer imports decompose, the dispatcher names its subcommand modules."""
    assert "ingest.store" in {t for t, _, _ in GRAPH["app.db"]}
    assert "unpack.decompose" in {t for t, _, _ in GRAPH["unpack.tracer"]}
    assert {"unpack.commands"} <= {t for t, _, _ in GRAPH["unpack.cli"]}
