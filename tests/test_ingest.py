"""The ingest on real DuckDB files with a tiny random GPT-2 and real tracing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ingest_checks import (
    DUPLICATE_CHECKS,
    ingest_env,
    per_prompt_rows,
    sql,
    start_and_kill,
    table_counts,
)

REPO = Path(__file__).resolve().parents[1]
ROOTS = ["1.*@END", "attn_0_head_0@S2"]  # S2 exists in ioi_* records only


# ------------------------------------------------------------------ the tracer (its model: conftest.py)


@pytest.fixture(scope="module")
def tracer(model_dir):
    from unpack import Tracer
    from unpack.loading import load_model

    model, tok = load_model(str(model_dir))
    return Tracer(model=model, tokenizer=tok)


@pytest.fixture(scope="module")
def records(tracer):
    from unpack.tasks import ioi

    return ioi(tracer.tokenizer, 5, seed=0, controls=True)  # 20 records


def expected_counts(tracer, records, roots, batch_size) -> dict[str, int]:
    """Row counts computed from tracing the same prompts directly, in the same
    batches as the ingest (fp32 results depend slightly on the batch's padding)."""
    exp = dict.fromkeys(
        [
            "prompts",
            "roles",
            "traces",
            "tokens",
            "token_credits",
            "component_flows",
            "edges",
            "paths",
            "path_hops",
        ],
        0,
    )
    for k in range(0, len(records), batch_size):
        chunk = records[k : k + batch_size]
        inputs = [
            {"text": r.text, "target": r.target, "distractor": r.distractor, "root": x}
            for r in chunk
            for x in [None] + [f"{c}@{r.roles[w]}" for c, w in roots if w in r.roles]
        ]
        results = tracer.trace_batch(inputs, batch_size=batch_size, position_edges=True)
        for r in chunk:
            exp["prompts"] += 1
            exp["roles"] += len(r.roles)
        for inp, x in zip(inputs, results):
            S = len(x.tokens)
            if inp["root"] is None:
                exp["tokens"] += S
            exp["traces"] += 1
            exp["token_credits"] += S
            exp["component_flows"] += sum(
                int(np.count_nonzero(v)) for v in x.component_flow.values()
            )
            exp["edges"] += len(x.position_edges)
            exp["paths"] += len(x.paths)
            exp["path_hops"] += sum(len(p.hops) for p in x.paths)
    return exp


def expand(roots, tracer):
    from ingest.run import parse_roots

    return parse_roots(roots, list(tracer.comps.names))


# ------------------------------------------------------------------ counts and resume


def test_ingest_20_prompts_row_counts_and_rerun_adds_nothing(tmp_path, tracer, records):
    from ingest.run import ingest

    db = tmp_path / "u.duckdb"
    s = ingest(
        records, tracer=tracer, model_name="tiny", db=db, roots=ROOTS, batch_size=6, progress=False
    )
    assert (s.n_input, s.n_ok, s.n_failed, s.n_skipped) == (20, 20, 0, 0)
    exp = expected_counts(tracer, records, expand(ROOTS, tracer), 6)
    got = table_counts(db)
    assert got == dict(exp, models=1, runs=1)
    assert s.rows == exp
    # tokens = Σ prompt lengths, token credits = Σ length x traces of the prompt
    assert got["tokens"] == sql(db, "SELECT sum(n_tokens) FROM prompts")[0][0]
    assert got["traces"] == 20 + 20 * 2 + 10  # target + 2 heads@END each, S2 root on 10 ioi records

    s2 = ingest(
        records, tracer=tracer, model_name="tiny", db=db, roots=ROOTS, batch_size=6, progress=False
    )
    assert (s2.n_skipped, s2.n_done) == (20, 0)
    assert table_counts(db) == got
    assert sql(db, "SELECT status, finished_at IS NOT NULL FROM runs") == [("done", True)]


def test_new_roots_add_traces_to_stored_prompts_not_copies(tmp_path, tracer, records):
    """Ingesting again with more roots traces only the missing roots of the stored
    prompts: the same prompts, no second target trace, and the same rows as
    ingesting everything at once."""
    from ingest.run import ingest

    db, once = tmp_path / "u.duckdb", tmp_path / "once.duckdb"
    ingest(records, tracer=tracer, model_name="tiny", db=db, batch_size=6, progress=False)
    assert sql(db, "SELECT count(*) FROM traces") == [(20,)]
    s = ingest(
        records, tracer=tracer, model_name="tiny", db=db, roots=ROOTS, batch_size=6, progress=False
    )
    assert s.n_ok == 20 and s.n_skipped == 0
    ingest(
        records,
        tracer=tracer,
        model_name="tiny",
        db=once,
        roots=ROOTS,
        batch_size=6,
        progress=False,
    )
    assert table_counts(db) == table_counts(once)
    assert sql(db, "SELECT count(*), count(DISTINCT (prompt_id, root)) FROM traces") == sql(
        once, "SELECT count(*), count(DISTINCT (prompt_id, root)) FROM traces"
    )
    assert sql(db, "SELECT count(*) FROM prompts") == [(20,)]
    # and once everything is there, nothing more
    s3 = ingest(
        records, tracer=tracer, model_name="tiny", db=db, roots=ROOTS, batch_size=6, progress=False
    )
    assert (s3.n_skipped, s3.n_done) == (20, 0)


def test_progress_moves_per_prompt_with_an_eta(tmp_path, tracer, records, capsys, monkeypatch):
    """Within one batch the bar counts every prompt as it is traced and shows the
    time left once the first is done; the stored numbers are those of a whole
    batch traced at once (up to float32 rounding)."""
    from ingest.run import LocalTracing, ingest

    monkeypatch.setattr(LocalTracing, "piece_s", 0.0)  # a piece per prompt, whatever the speed
    db, whole = tmp_path / "u.duckdb", tmp_path / "whole.duckdb"
    s = ingest(records[:6], tracer=tracer, model_name="tiny", db=db, batch_size=6, progress=True)
    assert s.n_ok == 6
    err = capsys.readouterr().err
    drawn = re.findall(r"ingest tiny: +\d+%[^|]*\|[^|]*\| *(\d)/6 \[([^\]]*)\]", err)
    counts = [int(n) for n, _ in drawn]
    assert counts[0] == 0 and set(range(7)) <= set(counts), err
    assert counts == sorted(counts), err
    eta = dict(drawn)
    assert "<?" in eta["0"] and re.search(r"<\d\d:\d\d", eta["1"]), eta  # time left after one
    ingest(records[:6], tracer=tracer, model_name="tiny", db=whole, batch_size=6, progress=False)
    q = (
        "SELECT p.text, t.root, c.pos, c.credit FROM token_credits c JOIN traces t USING (trace_id) "
        "JOIN prompts p USING (prompt_id) ORDER BY 1, 2, 3"
    )
    got, want = sql(db, q), sql(whole, q)
    assert [r[:3] for r in got] == [r[:3] for r in want]
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=1e-5, atol=1e-9)


def test_stored_values_equal_the_trace(tmp_path, tracer, records):
    from ingest.run import ingest

    db = tmp_path / "u.duckdb"
    ingest(
        records[:4],
        tracer=tracer,
        model_name="tiny",
        db=db,
        roots=["attn_1_head_1@END"],
        batch_size=1,
        progress=False,
    )
    r = records[1]
    end = r.roles["END"]
    res, rooted = tracer.trace_batch(  # the same call the ingest made for this prompt
        [
            {"text": r.text, "target": r.target, "distractor": r.distractor, "root": x}
            for x in (None, f"attn_1_head_1@{end}")
        ],
        batch_size=1,
        position_edges=True,
    )
    pid = sql(db, "SELECT prompt_id FROM prompts WHERE seq = 1")[0][0]
    credit = sql(
        db,
        "SELECT credit, credit_pct FROM credits WHERE prompt_id = ? AND root = "
        "'target' ORDER BY pos",
        [pid],
    )
    np.testing.assert_allclose([c for c, _ in credit], res.token_credit, rtol=1e-12)
    np.testing.assert_allclose([p for _, p in credit], res.token_credit_pct, rtol=1e-12)
    toks = sql(db, "SELECT token, token_id FROM tokens WHERE prompt_id = ? ORDER BY pos", [pid])
    assert toks == list(zip(res.tokens, res.token_ids))
    flow = dict(
        ((c, p), f)
        for c, p, f in sql(
            db,
            "SELECT component, pos, flow FROM component_flows JOIN traces USING (trace_id) "
            "WHERE prompt_id = ? AND root = 'target'",
            [pid],
        )
    )
    assert flow[("attn_1_head_0", end)] == pytest.approx(
        float(res.component_flow["attn_1_head_0"][end])
    )
    # a rerooted trace: its root, position, and edges out of the root
    row = sql(
        db,
        "SELECT root, root_component, root_layer, root_head, root_pos, seed_total "
        "FROM traces WHERE prompt_id = ? AND root <> 'target'",
        [pid],
    )
    assert row == [("attn_1_head_1@END", "attn_1_head_1", 1, 1, end, 1.0)]
    e = sql(
        db,
        "SELECT child, mode, sum(weight) FROM edges JOIN traces USING (trace_id) "
        "WHERE prompt_id = ? AND root = 'attn_1_head_1@END' AND parent = "
        "'attn_1_head_1' GROUP BY ALL",
        [pid],
    )
    pe = rooted.position_edges
    want = pe[pe.parent == "attn_1_head_1"].groupby(["child", "mode"]).weight.sum()
    assert {(c, m): w for c, m, w in e} == pytest.approx(want.to_dict())
    paths = sql(
        db,
        "SELECT chain, score FROM path_info WHERE prompt_id = ? AND root = 'target' ORDER BY rank",
        [pid],
    )
    assert [c for c, _ in paths] == [p.chain for p in res.paths]
    hops = sql(
        db,
        "SELECT component, pos, mode FROM path_hops WHERE path_id = (SELECT path_id "
        "FROM path_info WHERE prompt_id = ? AND root = 'target' AND rank = 1) "
        "ORDER BY hop",
        [pid],
    )
    assert hops == [tuple(h) for h in res.paths[0].hops]


def test_views_answer_from_the_rows(tmp_path, tracer, records):
    from ingest.run import ingest

    db = tmp_path / "u.duckdb"
    ingest(records, tracer=tracer, model_name="tiny", db=db, roots=["1.*@END"], progress=False)
    ingest(
        records, tracer=tracer, model_name="tiny", db=db, preset="k_only_aligned", progress=False
    )
    assert sql(db, "SELECT count(*) FROM runs") == [(2,)]
    # credit by role = mean of the credit at that role's position
    got = sql(
        db,
        "SELECT mean_credit, n_prompts FROM credit_by_role WHERE preset = 'kqv_aligned' "
        "AND condition = 'ioi_io' AND role = 'S2' AND root = 'target'",
    )
    rows = sql(
        db,
        "SELECT c.credit FROM token_credits c JOIN traces t USING (trace_id) JOIN "
        "prompts p USING (prompt_id) JOIN roles r ON r.prompt_id = p.prompt_id AND "
        "r.pos = c.pos JOIN runs USING (run_id) WHERE preset = 'kqv_aligned' AND "
        "condition = 'ioi_io' AND role = 'S2' AND root = 'target'",
    )
    assert got[0][1] == len(rows) == 5
    assert got[0][0] == pytest.approx(np.mean([r[0] for r in rows]))
    # head interactions: mean over all 5 traces of the task/condition/root
    ((n, total, mean),) = sql(
        db,
        "SELECT n_traces, total_weight, mean_weight FROM head_interactions "
        "WHERE condition = 'ioi_io' AND root = 'attn_1_head_0@END' AND "
        "parent = 'attn_1_head_0' AND child = 'attn_0_head_1' AND mode = 'V'",
    )
    assert n == 5 and mean == pytest.approx(total / 5)
    direct = sql(
        db,
        "SELECT sum(weight) FROM edges JOIN traces USING (trace_id) JOIN prompts "
        "USING (prompt_id) WHERE condition = 'ioi_io' AND root = 'attn_1_head_0@END' "
        "AND parent = 'attn_1_head_0' AND child = 'attn_0_head_1' AND mode = 'V'",
    )
    assert total == pytest.approx(direct[0][0])
    # one model against another (here: the same model under another name)
    ingest(records[:8], tracer=tracer, model_name="tiny-copy", db=db, progress=False)
    vs = sql(
        db,
        "SELECT credit_pct_a, credit_pct_b, credit_pct_diff FROM model_vs_model WHERE "
        "model_a = 'tiny' AND model_b = 'tiny-copy' AND condition = 'ioi_io' AND "
        "role = 'IO' AND preset = 'kqv_aligned'",
    )
    a = sql(
        db,
        "SELECT mean_credit_pct FROM credit_by_role WHERE model = 'tiny' AND preset = "
        "'kqv_aligned' AND condition = 'ioi_io' AND role = 'IO' AND root = 'target'",
    )[0][0]
    b = sql(
        db,
        "SELECT mean_credit_pct FROM credit_by_role WHERE model = 'tiny-copy' AND "
        "condition = 'ioi_io' AND role = 'IO' AND root = 'target'",
    )[0][0]
    assert vs == [(pytest.approx(a), pytest.approx(b), pytest.approx(b - a))]


# ------------------------------------------------------------------ bad prompts


def test_unpack_cli_has_ingest_and_demo():
    from unpack.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"ingest", "demo"} <= set(sub.choices)


def test_bad_prompts_are_stored_as_failed_and_the_run_finishes(tmp_path, model_dir, capsys):
    from ingest.cli import main

    corpus = tmp_path / "c.jsonl"
    good = {
        "text": "When Mary and John went to the park , John gave a ball to",
        "target": " Mary",
        "distractor": " John",
    }
    lines = [
        json.dumps(good),
        "{not json",  # corpus validation
        json.dumps({"text": "Mary and John"}),  # no target
        json.dumps(dict(good, target=" Zyzzyva")),  # unknown token
        json.dumps(dict(good, text="Mary " * 60)),  # too long: fails in tracing
        json.dumps(
            dict(
                good,
                text="When John and Mary went to the park , Mary gave a ball to",
                target=" John",
                distractor=" Mary",
            )
        ),
    ]
    corpus.write_text("\n".join(lines) + "\n")
    db = tmp_path / "u.duckdb"
    args = [
        "ingest",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus),
        "--db",
        str(db),
        "--batch-size",
        "4",
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 ok, 4 failed" in out
    rows = sql(db, "SELECT seq, status, error FROM prompts ORDER BY seq, error")
    failed = [(seq, err) for seq, st, err in rows if st == "failed"]
    assert len(failed) == 4 and all(err for _, err in failed)
    errors = " | ".join(err for _, err in failed)
    assert "target" in errors and "tokens" in errors  # missing target; too long for the model
    assert f"{corpus}:2: not valid JSON" in errors  # a row that did not load: its file and line
    assert [st for _, st, _ in rows].count("ok") == 2
    # failed prompts have no child rows; ok ones have all of them
    assert sql(
        db, "SELECT count(*) FROM traces JOIN prompts USING (prompt_id) WHERE status = 'failed'"
    ) == [(0,)]
    assert sql(db, "SELECT count(DISTINCT prompt_id) FROM tokens") == [(2,)]
    # the same command again: nothing new, failed prompts are not retried
    assert main(args) == 0
    assert "6 already stored, 0 done now" in capsys.readouterr().out
    assert sql(db, "SELECT count(*) FROM prompts") == [(6,)]


def test_induction_task_from_the_command_line(tmp_path, model_dir, capsys):
    from ingest.cli import main

    db = tmp_path / "u.duckdb"
    base = [
        "ingest",
        "--model",
        str(model_dir),
        "--task",
        "induction",
        "--n",
        "4",
        "--db",
        str(db),
        "--no-progress",
    ]
    assert main(base + ["--controls"]) == 2
    assert "--controls applies to --task ioi" in capsys.readouterr().err
    assert main(base + ["--roots", "1.0@END", "attn_1_head_1@first_0"]) == 0
    assert "4 done now (4 ok, 0 failed)" in capsys.readouterr().out
    assert sql(db, "SELECT root, count(*) FROM traces GROUP BY root ORDER BY root") == [
        ("attn_1_head_0@END", 4),
        ("attn_1_head_1@first_0", 4),
        ("target", 4),
    ]
    # the rooted position is the role's position in each prompt
    assert sql(
        db,
        "SELECT count(*) FROM traces t JOIN roles r ON r.prompt_id = t.prompt_id "
        "AND r.role = 'first_0' WHERE t.root = 'attn_1_head_1@first_0' "
        "AND t.root_pos = r.pos",
    ) == [(4,)]


def test_a_prompt_that_breaks_tracing_fails_alone(tmp_path, tracer, records):
    """An exception inside a batch: the prompts are traced one by one, the bad one fails."""
    from ingest.run import ingest

    bad_text = records[2].text

    class Flaky:
        def __init__(self, inner):
            self.inner, self.comps, self.model = inner, inner.comps, inner.model

        def trace_batch(self, prompts, **kw):
            if any(p["text"] == bad_text for p in prompts):
                raise RuntimeError("simulated failure in the sweep")
            return self.inner.trace_batch(prompts, **kw)

    db = tmp_path / "u.duckdb"
    s = ingest(
        records[:8], tracer=Flaky(tracer), model_name="tiny", db=db, batch_size=8, progress=False
    )
    # records 2 and 3 share the text (ioi_io / ioi_s); both fail, the other 6 are stored
    assert (s.n_ok, s.n_failed) == (6, 2)
    err = sql(db, "SELECT DISTINCT error FROM prompts WHERE status = 'failed'")
    assert err == [("RuntimeError: simulated failure in the sweep",)]


def test_bad_arguments_are_input_errors(tmp_path, tracer, records):
    from ingest.run import ingest
    from unpack.errors import InputError

    db = tmp_path / "u.duckdb"
    with pytest.raises(InputError, match="no component"):
        ingest(records, tracer=tracer, model_name="tiny", db=db, roots=["attn_7_head_0@END"])
    with pytest.raises(InputError, match="COMPONENT@"):
        ingest(records, tracer=tracer, model_name="tiny", db=db, roots=["attn_1_head_0"])
    with pytest.raises(InputError, match="batch-size"):
        ingest(records, tracer=tracer, model_name="tiny", db=db, batch_size=0)
    with pytest.raises(InputError, match="preset"):
        ingest(records, tracer=tracer, model_name="tiny", db=db, preset="nope")
    with pytest.raises(InputError, match="folder"):
        ingest(records, tracer=tracer, model_name="tiny", db=tmp_path / "no" / "u.duckdb")


# ------------------------------------------------------------------ SIGKILL and resume


def _ingest_cmd(model_dir, db):
    return [
        sys.executable,
        "-m",
        "ingest.cli",
        "ingest",
        "--model",
        str(model_dir),
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
    ]


def test_sigkill_then_rerun_gives_exactly_the_clean_result(tmp_path, model_dir):
    db, clean = tmp_path / "killed.duckdb", tmp_path / "clean.duckdb"
    start_and_kill(_ingest_cmd(model_dir, db), after_s=0.0)
    n1 = sql(db, "SELECT count(*) FROM prompts")[0][0]
    assert 0 < n1 < 40, f"the kill should land mid-way, found {n1} prompts"
    start_and_kill(_ingest_cmd(model_dir, db), after_s=0.0)  # and once more
    n2 = sql(db, "SELECT count(*) FROM prompts")[0][0]
    assert n1 <= n2 <= 40

    done = subprocess.run(
        _ingest_cmd(model_dir, db) + ["--no-progress"],
        cwd=REPO,
        env=ingest_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{n2} already stored" in done.stdout
    assert sql(db, "SELECT count(*), count(DISTINCT prompt_key) FROM prompts") == [(40, 40)]
    for table, key in DUPLICATE_CHECKS.items():
        assert sql(
            db, f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
        ) == [(0,)], table
    # every prompt has exactly the rows an uninterrupted ingest gives it
    subprocess.run(
        _ingest_cmd(model_dir, clean) + ["--no-progress"],
        cwd=REPO,
        env=ingest_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert per_prompt_rows(db) == per_prompt_rows(clean)
    assert table_counts(db) == table_counts(clean)


_KILL_INSIDE_WRITE = """
import os, signal, sys
import ingest.store as store
from ingest.cli import main
calls = [0]
real = store.insert_arrow
def insert_then_die(conn, table, data):
    n = real(conn, table, data)
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)  # half of a batch's tables are in
    return n
store.insert_arrow = insert_then_die
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_inside_a_write_leaves_no_partial_prompt(tmp_path, model_dir):
    """The process dies between two bulk inserts of one batch (after the prompts,
    tokens and some traces went in): none of that batch is in the file."""
    db = tmp_path / "u.duckdb"
    cmd = _ingest_cmd(model_dir, db)[3:] + ["--no-progress"]  # the arguments after ingest.cli
    # 9 insert_arrow calls per batch, one per table;
    # die at the 5th insert of the 3rd batch
    p = subprocess.run(
        [sys.executable, "-c", _KILL_INSIDE_WRITE, str(2 * 9 + 5)] + cmd,
        cwd=REPO,
        env=ingest_env(),
        capture_output=True,
        timeout=300,
    )
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    assert sql(db, "SELECT count(*) FROM prompts") == [(2,)]
    assert sql(db, "SELECT count(DISTINCT prompt_id) FROM tokens") == [(2,)]
    assert sql(db, "SELECT count(*) FROM traces") == [(2 * 3,)]  # target + 2 heads each
    for table in ("token_credits", "component_flows", "edges", "paths"):
        assert sql(
            db, f"SELECT count(*) FROM {table} WHERE trace_id NOT IN (SELECT trace_id FROM traces)"
        ) == [(0,)], table
    subprocess.run(
        [sys.executable, "-m", "ingest.cli"] + cmd,
        cwd=REPO,
        env=ingest_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert sql(db, "SELECT count(*), count(DISTINCT prompt_key) FROM prompts") == [(40, 40)]


def test_an_error_inside_a_write_rolls_the_batch_back(tmp_path, tracer, records, monkeypatch):
    import ingest.store as store
    from ingest.run import ingest

    db = tmp_path / "u.duckdb"
    real, calls = store.insert_arrow, [0]

    def insert_then_fail(conn, table, data):
        calls[0] += 1
        if calls[0] == 9 + 4:  # the 4th table of the 2nd batch
            raise OSError("disk full (simulated)")
        return real(conn, table, data)

    monkeypatch.setattr(store, "insert_arrow", insert_then_fail)
    with pytest.raises(OSError):
        ingest(records[:8], tracer=tracer, model_name="tiny", db=db, batch_size=4, progress=False)
    counts = table_counts(db)
    assert (
        counts["prompts"] == 4
        and counts["tokens"] == sql(db, "SELECT sum(n_tokens) FROM prompts")[0][0]
    )
    assert counts["traces"] == 4
    monkeypatch.setattr(store, "insert_arrow", real)
    s = ingest(records[:8], tracer=tracer, model_name="tiny", db=db, batch_size=4, progress=False)
    assert (s.n_skipped, s.n_ok) == (4, 4)
    assert table_counts(db)["traces"] == 8


# ------------------------------------------------------------------ demo


def test_demo_on_the_tiny_model(tmp_path, model_dir, capsys):
    from ingest.demo import run_demo

    db = tmp_path / "demo.duckdb"
    assert run_demo(model=str(model_dir), n=2, db=db, progress=False) == 0
    out = capsys.readouterr().out
    assert "8 done now (8 ok, 0 failed)" in out
    for title in (
        "Credit at each IOI role",
        "Top paths of the first prompt",
        "Heads with the most credit",
        "Upstream heads feeding",
        "Top paths through",
    ):
        block = out.split(f"-- {title}")[1].split("\n-- ")[0]
        assert "SELECT" in block and "(no rows)" not in block, title
    assert sql(db, "SELECT count(DISTINCT root) FROM traces") == [(4,)]  # target + 3 heads


def test_demo_refuses_bad_counts_before_loading(tmp_path, capsys):
    from unpack.cli import main

    db = tmp_path / "demo.duckdb"
    assert main(["demo", "--db", str(db), "--threads", "0"]) == 2
    assert main(["demo", "--db", str(db), "--ladder-n", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--threads 0: give 1 or more" in err and "--ladder-n -1" in err
    assert not db.exists()


def test_demo_on_smollm2(tmp_path, capsys):
    from ingest.demo import run_demo

    db = tmp_path / "demo.duckdb"
    assert run_demo(n=1, db=db, progress=False) == 0
    out = capsys.readouterr().out
    assert "4 done now (4 ok, 0 failed)" in out
    # SmolLM2 predicts IOI: the IO name beats S on the ioi_io prompt
    assert sql(db, "SELECT logit_diff > 0 FROM prompts WHERE condition = 'ioi_io'") == [(True,)]


def test_new_roots_of_a_prompt_share_one_forward_and_match_tracing_each_alone(
    tmp_path, tracer, records, monkeypatch
):
    """Rerooting stored prompts (as discovery and the composition report do) traces
    all the new roots of a prompt in one pass: one capture per prompt, not one per
    root; and each stored rerooted edge is the one that root traced alone gives."""
    import unpack.tracer as tracer_mod
    from ingest.run import ingest

    recs = [r for r in records if r.condition == "ioi_io"][:3]
    db = tmp_path / "u.duckdb"
    ingest(recs, tracer=tracer, model_name="tiny", db=db, batch_size=6, progress=False)
    rows = []

    def counted(spec, ids, *a, **kw):
        rows.append(int(ids.shape[0]))
        return capture(spec, ids, *a, **kw)

    capture = tracer_mod.capture
    monkeypatch.setattr(tracer_mod, "capture", counted)
    ingest(recs, tracer=tracer, model_name="tiny", db=db, roots=ROOTS, batch_size=6, progress=False)
    assert sum(rows) == len(recs)  # 3 new roots each, one forward per prompt
    monkeypatch.setattr(tracer_mod, "capture", capture)
    stored = sql(
        db,
        "SELECT p.text, t.root_component || '@' || t.root_pos, e.parent, "
        "e.parent_pos, e.child, e.child_pos, e.mode, e.weight FROM traces t JOIN prompts "
        "p USING (prompt_id) JOIN edges e USING (trace_id) WHERE t.root <> 'target'",
    )
    assert len({(r[0], r[1]) for r in stored}) == 3 * len(recs)
    alone = {}
    for text, root in {(r[0], r[1]) for r in stored}:
        rec = next(r for r in recs if r.text == text)
        pe = tracer.trace(
            rec.text, rec.target, rec.distractor, root=root, position_edges=True
        ).position_edges
        for e in pe.itertuples():
            alone[(text, root, e.parent, e.parent_pos, e.child, e.child_pos, e.mode)] = e.weight
    assert len(alone) == len(stored)
    for *key, w in stored:
        assert np.isclose(w, alone[tuple(key)], rtol=1e-4, atol=1e-6), key
