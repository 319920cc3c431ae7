"""The toy ladder: the attention-only induction model at three widths, each saved
at several training steps that span the moment the induction circuit forms.

Every member is trained by the recipe of :mod:`unpack.toy.train` (the same
code, seed and data as the shipped ``attn-only-*`` variants); snapshots are
taken before the listed optimizer steps (step 0 is the initialization, a
random-weights baseline of the same shape) and after the last one. Taking a
snapshot does not touch the training's random state, so the last snapshot is
the fully trained model.

To stay small, a snapshot is stored in float16, and its MLPs (zero and frozen in
an attention-only model, so they write exactly 0) are cut to one cell
(``n_inner = 1``), which changes no output. Layout::

    OUT/<member>/step<N>/   config.json (training_step = N), model.safetensors,
                            tokenizer files, toy.json (evaluation, heads)

so ``--model ladder-d64@step300`` (or ``--model DIR/ladder-d64 --revision step300``)
loads one checkpoint. docs/METHOD.md §10 defines what is measured on them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

import torch

from .groundtruth import identify
from .train import VARIANTS, ToyConfig, evaluate, is_attn_only, train

# Width 64/96/128 with 2/3/4 heads of 32, two layers, attention only.
MEMBERS: dict[str, ToyConfig] = {
    "ladder-d64": VARIANTS["attn-only-d64"],
    "ladder-d96": replace(VARIANTS["attn-only-d64"], d_model=96, n_head=3),
    "ladder-d128": VARIANTS["attn-only-d128"],
}
# Optimizer steps before which a snapshot is taken; the last snapshot is the end.
STEPS = (0, 150, 200, 250, 300)


def step_dir(out: str, member: str, step: int) -> str:
    return os.path.join(out, member, f"step{step}")


def slim(model, cfg: ToyConfig):
    """A float32 copy of an attention-only model with its MLPs cut to one cell and
    its weights rounded to float16 (what is stored)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    assert cfg.attn_only and is_attn_only(model)
    hf = GPT2Config(**dict(model.config.to_dict(), n_inner=1))
    with torch.random.fork_rng():  # building a model must not move the training's RNG
        small = GPT2LMHeadModel(hf)
    state = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    missing, unexpected = small.load_state_dict(state, strict=False)
    assert not unexpected and all(".mlp." in k for k in missing)
    with torch.no_grad():
        for p in small.parameters():
            p.copy_(p.half().float())
        for blk in small.transformer.h:
            for p in blk.mlp.parameters():
                p.zero_()
    small.config._attn_implementation = "eager"
    return small.eval()


def save_step(model, tok, cfg: ToyConfig, out: str, member: str, seed: int, step: int) -> dict:
    """Write one snapshot (float16, slim MLPs) and return its evaluation."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    small = slim(model, cfg)
    ev, gt = evaluate(small, cfg), identify(small, cfg)
    path = step_dir(out, member, step)
    os.makedirs(path, exist_ok=True)
    small.config.training_step = step
    small.half().save_pretrained(path)
    tok.save_pretrained(path)
    meta = dict(
        variant=member,
        seed=seed,
        step=step,
        torch_threads=torch.get_num_threads(),
        config=asdict(cfg),
        eval=ev,
        ground_truth=gt.to_dict(),
    )
    with open(os.path.join(path, "toy.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return dict(
        step=step,
        acc_repeat=ev["acc_repeat"],
        loss_repeat=ev["loss_repeat"],
        prev_found=gt.prev_found,
        induction_found=gt.induction_found,
        prev_heads=gt.prev_heads,
        induction_heads=gt.induction_heads,
    )


def mark_circuit(out: str, member: str, rows: list[dict]) -> None:
    """Write the trained model's heads into every snapshot's ``toy.json`` as
    ``circuit``: the heads whose connection is measured at every step (§10)."""
    last = rows[-1]
    circuit = dict(
        prev_heads=last["prev_heads"],
        induction_heads=last["induction_heads"],
        final_step=last["step"],
    )
    for r in rows:
        path = os.path.join(step_dir(out, member, r["step"]), "toy.json")
        with open(path) as f:
            meta = json.load(f)
        meta["circuit"] = circuit
        with open(path, "w") as f:
            json.dump(meta, f, indent=2)


def train_member(member: str, out: str, seed: int = 0, log=print) -> list[dict]:
    """Train one ladder member and save every snapshot; the evaluations, by step."""
    from .data import make_tokenizer

    cfg = MEMBERS[member]
    tok = make_tokenizer(cfg.n_tokens)
    rows = []
    save = lambda step, m: rows.append(save_step(m, tok, cfg, out, member, seed, step))  # noqa: E731
    model, _, info = train(cfg, seed=seed, log=log, snapshot_at=STEPS, on_snapshot=save)
    save(info["steps"], model)
    mark_circuit(out, member, rows)
    return rows
