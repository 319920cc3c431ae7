"""The `unpack` command on a tiny model saved as an ordinary HF directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from models import tiny_gpt2, word_tokenizer

ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def unpack(*args, check=None):
    p = subprocess.run([sys.executable, "-m", "unpack.cli", *args], capture_output=True,
                       text=True, env=ENV, timeout=600)
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_gpt2")
    tiny_gpt2(dtype=torch.float32).save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    return str(d)


def test_trace_json_has_every_key(model_dir):
    p = unpack("trace", "--model", model_dir, "--text", "<bos> When Mary and John went to the store",
               "--target", " Mary", "--distractor", " John", "--json", "--top-paths", "7", check=0)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("tokens", "token_credit", "token_credit_pct", "suppression", "paths",
                "component_flow", "edges", "seeds", "target_prob", "logit_diff", "config", "timing"):
        assert key in out, key
    assert out["tokens"][:3] == ["<bos>", "When", "Mary"]
    assert len(out["paths"]) == 7
    for p_ in out["paths"]:
        assert {"chain", "score", "score_pct", "source_pos", "modes", "depth"} <= set(p_)
    assert {e["mode"] for e in out["edges"]} == {"K", "Q", "V", "MLP"}
    assert set(out["timing"]) == {"forward_s", "decompose_s", "sweep_s", "paths_s", "total_s"}
    assert out["config"]["top_paths_k"] == 7


def test_trace_prompts_file_reports_bad_rows(model_dir, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"text": "<bos> Mary John", "target": " Mary"},
        {"text": "<bos> Mary John", "target": " Mary", "root": "attn_1_head_0@-1"},
        {"text": "<bos> John", "target": " Mary", "root": "attn_5_head_0@0"},
    ]) + "\n")
    p = unpack("trace", "--model", model_dir, "--prompts", str(f), "--json", "--preset", "k_only_l2")
    assert p.returncode == 1  # some failed, not all
    lines = [json.loads(x) for x in p.stdout.strip().splitlines()]
    assert lines[1]["root"] == "attn_1_head_0@-1" and lines[1]["config"]["preset"] == "k_only_l2"
    assert "error" in lines[2] and "does not exist" in p.stderr


@pytest.mark.parametrize("args, message", [
    (["--text", "", "--target", " Mary"], "text is empty"),
    (["--text", "<bos> Mary", "--target", " Mary", "--root", "mlp_0@9"], "out of range"),
    (["--text", "<bos> Mary", "--target", " Mary", "--preset", "nope"], "unknown preset"),
    (["--text", "<bos> Mary"], "--target are required"),
])
def test_trace_bad_input_exits_nonzero_with_message(model_dir, args, message):
    p = unpack("trace", "--model", model_dir, *args)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr


def test_hub_name_fails_clearly(tmp_path):
    p = unpack("trace", "--model", "some-org/not-here-model", "--text", "x", "--target", " y")
    assert p.returncode == 2
    assert "some-org/not-here-model" in p.stderr and "Traceback" not in p.stderr


def test_validate_passes_and_prints_every_invariant(model_dir):
    p = unpack("validate", "--model", model_dir, "--text", "<bos> When Mary and John went to the store",
               check=0)
    for i in range(1, 10):
        assert f"PASS  {i} " in p.stdout
    assert "9 passed, 0 failed" in p.stdout


def test_bench_prints_the_table_and_ratio(tmp_path):
    out = tmp_path / "bench.json"
    p = unpack("bench", "--shapes", "tiny", "--lengths", "8", "--batches", "1,2", "--repeats", "1",
               "--reference-tokens", "8", "--json", str(out), check=0)
    assert "| 16 tokens, batch 1 |" in p.stdout and "| 8 tokens, batch 1 |" in p.stdout
    assert "faster" in p.stdout and "peak memory" in p.stdout
    rec = json.loads(out.read_text())["shapes"]["tiny"]
    assert rec["speedup_vs_reference"] > 0 and rec["16 tokens, batch 1"]["total_s"] > 0
