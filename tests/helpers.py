"""Helpers that several test files share: the equality tolerance, reading a store
from the test process, a store of a shipped toy model's induction prompts, and a
command whose progress is watched on stderr."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "unpack" / "toy" / "checkpoints" / "attn-only-d64")  # a shipped toy


def toy_ingest(db, n: int, *flags: str) -> list[str]:
    """``unpack ingest`` arguments: ``n`` induction prompts on the shipped toy into ``db``."""
    return ["ingest", "--model", TOY, "--task", "induction", "--n", str(n), "--db", str(db), *flags]


def rel(a, b) -> float:
    """The largest absolute difference of ``a`` from ``b``, relative to ``b``'s largest
    magnitude (arrays, lists or tensors): the tests' equality tolerance."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def assert_contractions_agree(tr, prep) -> None:
    """The three K/Q contractions (docs/METHOD.md §4: fold W_K (R_s^T) Q into one
    vector; project and rotate each writer; project head writers through virtual
    weights) give the same raw key and query scores, none all zero, at every layer
    of ``tr``'s model on the prepared prompt ``prep`` (fp64 capture, each layer's
    own rotary tables)."""
    import torch

    from unpack import decompose as dec
    from unpack.capture import capture

    n = len(prep.ids)
    cap = capture(tr.spec, torch.tensor([prep.ids]), torch.tensor([n]), dtype=torch.float64)
    chat = dec.writers_hat(cap)
    virtual = (cap.comps, cap.Z, tr.engine.vws)
    for L in range(tr.spec.n_layers):
        lc = cap.layers[L]
        lw, C = lc.weights(), cap.comps.n_writers_attn(L)
        sc = {
            m: dec.AttnScores(tr.spec, lw, lc, chat[:, :C], lc.cos, lc.sin, m, virtual)
            for m in ("fold", "project", "virtual")
        }
        for side in ("raw_key", "raw_query"):
            a = getattr(sc["fold"], side)(0, n, n)
            assert a.abs().max() > 0, (L, side)
            for m in ("project", "virtual"):
                assert rel(a.numpy(), getattr(sc[m], side)(0, n, n).numpy()) <= 1e-12, (L, side, m)


def query_db(db, q, params=None, df: bool = False):
    """A read-only query on the store ``db`` (its rows, or a DataFrame with ``df``),
    on a connection opened and closed here (a running app holds its own)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(q, params or [])
        return cur.df() if df else cur.fetchall()
    finally:
        con.close()


def toy_store(toy: Path, db, n: int):
    """``(tracer, ground truth)`` of the shipped toy checkpoint ``toy``, after storing
    ``n`` of its induction prompts (seed 0) into ``db``."""
    import json

    import pytest
    import torch

    from ingest.run import ingest
    from unpack import Tracer
    from unpack.loading import load_model
    from unpack.tasks import induction

    if not toy.exists():
        pytest.fail(
            f"{toy} is missing; rebuild with `unpack toy-train --variant all "
            "--out unpack/toy/checkpoints`"
        )
    torch.set_num_threads(1)
    m, tok = load_model(str(toy))
    tracer = Tracer(model=m, tokenizer=tok)
    c = m.config
    ingest(
        induction(tok, n, seed=0),
        tracer=tracer,
        model_name=str(toy),
        db=db,
        progress=False,
        model_info={
            "model_type": "gpt2",
            "n_layers": c.n_layer,
            "n_heads": c.n_head,
            "d_model": c.n_embd,
        },
    )
    return tracer, json.loads((toy / "toy.json").read_text())["ground_truth"]


def truth_heads(truth: dict) -> tuple[set[str], set[str]]:
    """``(previous-token, induction)`` head names of a toy's ground truth (toy.json):
    the former in layer 0, the latter in layer 1."""
    return (
        {f"attn_0_head_{h}" for h in truth["prev_heads"]},
        {f"attn_1_head_{h}" for h in truth["induction_heads"]},
    )


def start_until(cmd, pattern: bytes, env: dict, timeout: float = 180, stdout=subprocess.PIPE):
    """Start ``cmd`` in the repository and read its stderr in a thread; return
    ``(process, stderr chunks, reader thread)`` once ``pattern`` has shown while
    the process still runs. Otherwise the process is killed and the test fails
    with the end of its stderr."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.PIPE)
    seen, log = threading.Event(), []

    def read():
        buf = b""
        while chunk := proc.stderr.read1(4096):
            buf += chunk
            log.append(chunk)
            if re.search(pattern, buf):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not seen.wait(0.01) and proc.poll() is None and time.monotonic() < deadline:
        pass
    if not (seen.is_set() and proc.poll() is None):
        proc.kill()
        proc.wait(30)
        raise AssertionError(
            "no progress before the end: " + b"".join(log).decode(errors="replace")[-2000:]
        )
    return proc, log, reader
