"""``unpack toy-train``, ``unpack random-model`` and the options of the toy
induction report (``unpack report induction``; ``unpack toy-report`` is its
alias). Top-level imports: argparse only."""

from __future__ import annotations

import argparse

from ..flags import add_command, add_flags

SHIPPED = ("attn-only-d64", "attn-only-d128", "mlp-d64", "mlp-d128", "attn-only-d128-sparse")
LADDER = ("ladder-d64", "ladder-d96", "ladder-d128")
VARIANT_NAMES = SHIPPED + ("tiny",) + LADDER

_TRAIN_EPILOG = """\
Variants (2 layers, 32-wide heads unless said, 128 words, sequences of 33 tokens):
  attn-only-d64   width 64, 2 heads, MLPs zeroed and frozen (attention only)
  attn-only-d128  width 128, 4 heads, attention only
  mlp-d64         width 64, 2 heads, with MLPs
  mlp-d128        width 128, 4 heads, with MLPs
  attn-only-d128-sparse
                  width 128, 8 heads of 16, attention only, trained with a
                  group lasso on each head's output weights (head_l1 0.03):
                  a few heads keep a role, the others fall nearly silent
  tiny            width 32, 17 tokens: the test suite's fast setting
  all             the five shipped variants, into OUT/<variant>
  ladder-d64, ladder-d96, ladder-d128
                  the toy ladder: attention only, width 64/96/128 with 2/3/4
                  heads, saved at steps 0, 150, 200, 250, 300 and the end into
                  OUT/<member>/step<N> (float16, MLPs cut to one cell)
  ladder          the three ladder members, into OUT/<member>/step<N>

The shipped checkpoints (unpack/toy/checkpoints, unpack/toy/ladder) are not
overwritten unless --overwrite-shipped is given; train elsewhere and compare:
  unpack toy-train --variant ladder-d64 --out /tmp/ladder
  cmp /tmp/ladder/ladder-d64/step250/model.safetensors unpack/toy/ladder/ladder-d64/step250/model.safetensors

Exit codes: 0 trained and the model does induction; 1 trained but the circuit
did not form (accuracy on the repeated half < 90% or no previous-token /
induction head); 2 bad input.

Example:
  unpack toy-train --variant attn-only-d64 --out toy/attn-only-d64 --seed 0
  unpack report induction --model unpack/toy/checkpoints/attn-only-d64
"""

REPORT_EPILOG = """\
Exit codes: 0 done; 1 with --check when a trained model misses the bar
(previous-token and induction heads found; accuracy, K recovery per sequence
and per reroot, and credit peak >= 90%; K the largest mode of the edge) or its
random-init control meets it; 2 bad input.

Example:
  unpack report induction --model unpack/toy/checkpoints/attn-only-d64 unpack/toy/checkpoints/mlp-d128 --n 100 --out reports/
"""  # noqa: E501 (the example as the help shows it)


def add_induction_options(p: argparse.ArgumentParser) -> None:
    """The options of the toy induction report (``unpack report induction``)."""
    add_flags(
        p,
        "model",
        "n",
        "seed",
        model=dict(
            nargs="+", metavar="DIR", help="toy model directories (made by `unpack toy-train`)"
        ),
        n=dict(help="fresh repeated sequences (default 100)"),
        seed=dict(help="seed of the sequences (default 0)"),
    )
    p.add_argument(
        "--no-control",
        action="store_true",
        help="skip the random-initialized model of the same shape",
    )
    p.add_argument(
        "--control-seed",
        type=int,
        default=1234,
        help="init seed of the random control (default 1234)",
    )
    add_flags(
        p,
        "out",
        out=dict(
            required=False,
            default=None,
            help="also write induction.md, CSVs and induction.png here",
        ),
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless every trained model meets the bar and no control does",
    )
    add_flags(p, "threads")


INDUCTION_DESCRIPTION = (
    "For N fresh repeated sequences: reroot at each induction head at a second occurrence and "
    "check that the top upstream head by K interaction is a previous-token head; check that "
    "the token credit of the prediction peaks right after the first occurrence; print the "
    "K/Q/V split of the edge into the previous-token heads. The ground truth comes from the "
    "model's own attention; a random-initialized model of the same shape is the control."
)


def register(subparsers) -> None:
    """``toy-train``, ``toy-report`` (an alias of ``report induction``) and ``random-model``."""
    _register_train(subparsers)
    r = add_command(
        subparsers,
        "toy-report",
        "an alias of `unpack report induction` (the toy induction report)",
        "The same command as `unpack report induction`, under its older name. "
        + INDUCTION_DESCRIPTION,
        epilog=REPORT_EPILOG,
        raw=True,
    )
    add_induction_options(r)
    r.set_defaults(func=report_handler)
    _register_random_model(subparsers)


_TOY_TRAIN_TEXT = """\
Train a 2-layer GPT-2-style model on random sequences with a repeated segment (CPU,
deterministic by seed and thread count) and save it as a Hugging Face directory (config,
safetensors, tokenizer) plus toy.json. Prints the loss on the first occurrence vs the
repeated half, the accuracy and the previous-token / induction heads read off the
attention.
"""


def _register_train(subparsers) -> None:
    t = add_command(
        subparsers,
        "toy-train",
        "train a small GPT-2 that does induction (the ground-truth circuit)",
        _TOY_TRAIN_TEXT,
        epilog=_TRAIN_EPILOG,
        raw=True,
    )
    t.add_argument(
        "--variant",
        default="attn-only-d64",
        choices=VARIANT_NAMES + ("all", "ladder"),
        help="model variant (default attn-only-d64)",
    )
    add_flags(
        t,
        "out",
        "seed",
        "threads",
        seed=dict(help="init and data seed (default 0)"),
        threads=dict(default=1, help="torch threads (default 1; the shipped checkpoints used 1)"),
    )
    t.add_argument(
        "--overwrite-shipped",
        action="store_true",
        help="allow --out inside the shipped checkpoints (unpack/toy/checkpoints, "
        "unpack/toy/ladder)",
    )
    for name, typ in (
        ("d-model", int),
        ("n-head", int),
        ("induction-steps", int),
        ("lm-steps", int),
        ("batch", int),
        ("lr", float),
    ):
        t.add_argument(f"--{name}", type=typ, default=None, help="override the variant's setting")
    t.set_defaults(func=train_handler)


_RANDOM_MODEL_TEXT = """\
Save a model with the architecture and tokenizer of --like (optionally cut to --layers
layers) and freshly initialized random weights (seeded), as a Hugging Face directory:
the untrained baseline to compare a trained model with. Example: unpack random-model
--like smollm2-135m --layers 6 --out random-llama-6l
"""


def _register_random_model(subparsers) -> None:
    b = add_command(
        subparsers,
        "random-model",
        "an untrained baseline: a model's architecture with random weights",
        _RANDOM_MODEL_TEXT,
    )
    b.add_argument(
        "--like", required=True, help="the model whose architecture and tokenizer to use"
    )
    b.add_argument("--layers", type=int, default=None, help="keep this many layers (default all)")
    add_flags(b, "seed", "out", seed=dict(help="initialization seed (default 0)"))
    b.set_defaults(func=random_model_handler)


def train_handler(args) -> int:
    import os

    import torch

    from ..errors import InputError
    from .groundtruth import format_ground_truth, identify
    from .train import save, train, variant

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads}: give at least 1")
    check_out(args.out, args.overwrite_shipped)
    torch.set_num_threads(args.threads)
    if args.variant == "ladder" or args.variant in LADDER:
        return train_ladder(args)
    names = list(SHIPPED) if args.variant == "all" else [args.variant]
    overrides = dict(
        d_model=args.d_model,
        n_head=args.n_head,
        induction_steps=args.induction_steps,
        lm_steps=args.lm_steps,
        batch=args.batch,
        lr=args.lr,
    )
    status = 0
    for name in names:
        cfg = variant(name, **overrides)
        out = os.path.join(args.out, name) if args.variant == "all" else args.out
        print(f"== {name} -> {out}")
        model, tok, info = train(cfg, seed=args.seed)
        gt = identify(model, cfg)
        info["ground_truth"] = gt.to_dict()
        save(model, tok, cfg, out, name, args.seed, info)
        ev = info["eval"]
        print(
            f"trained in {info['train_seconds']}s ({info['steps']} steps, phase 2 from step "
            f"{info['switch_step']})"
        )
        print(
            f"loss first occurrence {ev['loss_first']:.3f} (chance {ev['chance_loss']:.3f})   "
            f"repeated half {ev['loss_repeat']:.3f}   accuracy on the repeated half "
            f"{100 * ev['acc_repeat']:.1f}%"
        )
        print(format_ground_truth(gt))
        if ev["acc_repeat"] < 0.9 or not (gt.prev_found and gt.induction_found):
            print(f"warning: {name} did not learn the induction circuit; try another --seed")
            status = 1
        print(f"saved {out}")
    return status


def check_out(out: str, overwrite: bool) -> None:
    """Refuse an output directory inside the shipped checkpoints unless asked to."""
    import os

    if overwrite:
        return

    from ..errors import InputError

    here = os.path.dirname(os.path.abspath(__file__))
    target = os.path.realpath(out)
    for shipped in ("checkpoints", "ladder"):
        root = os.path.realpath(os.path.join(here, shipped))
        if target == root or target.startswith(root + os.sep):
            raise InputError(
                f"--out {out!r} is inside the shipped checkpoints ({root}); "
                "training would overwrite them. Train into another directory "
                "(e.g. --out /tmp/toy) or add --overwrite-shipped"
            )


def train_ladder(args) -> int:
    """Train ladder members (``--variant ladder`` or one member) into OUT/<member>/step<N>."""
    import time

    from ..errors import InputError
    from .ladder import MEMBERS, train_member

    if any(
        v is not None
        for v in (
            args.d_model,
            args.n_head,
            args.induction_steps,
            args.lm_steps,
            args.batch,
            args.lr,
        )
    ):
        raise InputError(
            "the ladder's settings are fixed (so it reproduces bit for bit); "
            "drop --d-model/--n-head/--induction-steps/--lm-steps/--batch/--lr"
        )
    status = 0
    for member in MEMBERS if args.variant == "ladder" else [args.variant]:
        t0 = time.time()
        print(f"== {member} -> {args.out}/{member}/step<N>")
        rows = train_member(member, args.out, seed=args.seed, log=None)
        for r in rows:
            print(
                f"  step {r['step']:5d}  accuracy on the repeated half {100 * r['acc_repeat']:5.1f}%  "
                f"loss {r['loss_repeat']:.3f}  previous-token head {'yes' if r['prev_found'] else 'no '}"
                f"  induction head {'yes' if r['induction_found'] else 'no'}"
            )
        last = rows[-1]
        if last["acc_repeat"] < 0.9 or not (last["prev_found"] and last["induction_found"]):
            print(f"warning: {member} did not learn the induction circuit; try another --seed")
            status = 1
        print(f"trained and saved in {time.time() - t0:.1f}s")
    return status


def report_handler(args) -> int:
    from . import report

    return report.main(args)


def random_model_handler(args) -> int:
    """``unpack random-model``: the architecture of ``--like`` with random weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..errors import InputError
    from ..loading import load_model

    if args.layers is not None and args.layers < 1:
        raise InputError(f"--layers {args.layers}: give at least 1")
    print(f"loading {args.like} ...", flush=True)
    model, tok = load_model(args.like)
    cfg = model.config
    key = next((k for k in ("num_hidden_layers", "n_layer") if hasattr(cfg, k)), None)
    if args.layers is not None:
        if key is None or args.layers > getattr(cfg, key):
            raise InputError(
                f"--layers {args.layers}: {args.like} has "
                f"{getattr(cfg, key, '?')} layers; give at most that many"
            )
        setattr(cfg, key, args.layers)
    cfg.unpack_revision = None
    torch.manual_seed(args.seed)
    rnd = AutoModelForCausalLM.from_config(cfg)
    rnd.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in rnd.parameters())
    print(
        f"saved {args.out}: {getattr(cfg, key, '?')} layers, {n:,} parameters, random weights "
        f"(seed {args.seed})"
    )
    return 0
