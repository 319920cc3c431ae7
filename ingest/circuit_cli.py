"""``unpack discover`` and ``unpack verify``: circuits found across a stored run's
prompts (storing the rerooted traces they lack) and checked by intervention, both
stored. ``unpack export`` (reading only) is ``app.circuit_cli``."""

from __future__ import annotations

import json

from unpack.flags import add_command, add_flags


_DISCOVER_TEXT = """\
Seed with the heads of largest direct effect, reroot breadth-first through each head's
strongest upstream heads per K/Q/V mode, keep what recurs in at least --min-share of the
prompts; rerooted traces that are missing are traced and stored on the way. The circuit
is stored (tables circuits, circuit_components, circuit_edges). Exit 0 found, 2 bad
input or nothing to find it on.
"""


_VERIFY_TEXT = """\
Knock the circuit's heads out (necessity: the fraction of the clean logit difference
lost) and every other head (faithfulness: the fraction kept), and the same for --n
random circuits (--baseline). Stored in circuit_verifications and
circuit_prompt_results. Exit 0 done, 2 bad input.
"""


def register(sub) -> None:
    d = add_command(
        sub, "discover", "find a circuit across the prompts of a stored run", _DISCOVER_TEXT
    )
    add_flags(
        d,
        "db",
        "model",
        "task",
        "condition",
        "preset",
        model=dict(required=False, help="model name as stored (needed if the store holds several)"),
        condition=dict(help="condition of the prompts (default: ioi_io for IOI)"),
        preset=dict(help="the run's preset (default kqv_aligned)"),
    )
    d.add_argument(
        "--seeds", type=int, default=3, help="heads of largest direct effect (default 3)"
    )
    d.add_argument(
        "--per-mode",
        type=int,
        default=1,
        help="strongest upstream heads kept per K/Q/V mode at each reroot (default 1)",
    )
    d.add_argument(
        "--relative",
        type=float,
        default=None,
        metavar="R",
        help="also keep every upstream head whose strength reaches R times the "
        "mode's strongest in a prompt, e.g. 0.5 (default: off)",
    )
    d.add_argument("--depth", type=int, default=2, help="reroot levels below the seeds (default 2)")
    d.add_argument(
        "--min-share",
        type=float,
        default=0.5,
        help="keep heads and edges selected in at least this share of prompts (0.5)",
    )
    add_flags(
        d,
        "n",
        "json",
        "threads",
        n=dict(default=None, help="use the first N prompts (default all)"),
    )
    d.set_defaults(func=cmd_discover)
    _register_verify(sub)


def _register_verify(sub) -> None:
    v = add_command(
        sub,
        "verify",
        "necessity and faithfulness of a stored circuit, against random circuits",
        _VERIFY_TEXT,
    )
    add_flags(v, "db")
    what = v.add_mutually_exclusive_group(required=True)
    what.add_argument("--circuit", type=int, help="circuit id (from unpack discover)")
    what.add_argument(
        "--heads",
        metavar="H1,H2",
        help="instead of a stored circuit: these heads (attn_L_head_H or L.H) of "
        "--model on --prompts fresh prompts of --task; nothing is stored",
    )
    v.add_argument("--model", default=None, help="with --heads: the model")
    v.add_argument(
        "--task",
        choices=("ioi", "induction"),
        default="ioi",
        help="with --heads: the task (default ioi; its abc_c controls are the "
        "mean-ablation reference)",
    )
    v.add_argument(
        "--prompts", type=int, default=100, help="with --heads: fresh prompts (default 100)"
    )
    v.add_argument(
        "--prompt-seed",
        type=int,
        default=0,
        help="with --heads: the task seed of the fresh prompts (default 0)",
    )
    v.add_argument(
        "--ablation",
        choices=("mean", "zero", "resample"),
        default=None,
        help="mean (over the run's ABC control prompts), zero or resample; default "
        "mean where the run has controls, else resample",
    )
    v.add_argument("--n", type=int, default=20, help="random circuits (default 20)")
    v.add_argument(
        "--baseline",
        choices=("outside", "profile", "size"),
        default="outside",
        help="random circuits of the circuit's size drawn from the heads outside it, "
        "its heads per layer where a layer has room (outside, default; all of "
        "them where fewer lie outside); the same heads per layer drawn from all "
        "heads (profile); the same number of heads anywhere (size)",
    )
    add_flags(v, "seed", "json", "threads")
    v.set_defaults(func=cmd_verify)


def cmd_discover(args) -> int:
    from unpack.commands import set_threads
    from unpack.errors import InputError

    from .discover import check_params, discover
    from .queries import NoData

    check_params(args.seeds, args.per_mode, args.depth, args.min_share, args.relative)
    set_threads(args)
    try:
        c = discover(
            args.db,
            model=args.model,
            task=args.task,
            condition=args.condition,
            preset=args.preset,
            seeds=args.seeds,
            per_mode=args.per_mode,
            depth=args.depth,
            min_share=args.min_share,
            relative=args.relative,
            n=args.n,
            progress=not args.json,
        )
    except NoData as e:
        raise InputError(f"{e}; store them first: {e.command}" if e.command else str(e)) from None
    print(json.dumps(c.to_dict(), default=str) if args.json else c.format())
    return 0


def cmd_verify(args) -> int:
    from unpack.commands import set_threads

    from .verify import check_args, verify

    check_args(args.ablation, args.n, args.baseline)
    set_threads(args)
    if args.heads is not None:
        from unpack.errors import InputError

        from .verify import verify_on_task

        if not args.model:
            raise InputError("--heads needs --model, e.g. --model smollm2-135m")
        v = verify_on_task(
            args.model,
            args.heads,
            task=args.task,
            n=args.prompts,
            prompt_seed=args.prompt_seed,
            ablation=args.ablation,
            n_random=args.n,
            seed=args.seed,
            baseline=args.baseline,
        )
    else:
        v = verify(
            args.db,
            args.circuit,
            ablation=args.ablation,
            n_random=args.n,
            seed=args.seed,
            baseline=args.baseline,
        )
    print(json.dumps(v.to_dict(), default=str) if args.json else v.format())
    return 0
