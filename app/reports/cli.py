"""``unpack report suppression|induction``: the reports that only read the store
(``unpack report composition``, which stores reroots, is ``ingest.report_cli``).
Top-level imports stay light (argparse only); the store, pandas and matplotlib
load in the handlers."""

from __future__ import annotations

import argparse
import sys

from unpack.flags import REPORT_EPILOG as _EPILOG
from unpack.flags import (
    add_command,
    add_flags,
    add_report_flags,
    publish_report,
    report_group,
    report_no_data,
)


def register(subparsers) -> None:
    sub = report_group(subparsers)
    _register_suppression(sub)
    _register_induction(sub)


_SUPPRESSION_TEXT = """\
Duplicate suppression: per model, mean credit at S1, S2 and C in the four conditions,
the share of prompts with S2 < 0, the S1 - S2 gap with a bootstrap confidence interval,
and target probabilities; one table across models ordered by size, and a figure.
"""


def _register_suppression(sub) -> None:
    s = add_command(
        sub,
        "suppression",
        "credit at S1, S2 and C for IOI and ABC controls, per model (§10)",
        _SUPPRESSION_TEXT,
        epilog=_EPILOG + "\nExample:\n  unpack ingest --model smollm2-135m --task ioi --n 100 "
        "--controls --db ioi.duckdb\n  unpack report suppression --db ioi.duckdb --out reports/",
        raw=True,
    )
    add_report_flags(s, many_models=True)
    s.add_argument(
        "--n-boot",
        type=int,
        default=2000,
        help="bootstrap resamples for the gap's confidence interval (default 2000)",
    )
    add_flags(s, "seed", seed=dict(help="bootstrap seed (default 0)"))
    s.set_defaults(func=suppression_handler)


def _register_induction(sub) -> None:
    from unpack.toy.cli import (
        INDUCTION_DESCRIPTION,
        REPORT_EPILOG,
        add_induction_options,
        report_handler,
    )

    i = add_command(
        sub,
        "induction",
        "toy induction models: is previous-token -> induction recovered via K?",
        INDUCTION_DESCRIPTION + " (`unpack toy-report` is an alias of this command.)",
        epilog=REPORT_EPILOG,
        raw=True,
    )
    add_induction_options(i)
    i.set_defaults(func=report_handler)


def suppression_handler(args) -> int:
    from . import NoData
    from .suppression import suppression_report

    try:
        rep = suppression_report(
            args.db, models=args.model, preset=args.preset, n_boot=args.n_boot, seed=args.seed
        )
    except NoData as e:
        return report_no_data(e)
    return publish_report(rep, args.out)


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
