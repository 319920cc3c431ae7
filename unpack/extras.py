"""The optional extras of pyproject.toml: the engine installs alone, the store,
the app and Ray come with ``pip install 'unpack[app]'`` (or ``[store]``,
``[ray]``). A command whose extra is missing stops with that pip command
(an InputError, exit 2) instead of an ImportError's traceback."""

from __future__ import annotations

from importlib.util import find_spec

from .errors import InputError

_STORE = ("sqlalchemy", "duckdb", "duckdb_engine", "alembic", "pyarrow")
# each extra: the modules it installs (import names), its own extras' included
EXTRAS = {
    "store": _STORE,
    "app": _STORE + ("streamlit", "networkx", "matplotlib", "plotly"),
    "ray": _STORE + ("ray",),
}
# the commands that need an extra (the rest need only the engine); `ingest --workers`
# and `--ray` name the ray extra themselves (ingest/shard.py)
COMMANDS = {
    "ingest": "store",
    "demo": "store",
    "app": "app",
    "report": "app",
    "discover": "app",
    "verify": "app",
    "export": "app",
    "evaluate": "app",
    "toy-report": "app",
}


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # refused by an import hook, or set to None
        return False


def _error(extra: str, modules: list[str]) -> InputError:
    return InputError(
        f"this needs {', '.join(modules)}, from the optional extra [{extra}], "
        f"which is not installed: pip install 'unpack[{extra}]' (from a checkout: "
        f"pip install -e '.[{extra}]')"
    )


def require(command: str) -> None:
    """Before ``command`` runs: its extra (``COMMANDS``) all installed, or an
    InputError naming the pip command that installs it."""
    extra = COMMANDS.get(command)
    missing = [m for m in EXTRAS.get(extra, ()) if not _installed(m)]
    if missing:
        raise _error(extra, missing)


def missing_extra(e: ModuleNotFoundError) -> InputError | None:
    """The InputError for a module that a command imported on its way and that
    comes with an extra (the smallest one that has it), else None (a bug)."""
    top = (e.name or "").split(".")[0]
    extra = next((x for x in ("store", "ray", "app") if top in EXTRAS[x]), None)
    return None if extra is None else _error(extra, [top])
