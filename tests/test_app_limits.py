"""The SQL box's limits (time, result bytes, rows, cache bytes), its statement
splitting, and ``unpack app`` stopping cleanly on SIGTERM.

Real parts: a store made by the real migrations, the Streamlit app driven by
``streamlit.testing`` in a fresh process (so its peak memory is the app's
own), and ``unpack app`` as a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from unpack.errors import InputError

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "streamlit_app.py"
SLOW = "SELECT count(*) FROM range(1000000000000)"
WIDE = "SELECT repeat('x', 1000000) AS s FROM range(1000)"  # 1,000 rows x 1 MB


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """An empty store: every table and view, made by the real migrations."""
    from ingest import store

    path = tmp_path_factory.mktemp("limits") / "s.duckdb"
    store.connect(path).dispose()
    return path


def env(**extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


# The SQL page in a fresh process: run one query, report what the page shows,
# how long the run took and the process's peak memory.
_SQL_PAGE = r"""
import json, re, sys, time
from unpack.plan import proc_bytes
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.run()
at.switch_page("ui/pages/sql.py").run()
at.text_area(key="sql_text").set_value("SELECT 1 AS one")  # the page and DuckDB warmed up
[b for b in at.button if b.label == "Run query"][0].click()
at.run()
base_mib = proc_bytes("/proc/self/status", "VmHWM:") / 2**20
at.text_area(key="sql_text").set_value(sys.argv[2])
[b for b in at.button if b.label == "Run query"][0].click()
t0 = time.monotonic()
at.run()
seconds = time.monotonic() - t0
print(json.dumps({"seconds": seconds,  # errors as read: without Markdown's escapes
                  "errors": [re.sub(r"\\(.)", r"\1", e.value) for e in at.error],
                  "exceptions": [str(e.value) for e in at.exception],
                  "captions": [c.value for c in at.caption],
                  # this process's own high-water mark: ru_maxrss would also count the
                  # test process it was spawned from (kept across exec)
                  "maxrss_mib": proc_bytes("/proc/self/status", "VmHWM:") / 2**20,
                  "base_mib": base_mib}))
"""


def sql_page(db, query, **limits) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", _SQL_PAGE, str(APP), query],
        cwd=REPO,
        env=env(UNPACK_DB=str(db), **limits),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_sql_page_stops_a_query_at_the_time_limit(db):
    got = sql_page(db, SLOW, UNPACK_SQL_TIMEOUT="3")
    print(f"time-limit query answered in {got['seconds']:.2f} s (limit 3 s)")
    assert not got["exceptions"], got
    assert len(got["errors"]) == 1 and "time limit of 3 s" in got["errors"][0], got
    assert "--sql-timeout" in got["errors"][0]
    # The query cannot finish (10^12 rows): the message above comes only from the
    # app interrupting it at its limit; the time it took is printed, not asserted
    # (timings belong to `unpack bench`).


def test_sql_page_refuses_a_result_past_the_size_limit_in_bounded_memory(db):
    got = sql_page(db, WIDE)  # the default limits
    print(f"size-limit query: {got['seconds']:.2f} s, app peak memory {got['maxrss_mib']:.0f} MiB")
    assert not got["exceptions"], got
    assert len(got["errors"]) == 1 and "size limit of 32 MiB" in got["errors"][0], got
    assert "--sql-max-mb" in got["errors"][0]
    assert got["maxrss_mib"] < 1.5 * 1024, got


def test_run_query_row_limit_fetches_one_more_to_know_it_truncated(db):
    from app.db import open_db, run_query

    con = open_db(db)
    try:
        full = run_query(con, "SELECT * FROM range(20)", limit=20)
        cut = run_query(con, "SELECT * FROM range(20)", limit=19)
        small = run_query(con, "SELECT repeat('x', 1000) FROM range(100)", max_bytes=50_000)
    except InputError as e:
        assert "size limit of 49 KiB" in str(e)
    else:
        pytest.fail(f"a 100 kB result passed a 50 kB size limit ({len(small)} rows)")
    finally:
        con.close()
    assert len(full) == 20 and full.attrs["truncated"] is False
    assert len(cut) == 19 and cut.attrs["truncated"] is True


def test_a_slow_query_does_not_block_other_sessions(db):
    from app.db import QueryLimitError, open_db, run_query

    con = open_db(db)
    out, started, slow_done = {}, threading.Event(), threading.Event()

    def slow():
        started.set()
        try:
            run_query(con, SLOW, timeout_s=4)
        except QueryLimitError as e:
            out["slow"] = str(e)
        finally:
            slow_done.set()

    t = threading.Thread(target=slow)
    t.start()
    try:
        started.wait(10)
        time.sleep(0.5)  # let the slow query get going
        fast = run_query(con, "SELECT count(*) AS n FROM prompts")
        # Not blocked means: the small query answered before the slow one ended
        # (which only its 4 s limit can end). An order of events, not a timing.
        answered_first = not slow_done.is_set()
    finally:
        t.join(30)
        con.close()
    assert fast["n"].tolist() == [0]
    assert answered_first, "the small query waited for the slow one to end"
    assert "time limit of 4 s" in out["slow"]


def test_result_cache_is_bounded_in_bytes():
    from app.db import ResultCache

    c = ResultCache(1000)
    for i in range(10):
        c.put(("q", i), f"result {i}", 300)
        assert c.bytes <= 1000
    assert c.get(("q", 9)) == "result 9" and c.get(("q", 0)) is None
    c.put(("big",), "too big", 5000)  # larger than the whole cache: not kept
    assert c.get(("big",)) is None and c.bytes <= 1000


@pytest.mark.parametrize(
    "query, want",
    [
        ("SELECT 'a;b' AS s", ["a;b"]),
        ("(SELECT 'x' AS s)", ["x"]),
        ("-- a comment; with a semicolon\nSELECT 'c' AS s; -- and one after", ["c"]),
        ("/* ; */ SELECT 'd' AS s", ["d"]),
    ],
)
def test_statement_splitting_understands_strings_and_comments(db, query, want):
    from app.db import open_db, run_query

    con = open_db(db)
    try:
        assert run_query(con, query)["s"].tolist() == want
    finally:
        con.close()


@pytest.mark.parametrize(
    "query, message",
    [
        ("SELEC 1", "not valid SQL: syntax error at or near \"SELEC\""),
        ("SELECT 1; DROP TABLE models", "one statement at a time"),
        ("SELECT 'a;b'; DELETE FROM prompts", "one statement at a time"),
        (
            "WITH x AS (SELECT 1) INSERT INTO models (model_id, name) SELECT 1, 'm'",
            "INSERT is not allowed",
        ),
        (
            "/* hi */ -- note\nDELETE FROM prompts",
            "DELETE is not allowed here: this SQL box is read-only",
        ),
    ],
)
def test_typos_and_writes_get_their_own_messages(query, message):
    from app.db import check_readonly_sql

    with pytest.raises(InputError) as e:
        check_readonly_sql(query)
    assert message in str(e.value)
    if query.startswith("SELEC "):
        assert "read-only" not in str(e.value)


# ------------------------------------------------------------------ unpack app and SIGTERM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            out.add(k)
            todo.append(k)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_server_and_frees_the_port(db):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unpack.cli", "app", "--db", str(db), "--port", str(port)],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=2
                ) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not come up")
            time.sleep(0.3)
        kids = descendants(proc.pid)
        assert kids, "unpack app should run the Streamlit server as a child"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGTERM, rc
    left = [k for k in kids if alive(k)]
    assert not left, f"processes of unpack app still running after SIGTERM: {left}"
    with socket.socket() as s:  # nothing listens there any more
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    with socket.socket() as s:  # and it can be listened on again (TIME_WAIT counts as free)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


@pytest.mark.parametrize(
    "flag, value", [("--sql-timeout", "0"), ("--sql-timeout", "nan"), ("--sql-max-mb", "-5")]
)
def test_app_limit_flags_are_checked(db, capsys, flag, value):
    from unpack.cli import main

    assert main(["app", "--db", str(db), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {float(value)}" in err and "above 0" in err, err


# ------------------------------------------------------------------ memory and paths

BIG = "SELECT list(range) FROM range(400000000)"  # a 3 GB list if nothing stops it


def test_sql_page_stops_a_query_at_the_memory_limit(db):
    """DuckDB's memory_limit (`unpack app --sql-memory-mb`) stops the query with a
    message naming the flag, and the app's peak memory stays near the limit."""
    got = sql_page(db, BIG, UNPACK_SQL_MEMORY_MB="256")
    print(
        f"memory-limit query: {got['seconds']:.2f} s, app peak {got['maxrss_mib']:.0f} MiB "
        f"(after SELECT 1: {got['base_mib']:.0f} MiB; limit 256 MiB)"
    )
    assert not got["exceptions"], got
    assert len(got["errors"]) == 1 and "memory limit" in got["errors"][0], got
    assert "--sql-memory-mb" in got["errors"][0]
    assert got["maxrss_mib"] < got["base_mib"] + 256 + 128, got


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM duckdb_databases()",
        "SELECT path FROM duckdb_databases",
        "FROM duckdb_settings()",
        "SELECT current_setting('temp_directory') AS t",
        "SELECT * FROM query('SELECT path FROM duckdb_databases()')",
        "SELECT * FROM duckdb_extensions()",
        "SELECT * FROM pragma_database_list",
    ],
)
def test_sql_box_never_shows_a_path_of_the_machine(tmp_path, query):
    from app.db import query_store
    from ingest import store

    path = tmp_path / "paths.duckdb"  # its own store: the app's connection settings differ
    store.connect(path).dispose()
    try:
        shown = query_store(path, query).to_csv()
    except InputError as e:
        shown = str(e)
    assert str(tmp_path) not in shown and str(Path.home()) not in shown, shown
    assert shown.strip(), query


@pytest.mark.parametrize("flag", ["--sql-memory-mb", "--sql-threads"])
def test_app_memory_and_thread_flags_are_checked(db, capsys, flag):
    from unpack.cli import main

    assert main(["app", "--db", str(db), flag, "0"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} 0 must be a number above 0" in err, err
