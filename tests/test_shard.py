"""Ingest on Ray workers (``ingest.shard``): the rows of a single-process ingest,
a worker killed mid-run, the driver killed and rerun, and the message without Ray.

One local Ray instance (``ray.init(num_cpus=2)``) serves the module and is shut
down at its end; the CLI runs join it with ``--ray ADDRESS``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from ingest.run import TracingBackend
from tests.ingest_checks import DUPLICATE_CHECKS, ingest_env, sql, start_and_kill

REPO = Path(__file__).resolve().parents[1]
ROOTS = ["1.*@END"]

# Every table's rows with the ids the writer hands out (and the times) replaced
# by natural keys: model name, prompt key, root, path rank.
_P = "prompts p JOIN runs r USING (run_id) JOIN models m USING (model_id)"
_T = f"traces t JOIN {_P} USING (prompt_id)"
CONTENT = {
    "models": "SELECT * EXCLUDE (model_id, created_at) FROM models",
    "runs": "SELECT m.name, r.* EXCLUDE (run_id, model_id, started_at, updated_at, finished_at) "
    "FROM runs r JOIN models m USING (model_id)",
    "prompts": f"SELECT m.name, p.* EXCLUDE (prompt_id, run_id, trace_s, created_at) FROM {_P}",
    "roles": f"SELECT m.name, p.prompt_key, x.* EXCLUDE (prompt_id) FROM roles x JOIN {_P} USING (prompt_id)",
    "tokens": f"SELECT m.name, p.prompt_key, x.* EXCLUDE (prompt_id) FROM tokens x JOIN {_P} USING (prompt_id)",
    "traces": f"SELECT m.name, p.prompt_key, t.* EXCLUDE (trace_id, prompt_id, timing) FROM {_T}",
    "token_credits": f"SELECT m.name, p.prompt_key, t.root, x.* EXCLUDE (trace_id) "
    f"FROM token_credits x JOIN {_T} USING (trace_id)",
    "component_flows": f"SELECT m.name, p.prompt_key, t.root, x.* EXCLUDE (trace_id) "
    f"FROM component_flows x JOIN {_T} USING (trace_id)",
    "edges": f"SELECT m.name, p.prompt_key, t.root, x.* EXCLUDE (trace_id) FROM edges x JOIN {_T} USING (trace_id)",
    "paths": f"SELECT m.name, p.prompt_key, t.root, x.* EXCLUDE (trace_id, path_id) "
    f"FROM paths x JOIN {_T} USING (trace_id)",
    "path_hops": f"SELECT m.name, p.prompt_key, t.root, y.rank, x.* EXCLUDE (path_id) "
    f"FROM path_hops x JOIN paths y USING (path_id) JOIN {_T} USING (trace_id)",
}


def content(db) -> dict[str, pd.DataFrame]:
    """Every table of ``db`` as rows without ids or times, in a fixed order."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for table, q in CONTENT.items():
            df = con.execute(q).df()
            keys = [c for c in df.columns if df[c].dtype.kind != "f"]
            out[table] = df.sort_values(keys, key=lambda s: s.astype(str)).reset_index(drop=True)
        return out
    finally:
        con.close()


def assert_same_content(db, clean_db) -> None:
    """The same rows in every table, order aside: everything but floats equal,
    floats to 1e-9 (the workers trace with another number of CPU threads)."""
    got, want = content(db), content(clean_db)
    for table in CONTENT:
        a, b = got[table], want[table]
        assert len(a) == len(b) > 0, (table, len(a), len(b))
        assert list(a.columns) == list(b.columns), table
        for c in a.columns:
            if a[c].dtype.kind == "f":
                assert np.allclose(a[c], b[c], rtol=1e-9, atol=1e-12, equal_nan=True), (table, c)
            else:
                assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), (table, c)


def assert_no_duplicates(db) -> None:
    for table, key in DUPLICATE_CHECKS.items():
        assert sql(
            db, f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
        ) == [(0,)], table


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module, with two CPUs; shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def records(model_dir):
    from unpack.loading import load_tokenizer
    from unpack.tasks import ioi

    return ioi(load_tokenizer(str(model_dir)), 5, seed=0, controls=True)  # 20 prompts


@pytest.fixture(scope="module")
def clean(model_dir, records, tmp_path_factory):
    """A single-process ingest: the rows every other one must end up with."""
    from ingest.run import ingest
    from unpack import Tracer
    from unpack.loading import load_model

    db = tmp_path_factory.mktemp("clean") / "clean.duckdb"
    model, tok = load_model(str(model_dir))
    ingest(
        records,
        tracer=Tracer(model=model, tokenizer=tok),
        model_name=str(model_dir),
        db=db,
        roots=ROOTS,
        batch_size=2,
        progress=False,
    )
    return db


@pytest.fixture(scope="module")
def workers(ray_local, model_dir):
    """Two Ray workers, each with a replica of the model (shared by two tests)."""
    from ingest.shard import RayTracing

    with RayTracing(str(model_dir), 2) as w:
        yield w


# ------------------------------------------------------------------ the tests


def test_two_workers_store_exactly_the_rows_of_one_process(
    workers, model_dir, records, clean, tmp_path
):
    from ingest.run import ingest

    db = tmp_path / "ray.duckdb"
    assert len(set(workers.pids)) == 2 and os.getpid() not in workers.pids
    summary = ingest(
        records,
        tracer=workers,
        model_name=str(model_dir),
        db=db,
        roots=ROOTS,
        batch_size=2,
        progress=False,
    )
    assert (summary.n_ok, summary.n_failed) == (20, 0)
    assert_same_content(db, clean)
    assert_no_duplicates(db)


class KillOneWorker(TracingBackend):
    """The workers' backend (a :class:`ingest.run.TracingBackend`), with one worker
    process SIGKILLed (by its pid) as soon as the first traced batch is back: that
    worker is then tracing its next batch."""

    def __init__(self, workers):
        self.workers, self.killed = workers, None
        self.names, self.model_info = workers.names, workers.model_info

    def traced(self, batches, config, batch_size):
        for i, batch in enumerate(self.workers.traced(batches, config, batch_size)):
            if i == 0:
                self.killed = self.workers.pids[0]
                os.kill(self.killed, signal.SIGKILL)
            yield batch


def test_a_worker_killed_mid_run_is_restarted_and_every_prompt_stored_once(
    ray_local, workers, model_dir, records, clean, tmp_path
):
    from ingest.run import ingest

    db = tmp_path / "killed-worker.duckdb"
    backend = KillOneWorker(workers)
    summary = ingest(
        records,
        tracer=backend,
        model_name=str(model_dir),
        db=db,
        roots=ROOTS,
        batch_size=2,
        progress=False,
    )
    restarted = ray_local.get(workers.actors[0].pid.remote())
    assert backend.killed is not None and restarted != backend.killed  # a new process
    with pytest.raises(ProcessLookupError):
        os.kill(backend.killed, 0)
    assert (summary.n_ok, summary.n_failed) == (20, 0)
    assert sql(db, "SELECT count(*), count(DISTINCT prompt_key) FROM prompts") == [(20, 20)]
    assert_no_duplicates(db)
    assert_same_content(db, clean)


def _cli(model_dir, db, address) -> list[str]:
    return [
        sys.executable,
        "-m",
        "unpack.cli",
        "ingest",
        "--model",
        str(model_dir),
        "--task",
        "ioi",
        "--n",
        "5",
        "--controls",
        "--roots",
        *ROOTS,
        "--db",
        str(db),
        "--batch-size",
        "2",
        "--ray",
        address,
        "--workers",
        "2",
    ]


def test_driver_sigkill_then_rerun_resumes_to_the_clean_rows(
    ray_local, workers, model_dir, clean, tmp_path
):
    workers.close()  # their CPUs go to the command's own workers
    address = ray_local.get_runtime_context().gcs_address
    db = tmp_path / "killed-driver.duckdb"
    start_and_kill(_cli(model_dir, db, address), after_s=0.0)
    n1 = sql(db, "SELECT count(*) FROM prompts")[0][0]
    assert 0 < n1 < 20, f"the kill should land mid-way, found {n1} prompts"
    done = subprocess.run(
        _cli(model_dir, db, address) + ["--no-progress"],
        cwd=REPO,
        env=ingest_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{n1} already stored" in done.stdout
    assert sql(db, "SELECT count(*), count(DISTINCT prompt_key) FROM prompts") == [(20, 20)]
    assert_no_duplicates(db)
    assert_same_content(db, clean)


_NO_RAY = textwrap.dedent("""
    import sys

    class NoRay:  # this interpreter cannot import ray, as if it were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoRay())
    from unpack.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_without_ray_workers_fail_with_the_install_command(model_dir, tmp_path):
    db = tmp_path / "u.duckdb"
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            _NO_RAY,
            "ingest",
            "--model",
            str(model_dir),
            "--task",
            "ioi",
            "--n",
            "2",
            "--db",
            str(db),
            "--workers",
            "2",
        ],
        cwd=REPO,
        env=ingest_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert 'pip install -e ".[ray]"' in p.stderr and "--workers" in p.stderr
    assert "Traceback" not in p.stderr
    assert not db.exists()  # refused before the store or a model was touched
