"""Opening a DuckDB store and writing to it.

``connect(path)`` creates the file if needed and upgrades it to the newest
schema (Alembic, ``migrations/``). Small statements go through SQLAlchemy
Core; bulk rows go in as Arrow tables with one ``INSERT ... SELECT`` per
table, on the same connection and inside the caller's transaction.
"""
from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from unpack.errors import InputError

DEFAULT_DB = "unpack.duckdb"


def connect(path=DEFAULT_DB, read_only: bool = False) -> sa.Engine:
    """An engine on the DuckDB file ``path``; unless read-only, the schema is
    upgraded to head first. One writing process per file (DuckDB locks it)."""
    import migrations

    path = Path(path)
    if read_only and not path.exists():
        raise InputError(f"database {str(path)!r} does not exist; create it with `unpack ingest`")
    if not path.parent.exists():
        raise InputError(f"database {str(path)!r}: folder {str(path.parent)!r} does not exist; "
                         "create it or pick another --db")
    engine = sa.create_engine(f"duckdb:///{path}", connect_args={"read_only": read_only})
    try:
        with engine.begin() as conn:
            if read_only:
                rev, head = migrations.current_revision(conn), migrations.head_revision()
                if rev != head:
                    raise InputError(f"database {str(path)!r} has schema {rev}, this code needs "
                                     f"{head}; open it once for writing (`unpack ingest`) to upgrade")
            else:
                migrations.upgrade(conn)
    except Exception as e:
        engine.dispose()
        if isinstance(e, sa.exc.OperationalError) and "lock" in str(e).lower():
            raise InputError(f"database {str(path)!r} is open in another process (DuckDB allows "
                             "one writer); wait for it to finish or use another --db") from None
        raise
    return engine


def insert_arrow(conn: sa.Connection, table: str, data) -> int:
    """Insert an Arrow table (or DataFrame) into ``table`` by column name, in one
    statement. Returns the number of rows."""
    n = data.num_rows if hasattr(data, "num_rows") else len(data)
    if n == 0:
        return 0
    raw = conn.connection.driver_connection
    cols = ", ".join(f'"{c}"' for c in (data.column_names if hasattr(data, "column_names")
                                         else data.columns))
    view = f"_incoming_{table}"
    raw.complete()  # DuckDB >= 2: finish the last statement's result before new work
    raw.register(view, data)
    try:
        raw.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")
        raw.complete()
    finally:
        raw.unregister(view)
    return n


def next_id(conn: sa.Connection, column: sa.Column) -> int:
    """One more than the largest id in use (ids are given out by the single writer)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(column), 0))).scalar()) + 1


def file_bytes(path) -> int:
    """Size of the database file plus its write-ahead log."""
    return sum(os.path.getsize(p) for p in (str(path), f"{path}.wal") if os.path.exists(p))
