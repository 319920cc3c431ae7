"""``unpack report composition``: the composition report (docs/METHOD.md §10),
which stores the rerooted traces it lacks before it reads (``ingest.composition``).
The reading reports are registered by ``app.reports.cli`` under the same
``unpack report``."""

from __future__ import annotations

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
    _register_composition(report_group(subparsers))


_COMPOSITION_TEXT = """\
Reroot at each head of a class at its role position and rank the upstream heads by each
mode's interaction strength. Rerooted traces missing for prompts already in the store
are ingested first.
"""


def _register_composition(sub) -> None:
    c = add_command(
        sub,
        "composition",
        "rank upstream heads by K/Q/V interaction per head class (§10)",
        _COMPOSITION_TEXT,
        epilog=_EPILOG + "\nExample:\n  unpack report composition --db unpack.duckdb --model gpt2 "
        "--out reports/\n  unpack report composition --db toy.duckdb --model toy_dir "
        "--task induction --roles roles.csv --min-layer 0",
        raw=True,
    )
    add_report_flags(c)
    c.add_argument(
        "--task",
        choices=("ioi", "induction"),
        default=None,
        help="task of the prompts (default: the model's only task in the store)",
    )
    c.add_argument(
        "--roles",
        metavar="CSV",
        default=None,
        help="head-role table with columns head,role (head as L.H or attn_L_head_H); "
        "default: GPT-2 small's table of Wang et al. for GPT-2 small",
    )
    c.add_argument(
        "--connections",
        nargs="+",
        metavar="ROOT@WHERE:UPSTREAM:MODE",
        default=None,
        help="connections to test, e.g. induction@END:previous_token:K "
        "(default: the three of §10 for ioi, induction -> previous_token via K "
        "for induction)",
    )
    add_flags(c, "n", n=dict(help="prompts to use (default 100)"))
    c.add_argument(
        "--min-layer",
        type=int,
        default=1,
        help="rank upstream heads of this layer and above (default 1, as §10)",
    )
    c.add_argument(
        "--max-rank",
        type=int,
        default=3,
        help="a connection is recovered when its median rank is at most this (default 3)",
    )
    c.add_argument(
        "--no-ingest",
        action="store_true",
        help="never ingest missing rerooted traces; report what is stored",
    )
    add_flags(c, "no-progress", no_progress=dict(help="no progress bar while ingesting"))
    c.set_defaults(func=composition_handler)


def composition_handler(args) -> int:
    from .composition import composition_report
    from .queries import NoData

    try:
        rep = composition_report(
            args.db,
            model=args.model,
            task=args.task,
            preset=args.preset,
            roles=args.roles,
            connections=args.connections,
            n=args.n,
            min_layer=args.min_layer,
            max_rank=args.max_rank,
            ingest_missing=not args.no_ingest,
            progress=not args.no_progress,
        )
    except NoData as e:
        return report_no_data(e)
    return publish_report(rep, args.out)
