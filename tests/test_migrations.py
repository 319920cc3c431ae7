"""The store's schema: Alembic migrations on real DuckDB files."""

from __future__ import annotations

import importlib

import duckdb
import pytest
import sqlalchemy as sa

import migrations
from ingest import schema, store
from unpack.errors import InputError

HEAD = "0005"
# The revision below the head (0005 revises it): read from the migration itself,
# so the chain can be extended under it.
BELOW_HEAD = importlib.import_module("migrations.versions.0005_run_method").down_revision
BELOW_FACTS = importlib.import_module("migrations.versions.0004_model_facts").down_revision

TYPES = {
    sa.Integer: "INTEGER",
    sa.BigInteger: "BIGINT",
    sa.String: "VARCHAR",
    sa.Double: "DOUBLE",
    sa.Boolean: "BOOLEAN",
    sa.DateTime: "TIMESTAMP",
}


def objects(path) -> dict[str, str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.sql(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'main'"
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def revision(path) -> str | None:
    engine = sa.create_engine(f"duckdb:///{path}")
    try:
        with engine.connect() as conn:
            return migrations.current_revision(conn)
    finally:
        engine.dispose()


def migrate(path, fn, rev):
    engine = sa.create_engine(f"duckdb:///{path}")
    try:
        with engine.begin() as conn:
            fn(conn, rev)
    finally:
        engine.dispose()


def test_upgrade_from_empty_creates_every_table_and_view(tmp_path):
    db = tmp_path / "s.duckdb"
    store.connect(db).dispose()
    got = objects(db)
    tables = {t for t, kind in got.items() if kind == "BASE TABLE"}
    views = {t for t, kind in got.items() if kind == "VIEW"}
    assert tables == set(schema.metadata.tables) | {"alembic_version"}
    assert views == set(schema.VIEWS)
    assert revision(db) == migrations.head_revision() == HEAD


def test_migrated_schema_matches_ingest_schema(tmp_path):
    """ingest/schema.py mirrors the head revision: names, types, NULL-ability, keys."""
    db = tmp_path / "s.duckdb"
    store.connect(db).dispose()
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in schema.metadata.sorted_tables:
            cols = con.sql(
                "SELECT column_name, data_type, is_nullable FROM "
                "information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                params=[table.name],
            ).fetchall()
            want = [
                (c.name, TYPES[type(c.type)], "NO" if not c.nullable else "YES")
                for c in table.columns
            ]
            assert cols == want, table.name
            pk = con.sql(
                "SELECT constraint_column_names FROM duckdb_constraints() WHERE "
                "table_name = ? AND constraint_type = 'PRIMARY KEY'",
                params=[table.name],
            ).fetchall()
            assert [list(r[0]) for r in pk] == (
                [[c.name for c in table.primary_key]] if table.primary_key.columns else []
            )
            uniques = {
                tuple(r[0])
                for r in con.sql(
                    "SELECT constraint_column_names FROM duckdb_constraints() WHERE table_name = ? "
                    "AND constraint_type = 'UNIQUE'",
                    params=[table.name],
                ).fetchall()
            }
            want_u = {
                tuple(c.name for c in u.columns)
                for u in table.constraints
                if isinstance(u, sa.UniqueConstraint)
            }
            want_u |= {(c.name,) for c in table.columns if c.unique}
            assert uniques == want_u, table.name
        indexes = {r[0] for r in con.sql("SELECT index_name FROM duckdb_indexes()").fetchall()}
        assert {ix.name for t in schema.metadata.tables.values() for ix in t.indexes} <= indexes
    finally:
        con.close()


def test_views_run_on_an_empty_store(tmp_path):
    db = tmp_path / "s.duckdb"
    store.connect(db).dispose()
    con = duckdb.connect(str(db), read_only=True)
    try:
        for view in schema.VIEWS:
            assert con.sql(f"SELECT * FROM {view}").fetchall() == []
    finally:
        con.close()


def test_downgrade_upgrade_round_trip_keeps_data(tmp_path):
    db = tmp_path / "s.duckdb"
    store.connect(db).dispose()
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO models (model_id, name) VALUES (1, 'm')")
    con.close()

    migrate(db, migrations.downgrade, "0002")  # the model facts and the circuit tables
    assert revision(db) == "0002"
    assert set(objects(db)) == (
        set(schema.metadata.tables) - set(schema.CIRCUIT_TABLES)
        | set(schema.VIEWS)
        | {"alembic_version"}
    )
    migrate(db, migrations.downgrade, "0001")  # views only
    assert revision(db) == "0001"
    assert set(objects(db)) == (
        set(schema.metadata.tables) - set(schema.CIRCUIT_TABLES) | {"alembic_version"}
    )
    migrate(db, migrations.upgrade, "head")
    assert set(schema.VIEWS) <= set(objects(db))
    con = duckdb.connect(str(db), read_only=True)
    assert con.sql("SELECT name FROM models").fetchall() == [("m",)]
    con.close()

    migrate(db, migrations.downgrade, "base")
    assert revision(db) is None
    assert set(objects(db)) <= {"alembic_version"}
    store.connect(db).dispose()  # upgrade on open, again from empty
    assert revision(db) == HEAD
    assert set(objects(db)) == set(schema.metadata.tables) | set(schema.VIEWS) | {"alembic_version"}


def test_model_facts_migration_adds_and_drops_its_columns_keeping_rows(tmp_path):
    """0004: size and step columns on ``models``; down and up again keeps the rows."""
    db = tmp_path / "s.duckdb"
    store.connect(db).dispose()
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO models (model_id, name, n_params, step, revision, family, "
        "parallel_residual, n_kv_heads, d_head) VALUES (1, 'm', 123, 400, 'step400', "
        "'gpt2', false, 2, 32)"
    )
    con.close()

    def columns():
        c = duckdb.connect(str(db), read_only=True)
        try:
            return [
                r[0]
                for r in c.sql(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'models' ORDER BY ordinal_position"
                ).fetchall()
            ]
        finally:
            c.close()

    added = ["n_kv_heads", "d_head", "family", "parallel_residual", "revision", "step"]
    assert columns()[-6:] == added
    migrate(db, migrations.downgrade, BELOW_FACTS)
    assert not set(added) & set(columns()) and "n_params" in columns()
    migrate(db, migrations.upgrade, "head")
    con = duckdb.connect(str(db), read_only=True)
    assert con.sql("SELECT name, n_params, step, family FROM models").fetchall() == [
        ("m", 123, None, None)
    ]
    con.close()


def test_failed_migration_leaves_no_half_schema(tmp_path, monkeypatch):
    """DDL runs in one transaction: a migration that breaks half-way changes nothing."""
    db = tmp_path / "s.duckdb"
    engine = sa.create_engine(f"duckdb:///{db}")
    with engine.begin() as conn:
        migrations.upgrade(conn, "0001")
    engine.dispose()
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE credit_by_role (x INTEGER)")  # a name the next revision needs
    con.close()
    with pytest.raises(Exception):
        store.connect(db)
    assert revision(db) == "0001"
    assert "trace_info" not in objects(db)


def test_read_only_open_checks_the_revision(tmp_path):
    db = tmp_path / "s.duckdb"
    with pytest.raises(InputError, match="does not exist"):
        store.connect(db, read_only=True)
    engine = sa.create_engine(f"duckdb:///{db}")
    with engine.begin() as conn:
        migrations.upgrade(conn, "0001")
    engine.dispose()
    with pytest.raises(InputError, match="unpack ingest"):
        store.connect(db, read_only=True)
    store.connect(db).dispose()
    store.connect(db, read_only=True).dispose()


def test_cli_module_runs_alembic_commands(tmp_path, capsys):
    from migrations.__main__ import main

    db = tmp_path / "s.duckdb"
    assert main(["--db", str(db), "upgrade"]) == 0
    assert revision(db) == HEAD
    assert main(["--db", str(db), "downgrade"]) == 0
    assert revision(db) == BELOW_HEAD


def test_a_database_held_by_another_process_is_a_clear_error(tmp_path, monkeypatch):
    import subprocess
    import sys

    # a store waits for a short hold (an app's query, an ingest's commit); past the
    # wait, a file held open all along is this clear error
    monkeypatch.setenv("UNPACK_LOCK_WAIT", "1")
    db = tmp_path / "s.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; "
            f"c = duckdb.connect({str(db)!r}); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(InputError, match="open in another process"):
            store.connect(db)
    finally:
        holder.kill()
        holder.wait()
    store.connect(db).dispose()  # free again


def test_run_method_migration_marks_old_runs_unpack(tmp_path):
    """0005: a store made before it keeps its runs, and they read as Unpack runs;
    down and up again keeps the rows."""
    db = tmp_path / "s.duckdb"
    migrate(db, migrations.upgrade, BELOW_HEAD)
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO runs (run_id, model_id, preset, config, config_hash, status) "
        "VALUES (1, 1, 'kqv_aligned', '{}', 'h', 'done')"
    )
    con.close()
    store.connect(db).dispose()  # upgrade on open
    con = duckdb.connect(str(db))
    assert con.sql("SELECT run_id, method, method_params FROM runs").fetchall() == [
        (1, "unpack", None)
    ]
    con.execute(
        "INSERT INTO runs (run_id, model_id, preset, config, config_hash, status, method, "
        "method_params) VALUES (2, 1, 'eap_ig', '{}', 'g', 'done', 'eap_ig', '{\"steps\": 4}')"
    )
    con.close()
    migrate(db, migrations.downgrade, BELOW_HEAD)
    migrate(db, migrations.upgrade, "head")
    con = duckdb.connect(str(db), read_only=True)
    assert con.sql("SELECT run_id, method FROM runs ORDER BY run_id").fetchall() == [
        (1, "unpack"),
        (2, "unpack"),
    ]  # the method went with the downgrade: unpack again
    con.close()
