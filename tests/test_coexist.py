"""Browse while ingesting: a real ``unpack app`` process and a real ``unpack
ingest`` process on the same DuckDB file at the same time. The ingest holds the
file only while it commits a batch, the app reads through short-lived
read-only connections; neither fails, and a refresh shows the new prompts."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from tests.browser import (
    chromium_page,
    no_exception,
    open_page,
    require_browser,
    running_app,
    unpack_command,
)
from tests.ingest_checks import ingest_env
from tests.models import build_model_dir


def prompts_shown(page, url: str) -> int:
    """Load the Overview page afresh and read its "prompts" metric."""
    open_page(page, url + "/", "h1:has-text('Overview')")
    no_exception(page)
    alerts = page.locator('[data-testid="stAlert"]')
    errors = [
        alerts.nth(i).inner_text()
        for i in range(alerts.count())
        if "Cannot" in alerts.nth(i).inner_text()
    ]
    assert not errors, errors
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="prompts").first
    return int(metric.locator('[data-testid="stMetricValue"]').inner_text().replace(",", ""))


def healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/_stcore/health", timeout=10) as r:
        return r.status == 200


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with one model's run (8 prompts), and a second model to ingest."""
    from unpack.cli import main

    require_browser()
    where = tmp_path_factory.mktemp("coexist")
    first = build_model_dir(where / "first-gpt2", "gpt2", 2, seed=0)
    second = build_model_dir(where / "second-neox", "neox", 2, seed=1)
    db = where / "shared.duckdb"
    assert (
        main(
            [
                "ingest",
                "--model",
                str(first),
                "--task",
                "ioi",
                "--n",
                "2",
                "--controls",
                "--db",
                str(db),
                "--no-progress",
            ]
        )
        == 0
    )
    return db, second


def stored_prompts(db) -> int | None:
    """The store's prompt count through a read-only connection of this process, or
    None while another process holds the file (it is committing)."""
    import duckdb

    from tests.helpers import query_db

    try:
        return query_db(db, "SELECT count(*) FROM prompts")[0][0]
    except duckdb.Error:
        return None


def pause_between_commits(proc, db, before: int, after: int, timeout: float = 300) -> int:
    """Stop ``proc`` (SIGSTOP) at a moment when it has committed some but not all of
    its prompts and does not hold the file; return the count stored then. The process
    stays stopped; the caller continues it (SIGCONT)."""
    import signal

    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        proc.send_signal(signal.SIGSTOP)
        n = stored_prompts(db)
        if n is not None and before < n < after:
            return n
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(
        f"the ingest (exit status {proc.poll()}) was never caught between "
        f"its commits with part of its prompts stored (of {before} -> {after})"
    )


def test_app_and_ingest_on_the_same_file_at_once(store):
    """While the ingest is alive, between two of its commits, a refresh of the app
    shows exactly the prompts stored so far; after it, every prompt. The ingest is
    paused there (SIGSTOP) so that the refresh cannot miss that moment, however fast
    the ingest runs; the app is refreshed before and during its run as well."""
    import signal

    db, second = store
    cmd = unpack_command() + [
        "ingest",
        "--model",
        str(second),
        "--task",
        "ioi",
        "--n",
        "10",
        "--controls",
        "--roots",
        "1.*@END",
        "--db",
        str(db),
        "--batch-size",
        "1",
        "--no-progress",
    ]
    with running_app(db) as url, chromium_page() as page:
        before = prompts_shown(page, url)
        assert before == 8
        ingest = subprocess.Popen(
            cmd, env=ingest_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert healthy(url)
            part = pause_between_commits(ingest, db, before, before + 40)
            try:
                assert healthy(url)
                shown = prompts_shown(page, url)  # the ingest alive, stopped between commits
            finally:
                ingest.send_signal(signal.SIGCONT)
            out, err = ingest.communicate(timeout=300)
        finally:
            if ingest.poll() is None:
                ingest.send_signal(signal.SIGCONT)
                ingest.kill()
                ingest.communicate(timeout=60)
        assert ingest.returncode == 0, err[-3000:]
        assert "40 done now (40 ok, 0 failed)" in out
        after = prompts_shown(page, url)  # a refresh after it: every new prompt
    print(f"prompts shown: {before} before, {shown} during ({part} stored then), {after} after")
    assert shown == part and before < shown < after
    assert after == 48


# ------------------------------------------------------------------ the two sides, one at a time

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "read")
print("holding", flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold(db, how: str, seconds: float) -> subprocess.Popen:
    """Another process that holds ``db`` open (``read`` or ``write``) for ``seconds``."""
    import sys

    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), how, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "holding"
    return p


@pytest.fixture
def empty_store(tmp_path):
    from ingest import store

    db = tmp_path / "s.duckdb"
    store.connect(db, short=True).dispose()
    return db


def test_a_commit_waits_for_a_reader_and_says_so_past_the_limit(empty_store, monkeypatch):
    import sqlalchemy as sa

    from ingest import store

    engine = store.connect(empty_store, short=True)
    try:
        reader = hold(empty_store, "read", 1.5)
        assert reader.poll() is None  # the reader holds the file as the commit starts
        with store.transaction(engine, empty_store) as conn:  # waits for the reader to go
            # the reader lets the file go only by ending: an order of events, not a timing
            reader_gone = reader.poll() is not None
            conn.execute(sa.text("SELECT count(*) FROM prompts")).scalar()
        reader.wait(10)
        assert reader_gone, "the commit opened the file while the reader still held it"

        monkeypatch.setenv("UNPACK_LOCK_WAIT", "0.3")
        reader = hold(empty_store, "read", 3)
        with pytest.raises(Exception) as e:
            with store.transaction(engine, empty_store):
                pass
        reader.kill()
        reader.wait(10)
        assert store.is_lock_conflict(e.value)
        mapped = store.store_error(empty_store, e.value)
        assert "open in another process" in str(mapped) and str(empty_store) in str(mapped)
    finally:
        engine.dispose()


def test_app_reads_wait_for_a_commit_and_let_the_file_go(empty_store):
    import duckdb

    from app.db import ShortLived, shared_db
    from app.ui.data import q

    handle = shared_db(empty_store)
    writer = hold(empty_store, "write", 1.5)  # as an ingest's commit, but longer
    assert writer.poll() is None  # the writer holds the file while the read starts
    assert q(handle, "SELECT count(*) AS n FROM prompts")["n"].tolist() == [0]
    # It waited for the writer instead of failing: the writer lets the file go only
    # by ending, so the read can have answered only after it ended (an order of
    # events, not a timing).
    assert writer.poll() is not None
    writer.wait(10)
    time.sleep(ShortLived.LINGER_S + 0.3)
    assert not handle.is_open()
    duckdb.connect(str(empty_store)).close()  # free for a writer again
    cur = handle.cursor()  # still the app's safe connection underneath
    try:
        for stmt in (
            "CREATE TABLE t (x INT)",
            "SET enable_external_access = true",
            "SELECT * FROM read_csv('/etc/passwd')",
        ):
            with pytest.raises(duckdb.Error):
                cur.execute(stmt).fetchall()
    finally:
        cur.close()
