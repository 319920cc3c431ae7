"""``unpack trace``, ``unpack validate`` and ``unpack bench``."""

from __future__ import annotations

import json
import sys
import time

from .errors import InputError
from .flags import add_command, add_device_flags, add_flags

EXAMPLE = (
    'unpack trace --model smollm2-135m --text "When Mary and John went to the store, '
    'John gave a drink to" --target " Mary" --distractor " John"'
)


_TRACE_TEXT = """\
Decompose one prompt (--text/--target) or a JSONL file of prompts (--prompts; keys text,
target, optional distractor and root) and print the result, or one JSON object per prompt
with --json. Example:
"""


def register(sub) -> None:
    """``trace``, ``validate``, ``bench`` and ``plan``."""
    _register_trace(sub)
    _register_validate(sub)
    _register_bench(sub)
    _register_plan(sub)


def _register_trace(sub) -> None:
    p = add_command(
        sub,
        "trace",
        "trace prompts: token credit, paths, component flow, edges",
        _TRACE_TEXT + EXAMPLE,
        raw=True,
    )
    add_flags(p, "model")
    p.add_argument("--text", help="the prompt")
    p.add_argument("--target", help="target token text, e.g. ' Mary' (leading space matters)")
    p.add_argument("--distractor", help="optional distractor token text, e.g. ' John'")
    p.add_argument("--root", help="reroot at COMPONENT@POSITION, e.g. attn_23_head_1@-1")
    p.add_argument(
        "--prompts",
        help="JSONL file with text, target, optional distractor, root; a "
        "bad line is reported and the other lines are traced",
    )
    p.add_argument(
        "--bos",
        action="store_true",
        help="put the model's beginning-of-sequence token first (as `unpack ingest "
        "--task` does by default; positions in --root then count it). Without "
        "it the text is traced as given",
    )
    p.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="a checkpoint of the model: a hub revision (Pythia: step1000) or a "
        "sub-directory of a local directory of checkpoints (= --model NAME@REV)",
    )
    p.add_argument(
        "--preset",
        default="kqv_aligned",
        help="one of the docs/METHOD.md §8 presets (default kqv_aligned)",
    )
    p.add_argument(
        "--top-paths", type=int, default=None, help="number of paths to return (default 20)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set beta=0.5 --set path_min_frac=1e-5",
    )
    p.add_argument("--batch-size", type=int, default=16)
    add_device_flags(p)
    add_flags(p, "json", json=dict(help="one JSON object per prompt on stdout"))
    add_flags(p, "threads")
    p.set_defaults(func=cmd_trace)


_VALIDATE_TEXT = """\
Runs the §9 invariants on a few prompts and prints each with its worst relative error
and tolerance; exit status 1 if any fails.
"""


def _register_validate(sub) -> None:
    v = add_command(
        sub, "validate", "check every docs/METHOD.md §9 invariant on a model", _VALIDATE_TEXT
    )
    add_flags(v, "model")
    v.add_argument(
        "--text", action="append", help="prompt(s) to check (default: three built-in ones)"
    )
    add_device_flags(v)
    add_flags(v, "threads")
    v.set_defaults(func=cmd_validate)


_BENCH_TEXT = """\
Per-prompt times (forward, decompose, sweep, paths), peak memory, scaling with prompt
length and batch size, and the ratio to the plain-loop reference measured in the same
run.
"""


def _register_bench(sub) -> None:
    b = add_command(sub, "bench", "time the engine on random models of real shapes", _BENCH_TEXT)
    b.add_argument(
        "--shapes",
        default="gpt2-small,pythia-410m",
        help="comma list of gpt2-small, pythia-410m, pythia-1.4b, pythia-6.9b, qwen2.5-0.5b, "
        "qwen2.5-1.5b, smollm2-135m, gemma-3-270m, tiny",
    )
    b.add_argument("--lengths", default="8,16,32,64,128")
    b.add_argument("--batches", default="1,4,16")
    b.add_argument(
        "--reference-tokens",
        type=int,
        default=16,
        help="prompt length for the reference comparison (0 to skip)",
    )
    b.add_argument(
        "--reference-on",
        default="tiny,gpt2-small",
        help="shapes on which to time the reference (it is slow: ~35 s per GPT-2-small prompt)",
    )
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument(
        "--model",
        help="also time a real model (e.g. smollm2-135m): load times and a 16-token trace",
    )
    b.add_argument("--json", help="also write the measurements to this JSON file")
    b.add_argument(
        "--plan-only",
        default="",
        metavar="LENGTHS",
        help="also print the planner's prediction (not run) at these lengths, e.g. 256,1024",
    )
    b.add_argument(
        "--against",
        metavar="COMMIT",
        help="also time the engine of COMMIT (checked out in a temporary git "
        "worktree) on the same cases, in this run, and print the ratios",
    )
    b.add_argument(
        "--root",
        metavar="COMPONENT@POS",
        help="trace every case rerooted there (e.g. attn_5_head_1@-1) instead of "
        "from the target's seeds; --against reroots the same way",
    )
    b.add_argument(
        "--against-max-tokens",
        type=int,
        default=256,
        help="longest prompt timed on --against (default 256: older engines hold "
        "every C·H·S² score buffer at once)",
    )
    b.add_argument(
        "--corpus",
        type=int,
        default=0,
        metavar="N",
        help="instead of the cases: ingest the demo's corpus (N IOI prompts with ABC "
        "controls, rerooted at three heads) end to end on each shape, in "
        "prompts/s (with --against: also on that commit)",
    )
    b.add_argument(
        "--corpus-batch", type=int, default=4, help="ingest batch size of --corpus (the demo's: 4)"
    )
    add_device_flags(b, "the random models")
    add_flags(b, "threads")
    b.set_defaults(func=cmd_bench)


_PLAN_TEXT = """\
Predict, from the model's shapes (no weights are loaded) and a short calibration of this
device, the peak memory and the time per prompt of a trace at a prompt length; says
whether it fits and what to change if not.
"""


def _register_plan(sub) -> None:
    pl = add_command(
        sub, "plan", "predict peak memory and time per prompt before anything runs", _PLAN_TEXT
    )
    pl.add_argument(
        "--model",
        required=True,
        help="a bench shape (gpt2-small, pythia-410m, pythia-1.4b, pythia-6.9b, tiny), "
        "a local model directory (its config.json is read), a toy ladder "
        "checkpoint, or a model alias (smollm2-135m, `unpack models list`)",
    )
    pl.add_argument("--tokens", type=int, required=True, help="prompt length in tokens")
    pl.add_argument("--prompts", type=int, default=1, help="prompts in the corpus (total time)")
    pl.add_argument("--batch-size", type=int, default=1, help="prompts per batch (default 1)")
    add_flags(pl, "json")
    add_device_flags(pl)
    add_flags(pl, "threads")
    pl.set_defaults(func=cmd_plan)


def _overrides(args) -> dict:
    """``--set`` and ``--top-paths``, typed and range-checked, and the whole config
    (preset included) checked, all before any model is loaded."""
    from .config import check_field, make_config, parse_overrides

    out = parse_overrides(args.set)
    if args.top_paths is not None:
        try:
            out["top_paths_k"] = check_field("top_paths_k", args.top_paths)
        except InputError:
            raise InputError(
                f"--top-paths {args.top_paths}: give a whole number >= 0, e.g. --top-paths 20"
            ) from None
    make_config(getattr(args, "preset", "kqv_aligned"), **out)
    return out


def _check_root_syntax(root, where: str) -> None:
    """``--root`` is COMPONENT@POSITION; its component and range need the model, its
    shape does not (a bad root in a --prompts file fails that prompt only)."""
    if not _root_shape_ok(root):
        raise InputError(f"{where}: {_ROOT_SHAPE.format(root=root)}")


_ROOT_SHAPE = "root {root!r} must look like COMPONENT@POSITION, e.g. attn_9_head_9@13 or mlp_0@-1"


def _root_shape_ok(root) -> bool:
    if root is None:
        return True
    name, at, pos = str(root).rpartition("@")
    try:
        int(pos)
    except ValueError:
        return False
    return isinstance(root, str) and bool(at) and bool(name)


def _prompt_problem(text, target, root, flag: str) -> str | None:
    """What is wrong with a prompt that needs no model to see: an empty text or
    target, a root that is not COMPONENT@POSITION; None when nothing is."""
    if not isinstance(text, str) or not text.strip():
        return f"{flag}text is empty: give the prompt, e.g. {flag}text \"When Mary and John went\""
    if not isinstance(target, str) or target == "":
        return f"{flag}target is empty: give the next token's text, e.g. {flag}target ' Mary'"
    if not _root_shape_ok(root):
        return _ROOT_SHAPE.format(root=root)
    return None


def _read_prompts(path: str) -> tuple[list[dict], list[str]]:
    """``(prompts, bad)``: the prompts of a JSONL file, and for each line that is not
    one a message ``FILE:LINE: reason`` (the other lines are still traced)."""
    prompts, bad = [], []
    fix = (
        "give a JSONL file with one object per line, e.g. "
        '{"text": "When Mary and John went to the store, John gave a drink to", '
        '"target": " Mary"}'
    )
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--prompts {path}: no such file; {fix}") from None
    except IsADirectoryError:
        raise InputError(f"--prompts {path} is a directory; {fix}") from None
    except PermissionError:
        raise InputError(f"--prompts {path}: not readable (permission denied)") from None
    with f:
        try:
            lines = list(enumerate(f, 1))
        except UnicodeDecodeError:
            raise InputError(f"--prompts {path} is not UTF-8 text; {fix}") from None
    for i, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"{path}:{i}: not valid JSON ({e.msg})")
            continue
        if not isinstance(row, dict) or "text" not in row or "target" not in row:
            bad.append(f"{path}:{i}: each line needs 'text' and 'target'")
            continue
        why = _prompt_problem(row.get("text"), row.get("target"), row.get("root"), "")
        if why:
            bad.append(f"{path}:{i}: {why}")
            continue
        prompts.append({k: row.get(k) for k in ("text", "target", "distractor", "root")})
    if not prompts and not bad:
        raise InputError(f"{path}: no prompts in the file")
    return prompts, bad


def set_threads(args) -> None:
    """``--threads N``: torch's CPU threads for this process, checked (N >= 1)."""
    n = getattr(args, "threads", None)
    if n is None:
        return
    if n < 1:
        raise InputError(f"--threads {n}: give 1 or more, e.g. --threads 2")
    import torch

    torch.set_num_threads(n)


def _loading(model) -> None:
    print(f"loading {model} ...", file=sys.stderr, flush=True)


def cmd_trace(args) -> int:
    bad = []
    if args.prompts:
        if args.text:
            raise InputError("give --text or --prompts, not both")
        prompts, bad = _read_prompts(args.prompts)
        for msg in bad:
            print(f"unpack trace: error: {msg}", file=sys.stderr)
        if not prompts:
            return 2
    else:
        if args.text is None or args.target is None:
            raise InputError(
                f"--text and --target are required (or --prompts FILE). Example: {EXAMPLE}"
            )
        why = _prompt_problem(args.text, args.target, None, "--")
        if why:
            raise InputError(why)
        prompts = [
            {
                "text": args.text,
                "target": args.target,
                "distractor": args.distractor,
                "root": args.root,
            }
        ]
    overrides = _overrides(args)
    _check_root_syntax(args.root, "--root")
    if args.batch_size < 1:
        raise InputError(
            f"--batch-size {args.batch_size}: give 1 or more prompts per batch "
            "(the tracer cuts larger batches to what fits, see `unpack plan`)"
        )
    set_threads(args)  # everything above needs no model: checked before loading it
    from .loading import with_revision
    from .tokens import bos_text
    from .tracer import TraceFailure, Tracer

    model = with_revision(args.model, args.revision)
    _loading(model)
    tracer = Tracer(model, weights_dtype=args.dtype, device=args.device)
    if args.bos:
        prompts = [dict(p, text=bos_text(tracer.tokenizer) + p["text"]) for p in prompts]
    t0 = time.perf_counter()  # trace_batch sorts by length and pads little
    results = tracer.trace_batch(
        prompts, preset=args.preset, batch_size=args.batch_size, on_error="collect", **overrides
    )
    dt = time.perf_counter() - t0
    if args.prompts:
        print(
            f"unpack trace: {len(results)} prompts in {dt:.1f} s: "
            f"{len(results) / max(dt, 1e-9):.2f} prompts/s",
            file=sys.stderr,
        )
    failed = len(bad)
    for res in results:
        if isinstance(res, TraceFailure):
            failed += 1
            msg = f"prompt #{res.index}: {res.error}"
            if args.json:
                print(json.dumps({"error": res.error, "index": res.index}))
            print(f"unpack trace: error: {msg}", file=sys.stderr)
            continue
        print(res.to_json() if args.json else str(res) + "\n")
    notices = {
        w
        for res in results
        if getattr(res, "paths_truncated", False)
        for w in res.warnings
        if w.startswith("path search truncated")
    }
    for w in sorted(notices):
        print(f"unpack trace: notice: {w}", file=sys.stderr)
    return 0 if failed == 0 else (2 if failed == len(results) + len(bad) else 1)


def cmd_validate(args) -> int:
    for t in args.text or ():
        if not t.strip():
            raise InputError(
                "--text is empty: give a prompt, or leave --text out for the three built-in ones"
            )
    set_threads(args)
    from .tracer import Tracer
    from .validate import DEFAULT_TEXTS, validate_model

    _loading(args.model)
    tracer = Tracer(args.model, weights_dtype=args.dtype, device=args.device)
    n = len(args.text or DEFAULT_TEXTS)
    print(
        f"checking the docs/METHOD.md §9 invariants on {n} prompt{'s' * (n != 1)} ...", flush=True
    )
    checks = validate_model(tracer=tracer, texts=args.text)
    print(
        f"model {args.model}: {tracer.spec.family}, {tracer.spec.n_layers} layers, "
        f"{tracer.spec.n_heads} heads ({tracer.spec.n_kv_heads} kv), width {tracer.spec.d_model}, "
        f"weights {str(tracer.spec.W_E.dtype).replace('torch.', '')} on {tracer.device}, "
        f"math in {str(tracer.dtype).replace('torch.', '')}"
    )
    for c in checks:
        print(c)
    checked = [c for c in checks if not c.info]
    bad = [c for c in checked if not c.ok]
    print(f"{len(checked) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    set_threads(args)
    return run_bench(args)


def cmd_plan(args) -> int:
    from .plan import run_plan

    set_threads(args)
    return run_plan(args)
