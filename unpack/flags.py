"""The command-line flags that several ``unpack`` commands share, defined once:
``add_flags(parser, "db", "model", "json")`` adds them with their common
meaning; a keyword changes what one command means by it, e.g.
``add_flags(p, "db", db=dict(required=True, help="DuckDB store (opened read-only)"))``.
Imports argparse only, so ``unpack --help`` stays fast."""
from __future__ import annotations

import argparse

DEFAULT_DB = "unpack.duckdb"
DTYPES = ("float32", "bfloat16", "float16", "float64")
MODEL_HELP = ("local HF directory, .gguf file, a model alias (smollm2-135m, a fetched one: "
              "`unpack models list`), a toy ladder checkpoint (ladder-d64@step200), or a hub name")

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


def add_command(sub, name: str, help: str, description: str, epilog: str | None = None,
                raw: bool = False) -> argparse.ArgumentParser:
    """The subcommand ``name`` of the subparsers ``sub``: ``description`` (a
    wrapped text) is shown as one paragraph; ``raw`` keeps the epilog's lines."""
    fmt = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    return sub.add_parser(name, help=help, description=" ".join(description.split()),
                          epilog=epilog, formatter_class=fmt)


def add_flags(p, *names: str, **changed: dict) -> None:
    """Add the shared flags ``names`` (keys of :data:`FLAGS`, in that order) to the
    argparse parser ``p``; ``changed[name]`` (``no_progress`` for ``no-progress``)
    holds argparse keywords that replace the shared ones for this command."""
    for name in names:
        kw = {**FLAGS[name], **changed.get(name.replace("-", "_"), {})}
        p.add_argument(f"--{name}", **kw)


def add_device_flags(p, what: str = "the model") -> None:
    """``--device`` and the weights' ``--dtype``, the same on every command that loads a model."""
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help=f"where {what} runs: cpu (default), cuda, cuda:N or auto (a GPU if "
                        "there is one)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="dtype of the weights (default float32): bfloat16/float16 keep a 7B "
                        "model at 2 bytes a weight; the decomposition math runs in float32 "
                        "(float64 with float64 weights)")
