"""End to end in a real browser: ``unpack app`` on a fresh port, Debian's
Chromium (/usr/bin/chromium) driven by Playwright, every page opened and its
visible content checked; screenshots go to artifacts/screenshots/.

Playwright must drive the system Chromium; it never downloads a browser
(no ``playwright install``). Missing Chromium or Playwright fails the test with
the setup command.

Page-load measurement: tests/scripts/page_load.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app_harness import MODELS, build_store
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    chromium_page,
    no_exception,
    open_page,
    require_browser,
    running_app,
    settle,
    shot,
    sql,
)

# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    require_browser()
    db, names = build_store(tmp_path_factory.mktemp("browser-store"))
    with running_app(db) as url:
        yield url, db, names


@pytest.fixture(scope="module")
def page(app):
    with chromium_page() as p:
        yield p


# ------------------------------------------------------------------ one test per page


def test_chromium_and_playwright_are_installed():
    """Fails (never skips) with the setup command when the browser is missing."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            assert browser.version.split(".")[0].isdigit()
        finally:
            browser.close()


def test_overview(app, page):
    url, db, names = app
    open_page(page, url + "/", "h1:has-text('Overview')")
    no_exception(page)
    body = page.inner_text("body")
    n_ok = int(sql(db, "SELECT count(*) FROM prompts WHERE status = 'ok'").iloc[0, 0])
    for text in ("models", "prompts", "failures", f"{n_ok:,}", "target is empty", "Working set"):
        assert text in body, text
    for name, *_ in MODELS:
        assert name in body
    for link in ("Prompt", "Circuit", "Compare", "SQL"):
        assert (
            page.locator('[data-testid="stSidebarNav"]').get_by_text(link, exact=True).count() == 1
        )
    shot(page, "overview")


def test_prompt_token_strip_paths_and_reroot(app, page):
    url, db, names = app
    open_page(page, url + "/prompt", ".unpack-tok")
    no_exception(page)
    pid = int(
        sql(
            db,
            "SELECT min(p.prompt_id) FROM prompts p JOIN runs USING (run_id) "
            "JOIN models m USING (model_id) WHERE m.name = ? AND p.condition = 'ioi_io'"
            " AND p.status = 'ok'",
            [names[0]],
        ).iloc[0, 0]
    )
    tokens = sql(db, "SELECT token FROM tokens WHERE prompt_id = ? ORDER BY pos", [pid])["token"]
    boxes = page.locator(".unpack-strip").first.locator(".unpack-tok")
    shown = [b.inner_text().splitlines()[0] for b in boxes.all()]
    assert shown == tokens.tolist()  # the strip shows the prompt's words, in order
    title = boxes.nth(1).get_attribute("title")
    assert title.startswith("pos 1") and "credit" in title  # the value on hover
    assert page.locator(".unpack-path").first.is_visible()
    shot(page, "prompt")
    # reroot: trace the default component at the target position on demand
    page.get_by_role("tab", name="Trace on demand").click()
    page.get_by_role("button", name="Trace from").click()
    page.get_by_text("Traced in").wait_for()
    settle(page)
    no_exception(page)
    assert page.locator(".unpack-strip").count() >= 3
    page.get_by_text("Reroot: what feeds a component").scroll_into_view_if_needed()
    shot(page, "prompt_reroot")


def test_circuit_graph_renders_nodes_and_a_click_selects_one(app, page):
    url, db, names = app
    open_page(page, url + "/circuit", ".js-plotly-plot .scatterlayer")
    no_exception(page)
    from app.graphs import circuit_graph
    from app.ui.views import threshold
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        G = threshold(
            circuit_graph(
                con, model=names[0], task="ioi", preset="kqv_aligned", condition="ioi_io"
            ),
            0.0,
            40,
        )
    finally:
        con.close()
    nodes = page.locator(".js-plotly-plot .scatterlayer .trace").last.locator("path.point")
    assert nodes.count() == G.number_of_nodes()
    labels = page.locator(".js-plotly-plot .scatterlayer .trace").last.locator(".textpoint")
    assert labels.count() == G.number_of_nodes()
    shot(page, "circuit")
    # clicking a node selects it in "Inspect a component"
    from app.ui.views import short_label

    combo = page.get_by_role("combobox", name="Inspect a component (or click a node)")
    before = combo.input_value()
    texts = [t.text_content() for t in labels.all()]
    i = next(k for k, t in enumerate(texts) if t != short_label(before))
    box = nodes.nth(i).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    settle(page)
    no_exception(page)
    after = combo.input_value()
    assert after != before and short_label(after) == texts[i], (before, after, texts[i])
    shot(page, "circuit_clicked")


def test_compare_models_side_by_side(app, page):
    url, db, names = app
    open_page(page, url + "/compare", "h3:has-text('Circuits aligned by relative depth')")
    no_exception(page)
    page.get_by_text("tiny-neox (3 layers)").wait_for()
    body = page.inner_text("body")
    for text in (
        "Credit by role",
        "Duplicate suppression",
        "tiny-gpt2 (2 layers)",
        "tiny-neox (3 layers)",
        "relative depth",
        "What changes with size",
    ):
        assert text in body, text
    assert page.locator(".js-plotly-plot").count() >= 2
    shot(page, "compare")
    page.get_by_text("Circuits aligned by relative depth").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    shot(page, "compare_graphs")


def test_sql_runs_a_query_and_refuses_writes(app, page):
    url, db, names = app
    open_page(page, url + "/sql", "button:has-text('Run query')")
    no_exception(page)
    box = page.get_by_label("Query")

    def run(q):
        box.fill(q)
        box.press("Control+Enter")  # commit the text area
        settle(page)
        page.get_by_role("button", name="Run query").click()
        settle(page)

    n = int(sql(db, "SELECT count(*) FROM prompts").iloc[0, 0])
    run("SELECT prompt_id, status FROM prompts")
    page.get_by_text(f"{n:,} rows").wait_for()
    assert page.get_by_role("button", name="Download CSV").is_visible()
    assert page.get_by_role("button", name="Download Parquet").is_visible()
    shot(page, "sql")
    for q in (
        "COPY models TO '/tmp/unpack_app_copy.csv'",
        "ATTACH '/tmp/unpack_x.duckdb'",
        "INSTALL httpfs",
        "SELECT * FROM read_csv('/etc/passwd')",
        "CREATE TABLE t AS SELECT 1",
    ):
        run(q)
        alert = page.locator('[data-testid="stAlert"]').filter(has_text="read-only")
        alert.or_(
            page.locator('[data-testid="stAlert"]').filter(has_text="refused")
        ).first.wait_for()
        assert page.get_by_role("button", name="Download CSV").count() == 0
    assert not Path("/tmp/unpack_app_copy.csv").exists()
    shot(page, "sql_refused")


# ------------------------------------------------------------------ page-load measurement
