"""The screenshots in docs/screenshots/, taken in Chromium from the store of
``unpack demo`` (the toy ladder and SmolLM2). From the repository root::

    python -m tests.scripts.screenshots --db unpack.duckdb --out docs/screenshots
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.browser import (
    LADDER,
    LAST_D64,
    SMOL,
    chromium_page,
    link,
    open_page,
    running_app,
    settle,
)


def shots(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.scripts.screenshots")
    p.add_argument("--db", default="unpack.duckdb")
    p.add_argument("--out", default="docs/screenshots")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with running_app(Path(a.db).resolve()) as url, chromium_page() as page:
        open_page(
            page,
            link(url, "compare", {"ws_task": "induction"}),
            ".js-plotly-plot .scatterlayer .trace",
        )
        settle(page, 2.0)
        page.screenshot(path=str(out / "compare_ladder.png"))
        page.get_by_text("Circuits aligned by relative depth").scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "compare_ladder_graphs.png"))
        open_page(page, url + "/", "h1:has-text('Overview')")  # the root address (no /overview)
        page.screenshot(path=str(out / "overview.png"))
        _page_shots(url, page, out)
    print(f"screenshots in {out}")
    return 0


def _page_shots(url: str, page, out: Path) -> None:
    """Prompt (and a reroot traced on demand), Circuit (SmolLM2 on IOI, the toy
    ladder's smallest model on induction, a component's edges) and SQL."""
    open_page(page, link(url, "prompt", {"ws_task": "ioi", "ws_models": [SMOL]}), ".unpack-tok")
    page.screenshot(path=str(out / "prompt.png"))
    page.get_by_role("tab", name="Trace on demand").click()
    page.get_by_role("button", name="Trace from").click()
    page.get_by_text("Traced in").wait_for(timeout=600_000)
    settle(page)
    page.get_by_text("Reroot: what feeds a component").scroll_into_view_if_needed()
    page.screenshot(path=str(out / "prompt_reroot.png"))
    open_page(
        page,
        link(url, "circuit", {"ws_task": "ioi", "ws_models": [SMOL]}),
        ".js-plotly-plot .scatterlayer",
    )
    page.screenshot(path=str(out / "circuit.png"))
    page.get_by_text("Reads from (upstream writers)").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "circuit_node.png"))
    open_page(
        page,
        link(url, "circuit", {"ws_task": "induction", "ws_models": [LADDER[0] + "@" + LAST_D64]}),
        ".js-plotly-plot .scatterlayer",
    )
    page.screenshot(path=str(out / "circuit_ladder.png"))
    open_page(page, url + "/sql", "button:has-text('Run query')")
    for q, name in (
        (
            "SELECT model, task, count(*) AS prompts FROM trace_info GROUP BY ALL ORDER BY ALL",
            "sql",
        ),
        ("CREATE TABLE t AS SELECT 1", "sql_refused"),
    ):
        box = page.get_by_label("Query")
        box.fill(q)
        box.press("Control+Enter")
        settle(page)
        page.get_by_role("button", name="Run query").click()
        settle(page)
        page.screenshot(path=str(out / f"{name}.png"))


if __name__ == "__main__":
    sys.exit(shots(sys.argv[1:]))
