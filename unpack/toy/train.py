"""Train small 2-layer GPT-2 models that do induction (CPU, deterministic by seed).

The checkpoint is an ordinary Hugging Face directory (``config.json``,
``model.safetensors``, ``tokenizer.json``) plus ``toy.json`` (the data settings,
the training settings and the final evaluation), so every ``unpack`` command
loads it.

GPT-2 has no attention-only switch. The attention-only variants zero the MLP
weights and biases (``c_fc``, ``c_proj``) and freeze them: ``gelu(0) = 0``, so
each MLP writes exactly zero and the model is a standard GPT-2 directory.

Recipe (found by trying on this CPU; words drawn with replacement from 128):

1. learned positions start as small sinusoids (still trainable): from a random
   start the models tend to settle on a smeared "look 3-6 tokens back" head
   instead of a previous-token head;
2. phase 1 trains on the induction positions only (the repeated segment), until
   their running loss falls below ``switch_loss`` (at most ``induction_steps``);
   the plain LM loss over all positions sits on a long plateau first;
3. phase 2 is the plain LM loss on every position for ``lm_steps`` (learning
   rate decaying to 10%), so the first occurrence is predicted at chance;
4. in the MLP variants the MLP output projections start at zero and the MLPs
   train only in phase 2, once the circuit has formed: trained from the start
   (or present at their random init) they let the model settle on a
   "predict a word seen before" heuristic or on the smeared solution above.
   So phase 1 of an MLP variant is that of the attention-only variant of the
   same width and seed; the two differ from phase 2 on;
5. heads are 32 wide (see ``VARIANTS``); with 64 words the wider model also
   matched two-word contexts through a "two tokens back" head, with 256 the
   narrow one fell into the smeared solution; 128 gives clean circuits in both.

6. ``attn-only-d128-sparse`` adds ``head_l1`` (a group lasso: the sum over heads
   of the Frobenius norm of each head's rows of ``W_O``) to the loss, from the
   first step; with 8 heads per layer, 0.01 kept every layer-1 head writing,
   0.03 leaves one previous-token head and a few induction heads with most of
   the output, 0.06 stopped the circuit from forming.

Not every seed finds the circuit; ``unpack toy-train`` says so and exits 1.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from ..errors import InputError
from .data import Batch, make_tokenizer, sample


@dataclass
class ToyConfig:
    """Model shape, data and training settings of one toy model."""

    attn_only: bool = True
    d_model: int = 64
    n_head: int = 2
    n_layer: int = 2
    n_tokens: int = 128  # words t0 .. t127 (plus <bos>, <unk>)
    seq_len: int = 33  # <bos> + fillers + segment + segment
    seg_min: int = 4
    seg_max: int = 16
    distinct: bool = False  # words without replacement within a sequence
    induction_steps: int = 3000  # phase 1 at most this long
    switch_loss: float = 0.3  # phase 1 ends when the running induction loss is below this
    lm_steps: int = 600  # phase 2
    batch: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    head_l1: float = 0.0  # group lasso on each head's rows of W_O: few heads keep a role
    pos_init: float = 0.03  # amplitude of the sinusoidal start of the learned positions


# Shipped variants: attention-only and with MLPs, at two widths. Heads are 32
# wide in all of them (more heads as the width grows): with 16-wide heads the
# previous-token head copies too little of the word and the models often settle
# on a smeared non-induction solution instead.
VARIANTS: dict[str, ToyConfig] = {
    "attn-only-d64": ToyConfig(attn_only=True, d_model=64, n_head=2),
    "attn-only-d128": ToyConfig(attn_only=True, d_model=128, n_head=4),
    "mlp-d64": ToyConfig(attn_only=False, d_model=64, n_head=2),
    "mlp-d128": ToyConfig(attn_only=False, d_model=128, n_head=4),
    # more heads than the task needs, and a price on each head that writes: the circuit
    # is a few of 16 heads, so random circuits of its size can miss it
    "attn-only-d128-sparse": ToyConfig(attn_only=True, d_model=128, n_head=8, head_l1=0.03),
    # the test suite's setting: small and fast
    "tiny": ToyConfig(
        attn_only=True,
        d_model=64,
        n_head=2,
        n_tokens=48,
        seq_len=17,
        seg_min=3,
        seg_max=8,
        induction_steps=800,
        lm_steps=150,
        batch=32,
    ),
}


def variant(name: str, **overrides) -> ToyConfig:
    """A named variant with any field overridden (None values are ignored)."""
    if name not in VARIANTS:
        raise InputError(f"unknown toy variant {name!r}; choose one of {', '.join(VARIANTS)}")
    cfg = replace(VARIANTS[name], **{k: v for k, v in overrides.items() if v is not None})
    if cfg.d_model % cfg.n_head:
        raise InputError(f"d_model={cfg.d_model} must be divisible by n_head={cfg.n_head}")
    if not (2 <= cfg.seg_min <= cfg.seg_max and 1 + 2 * cfg.seg_max <= cfg.seq_len):
        raise InputError(
            f"need 2 <= seg_min <= seg_max and 1 + 2*seg_max <= seq_len "
            f"(got seg_min={cfg.seg_min}, seg_max={cfg.seg_max}, seq_len={cfg.seq_len})"
        )
    if cfg.distinct and cfg.n_tokens < cfg.seq_len:
        raise InputError(
            f"n_tokens={cfg.n_tokens} is too small for {cfg.seq_len} distinct words "
            "per sequence; raise n_tokens or turn distinct off"
        )
    return cfg


def zero_mlps(model) -> None:
    """Make every MLP write exactly zero and keep it so (attention-only variant)."""
    for blk in model.transformer.h:
        for lin in (blk.mlp.c_fc, blk.mlp.c_proj):
            with torch.no_grad():
                lin.weight.zero_()
                lin.bias.zero_()
            lin.weight.requires_grad_(False)
            lin.bias.requires_grad_(False)


def is_attn_only(model) -> bool:
    """True when every MLP weight and bias is zero."""
    return all(not p.any() for blk in model.transformer.h for p in blk.mlp.parameters())


def build_model(cfg: ToyConfig, seed: int):
    """A freshly initialized model of the variant's shape: the trainer's starting point
    (MLPs zeroed and frozen if attention-only; MLP output projections zero otherwise)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2Config(
        vocab_size=cfg.n_tokens + 2,
        n_positions=cfg.seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.d_model,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    hf._attn_implementation = "eager"
    model = GPT2LMHeadModel(hf)
    with torch.no_grad():  # sinusoidal start for the (trainable) position embeddings
        S, D = model.transformer.wpe.weight.shape
        angle = torch.arange(S)[:, None] * torch.exp(-math.log(100.0) * torch.arange(0, D, 2) / D)
        wpe = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(S, D)
        model.transformer.wpe.weight.copy_(cfg.pos_init * wpe)
    if cfg.attn_only:
        zero_mlps(model)
    else:  # zero-init output projections: the MLPs start silent and grow in phase 2
        for blk in model.transformer.h:
            with torch.no_grad():
                blk.mlp.c_proj.weight.zero_()
                blk.mlp.c_proj.bias.zero_()
    return model


def head_penalty(model, cfg: ToyConfig) -> torch.Tensor:
    """``Σ_L Σ_h ‖W_O[L, h]‖_F``: the norm of each head's rows of the output projection,
    summed (a group lasso: it silences whole heads, not single weights)."""
    d = cfg.d_model // cfg.n_head
    return sum(
        blk.attn.c_proj.weight.view(cfg.n_head, d, -1).pow(2).sum((1, 2)).sqrt().sum()
        for blk in model.transformer.h
    )


def batch_losses(model, b: Batch) -> torch.Tensor:
    """Per-position next-token loss ``[B, S-1]``: entry q predicts token q+1."""
    logits = model(b.ids).logits[:, :-1]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), b.ids[:, 1:].reshape(-1), reduction="none"
    ).view(b.ids.shape[0], -1)


@torch.no_grad()
def evaluate(model, cfg: ToyConfig, seed: int = 12345, n_seqs: int = 512) -> dict:
    """Loss on the first occurrence vs the repeated segment, and in-context accuracy
    (argmax = next token) on the repeated segment, over fresh sequences."""
    b = sample(cfg, torch.Generator().manual_seed(seed), n_seqs)
    model.eval()
    logits = model(b.ids).logits[:, :-1]
    loss = F.cross_entropy(logits.transpose(1, 2), b.ids[:, 1:], reduction="none")
    right = logits.argmax(-1) == b.ids[:, 1:]
    m1, m2 = b.first_mask()[:, :-1], b.repeat_mask()[:, :-1]
    return dict(
        loss_first=loss[m1].mean().item(),
        loss_repeat=loss[m2].mean().item(),
        acc_first=right[m1].float().mean().item(),
        acc_repeat=right[m2].float().mean().item(),
        chance_loss=math.log(cfg.n_tokens),
        n_seqs=n_seqs,
    )


def train(
    cfg: ToyConfig, seed: int = 0, log=print, log_every: int = 200, snapshot_at=(), on_snapshot=None
):
    """Train one model; returns ``(model, tokenizer, info)``. Deterministic given the
    seed and the number of torch threads. ``on_snapshot(step, model)`` is called
    before each optimizer step listed in ``snapshot_at`` (0: the initialization)."""
    model = build_model(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    mlp = [p for blk in model.transformer.h for p in blk.mlp.parameters() if p.requires_grad]
    for p in mlp:  # MLPs train in phase 2 only (recipe step 4)
        p.requires_grad_(False)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            dict(params=decay, weight_decay=cfg.weight_decay),
            dict(params=no_decay, weight_decay=0.0),
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    t0 = time.time()
    model.train()
    ema, switch, step = None, None, 0  # running phase-1 loss; step where phase 2 began
    while switch is None or step < switch + cfg.lm_steps:
        if on_snapshot and step in snapshot_at:
            on_snapshot(step, model)
            model.train()
        if switch is None:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        else:
            frac = (step - switch) / cfg.lm_steps
            lr = cfg.lr * (0.55 + 0.45 * math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        b = sample(cfg, gen, cfg.batch)
        ls = batch_losses(model, b)
        loss = ls[b.repeat_mask()[:, :-1]].mean() if switch is None else ls.mean()
        opt.zero_grad(set_to_none=True)
        (loss + cfg.head_l1 * head_penalty(model, cfg) if cfg.head_l1 else loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if switch is None:
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if log and step % log_every == 0:
            phase = "induction" if switch is None else "lm"
            log(
                f"step {step:5d}  {phase:9s} loss {loss.item():.4f}  lr {lr:.2e}  {time.time() - t0:5.1f}s"
            )
        step += 1
        if switch is None and (ema < cfg.switch_loss or step >= cfg.induction_steps):
            switch = step
            for p in mlp:
                p.requires_grad_(True)
            if log:
                log(
                    f"step {step:5d}  phase 2 (LM loss on every position); running induction loss {ema:.3f}"
                )
    model.eval()
    if cfg.attn_only:
        assert is_attn_only(model)
    info = dict(
        train_seconds=round(time.time() - t0, 1),
        steps=step,
        switch_step=switch,
        switch_loss=round(ema, 4),
        eval=evaluate(model, cfg),
    )
    return model, make_tokenizer(cfg.n_tokens), info


def save(
    model, tokenizer, cfg: ToyConfig, out: str, variant_name: str, seed: int, info: dict
) -> None:
    """Write the Hugging Face directory and ``toy.json``."""
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tc = os.path.join(out, "tokenizer_config.json")  # a class name transformers 4.x knows too
    with open(tc) as f:
        tcfg = json.load(f)
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(tc, "w") as f:
        json.dump(tcfg, f, indent=2)
    meta = dict(
        variant=variant_name,
        seed=seed,
        torch_threads=torch.get_num_threads(),
        config=asdict(cfg),
        **info,
    )
    with open(os.path.join(out, "toy.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load(path: str):
    """``(model, tokenizer, ToyConfig)`` of a saved toy directory, eval mode, eager attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta_path = os.path.join(path, "toy.json")
    if not os.path.isdir(path):
        raise InputError(
            f"--model {path!r} is not a directory; train one with "
            "`unpack toy-train --variant attn-only-d64 --out DIR`"
        )
    if not os.path.isfile(meta_path):
        raise InputError(
            f"{path!r} has no toy.json, so it is not a toy induction model; "
            "train one with `unpack toy-train --out DIR`"
        )
    with open(meta_path) as f:
        cfg = ToyConfig(**json.load(f)["config"])
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok, cfg
