"""Memory bounds (docs/RELIABILITY.md): the path search stops at a node cap set
by the memory the planner says a trace has, and says so; batch sizes are at
least 1 and an ingest's batch is capped by the planner, with a notice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT, TARGET = "w1 w2 w3 w4 w5 w6 w7", " w8"


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory) -> str:
    """A tiny random GPT-2 with six layers: deep enough that a path search without
    pruning (path_min_frac=0) has millions of partial paths at 7 tokens."""
    import torch

    from tests.models import tiny_gpt2, word_tokenizer

    d = tmp_path_factory.mktemp("deep_gpt2")
    tiny_gpt2(dtype=torch.float32, n_layer=6, n_head=4, n_embd=32).save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    return str(d)


def test_path_search_without_pruning_stops_at_its_memory_budget(deep_model):
    """No pruning and no node cap: the search stops at the budget the planner gives
    it (an eighth of UNPACK_MEMORY_LIMIT, at least 120 MiB: 223,696 nodes), the
    result and a notice say so, and the process stays within that limit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", UNPACK_MEMORY_LIMIT="1G", HF_HUB_OFFLINE="1")
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK,
            "trace",
            "--model",
            deep_model,
            "--text",
            TEXT,
            "--target",
            TARGET,
            "--top-paths",
            "3",
            "--set",
            "path_min_frac=0",
            "--set",
            "max_path_nodes=1000000000",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "top 3 paths (truncated search)" in p.stdout
    assert "notice: path search truncated at 223,696 partial paths" in p.stderr, p.stderr[-2000:]
    assert "memory budget" in p.stderr and "path_min_frac" in p.stderr
    peak = int(p.stderr.rsplit("peak RSS ", 1)[1].split()[0])
    assert peak < 1 << 30, f"peak RSS {peak / 2**20:.0f} MiB, the limit is 1 GiB"


# VmHWM: the high-water mark of this process's own memory since its exec. (getrusage's
# ru_maxrss also keeps the forked parent's resident size across the exec, which in a
# long test session is pytest's, not the trace's.)
_PEAK = """import re, sys
from unpack.cli import main
code = main(sys.argv[1:])
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
print("peak RSS", int(hwm[1]) * 1024, file=sys.stderr)
sys.exit(code)
"""


def test_the_node_cap_is_the_budget_over_the_bytes_of_a_node(deep_model):
    """The search counts its nodes against ``max_bytes``: it holds at most
    ``max_bytes // NODE_BYTES``, and says truncated."""
    import torch

    from unpack import Tracer
    from unpack.loading import load_model
    from unpack.paths import NODE_BYTES, PathSearch

    model, tok = load_model(deep_model)
    tracer = Tracer(model=model, tokenizer=tok)
    seen = []
    real = PathSearch.__post_init__

    def spy(self):
        real(self)
        seen.append(self)

    PathSearch.__post_init__ = spy
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("unpack.tracer.path_bytes", lambda device: 3 << 20)
            res = tracer.trace(TEXT, target=TARGET, path_min_frac=0.0, max_path_nodes=10**9)
    finally:
        PathSearch.__post_init__ = real
    (search,) = seen
    assert search.max_nodes == (3 << 20) // NODE_BYTES and search.memory_capped
    assert len(search.b) <= search.max_nodes and search.truncated and res.paths_truncated
    assert res.paths and any("truncated" in w for w in res.warnings)
    assert torch.isfinite(search.score).all()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_trace_batch_size_below_1_is_refused(value, deep_model, capsys):
    from unpack.cli import main

    assert (
        main(
            [
                "trace",
                "--model",
                deep_model,
                "--text",
                TEXT,
                "--target",
                TARGET,
                "--batch-size",
                value,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"--batch-size {value}: give 1 or more" in err and "loading" not in err


def test_ingest_caps_a_huge_batch_size_with_a_notice(deep_model, tmp_path, capsys):
    from ingest.run import MIN_BATCH_CAP
    from unpack.cli import main

    db = tmp_path / "s.duckdb"
    assert (
        main(
            [
                "ingest",
                "--model",
                deep_model,
                "--task",
                "induction",
                "--n",
                "1",
                "--batch-size",
                "100000",
                "--db",
                str(db),
                "--no-progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"--batch-size 100000 capped at {MIN_BATCH_CAP} prompts per batch" in err, err
