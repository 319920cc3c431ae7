"""Fault injection on real ingests (subprocesses of ``unpack ingest`` on a tiny
GPT-2 and real DuckDB files): SIGKILL at several points (migration included),
SIGINT, two writers, a full disk and a read-only file system (a small tmpfs,
when the tests run as root), damaged and foreign files, a newer schema. Each
case ends with the clean run's rows, or with the previous rows untouched and a
clear message with exit status 2."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from tests.helpers import start_until
from tests.ingest_checks import DUPLICATE_CHECKS, per_prompt_rows, sql, table_counts

REPO = Path(__file__).resolve().parents[1]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def ingest_args(model_dir, db, n=3):
    return [
        "ingest",
        "--model",
        str(model_dir),
        "--task",
        "ioi",
        "--n",
        str(n),
        "--controls",
        "--roots",
        "1.*@END",
        "--db",
        str(db),
        "--batch-size",
        "1",
        "--no-progress",
    ]


def run_ingest(model_dir, db, n=3, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "unpack.cli", *ingest_args(model_dir, db, n)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def digest(path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def clean(model_dir, tmp_path_factory):
    """The uninterrupted ingest every faulty one must end up equal to."""
    db = tmp_path_factory.mktemp("clean") / "clean.duckdb"
    p = run_ingest(model_dir, db)
    assert p.returncode == 0, p.stderr[-2000:]
    return db


def assert_same_rows(db, clean_db):
    assert sql(db, "SELECT count(*), count(DISTINCT prompt_key) FROM prompts") == [(12, 12)]
    for table, key in DUPLICATE_CHECKS.items():
        assert sql(
            db, f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
        ) == [(0,)], table
    assert per_prompt_rows(db) == per_prompt_rows(clean_db)
    assert table_counts(db) == table_counts(clean_db)
    assert sql(db, "SELECT status FROM runs") == [("done",)]


def assert_whole_prompts(db):
    """Every stored prompt has all of its rows (tokens, three traces, their credits)."""
    for key, (status, roles, toks, traces, credits, *_rest) in per_prompt_rows(db).items():
        assert status == "ok" and roles == 4 and traces == 3 and toks > 0, key
        assert credits == 3 * toks, key


# ------------------------------------------------------------------ SIGKILL at several points

# A wrapper that runs the real CLI and SIGKILLs itself at the n-th call of one
# function: inside the migration (a DDL statement), at the first bulk insert,
# at the start of a later batch, and while the run is being marked done.
_KILL_AT = r"""
import os, signal, sys
# Ctrl-C as the console script has it (unpack.cli.run installs its own handler): a
# SIGINT that the test session's process came to ignore is inherited across exec
signal.signal(signal.SIGINT, signal.default_int_handler)
target, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def wrap(owner, name):
    real = getattr(owner, name)
    def dying(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    setattr(owner, name, dying)
if target == "migration":
    from alembic.ddl.impl import DefaultImpl
    wrap(DefaultImpl, "_exec")
elif target == "insert":
    import ingest.store as m
    wrap(m, "insert_arrow")
elif target == "batch":
    import ingest.run as m
    wrap(m, "trace_items")
elif target == "finish":
    import ingest.run as m
    wrap(m, "run_counts")
elif target == "slow":  # a slower model: 0.4 s more per batch, nobody killed
    import time
    import ingest.run as m
    real = m.trace_items
    def slow(*a, **k):
        time.sleep(0.4)
        return real(*a, **k)
    m.trace_items = slow
from unpack.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize(
    "target, n", [("migration", 14), ("insert", 1), ("batch", 6), ("finish", 1)]
)
def test_sigkill_then_rerun_gives_the_clean_rows(target, n, model_dir, clean, tmp_path):
    db = tmp_path / "u.duckdb"
    p = subprocess.run(
        [sys.executable, "-c", _KILL_AT, target, str(n), *ingest_args(model_dir, db)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == -signal.SIGKILL, f"{target}: not killed\n{p.stderr[-2000:]}"
    if target == "migration":  # the schema is one transaction: nothing of it is left
        assert not db.exists() or sql(
            db, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'prompts'"
        ) == [(0,)]
    elif target == "batch":  # five batches were committed, each a whole prompt
        assert sql(db, "SELECT count(*) FROM prompts") == [(5,)]
        assert_whole_prompts(db)
    done = run_ingest(model_dir, db)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_rows(db, clean)


# ------------------------------------------------------------------ SIGINT and two writers


def _start_slow_until_progress(model_dir, db, timeout=180):
    """Start a slowed-down ingest (0.4 s a batch) with its progress bar; return
    once it shows two stored prompts."""
    cmd = [sys.executable, "-c", _KILL_AT, "slow", "0", *ingest_args(model_dir, db)[:-1]]
    proc, log, _ = start_until(cmd, rb"\| *([2-9]|1[01])/12 \[", env(), timeout)
    return proc, log


def test_sigint_keeps_whole_batches_and_a_rerun_finishes(model_dir, clean, tmp_path):
    db = tmp_path / "u.duckdb"
    proc, log = _start_slow_until_progress(model_dir, db)
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    time.sleep(0.2)
    err = b"".join(log).decode(errors="replace")
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    n = sql(db, "SELECT count(*) FROM prompts")[0][0]
    assert 2 <= n < 12
    assert_whole_prompts(db)
    done = run_ingest(model_dir, db)
    assert done.returncode == 0 and f"{n} already stored" in done.stdout, done.stderr[-2000:]
    assert_same_rows(db, clean)


def test_sigint_during_start_up_is_a_message_not_a_traceback(model_dir, tmp_path):
    db = tmp_path / "u.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unpack.cli", *ingest_args(model_dir, db)],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.6)  # importing torch / loading the model
    assert proc.poll() is None, "the ingest ended before the signal"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not db.exists() or sql(db, "SELECT count(*) FROM prompts") == [(0,)]


def test_a_second_writer_is_refused_and_the_first_finishes(model_dir, clean, tmp_path):
    db = tmp_path / "u.duckdb"
    first, log = _start_slow_until_progress(model_dir, db)
    # stopped while the second starts (seconds of imports on a busy machine), so the
    # first surely still runs and holds the file when the second asks for it
    first.send_signal(signal.SIGSTOP)
    try:
        second = run_ingest(model_dir, db)
    finally:
        first.send_signal(signal.SIGCONT)
        first.wait(300)
    assert second.returncode == 2, second.stderr[-2000:]
    assert "open in another process" in second.stderr and str(db) in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, b"".join(log).decode(errors="replace")[-2000:]
    assert_same_rows(db, clean)


def test_one_writer_per_file_whatever_its_name(model_dir, clean, tmp_path):
    """A hard link and a symlink name the same file: a second ingest through either
    is refused at once while the first runs (stopped meanwhile, so it surely still
    runs), and the first stores every prompt. No lock file is left behind."""
    from ingest.store import lock_dir

    db = tmp_path / "u.duckdb"
    first, log = _start_slow_until_progress(model_dir, db)
    first.send_signal(signal.SIGSTOP)
    try:
        os.link(db, tmp_path / "hard.duckdb")
        os.symlink(db, tmp_path / "soft.duckdb")
        with ThreadPoolExecutor(2) as pool:  # both at once
            seconds = list(
                pool.map(
                    lambda name: run_ingest(model_dir, tmp_path / name),
                    ("hard.duckdb", "soft.duckdb"),
                )
            )
    finally:
        first.send_signal(signal.SIGCONT)
        first.wait(300)
    for second, name in zip(seconds, ("hard.duckdb", "soft.duckdb")):
        assert second.returncode == 2, (name, second.stdout + second.stderr[-2000:])
        assert "open in another process" in second.stderr and name in second.stderr
        assert "Traceback" not in second.stderr
    assert first.returncode == 0, b"".join(log).decode(errors="replace")[-2000:]
    assert not Path(f"{db}.wal").exists()  # nothing left in a log under either name
    assert_same_rows(db, clean)
    assert_same_rows(tmp_path / "hard.duckdb", clean)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["hard.duckdb", "soft.duckdb", "u.duckdb"]
    st = db.stat()
    assert not (Path(lock_dir()) / ("%x-%d.ingest.lock" % (st.st_dev, st.st_ino))).exists()


# ------------------------------------------------------------------ full disk, read-only


@pytest.fixture
def tmpfs(tmp_path):
    """A 300 KiB tmpfs mounted for the test (root only: skipped loudly otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip(
            "SKIPPED LOUDLY: the full-disk and read-only tests mount a tmpfs and need "
            "root; run the suite as root to cover them"
        )
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        pytest.skip(
            f"SKIPPED LOUDLY: cannot mount a tmpfs here ({p.stderr.strip()}); the "
            "full-disk and read-only tests did not run"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_keeps_the_stored_prompts_then_read_only_then_rerun(model_dir, clean, tmpfs):
    db = tmpfs / "u.duckdb"
    p = run_ingest(model_dir, db)
    assert p.returncode == 2, p.stdout + p.stderr[-2000:]
    assert "disk is full" in p.stderr and "free some space" in p.stderr and str(db) in p.stderr
    assert "Traceback" not in p.stderr
    n = sql(db, "SELECT count(*) FROM prompts")[0][0]
    assert 0 < n < 12, n  # stopped mid-way, the batches before it are whole
    assert_whole_prompts(db)

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    before = digest(db)
    p = run_ingest(model_dir, db)
    assert p.returncode == 2 and "read-only file system" in p.stderr and "--db" in p.stderr, (
        p.stderr
    )
    assert digest(db) == before

    subprocess.run(["mount", "-o", "remount,rw,size=64m", str(tmpfs)], check=True)
    done = run_ingest(model_dir, db)
    assert done.returncode == 0 and f"{n} already stored" in done.stdout, done.stderr[-2000:]
    assert_same_rows(db, clean)


# ------------------------------------------------------------------ damaged and foreign files


def _damage(kind: str, src: Path, dst: Path) -> None:
    data = src.read_bytes()
    if kind == "zero-byte":
        dst.write_bytes(b"")
    elif kind == "text":
        dst.write_text("model,prompt\nsmollm2,hello\n")
    elif kind == "sqlite":
        import sqlite3

        con = sqlite3.connect(dst)
        con.execute("CREATE TABLE prompts (x)")
        con.commit()
        con.close()
    elif kind == "truncated":
        dst.write_bytes(data[: len(data) // 2])  # half the blocks are gone
    elif kind == "corrupt":  # overwrite bytes inside the block that holds the prompts
        con = duckdb.connect(str(src), read_only=True)
        block = con.execute(
            "SELECT max(block_id) FROM pragma_storage_info('prompts') "
            "WHERE column_name = 'prompt_key' AND persistent"
        ).fetchone()[0]
        size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        con.close()
        b = bytearray(data)
        at = 3 * 4096 + block * size + 64
        b[at : at + 512] = b"\x55" * 512
        dst.write_bytes(bytes(b))
    elif kind == "newer-schema":
        shutil.copy(src, dst)
        con = duckdb.connect(str(dst))
        con.execute("UPDATE alembic_version SET version_num = '0099'")
        con.close()


DAMAGE = {  # kind -> what the message must say
    "zero-byte": ("empty file (0 bytes)", "restore it"),
    "text": ("not a DuckDB database", "holds text"),
    "sqlite": ("not a DuckDB database", "an SQLite database"),
    "truncated": ("is truncated", "restore it from a backup"),
    "corrupt": ("is corrupt", "restore it from a backup"),
    "newer-schema": ("newer than this code", "upgrade the code"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_or_foreign_store_is_a_clear_error_and_left_untouched(
    kind, model_dir, clean, tmp_path, capsys
):
    db = tmp_path / f"{kind}.duckdb"
    _damage(kind, clean, db)
    before = digest(db)
    p = run_ingest(model_dir, db)
    assert p.returncode == 2, p.stdout + p.stderr[-2000:]
    assert "Traceback" not in p.stderr and str(db) in p.stderr
    for part in DAMAGE[kind]:
        assert part in p.stderr, p.stderr
    assert digest(db) == before and not Path(f"{db}.wal").exists()

    from unpack.cli import main  # the app's start-up check says the same

    if kind != "corrupt":  # a bad block is found when read: see the app test below
        assert main(["app", "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert all(part in err for part in DAMAGE[kind]), err
    assert digest(db) == before


def test_app_pages_on_a_corrupt_store_show_the_problem(monkeypatch, clean, tmp_path):
    from streamlit.testing.v1 import AppTest

    db = tmp_path / "corrupt.duckdb"
    _damage("corrupt", clean, db)
    monkeypatch.setenv("UNPACK_DB", str(db))
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(
        "is corrupt" in e.value and "restore it from a backup" in e.value for e in at.error
    ), [e.value for e in at.error]


def test_an_old_schema_names_the_command_that_upgrades_it(clean, tmp_path, capsys):
    import sqlalchemy as sa

    import migrations
    from migrations.__main__ import main as migrations_main
    from unpack.cli import main

    db = tmp_path / "old.duckdb"
    engine = sa.create_engine(f"duckdb:///{db}")
    with engine.begin() as conn:
        migrations.upgrade(conn, "0001")
    engine.dispose()
    assert main(["app", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"python -m migrations --db {db} upgrade" in err
    assert migrations_main(["--db", str(db), "upgrade"]) == 0  # the advice works
    newer = tmp_path / "newer.duckdb"
    _damage("newer-schema", clean, newer)
    assert migrations_main(["--db", str(newer), "upgrade"]) == 2
    assert "upgrade the code" in capsys.readouterr().err
