"""Unpack on the offline real model (SmolLM2-135M-Instruct, Llama family)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from unpack import Tracer
from unpack.tasks import ioi

TEXT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def tracer():
    return Tracer("smollm2-135m")


def test_ioi_prompts_trace_to_real_components(tracer):
    records = ioi(tracer.tokenizer, n=10, seed=3)
    results = tracer.trace_batch(
        [{"text": r.text, "target": r.target, "distractor": r.distractor} for r in records],
        batch_size=5,
    )
    diffs = [r.logit_diff for r in results]
    print("\nSmolLM2 IO - S logit differences:", " ".join(f"{d:+.2f}" for d in diffs))
    assert sum(d > 0 for d in diffs) >= 8
    modes = set()
    for res in results:
        assert np.isfinite(res.token_credit).all() and np.abs(res.token_credit).sum() > 0
        assert len(res.paths) == 20
        for p in res.paths:
            for name, pos, mode in p.hops:
                tracer.comps.check(name)  # a real component of this model
                assert 0 <= pos < len(res.tokens)
        modes |= set(res.edges["mode"])
    assert {"K", "Q", "V", "MLP"} <= modes


def test_cli_trace_on_smollm2():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "unpack.cli",
            "trace",
            "--model",
            "smollm2-135m",
            "--text",
            TEXT,
            "--target",
            " Mary",
            "--distractor",
            " John",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["logit_diff"] > 0 and math.isfinite(sum(out["token_credit"]))
    assert out["tokens"][1] == " Mary"


def test_readme_python_example_holds(tracer):
    """The README's Python example, as written: its prompt, target, distractor and
    preset, and the strongest path it quotes (``res.paths[0].chain``)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(
        r'res = tr\.trace\("([^"]+)",\s*target="([^"]+)", distractor="([^"]+)", '
        r'preset="([^"]+)"\)',
        readme,
    )
    assert m, "the README's Python example changed shape: update this test"
    text, target, distractor, preset = m.groups()
    claimed = re.search(r"res\.paths\[0\]\.chain\s+# the strongest path, here '([^']+)'", readme)
    assert claimed, "the README no longer quotes the strongest path"
    res = tracer.trace(text, target=target, distractor=distractor, preset=preset)
    assert res.paths[0].chain == claimed.group(1)
