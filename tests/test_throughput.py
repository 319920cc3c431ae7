"""Corpus throughput: batches of mixed length in the ingest give the same stored
numbers, in corpus order, as one prompt at a time; ``bench --corpus`` and the GPU
script's table on a tiny shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import query_db

ROOTS = ["attn_1_head_0@END"]


@pytest.fixture(scope="module")
def tracer64(model_dir):
    from unpack import Tracer
    from unpack.loading import load_model

    model, tok = load_model(str(model_dir))
    return Tracer(model=model.double(), tokenizer=tok)


def test_batched_ingest_stores_what_one_at_a_time_stores(tracer64, tmp_path):
    """A batch-3 ingest against a batch-1 ingest of prompts of mixed length: the same
    prompts in the same order (prompt id follows the corpus) and the same token
    credits of every trace (fp64, 1e-10)."""
    from ingest.run import ingest
    from unpack.tasks import ioi

    n_tok = lambda r: len(tracer64.tokenizer(r.text, add_special_tokens=False)["input_ids"])
    recs = ioi(tracer64.tokenizer, 3, seed=1, controls=True)  # 12 records, 15 to 17 tokens
    short = [r for r in recs if n_tok(r) == min(map(n_tok, recs))]
    long = [r for r in recs if n_tok(r) > n_tok(short[0])]
    records = [r for pair in zip(short, long) for r in pair] + long[len(short) :]  # mixed
    assert short and long
    dbs = {bs: tmp_path / f"b{bs}.duckdb" for bs in (1, 3)}
    for bs, db in dbs.items():
        s = ingest(
            records,
            tracer=tracer64,
            model_name="tiny",
            db=db,
            roots=ROOTS,
            batch_size=bs,
            progress=False,
        )
        assert s.n_ok == len(records) and s.n_failed == 0
    q = (
        "SELECT p.seq, t.root, c.pos, c.credit FROM token_credits c JOIN traces t USING (trace_id) "
        "JOIN prompts p USING (prompt_id) ORDER BY p.seq, t.root, c.pos"
    )
    one, five = (query_db(dbs[bs], q) for bs in (1, 3))
    assert len(one) == len(five) > len(records) * 10
    assert [r[:3] for r in one] == [r[:3] for r in five]
    a = torch.tensor([r[3] for r in one], dtype=torch.float64)
    b = torch.tensor([r[3] for r in five], dtype=torch.float64)
    assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()
    for db in dbs.values():
        seqs = [r[0] for r in query_db(db, "SELECT seq FROM prompts ORDER BY prompt_id")]
        assert seqs == list(range(len(records)))


REPO = Path(__file__).resolve().parents[1]


def run(cmd, env=None):
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, **(env or {})),
    )


def test_bench_corpus_on_tiny(tmp_path):
    """``bench --corpus 1``: the demo-like corpus (1 IOI prompt x 4 conditions, as
    ``ioi(..., controls=True)`` gives) ingested end to end by the driver that
    ``--against`` runs in the other worktree too, with bench's ``--threads``; every
    prompt stored, positive time and rate."""
    from unpack.bench import ioi_tokenizer
    from unpack.tasks import ioi

    out = tmp_path / "c.json"
    p = run(
        [
            sys.executable,
            "-m",
            "unpack.cli",
            "bench",
            "--corpus",
            "1",
            "--shapes",
            "tiny",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(out.read_text())["corpus"]["tiny"]
    n = len(ioi(ioi_tokenizer(2000), 1, seed=0, controls=True))
    assert rec["records"] == n == 4
    now = rec["now"]
    assert now["n_ok"] == n and now["n_failed"] == 0
    assert now["threads"] == 1  # the driver's subprocess takes bench --threads
    assert now["seconds"] > 0 and now["prompts_per_s"] > 0 and "| this checkout | 4 |" in p.stdout


def test_gpu_bench_refuses_without_cuda_and_builds_its_table_on_cpu(tmp_path):
    """``.ci/gpu-bench`` without a CUDA device: exit 2 naming the dry run; the dry run
    on a CPU (tiny shape): one markdown table, §9 checks passing, positive figures."""
    p = run(["bash", ".ci/gpu-bench"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 2 and "no CUDA device" in p.stderr and "--device cpu" in p.stderr
    out = tmp_path / "g.json"
    p = run(
        [
            "bash",
            ".ci/gpu-bench",
            "--device",
            "cpu",
            "--shapes",
            "tiny",
            "--lengths",
            "8",
            "--batch",
            "2",
            "--json",
            str(out),
        ]
    )
    assert p.returncode == 0, p.stderr[-2000:]
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("| tiny |")]
    assert len(table) == 2 and p.stdout.count("| shape |") == 1
    cases = json.loads(out.read_text())["cases"]
    assert set(cases) == {"tiny: 8 tokens, batch 1", "tiny: 16 tokens, batch 2"}
    for c in cases.values():
        passed, total = c["validate"].split()[0].split("/")
        assert c["total_s"] > 0 and c["peak_mib"] > 0 and passed == total and int(total) > 5
