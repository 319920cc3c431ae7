"""Page-load measurement of ``unpack app`` (docs/results/page_load.json, shown on
the benchmarks page), on a store of N prompts built as the app tests build theirs.
From the repository root::

    python -m tests.scripts.page_load --prompts 1000 --out artifacts/bench
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.app_harness import MODELS, build_store
from tests.browser import REPO, chromium_page, open_page, running_app, settle

BENCH_PAGES = [
    ("Overview", "/", "h1:has-text('Overview')"),
    ("Prompt", "/prompt", ".unpack-tok"),
    ("Circuit", "/circuit", ".js-plotly-plot .scatterlayer"),
    ("Compare", "/compare", "h3:has-text('What changes with size')"),
    ("SQL", "/sql", "button:has-text('Run query')"),
]
HARNESS_PAGES = {
    "Overview": None,
    "Prompt": "ui/pages/prompt.py",
    "Circuit": "ui/pages/circuit.py",
    "Compare": "ui/pages/compare.py",
    "SQL": "ui/pages/sql.py",
}


def harness_times(db) -> dict[str, tuple[float, float]]:
    """Seconds to run each page through streamlit.testing: (first, again)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["UNPACK_DB"] = str(db)
    st.cache_data.clear()
    out = {}
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=600)
    for name, path in HARNESS_PAGES.items():
        times = []
        for _ in range(2):
            if path:
                at.switch_page(path)
            t0 = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t0)
            assert not at.exception, [e.value for e in at.exception]
        out[name] = tuple(times)
    return out


def browser_times(db, shots: Path | None = None) -> dict[str, tuple[float, float, float]]:
    """Seconds from navigation to a settled page in Chromium: (first visit after the
    app starts, a later visit by URL (a full reload), a click on the page's sidebar
    link from another page)."""
    out: dict = {}
    with running_app(db) as url, chromium_page() as page:
        for _ in range(2):
            for name, path, ready in BENCH_PAGES:
                out.setdefault(name, []).append(open_page(page, url + path, ready))
                if shots is not None and len(out[name]) == 2:
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shots / f"{name.lower()}.png"))
        nav = page.locator('[data-testid="stSidebarNav"]')
        for name, path, ready in BENCH_PAGES[1:] + BENCH_PAGES[:1]:
            t0 = time.perf_counter()
            nav.get_by_text(name, exact=True).click()
            page.wait_for_selector(ready, state="visible")
            out[name].append(settle(page) - t0)
    return {k: tuple(v) for k, v in out.items()}


def bench(argv=None) -> int:
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(
        prog="python -m tests.scripts.page_load",
        description="Measure page loads on a store of N prompts.",
    )
    p.add_argument("--prompts", type=int, default=1000, help="prompts in all (default 1000)")
    p.add_argument("--db", default=None, help="use this store instead of building one")
    p.add_argument("--out", default="artifacts/bench", help="where to write the results")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.db:
        db = Path(args.db)
    else:
        per_model = max(1, args.prompts // (4 * len(MODELS)))  # IOI with 3 controls: 4 each
        t0 = time.perf_counter()
        db, _ = build_store(
            Path(tempfile.mkdtemp(prefix="unpack-bench-")),
            n=per_model,
            failing=False,
            progress=True,
        )
        print(f"built {db} in {time.perf_counter() - t0:.0f} s", flush=True)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    sizes = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
        for t in ("prompts", "traces", "edges", "component_flows", "paths")
    }
    con.close()
    h = harness_times(db)
    b = browser_times(db, out / "screenshots")
    lines = [
        f"Store: {sizes['prompts']:,} prompts, {sizes['traces']:,} traces, "
        f"{sizes['edges']:,} edges, {sizes['component_flows']:,} component flows, "
        f"{sizes['paths']:,} paths; {os.cpu_count()} CPU cores.",
        "",
        "| page | harness, first run (s) | harness, again (s) | browser, first visit (s) "
        "| browser, reload (s) | browser, sidebar click (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, *_ in BENCH_PAGES:
        lines.append(
            f"| {name} | {h[name][0]:.2f} | {h[name][1]:.2f} | {b[name][0]:.2f} | "
            f"{b[name][1]:.2f} | {b[name][2]:.2f} |"
        )
    table = "\n".join(lines)
    (out / "page_load_times.md").write_text(table + "\n")
    (out / "page_load_times.json").write_text(
        json.dumps({"sizes": sizes, "harness": h, "browser": b}, indent=1)
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(bench(sys.argv[1:]))
