"""The toy ladder in the store: every shipped size and training step of
:mod:`unpack.toy.ladder` traced on the induction task, rerooted at the trained
model's induction heads at END, so Compare can show the induction circuit
forming across size and training (docs/METHOD.md §10)."""

from __future__ import annotations

import json
from pathlib import Path


def checkpoints(root: Path | None = None) -> list[tuple[str, str, dict]]:
    """``(member, revision, circuit)`` of every shipped ladder checkpoint, each
    member's steps in training order; ``circuit``: the trained model's heads."""
    from unpack.loading import LADDER_DIR, _revisions

    root = Path(root or LADDER_DIR)
    out = []
    for member in sorted(d.name for d in root.iterdir() if d.is_dir()):
        for rev in _revisions(root / member):
            with open(root / member / rev / "toy.json") as f:
                out.append((member, rev, json.load(f)["circuit"]))
    return out


def induction_roots(circuit: dict) -> list[str]:
    """The ``--roots`` entry that reroots at every induction head (layer 1) at END."""
    return [",".join(f"1.{h}" for h in circuit["induction_heads"]) + "@END"]


def ingest_ladder(
    db, n: int = 20, batch_size: int = 32, progress: bool = True, out=print, keep=None
) -> list:
    """Trace ``n`` induction prompts on every ladder checkpoint into ``db``; the
    ingest summaries, one per checkpoint. ``keep(member, revision)``: which
    checkpoints to take (default all)."""
    from transformers.utils import logging as hf_logging

    from unpack import Tracer
    from unpack.loading import load_model
    from unpack.tasks import induction

    from .run import ingest

    hf_logging.disable_progress_bar()
    summaries = []
    for member, rev, circuit in checkpoints():
        if keep is not None and not keep(member, rev):
            continue
        name = f"{member}@{rev}"
        out(f"loading {name} ...", flush=True)
        model, tok = load_model(name)
        tracer = Tracer(model=model, tokenizer=tok)
        records = induction(tok, n, seed=0)
        s = ingest(
            records,
            tracer=tracer,
            model_name=name,
            db=db,
            roots=induction_roots(circuit),
            batch_size=batch_size,
            progress=progress,
        )
        out(
            f"{name}: {s.n_ok} prompts traced ({s.n_skipped} already stored), rerooted at "
            f"{induction_roots(circuit)[0]}",
            flush=True,
        )
        summaries.append(s)
    return summaries


def ladder_table(db):
    """The induction strength per size and step (``ingest.queries.induction_strength``),
    rounded for printing."""
    from .queries import induction_strength
    from .store import open_read_only

    con = open_read_only(str(db))
    try:
        df = induction_strength(con, "kqv_aligned")
    finally:
        con.close()
    if df.empty:
        return df
    cols = [
        "model",
        "n_params",
        "d_model",
        "n_heads",
        "step",
        "acc_repeat",
        "K_prev_to_ind",
        "K_share",
        "mean_p_target",
        "prompts",
    ]
    return df[cols].round({"acc_repeat": 3, "K_prev_to_ind": 4, "K_share": 2, "mean_p_target": 3})


def show_ladder(db, out=print) -> None:
    df = ladder_table(db)
    out(
        "\n-- the induction circuit across size and training (docs/METHOD.md §10): K interaction "
        "from the induction heads into the previous-token heads, and the accuracy on the "
        "repeated half"
    )
    out(df.to_string(index=False) if len(df) else "(no toy ladder models in the store)")
