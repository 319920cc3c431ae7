"""What the ingest tests share: the store read from the test process, its row
counts, the duplicate-key checks, and an ingest started in a subprocess and
killed once it has stored prompts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import query_db, start_until

REPO = Path(__file__).resolve().parents[1]


def sql(db, q, params=None):
    return query_db(db, q, params)


def table_counts(db) -> dict[str, int]:
    from ingest.schema import CIRCUIT_TABLES, metadata

    return {
        t: sql(db, f"SELECT count(*) FROM {t}")[0][0]
        for t in metadata.tables
        if t not in CIRCUIT_TABLES
    }  # written by unpack discover/verify, not the ingest


def ingest_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_and_kill(cmd, after_s: float) -> None:
    """Start the ingest, wait until the progress bar shows stored prompts, wait
    ``after_s`` more, SIGKILL it."""
    proc, _, t = start_until(
        cmd,
        rb"ingest [^:]*: +\d+%[^|]*\|[^|]*\| *[1-9]\d*/\d+ \[",
        ingest_env(),
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(after_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        t.join(10)
    assert proc.returncode == -signal.SIGKILL


def per_prompt_rows(db) -> dict[str, tuple]:
    """Rows of every table per prompt, keyed by the prompt's key (ids differ between files)."""
    q = """
    SELECT p.prompt_key, p.status,
      (SELECT count(*) FROM roles r WHERE r.prompt_id = p.prompt_id),
      (SELECT count(*) FROM tokens k WHERE k.prompt_id = p.prompt_id),
      (SELECT count(*) FROM traces t WHERE t.prompt_id = p.prompt_id),
      (SELECT count(*) FROM token_credits c JOIN traces t USING (trace_id) WHERE t.prompt_id = p.prompt_id),
      (SELECT count(*) FROM component_flows c JOIN traces t USING (trace_id) WHERE t.prompt_id = p.prompt_id),
      (SELECT count(*) FROM edges c JOIN traces t USING (trace_id) WHERE t.prompt_id = p.prompt_id),
      (SELECT count(*) FROM paths c JOIN traces t USING (trace_id) WHERE t.prompt_id = p.prompt_id),
      (SELECT count(*) FROM path_hops h JOIN paths c USING (path_id) JOIN traces t USING (trace_id)
        WHERE t.prompt_id = p.prompt_id)
    FROM prompts p"""
    return {r[0]: r[1:] for r in sql(db, q)}


DUPLICATE_CHECKS = {
    "prompts": "run_id, prompt_key",
    "roles": "prompt_id, role",
    "traces": "prompt_id, root",
    "tokens": "prompt_id, pos",
    "token_credits": "trace_id, pos",
    "component_flows": "trace_id, component, pos",
    "edges": "trace_id, parent, parent_pos, child, child_pos, mode",
    "paths": "trace_id, rank",
    "path_hops": "path_id, hop",
}
