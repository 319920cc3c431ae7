"""Store files in states a user can get them into: a write-ahead log that does
not belong to the file (docs/RELIABILITY.md). Each command that opens a store
says what happened and the fix, exits 2, and changes no file."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import duckdb
import pytest

from ingest import store


def _digests(*paths) -> list[str]:
    return [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]


def _leave_wal(db: Path) -> None:
    """Commit a row to ``db`` after a checkpoint and keep it in ``db.wal`` (as a
    killed ingest does)."""
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE scratch AS SELECT 1 AS x")
    con.execute("CHECKPOINT")
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    con.execute("INSERT INTO scratch VALUES (2)")
    con.close()


def _bad_wal(kind: str, tmp_path: Path) -> Path:
    """A store whose log does not match it: ``stale`` (the file replaced by its
    backup after the log was written) or ``foreign`` (another store's log)."""
    db = tmp_path / "s.duckdb"
    store.connect(db).dispose()
    other = tmp_path / ("backup.duckdb" if kind == "stale" else "other.duckdb")
    if kind == "stale":
        shutil.copy(db, other)
        _leave_wal(db)
        shutil.copy(other, db)  # the backup comes back, its log stays
    else:
        store.connect(other).dispose()
        _leave_wal(other)
        shutil.copy(f"{other}.wal", f"{db}.wal")
    assert Path(f"{db}.wal").exists()
    return db


WHAT = {"stale": "restored from a backup", "foreign": "belongs to another database file"}


@pytest.mark.parametrize("kind", list(WHAT))
def test_a_wal_that_does_not_match_the_file_is_exit_2_with_the_fix(kind, tmp_path, capsys):
    from app.db import open_db
    from migrations.__main__ import main as migrations_main
    from unpack.cli import main

    db = _bad_wal(kind, tmp_path)
    wal = f"{db}.wal"
    before = _digests(db, wal)
    commands = {
        "ingest": lambda: main(
            [
                "ingest",
                "--model",
                "smollm2-135m",
                "--task",
                "ioi",
                "--n",
                "1",
                "--db",
                str(db),
                "--no-progress",
            ]
        ),
        "migrations": lambda: migrations_main(["--db", str(db), "current"]),
        "app": lambda: main(["app", "--db", str(db)]),
        "export": lambda: main(
            [
                "export",
                "--db",
                str(db),
                "--prompt",
                "1",
                "--format",
                "html",
                "--out",
                str(tmp_path / "x.html"),
            ]
        ),
    }
    for name, run in commands.items():
        assert run() == 2, name
        err = capsys.readouterr().err
        assert "write-ahead log" in err and WHAT[kind] in err, (name, err)
        assert f"mv {wal} {wal}.stale" in err and "Nothing was changed" in err, (name, err)
        assert _digests(db, wal) == before, name  # nothing written, nothing deleted
        assert not list(tmp_path.glob("*.lock")), name  # the refused ingest left no lock file
    os.rename(wal, f"{wal}.stale")  # the fix the message gives works
    store.check_store(db)
    open_db(db).close()
