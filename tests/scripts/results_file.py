"""What the results-table scripts share: the provenance flags every docs results
table needs (title, commands, commit, date) and writing docs/results/NAME.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def parser(doc: str, source: str) -> argparse.ArgumentParser:
    """NAME, the ``source`` file to read, and the provenance flags."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("name")
    p.add_argument(source)
    p.add_argument("--title", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--command", action="append", required=True)
    return p


def write(name: str, args, title: str, columns: list, rows: list) -> None:
    """docs/results/NAME.json with the provenance of ``args``."""
    table = dict(
        title=title,
        command=args.command,
        commit=args.commit,
        date=args.date,
        columns=columns,
        rows=rows,
    )
    if getattr(args, "conditions", None):
        table["conditions"] = args.conditions
    (RESULTS / f"{name}.json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote docs/results/{name}.json")
