"""Read-only access to a store: the one way the app, graphs and reports open it.

The connection is read-only and DuckDB's external access is off, so nothing that
runs through it (the app's SQL box included) can write, attach another file,
install extensions or read the file system.
"""
from __future__ import annotations

import re
from pathlib import Path

import duckdb

from unpack.errors import InputError

SAFE_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def open_db(path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the store at ``path`` with external access off,
    its settings locked, and its schema checked against this code."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"database {str(p)!r} does not exist; create it with "
                         "`unpack demo` or `unpack ingest --model M --task ioi --db PATH`")
    try:
        con = duckdb.connect(str(p), read_only=True, config=dict(SAFE_CONFIG))
    except duckdb.Error as e:
        raise InputError(f"cannot open database {str(p)!r} read-only: {str(e).splitlines()[0]}") from None
    con.execute("SET lock_configuration = true")
    check_schema(con, p)
    return con


def check_schema(con, path) -> None:
    import migrations
    head = migrations.head_revision()
    try:
        rev = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except duckdb.Error:
        rev = None
    rev = rev[0] if rev else None
    if rev != head:
        raise InputError(f"database {str(path)!r} has schema {rev}, this code needs {head}; "
                         "open it once with `unpack ingest` to upgrade it")


_LEADING = re.compile(r"^\s*(--[^\n]*\n\s*|/\*.*?\*/\s*)*", re.S)
_ALLOWED = ("select", "with", "from", "values", "table", "describe", "show", "summarize", "explain",
            "pivot", "unpivot")


def check_readonly_sql(sql: str) -> str:
    """Refuse anything but a single read query, with a message that says why.

    The database enforces this too (read-only, no external access, locked
    settings); this check gives the clear message first."""
    body = _LEADING.sub("", sql or "").strip().rstrip(";").strip()
    if not body:
        raise InputError("the query is empty: write a SELECT")
    if ";" in body:
        raise InputError("one statement at a time: remove the ';' between statements")
    first = body.split(None, 1)[0].lower()
    if first not in _ALLOWED:
        raise InputError(f"{first.upper()} is not allowed here: this SQL box is read-only "
                         "(SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN only)")
    return body


def run_query(con, sql: str, limit: int | None = 10_000):
    """A read query's result as a DataFrame (at most ``limit`` rows)."""
    body = check_readonly_sql(sql)
    try:
        rel = con.sql(body)
        if rel is None:
            raise InputError("the statement returned no rows")
        if limit is not None:
            rel = rel.limit(limit)
        return rel.df()
    except duckdb.Error as e:
        msg = str(e).splitlines()[0]
        if any(k in msg.lower() for k in ("read-only", "read only", "external access", "permission",
                                          "lock_configuration", "locked")):
            raise InputError(f"refused: {msg} (this connection is read-only and cannot reach files)") from None
        raise InputError(f"query failed: {msg}") from None


import threading  # noqa: E402  (used by shared_db only)

_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared_db(path) -> duckdb.DuckDBPyConnection:
    """One :func:`open_db` connection per database file for the whole process.

    DuckDB refuses a second ``open_db`` of a file this process already has open
    (its settings are locked), so the app's pages and sessions share this one;
    run each query on its own ``con.cursor()`` (cursors keep temp tables private
    and may run in parallel threads)."""
    key = str(Path(path).resolve())
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = open_db(key)
        return _SHARED[key]
