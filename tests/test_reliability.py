"""Reliability: non-finite traces are failures, every argument is checked before
a model loads, corpus roots, roles that no prompt has, SIGINT during start-up.

Real parts throughout: ``unpack`` run as a subprocess, tiny random models saved
as Hugging Face directories, real DuckDB files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import torch

from tests.models import build_model_dir, tiny_gpt2, word_tokenizer

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
ENV["PYTHONPATH"] = str(REPO) + os.pathsep + ENV.get("PYTHONPATH", "")
MISSING_MODEL = "/nonexistent/model-dir"  # a check that runs first never gets to the model


def unpack(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "unpack.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        cwd=REPO,
    )


def save(model, d: Path) -> str:
    return str(build_model_dir(d, model=model, tokenizer=word_tokenizer()))


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory):
    """The tiny model with one NaN weight in layer 0's MLP."""
    m = tiny_gpt2(dtype=torch.float32)
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight[3, 5] = float("nan")
    return save(m, tmp_path_factory.mktemp("nan"))


@pytest.fixture(scope="module")
def huge_model_dir(tmp_path_factory):
    """Finite weights whose products overflow float32 (but not float64): layer 0's
    MLP scaled by 1e20 in and out writes ~1e40 into the residual."""
    m = tiny_gpt2(dtype=torch.float32)
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight.mul_(1e20)
        m.transformer.h[0].mlp.c_proj.weight.mul_(1e20)
    return save(m, tmp_path_factory.mktemp("huge"))


TEXT = "<bos> When Mary and John went to the store , John gave a drink to"


# ------------------------------------------------------------------ 1. non-finite results


def test_trace_with_a_nan_weight_fails_naming_the_weights(nan_model_dir):
    p = unpack(
        "trace",
        "--model",
        nan_model_dir,
        "--text",
        TEXT,
        "--target",
        " Mary",
        "--distractor",
        " John",
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "non-finite" in p.stderr and "weights" in p.stderr, p.stderr
    assert "transformer.h.0.mlp.c_fc.weight" in p.stderr, p.stderr
    assert "p(target)=nan" not in p.stdout and "Traceback" not in p.stderr


def test_overflow_in_float32_is_an_error_that_names_the_dtype(huge_model_dir):
    p = unpack("trace", "--model", huge_model_dir, "--text", TEXT, "--target", " Mary", "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "float32" in p.stderr and "overflow" in p.stderr and "--dtype float64" in p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["error"]
    ok = unpack(
        "trace",
        "--model",
        huge_model_dir,
        "--text",
        TEXT,
        "--target",
        " Mary",
        "--dtype",
        "float64",
    )  # the fix the message names works
    assert ok.returncode == 0 and "p(target)=" in ok.stdout, ok.stderr


def test_the_api_raises_or_collects_non_finite_traces(nan_model_dir):
    from unpack import InputError, TraceFailure, Tracer

    tr = Tracer(nan_model_dir)
    with pytest.raises(InputError, match="non-finite"):
        tr.trace(TEXT, " Mary", " John")
    out = tr.trace_batch([{"text": TEXT, "target": " Mary"}], on_error="collect")
    assert isinstance(out[0], TraceFailure) and "non-finite" in out[0].error


def test_ingest_stores_non_finite_prompts_as_failed(nan_model_dir, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": t, "target": " Mary"}) + "\n"
            for t in (TEXT, "<bos> Then , Anne and Mary went to the park .")
        )
    )
    db = tmp_path / "u.duckdb"
    p = unpack(
        "ingest",
        "--model",
        nan_model_dir,
        "--corpus",
        str(corpus),
        "--db",
        str(db),
        "--no-progress",
    )
    assert p.returncode == 1, p.stdout + p.stderr  # every prompt failed
    con = duckdb.connect(str(db), read_only=True)
    rows = con.sql("SELECT status, error, logit_diff FROM prompts").fetchall()
    n_credit = con.execute("SELECT count(*) FROM token_credits").fetchone()[0]
    con.close()
    assert len(rows) == 2 and {r[0] for r in rows} == {"failed"}, rows
    assert all("non-finite" in r[1] and "weights" in r[1] for r in rows), rows
    assert n_credit == 0


# ------------------------------------------------------------------ 3. overrides checked first


def run_main(capsys, *args) -> tuple[int, str]:
    """The ``unpack`` CLI in this process (for the many quick argument checks)."""
    from unpack.cli import main

    rc = main(list(args))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["trace", "ingest"])
@pytest.mark.parametrize(
    "item, message",
    [
        ("beta=abc", "beta must be a number"),
        ("w_K=nan", "w_K=nan: the K branch weight must be a finite number"),
        ("w_K=Infinity", "must be a finite number"),
        ("top_paths_k=1.5", "must be a whole number"),
        ("edge_min_frac=-1", "must be >= 0"),
        ("mlp_rule=cubic", "not one of aligned, weighted, l2"),
        ("beta_typo=1", "unknown config field 'beta_typo'"),
    ],
)
def test_every_override_is_typed_and_checked_before_the_model_loads(
    cmd, item, message, tmp_path, capsys
):
    src = (
        ["--text", "x", "--target", " y"]
        if cmd == "trace"
        else ["--task", "ioi", "--db", str(tmp_path / "u.duckdb")]
    )
    rc, err = run_main(capsys, cmd, "--model", MISSING_MODEL, *src, "--set", item)
    assert rc == 2, err
    assert message in err and item in err, err
    assert "nonexistent" not in err
    assert not (tmp_path / "u.duckdb").exists()  # no junk run


def test_a_bad_override_in_a_real_process_exits_2_without_a_traceback(tmp_path):
    p = unpack(
        "ingest",
        "--model",
        MISSING_MODEL,
        "--task",
        "ioi",
        "--set",
        "w_K=nan",
        "--db",
        str(tmp_path / "u.duckdb"),
    )
    assert p.returncode == 2 and "w_K=nan" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "u.duckdb").exists()


def test_dedicated_flags_and_their_overrides_agree(tmp_path, capsys):
    db = str(tmp_path / "u.duckdb")
    rc_a, a = run_main(
        capsys,
        "ingest",
        "--model",
        MISSING_MODEL,
        "--task",
        "ioi",
        "--edge-min-frac",
        "-1",
        "--db",
        db,
    )
    rc_b, b = run_main(
        capsys,
        "ingest",
        "--model",
        MISSING_MODEL,
        "--task",
        "ioi",
        "--set",
        "edge_min_frac=-1",
        "--db",
        db,
    )
    assert rc_a == rc_b == 2
    assert "--edge-min-frac -1" in a and "edge_min_frac=-1" in b
    rc, c = run_main(
        capsys,
        "trace",
        "--model",
        MISSING_MODEL,
        "--text",
        "x",
        "--target",
        " y",
        "--top-paths",
        "-3",
    )
    assert rc == 2 and "--top-paths -3" in c, c


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--roots", "attn_0_head_0"], "must look like COMPONENT@ROLE"),
        (["--batch-size", "0"], "--batch-size 0"),
    ],
)
def test_ingest_arguments_are_checked_before_the_model_loads(args, message, tmp_path, capsys):
    rc, err = run_main(
        capsys,
        "ingest",
        "--model",
        MISSING_MODEL,
        "--task",
        "ioi",
        "--db",
        str(tmp_path / "u.duckdb"),
        *args,
    )
    assert rc == 2 and message in err, err
    assert "nonexistent" not in err


def test_trace_root_syntax_and_files_are_checked_before_the_model_loads(tmp_path, capsys):
    rc, err = run_main(
        capsys,
        "trace",
        "--model",
        MISSING_MODEL,
        "--text",
        "x",
        "--target",
        " y",
        "--root",
        "attn_0_head_0",
    )
    assert rc == 2 and "COMPONENT@POSITION" in err, err
    rc, err = run_main(
        capsys,
        "ingest",
        "--model",
        MISSING_MODEL,
        "--corpus",
        str(tmp_path / "none.jsonl"),
        "--db",
        str(tmp_path / "u.duckdb"),
    )
    assert rc == 2 and "none.jsonl" in err and "nonexistent" not in err, err


def test_valid_overrides_are_typed_by_their_field():
    from unpack.config import make_config, parse_overrides

    got = parse_overrides(
        [
            "beta=0.5",
            "w_K=1",
            "top_paths_k=3",
            "position_edges=false",
            "seed=metric",
            "path_min_frac=1e-5",
        ]
    )
    assert got == {
        "beta": 0.5,
        "w_K": 1.0,
        "top_paths_k": 3,
        "position_edges": False,
        "seed": "metric",
        "path_min_frac": 1e-5,
    }
    assert type(got["top_paths_k"]) is int and type(got["w_K"]) is float
    assert make_config("kqv_aligned", **got).top_paths_k == 3


# ------------------------------------------------------------------ 6. corpus roots, roles, SIGINT


def test_corpus_root_is_traced_and_bad_rows_keep_their_text(model_dir, tmp_path):
    rows = [
        {
            "text": "When Mary and John went to the store, John gave a drink to",
            "target": " Mary",
            "root": "attn_1_head_0@END",
        },
        {"text": "Then Anne and Mary went to the park", "target": " Anne", "root": "mlp_0@2"},
        {"text": "When Anne went to the store", "target": " Anne", "root": "attn_1_head_0@IO"},
        {"text": "When John went to the park", "target": " John", "root": "attn_7_head_0@END"},
        "this line is not JSON",
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows))
    db = tmp_path / "u.duckdb"
    p = unpack(
        "ingest",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus),
        "--db",
        str(db),
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    con = duckdb.connect(str(db), read_only=True)
    traces = con.execute(
        "SELECT p.text, t.root, t.root_pos FROM traces t JOIN prompts p "
        "USING (prompt_id) ORDER BY p.seq, t.root"
    ).fetchall()
    failed = con.execute(
        "SELECT seq, text, error FROM prompts WHERE status = 'failed' ORDER BY seq"
    ).fetchall()
    con.close()
    assert traces == [
        (rows[0]["text"], "attn_1_head_0@END", 13),
        (rows[0]["text"], "target", 13),
        (rows[1]["text"], "mlp_0@2", 2),
        (rows[1]["text"], "target", 7),
    ], traces
    assert [f[0] for f in failed] == [2, 3, 4]  # seq set, after the rows that loaded
    texts = {f[1]: f[2] for f in failed}
    assert "no role 'IO'" in texts[rows[2]["text"]] and "END" in texts[rows[2]["text"]]
    assert "no component 'attn_7_head_0'" in texts[rows[3]["text"]]
    assert "not valid JSON" in texts["this line is not JSON"]
    # the error column itself names the file and the line (not only the metadata)
    line = 1 + next(i for i, r in enumerate(rows) if r == "this line is not JSON")
    assert texts["this line is not JSON"].startswith(f"{corpus}:{line}: "), texts


def test_a_role_no_prompt_has_is_a_warning_with_the_roles_there_are(model_dir, tmp_path):
    db = tmp_path / "u.duckdb"
    p = unpack(
        "ingest",
        "--model",
        str(model_dir),
        "--task",
        "ioi",
        "--n",
        "1",
        "--db",
        str(db),
        "--roots",
        "1.0@S3",
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    msg = "no prompt has the role 'S3'"
    assert msg in p.stderr and "END, IO, S1, S2" in p.stderr, p.stderr
    assert msg in p.stdout  # in the summary too


def test_sigint_during_start_up_of_trace_exits_130_without_a_traceback(word_gpt2_dir):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unpack.cli",
            "trace",
            "--model",
            word_gpt2_dir,
            "--text",
            TEXT,
            "--target",
            " Mary",
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # importing torch
    assert proc.poll() is None, "trace ended before the signal"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "unpack trace: interrupted" in err and "Traceback" not in err
