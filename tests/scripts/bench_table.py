"""A docs results table (docs/results/NAME.json) from ``unpack bench --json FILE``:
per case the phase times, the peak and, with ``--against``, the earlier engine's
time and the ratio; for ``--corpus`` prompts per second of both engines.

    python -m tests.scripts.bench_table NAME bench.json --title "..." \\
        --commit abc1234 --date 2026-12-03 --command "unpack bench ..." \\
        [--conditions "2-core CPU, ..."]
"""

from __future__ import annotations

import json

from tests.scripts.results_file import parser, write

PHASES = ["forward_s", "decompose_s", "sweep_s", "paths_s", "total_s"]


def _s(x: float) -> str:
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def case_rows(bench: dict, old: str) -> tuple[list, list]:
    """Columns and rows of the per-case table (every shape, every case); ``old``
    names the engine ``--against`` timed."""
    against = bench.get("against", {})
    cols = ["shape", "prompt"] + PHASES + ["peak GiB", "predicted s", "predicted GiB"]
    if against:
        cols += [f"{old} total_s", "speed-up"]
    rows = []
    for shape, rec in bench["shapes"].items():
        for name, t in rec.items():
            if not isinstance(t, dict) or "total_s" not in t:
                continue
            row = [shape, name] + [_s(t[p]) for p in PHASES]
            row += [f"{t['peak_mib'] / 1024:.2f}", _s(t["predicted_s"])]
            row += [f"{t['predicted_peak_mib'] / 1024:.2f}"]
            if against:
                a = against.get(f"{shape}: {name}")
                row += [_s(a["old_s"]), f"{a['speedup']:.1f}×"] if a else ["–", "–"]
            rows.append(row)
    return cols, rows


def corpus_rows(bench: dict, old: str) -> tuple[list, list]:
    """Columns and rows of the ``--corpus`` table: both engines per shape."""
    cols = ["shape", "engine", "records", "seconds", "prompts/s", "speed-up"]
    rows = []
    for shape, rec in bench["corpus"].items():
        for who, name in (("old", old), ("now", "this commit")):
            if who in rec:
                r = rec[who]
                ratio = f"{rec['speedup']:.2f}×" if who == "now" and "speedup" in rec else ""
                rows.append(
                    [
                        shape,
                        name,
                        str(rec["records"]),
                        _s(r["seconds"]),
                        f"{r['prompts_per_s']:.3f}",
                    ]
                    + [ratio]
                )
    return cols, rows


def main() -> None:
    p = parser(__doc__, "bench_json")
    p.add_argument("--against", default="earlier", help="the commit --against named")
    p.add_argument("--conditions", default=None)
    args = p.parse_args()
    bench = json.loads(open(args.bench_json).read())
    rows_of = corpus_rows if "corpus" in bench else case_rows
    cols, rows = rows_of(bench, args.against)
    write(args.name, args, args.title, cols, rows)


if __name__ == "__main__":
    main()
