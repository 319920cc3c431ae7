"""The `unpack` command on a tiny model saved as an ordinary HF directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch


ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def unpack(*args, check=None):
    p = subprocess.run(
        [sys.executable, "-m", "unpack.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    return p


def test_trace_json_has_every_key(word_gpt2_dir):
    p = unpack(
        "trace",
        "--model",
        word_gpt2_dir,
        "--text",
        "<bos> When Mary and John went to the store",
        "--target",
        " Mary",
        "--distractor",
        " John",
        "--json",
        "--top-paths",
        "7",
        check=0,
    )
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for key in (
        "tokens",
        "token_credit",
        "token_credit_pct",
        "suppression",
        "paths",
        "component_flow",
        "edges",
        "seeds",
        "target_prob",
        "logit_diff",
        "config",
        "timing",
    ):
        assert key in out, key
    assert out["tokens"][:3] == ["<bos>", "When", "Mary"]
    assert len(out["paths"]) == 7
    for p_ in out["paths"]:
        assert {"chain", "score", "score_pct", "source_pos", "modes", "depth"} <= set(p_)
    assert {e["mode"] for e in out["edges"]} == {"K", "Q", "V", "MLP"}
    assert set(out["timing"]) == {"forward_s", "decompose_s", "sweep_s", "paths_s", "total_s"}
    assert out["config"]["top_paths_k"] == 7


def test_trace_prompts_file_reports_bad_rows(word_gpt2_dir, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"text": "<bos> Mary John", "target": " Mary"},
                {"text": "<bos> Mary John", "target": " Mary", "root": "attn_1_head_0@-1"},
                {"text": "<bos> John", "target": " Mary", "root": "attn_5_head_0@0"},
            ]
        )
        + "\n"
    )
    p = unpack(
        "trace", "--model", word_gpt2_dir, "--prompts", str(f), "--json", "--preset", "k_only_l2"
    )
    assert p.returncode == 1  # some failed, not all
    lines = [json.loads(x) for x in p.stdout.strip().splitlines()]
    assert lines[1]["root"] == "attn_1_head_0@-1" and lines[1]["config"]["preset"] == "k_only_l2"
    assert "error" in lines[2] and "does not exist" in p.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text", "", "--target", " Mary"], "text is empty"),
        (["--text", "<bos> Mary", "--target", " Mary", "--root", "mlp_0@9"], "out of range"),
        (["--text", "<bos> Mary", "--target", " Mary", "--preset", "nope"], "unknown preset"),
        (["--text", "<bos> Mary"], "--target are required"),
    ],
)
def test_trace_bad_input_exits_nonzero_with_message(word_gpt2_dir, args, message):
    p = unpack("trace", "--model", word_gpt2_dir, *args)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr


def test_hub_name_fails_clearly(tmp_path):
    p = unpack("trace", "--model", "some-org/not-here-model", "--text", "x", "--target", " y")
    assert p.returncode == 2
    assert "some-org/not-here-model" in p.stderr and "Traceback" not in p.stderr


def test_validate_passes_and_prints_every_invariant(word_gpt2_dir):
    p = unpack(
        "validate",
        "--model",
        word_gpt2_dir,
        "--text",
        "<bos> When Mary and John went to the store",
        check=0,
    )
    for i in range(1, 10):
        assert f"PASS  {i} " in p.stdout
    assert "9 passed, 0 failed" in p.stdout


def test_bench_prints_the_table_and_ratio(tmp_path):
    out = tmp_path / "bench.json"
    p = unpack(
        "bench",
        "--shapes",
        "tiny",
        "--lengths",
        "8",
        "--batches",
        "1,2",
        "--repeats",
        "1",
        "--reference-tokens",
        "8",
        "--json",
        str(out),
        check=0,
    )
    assert "| 16 tokens, batch 1 |" in p.stdout and "| 8 tokens, batch 1 |" in p.stdout
    assert "faster" in p.stdout and "peak memory" in p.stdout
    rec = json.loads(out.read_text())["shapes"]["tiny"]
    assert rec["speedup_vs_reference"] > 0 and rec["16 tokens, batch 1"]["total_s"] > 0


def test_bench_against_an_earlier_commit(tmp_path):
    """``--against``: the same cases, batches, root and torch threads, on a commit's
    engine checked out in a temporary worktree (here the checkout's own HEAD), one
    ratio per case with the root each engine traced, and the worktree removed afterwards."""
    out = tmp_path / "bench.json"
    p = unpack(
        "bench",
        "--shapes",
        "tiny",
        "--lengths",
        "8",
        "--batches",
        "1,2",
        "--repeats",
        "1",
        "--reference-tokens",
        "0",
        "--against",
        "HEAD",
        "--root",
        "attn_0_head_1@-1",
        "--threads",
        "1",
        "--json",
        str(out),
        check=0,
    )
    assert "rerooted at attn_0_head_1@-1" in p.stdout
    table = p.stdout.split("## against HEAD")[1]
    for case in ("16 tokens, batch 1", "8 tokens, batch 1", "16 tokens, batch 2 (per prompt)"):
        assert f"| tiny | {case} |" in table, case
    ratios = json.loads(out.read_text())["against"]
    assert len(ratios) == 3 and all(r["old_s"] > 0 and r["speedup"] > 0 for r in ratios.values())
    assert all(r["root"] == "attn_0_head_1@-1" for r in ratios.values())
    assert all(r["threads"] == 1 for r in ratios.values())  # the old engine as many as --threads
    trees = subprocess.run(
        ["git", "worktree", "list"],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ).stdout
    assert "unpack-against-" not in trees


def test_every_model_command_takes_device_and_dtype(word_gpt2_dir, tmp_path):
    """--device and the weights' --dtype on trace, validate, bench, ingest, demo and app;
    a device that is not there is a clear error (exit 2) before anything loads."""
    for cmd in ("trace", "validate", "bench", "ingest", "demo", "app", "plan"):
        out = unpack(cmd, "--help", check=0).stdout
        assert "--device" in out and "--dtype" in out and "bfloat16" in out, cmd
    if torch.cuda.is_available():
        missing = f"cuda:{torch.cuda.device_count()}"
    else:
        missing = "cuda"
    p = unpack(
        "trace",
        "--model",
        word_gpt2_dir,
        "--text",
        "<bos> Mary John",
        "--target",
        " Mary",
        "--device",
        missing,
    )
    assert p.returncode == 2 and f"device {missing!r} is not available" in p.stderr
    assert "--device" in p.stderr and "Traceback" not in p.stderr
    p = unpack(
        "ingest",
        "--model",
        word_gpt2_dir,
        "--task",
        "induction",
        "--n",
        "2",
        "--db",
        str(tmp_path / "x.duckdb"),
        "--device",
        missing,
    )
    assert p.returncode == 2 and "not available" in p.stderr
    assert not (tmp_path / "x.duckdb").exists()
    # bf16 weights: the math still runs in fp32 and the trace is finite
    p = unpack(
        "trace",
        "--model",
        word_gpt2_dir,
        "--text",
        "<bos> When Mary and John went to the store",
        "--target",
        " Mary",
        "--distractor",
        " John",
        "--dtype",
        "bfloat16",
        "--json",
        check=0,
    )
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert all(abs(c) < 1e6 for c in out["token_credit"]) and max(map(abs, out["token_credit"])) > 0
    p = unpack(
        "validate",
        "--model",
        word_gpt2_dir,
        "--dtype",
        "bfloat16",
        "--text",
        "<bos> When Mary and John went to the store",
        check=0,
    )
    assert (
        "weights bfloat16 on cpu, math in float32" in p.stdout and "9 passed, 0 failed" in p.stdout
    )


def test_plan_predicts_and_refuses(word_gpt2_dir):
    """`unpack plan` from shapes only: JSON with the figures; exit 1 with the fix when a
    case does not fit; exit 2 for bad input."""
    p = unpack("plan", "--model", "gpt2-small", "--tokens", "256", "--json", check=0)
    d = json.loads(p.stdout)
    assert d["fits"] and d["peak_bytes"] > 475 * 2**20 and d["seconds_per_prompt"] > 0
    assert sum(d["modes"].values()) == 12 and set(d["modes"]) <= {"fold", "project", "virtual"}
    assert set(d["parts"]) >= {"weights", "capture", "layer", "flow"}
    p = unpack("plan", "--model", word_gpt2_dir, "--tokens", "16", check=0)
    assert "peak memory" in p.stdout and "fits" in p.stdout
    p = unpack("plan", "--model", "pythia-6.9b", "--tokens", "4096")
    assert p.returncode == 1 and "DOES NOT FIT" in p.stdout and "--dtype bfloat16" in p.stdout
    p = unpack("plan", "--model", "pythia-6.9b", "--tokens", "0")
    assert p.returncode == 2 and "--tokens 0" in p.stderr
    p = unpack("plan", "--model", "no-such-model-dir/", "--tokens", "16")
    assert p.returncode == 2 and "bench shape" in p.stderr


def test_ingest_refuses_a_prompt_that_cannot_fit(word_gpt2_dir, tmp_path):
    """With less memory than a trace needs (UNPACK_MEMORY_LIMIT), ingest stops before the
    store is touched and says how much it needs and what to change; with enough it runs."""
    db = tmp_path / "s.duckdb"
    args = [
        sys.executable,
        "-m",
        "unpack.cli",
        "ingest",
        "--model",
        word_gpt2_dir,
        "--task",
        "induction",
        "--n",
        "2",
        "--db",
        str(db),
        "--no-progress",
    ]
    p = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env=dict(ENV, UNPACK_MEMORY_LIMIT="200M")
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert "GiB (unpack plan)" in p.stderr and "fewer tokens" in p.stderr
    assert not db.exists()
    p = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env=dict(ENV, UNPACK_MEMORY_LIMIT="20G")
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert db.exists()
