"""A docs results table (docs/results/NAME.json) from the per-model CSV that
``unpack report suppression --out DIR`` writes (DIR/suppression_by_model.csv), in
the columns of the results page, naming the commands and the commit.

    python -m tests.scripts.suppression_table NAME DIR/suppression_by_model.csv \\
        --title "..." --commit abc1234 --date 2026-12-03 --command "unpack ingest ..." ...
"""

from __future__ import annotations

import csv

from tests.scripts.results_file import parser, write

COLUMNS = [
    "model",
    "params",
    "n prompts",
    "S1 (ioi_s)",
    "S2 (ioi_s)",
    "share S2 < 0 (ioi_s)",
    "gap S1 − S2 [95% CI]",
    "S2 (ioi_io)",
    "C (abc_c, copy)",
    "C (abc_b, no copy)",
    "p(S) ioi_s",
]


def _signed(x: str) -> str:
    if not x:  # an interval of one prompt
        return "–"
    return f"{float(x):+.3f}".replace("-", "−")


def row(r: dict) -> list[str]:
    gap = f"{_signed(r['gap S1 - S2'])} [{_signed(r['gap CI low'])}, {_signed(r['gap CI high'])}]"
    return [
        r["model"],
        r["params"],
        r["n prompts"],
        _signed(r["S1 (ioi_s)"]),
        _signed(r["S2 (ioi_s)"]),
        f"{float(r['share S2 < 0 (ioi_s)']):.2f}",
        gap,
        _signed(r["S2 (ioi_io)"]),
        _signed(r["C (abc_c, copy)"]),
        _signed(r["C (abc_b, no copy)"]),
        f"{float(r['p(S) ioi_s']):.3f}",
    ]


def main() -> None:
    a = parser(__doc__, "by_model_csv").parse_args()
    with open(a.by_model_csv, newline="") as f:
        rows = [row(r) for r in csv.DictReader(f)]
    write(a.name, a, a.title, COLUMNS, rows)


if __name__ == "__main__":
    main()
