"""The store's schema history (Alembic). Configured from code, no alembic.ini:

    python -m migrations --db unpack.duckdb upgrade head
    python -m migrations --db unpack.duckdb downgrade base
    python -m migrations --db unpack.duckdb current | history
    python -m migrations revision -m "add x"     # then write it by hand

The ingest upgrades a database to head whenever it opens one."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def alembic_config(connection=None, url: str | None = None):
    """An Alembic ``Config`` for this package. With ``connection`` (a SQLAlchemy
    Connection) migrations run on it, inside the caller's transaction."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", HERE)
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def downgrade(connection, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)


def current_revision(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revision(rev: str) -> bool:
    """Whether ``rev`` is a revision of this code's history (a store written by
    newer code has one this code does not know)."""
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(rev) is not None
    except Exception:  # Alembic's ResolutionError / CommandError for an unknown id
        return False
