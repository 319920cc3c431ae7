"""``python -m migrations --db PATH COMMAND``: Alembic commands on a store.

New revisions are written by hand (``revision -m``): SQLAlchemy's reflection
does not work through duckdb_engine, so autogenerate is not available; keep
``ingest/schema.py`` in step (tests/test_migrations.py checks it)."""

from __future__ import annotations

import argparse
import sys

from . import alembic_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m migrations", description="Alembic commands on an unpack DuckDB store."
    )
    p.add_argument("--db", default="unpack.duckdb", help="DuckDB file (default: %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("upgrade").add_argument("revision", nargs="?", default="head")
    sub.add_parser("downgrade").add_argument("revision", nargs="?", default="-1")
    sub.add_parser("current")
    sub.add_parser("history")
    r = sub.add_parser("revision")
    r.add_argument("-m", "--message", required=True)
    a = p.parse_args(argv)

    cfg = alembic_config(url=f"duckdb:///{a.db}")
    if a.cmd not in ("upgrade", "downgrade", "current"):
        return _command(a, cfg)
    from ingest.store import check_store, raise_mapped
    from unpack.errors import InputError

    try:
        check_store(a.db)  # a newer schema, a foreign or damaged file: say so, exit 2
        try:
            return _command(a, cfg)
        except Exception as e:  # the file failed under Alembic (locked, full disk, ...)
            raise_mapped(a.db, e)
    except InputError as e:
        print(f"python -m migrations: error: {e}", file=sys.stderr)
        return 2


def _command(a, cfg) -> int:
    from alembic import command

    if a.cmd == "upgrade":
        command.upgrade(cfg, a.revision)
    elif a.cmd == "downgrade":
        command.downgrade(cfg, a.revision)
    elif a.cmd == "current":
        command.current(cfg)
    elif a.cmd == "history":
        command.history(cfg)
    else:
        command.revision(cfg, message=a.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
