"""``unpack export``: a stored circuit or a prompt's top paths exported for papers
(reading the store only; ``unpack discover`` and ``unpack verify`` are
``ingest.circuit_cli``)."""

from __future__ import annotations

import sys

from unpack.flags import add_command, add_flags


_EXPORT_TEXT = """\
One standalone interactive HTML file (opens offline), TikZ source for a paper, GraphML
or JSON.
"""


def register(sub) -> None:
    _register_export(sub)


def _register_export(sub) -> None:
    e = add_command(
        sub,
        "export",
        "a circuit or a prompt's top paths as HTML, TikZ, GraphML or JSON",
        _EXPORT_TEXT,
        raw=True,
    )
    add_flags(e, "db")
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--circuit", type=int, help="a stored circuit id")
    what.add_argument("--prompt", type=int, help="a prompt id: its top paths")
    e.add_argument(
        "--root", default="target", help="with --prompt: the trace's root (default target)"
    )
    e.add_argument(
        "--top", type=int, default=10, help="with --prompt: number of paths (default 10)"
    )
    e.add_argument("--format", choices=("html", "tikz", "graphml", "json"), required=True)
    e.add_argument("--out", required=True, help="file to write")
    e.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from app import export as ex
    from app.db import open_db
    from unpack.errors import InputError

    if args.top < 1:
        raise InputError(f"--top {args.top} must be at least 1")
    con = open_db(args.db)
    try:
        G = (
            ex.circuit_nx(con, args.circuit)
            if args.circuit is not None
            else ex.paths_nx(con, args.prompt, args.root, args.top)
        )
    finally:
        con.close()
    if G.number_of_nodes() == 0:
        raise InputError("nothing to export: the selection has no nodes")
    ex.write(G, args.format, args.out)
    print(
        f"wrote {args.out} ({G.number_of_nodes()} nodes, {len(ex.gr.drawn_edges(G))} edges: "
        f"one per reader, writer and mode)",
        file=sys.stderr,
    )
    return 0
