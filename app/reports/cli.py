"""``unpack report composition|suppression|induction``. Top-level imports stay
light (argparse only); the store, pandas and matplotlib load in the handlers."""
from __future__ import annotations

import argparse
import sys

from unpack.flags import add_command, add_flags

_EPILOG = """\
Exit codes: 0 report written; 1 the database has no matching rows (the message
gives the `unpack ingest` command that would store them); 2 bad input.
"""


_REPORT_TEXT = """\
Reports of docs/METHOD.md §10 computed from a DuckDB store (opened read-only): tables as
Markdown and CSV, figures as PNG.
"""


def register(subparsers) -> None:
    p = add_command(
        subparsers, "report", "composition, duplicate-suppression and induction reports from a store",
        _REPORT_TEXT, epilog=_EPILOG, raw=True)
    sub = p.add_subparsers(dest="report", metavar="REPORT")
    p.set_defaults(func=lambda args: _usage(p))
    _register_composition(sub)
    _register_suppression(sub)
    _register_induction(sub)


_COMPOSITION_TEXT = """\
Reroot at each head of a class at its role position and rank the upstream heads by each
mode's interaction strength. Rerooted traces missing for prompts already in the store
are ingested first.
"""


def _register_composition(sub) -> None:
    c = add_command(
        sub, "composition", "rank upstream heads by K/Q/V interaction per head class (§10)",
        _COMPOSITION_TEXT, epilog=_EPILOG + "\nExample:\n  unpack report composition --db unpack.duckdb --model gpt2 "
               "--out reports/\n  unpack report composition --db toy.duckdb --model toy_dir "
               "--task induction --roles roles.csv --min-layer 0", raw=True)
    _common(c)
    c.add_argument("--task", choices=("ioi", "induction"), default=None,
                   help="task of the prompts (default: the model's only task in the store)")
    c.add_argument("--roles", metavar="CSV", default=None,
                   help="head-role table with columns head,role (head as L.H or attn_L_head_H); "
                        "default: GPT-2 small's table of Wang et al. for GPT-2 small")
    c.add_argument("--connections", nargs="+", metavar="ROOT@WHERE:UPSTREAM:MODE", default=None,
                   help="connections to test, e.g. induction@END:previous_token:K "
                        "(default: the three of §10 for ioi, induction -> previous_token via K "
                        "for induction)")
    add_flags(c, "n", n=dict(help="prompts to use (default 100)"))
    c.add_argument("--min-layer", type=int, default=1,
                   help="rank upstream heads of this layer and above (default 1, as §10)")
    c.add_argument("--max-rank", type=int, default=3,
                   help="a connection is recovered when its median rank is at most this "
                        "(default 3)")
    c.add_argument("--no-ingest", action="store_true",
                   help="never ingest missing rerooted traces; report what is stored")
    add_flags(c, "no-progress", no_progress=dict(help="no progress bar while ingesting"))
    c.set_defaults(func=composition_handler)


_SUPPRESSION_TEXT = """\
Duplicate suppression: per model, mean credit at S1, S2 and C in the four conditions,
the share of prompts with S2 < 0, the S1 - S2 gap with a bootstrap confidence interval,
and target probabilities; one table across models ordered by size, and a figure.
"""


def _register_suppression(sub) -> None:
    s = add_command(
        sub, "suppression", "credit at S1, S2 and C for IOI and ABC controls, per model (§10)",
        _SUPPRESSION_TEXT, epilog=_EPILOG + "\nExample:\n  unpack ingest --model smollm2-135m --task ioi --n 100 "
               "--controls --db ioi.duckdb\n  unpack report suppression --db ioi.duckdb --out reports/", raw=True)
    _common(s, many_models=True)
    s.add_argument("--n-boot", type=int, default=2000,
                   help="bootstrap resamples for the gap's confidence interval (default 2000)")
    add_flags(s, "seed", seed=dict(help="bootstrap seed (default 0)"))
    s.set_defaults(func=suppression_handler)


def _register_induction(sub) -> None:
    from unpack.toy.cli import INDUCTION_DESCRIPTION, REPORT_EPILOG, add_induction_options, \
        report_handler

    i = add_command(
        sub, "induction", "toy induction models: is previous-token -> induction recovered via K?",
        INDUCTION_DESCRIPTION + " (`unpack toy-report` is an alias of this command.)",
        epilog=REPORT_EPILOG, raw=True)
    add_induction_options(i)
    i.set_defaults(func=report_handler)


def _common(p, many_models: bool = False) -> None:
    model = (dict(nargs="+", default=None, help="models to include (default: every model with "
                                                "IOI traces)") if many_models else
             dict(default=None, help="model name as stored (default: the only model in the store)"))
    add_flags(p, "db", "model", "preset", "out", db=dict(required=True, default=None,
                                                         help="DuckDB store (opened read-only)"),
              model=dict(required=False, **model),
              out=dict(required=False, default="reports", metavar=None,
                       help="output folder (default ./reports)"))


def _usage(p) -> int:
    p.print_help()
    return 2


def _no_data(e) -> int:
    print(f"unpack report: {e}", file=sys.stderr)
    if getattr(e, "command", None):
        print(f"to store them, run:\n  {e.command}", file=sys.stderr)
    return 1


def composition_handler(args) -> int:
    from . import NoData
    from .composition import composition_report

    try:
        rep = composition_report(args.db, model=args.model, task=args.task, preset=args.preset,
                                 roles=args.roles, connections=args.connections, n=args.n,
                                 min_layer=args.min_layer, max_rank=args.max_rank,
                                 ingest_missing=not args.no_ingest,
                                 progress=not args.no_progress)
    except NoData as e:
        return _no_data(e)
    return _publish(rep, args.out)


def suppression_handler(args) -> int:
    from . import NoData
    from .suppression import suppression_report

    try:
        rep = suppression_report(args.db, models=args.model, preset=args.preset,
                                 n_boot=args.n_boot, seed=args.seed)
    except NoData as e:
        return _no_data(e)
    return _publish(rep, args.out)


def _publish(rep, out) -> int:
    """Write a report's files, print its Markdown and where the files went."""
    files = rep.write(out)
    print(rep.markdown)
    print("\nwritten: " + ", ".join(str(f) for f in files))
    return 0


def main(argv=None) -> int:
    """Run ``report ...`` alone (tests, ``python -m app.reports.cli``)."""
    from unpack.errors import InputError

    parser = argparse.ArgumentParser(prog="unpack")
    register(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv if argv[:1] == ["report"] else ["report", *argv])
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"unpack report: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
