"""The command-line flags that several ``unpack`` commands share, defined once:
``add_flags(parser, "db", "model", "json")`` adds them with their common
meaning; a keyword changes what one command means by it, e.g.
``add_flags(p, "db", db=dict(required=True, help="DuckDB store (opened read-only)"))``.
Imports argparse only, so ``unpack --help`` stays fast."""

from __future__ import annotations

import argparse
import sys

DEFAULT_DB = "unpack.duckdb"
DTYPES = ("float32", "bfloat16", "float16", "float64")
MODEL_HELP = (
    "local HF directory, .gguf file, a model alias (smollm2-135m, a fetched one: "
    "`unpack models list`), a toy ladder checkpoint (ladder-d64@step200), or a hub name"
)

FLAGS = {
    "db": dict(default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})"),
    "model": dict(required=True, help=MODEL_HELP),
    "task": dict(help="task (needed if the model has several)"),
    "condition": dict(help="condition of the prompts"),
    "preset": dict(default="kqv_aligned", help="preset of the traces (default kqv_aligned)"),
    "n": dict(type=int, default=100, help="number of prompts (default 100)"),
    "seed": dict(type=int, default=0, help="random seed (default 0)"),
    "out": dict(required=True, metavar="DIR", help="output directory"),
    "json": dict(action="store_true", help="print one JSON object"),
    "no-progress": dict(action="store_true", help="no progress bar"),
    "no-bos": dict(action="store_true", help="do not prefix the beginning-of-sequence token"),
    "threads": dict(type=int, default=None, help="torch threads (default: torch's)"),
}


def add_command(
    sub, name: str, help: str, description: str, epilog: str | None = None, raw: bool = False
) -> argparse.ArgumentParser:
    """The subcommand ``name`` of the subparsers ``sub``: ``description`` (a
    wrapped text) is shown as one paragraph; ``raw`` keeps the epilog's lines."""
    fmt = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    return sub.add_parser(
        name,
        help=help,
        description=" ".join(description.split()),
        epilog=epilog,
        formatter_class=fmt,
    )


def add_flags(p, *names: str, **changed: dict) -> None:
    """Add the shared flags ``names`` (keys of :data:`FLAGS`, in that order) to the
    argparse parser ``p``; ``changed[name]`` (``no_progress`` for ``no-progress``)
    holds argparse keywords that replace the shared ones for this command."""
    for name in names:
        kw = {**FLAGS[name], **changed.get(name.replace("-", "_"), {})}
        p.add_argument(f"--{name}", **kw)


def add_device_flags(p, what: str = "the model") -> None:
    """``--device`` and the weights' ``--dtype``, the same on every command that loads a model."""
    p.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help=f"where {what} runs: cpu (default), cuda, cuda:N or auto (a GPU if there is one)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="dtype of the weights (default float32): bfloat16/float16 keep a 7B "
        "model at 2 bytes a weight; the decomposition math runs in float32 "
        "(float64 with float64 weights)",
    )


# ------------------------------------------------------------------ the report command

REPORT_EPILOG = """\
Exit codes: 0 report written; 1 the database has no matching rows (the message
gives the `unpack ingest` command that would store them); 2 bad input.
"""

REPORT_TEXT = """\
Reports of docs/METHOD.md §10 computed from a DuckDB store (opened read-only): tables as
Markdown and CSV, figures as PNG.
"""


def report_group(subparsers):
    """The subcommands of ``unpack report``, made on the first call: its reports are
    registered by the layer each belongs to (``ingest.report_cli``: composition,
    which stores the reroots it lacks; ``app.reports.cli``: the reading ones)."""
    p = subparsers.choices.get("report")
    if p is None:
        p = add_command(
            subparsers,
            "report",
            "composition, duplicate-suppression and induction reports from a store",
            REPORT_TEXT,
            epilog=REPORT_EPILOG,
            raw=True,
        )
        p.reports = p.add_subparsers(dest="report", metavar="REPORT")
        p.set_defaults(func=lambda args: _usage(p))
    return p.reports


def add_report_flags(p, many_models: bool = False) -> None:
    """--db, --model, --preset and --out, as every report takes them."""
    model = (
        dict(
            nargs="+", default=None, help="models to include (default: every model with IOI traces)"
        )
        if many_models
        else dict(default=None, help="model name as stored (default: the only model in the store)")
    )
    add_flags(
        p,
        "db",
        "model",
        "preset",
        "out",
        db=dict(required=True, default=None, help="DuckDB store (opened read-only)"),
        model=dict(required=False, **model),
        out=dict(
            required=False,
            default="reports",
            metavar=None,
            help="output folder (default ./reports)",
        ),
    )


def _usage(p) -> int:
    p.print_help()
    return 2


def report_no_data(e) -> int:
    """Say that the store lacks rows (and the command that stores them); status 1."""
    print(f"unpack report: {e}", file=sys.stderr)
    if getattr(e, "command", None):
        print(f"to store them, run:\n  {e.command}", file=sys.stderr)
    return 1


def publish_report(rep, out) -> int:
    """Write a report's files, print its Markdown and where the files went."""
    files = rep.write(out)
    print(rep.markdown)
    print("\nwritten: " + ", ".join(str(f) for f in files))
    return 0
