"""Two docs results tables (docs/results/NAME.json, NAME_budgets.json) from the
output of ``unpack evaluate --json``: every metric with its interval and the cost per
prompt, and faithfulness at each edge budget. Each table names the commands that
made the store and the evaluation, and the commit they ran at.

    python -m tests.scripts.evaluate_table NAME EVAL.json --title "..." \\
        --commit abc1234 --date 2026-12-03 --command "unpack ingest ..." --command "unpack evaluate ..."
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts.results_file import parser, write


def _ci(r: dict, key: str) -> str:
    if key not in r:
        return "–"
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def tables(rows: list[dict]) -> tuple[list, list, list, list]:
    """(columns, rows) of the metrics table and of the budgets table."""
    cols = [
        "method",
        "CPR [95% CI]",
        "CMD [95% CI]",
        "comprehensiveness [95% CI]",
        "sufficiency [95% CI]",
        "edges scored",
        "s/prompt (tracing)",
        "prompts",
    ]
    metrics = [
        [
            r["label"],
            _ci(r, "cpr"),
            _ci(r, "cmd"),
            _ci(r, "comprehensiveness"),
            _ci(r, "sufficiency"),
            f"{r['edges_scored']:,} / {r['n_edges']:,}" if "edges_scored" in r else "–",
            f"{r['seconds_per_prompt']:.1f}",
            str(r["n_prompts"]),
        ]
        for r in rows
    ]
    budgets = next(r["budgets"] for r in rows if "budgets" in r)
    bcols = ["method"] + [f"{100 * b:g}%" for b in budgets]
    brows = [
        [r["label"]] + [f"{f:+.2f}" for f in r["faithfulness"]] for r in rows if "faithfulness" in r
    ]
    return cols, metrics, bcols, brows


def main() -> None:
    a = parser(__doc__, "eval_json").parse_args()
    rows = json.loads(Path(a.eval_json).read_text())
    cols, metrics, bcols, brows = tables(rows)
    full, cut = rows[0]["clean_logit_diff"], rows[0]["ablated_logit_diff"]
    write(a.name, a, a.title, cols, metrics)
    write(
        f"{a.name}_budgets",
        a,
        f"{a.title}: faithfulness at each edge budget "
        f"(full model {full:.2f}, every edge ablated {cut:.2f})",
        bcols,
        brows,
    )


if __name__ == "__main__":
    main()
