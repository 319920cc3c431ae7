"""In Chromium: the app opens on a store holding the toy ladder (three sizes,
several training steps) and SmolLM2, Compare shows them side by side and the
induction circuit forming, and a link copied from each page opens the same view
in a new browser session.

The store is part of what `unpack demo` makes (every ladder size at three of its
steps, 3 prompts each, and 2 induction prompts on SmolLM2) so the test stays
short; the README's main command ingests all of it.
Screenshots of the test go to artifacts/screenshots/; those in docs/screenshots/
come from the store of `unpack demo` (tests/scripts/screenshots.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LADDER,
    LAST_D64,
    LOAD_TIMEOUT_MS,
    SMOL,
    VIEWPORT,
    link,
    no_exception,
    open_page,
    require_browser,
    running_app,
    settle,
    shot,
    sql,
)

KEEP = ("step0", "step200")  # and each member's last step


def build_ladder_store(where: Path, n: int = 3, smol_n: int = 2) -> Path:
    """The ladder part of the demo store, and ``smol_n`` induction prompts on SmolLM2
    (as ``unpack demo`` traces them) unless 0."""
    from ingest.demo import ingest_induction
    from ingest.ladder import checkpoints, ingest_ladder
    from unpack import Tracer
    from unpack.loading import load_model

    last = {m: r for m, r, _ in checkpoints()}
    db = where / "ladder.duckdb"
    ingest_ladder(
        db,
        n=n,
        progress=False,
        out=lambda *a, **k: None,
        keep=lambda m, r: r in KEEP or r == last[m],
    )
    if smol_n:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as `unpack demo` runs it
        try:
            model, tok = load_model(SMOL)
            ingest_induction(Tracer(model=model, tokenizer=tok), SMOL, db, smol_n, 4, False)
        finally:
            torch.set_num_threads(threads)
    return db


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    require_browser()
    db = build_ladder_store(tmp_path_factory.mktemp("ladder-store"))
    with running_app(db) as url:
        yield url, db


@pytest.fixture(scope="module")
def browser(app):
    """One Chromium for the module; each ``session()`` is a fresh browser context
    (its own cookies and storage), i.e. a new visitor."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def session(browser):
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    return page


def test_compare_opens_on_the_ladder_and_smollm2(app, browser):
    """The app's own address, then Compare from the sidebar: no link parameters."""
    url, db = app
    models = sql(db, "SELECT name FROM models ORDER BY n_params, step")["name"].tolist()
    assert len(models) == 10 and models[-1] == SMOL
    latest = [m for m in models if m.startswith("ladder") and m.endswith(f"@{_last(db, m)}")]
    page = session(browser)
    open_page(page, url + "/overview", "h1:has-text('Overview')")  # docs/guide/app.md: no /overview
    assert "Page not found" in page.inner_text("body")
    open_page(page, url + "/", "h1:has-text('Overview')")
    assert "Page not found" not in page.inner_text("body")
    assert _tables_fit(page) >= 4
    page.get_by_role("link", name="Compare").click()
    page.wait_for_selector(
        "h3:has-text('The induction circuit across size and training')", state="visible"
    )
    settle(page)
    no_exception(page)
    tags = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"] [data-tag]')
    picked = [t.get_attribute("aria-label") for t in tags.all()]
    assert picked == latest + [SMOL], picked  # each size's latest step, and SmolLM2
    body = page.inner_text("body")
    for text in (
        "K interaction, previous-token → induction",
        "accuracy on the repeated half",
        "Credit by role",
        "Circuits aligned by relative depth",
        "What changes with size",
        f"{SMOL} (30 layers)",
    ):
        assert text in body, text
    # the two ladder charts: one line per size, in size order, one point per stored step
    charts = page.locator(".js-plotly-plot").filter(has_text="previous-token → induction")
    legend = [t.text_content() for t in charts.first.locator(".legendtext").all()]
    assert legend == LADDER, legend
    points = charts.first.locator(".scatterlayer .trace").first.locator("path.point")
    assert points.count() == 3  # step 0, 200 and the last
    # credit by role: the three sizes and SmolLM2, smallest first
    roles = page.locator(".js-plotly-plot").filter(
        has=page.locator(".legendtitletext", has_text=re.compile(r"^model$"))
    )
    legend = [t.text_content() for t in roles.first.locator(".legendtext").all()]
    assert legend == latest + [SMOL], legend
    assert _tables_fit(page) >= 5
    shot(page, "compare_ladder")


def _tables_fit(page) -> int:
    """Every table on the page is read without scrolling sideways; how many there are."""
    widths = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stDataFrame"]')]
        .map(e => { const s = e.querySelector('.dvn-scroller');
                    return [e.innerText.slice(0, 60), s.scrollWidth, s.clientWidth]; })""")
    assert widths and all(sw <= cw + 1 for _, sw, cw in widths), widths
    return len(widths)


def _last(db, name: str) -> str:
    """The last stored step of ``name``'s model, as a revision."""
    member = name.split("@")[0]
    return sql(
        db,
        "SELECT revision FROM models WHERE name LIKE ? ORDER BY step DESC LIMIT 1",
        [member + "@%"],
    )["revision"][0]


def _view(page, keys) -> dict:
    """What identifies a view: the page, the link's parameters ``keys`` and the
    values every slider and select box shows."""
    from urllib.parse import parse_qs, urlparse

    params = parse_qs(urlparse(page.url).query)
    return dict(
        path=urlparse(page.url).path,
        params={k: params.get(k) for k in keys},
        sliders=[s.inner_text() for s in page.locator('[data-testid="stSliderThumbValue"]').all()],
        selects=[c.input_value() for c in page.get_by_role("combobox").all()],
    )


def _stable_url(page, quiet_ms: int = 1500) -> str:
    """The address once the app has stopped rewriting it."""
    last, same = page.url, 0
    while same < quiet_ms:
        page.wait_for_timeout(250)
        same = same + 250 if page.url == last else 0
        last = page.url
    return last


LINKS = {  # page -> (parameters, a selector that must be visible, text that must show)
    "overview": (
        {"ws_task": "induction", "ws_models": ["ladder-d96@step200"]},
        "h1:has-text('Overview')",
        "ladder-d96@step200",
    ),
    "prompt": (
        {"ws_task": "induction", "ws_models": ["ladder-d128@step0"], "prompt_k": "3"},
        ".unpack-tok",
        "ladder-d128@step0",
    ),
    "circuit": (
        {
            "ws_task": "induction",
            "ws_models": ["ladder-d64@step200"],
            "circuit_topk": "15",
            "circuit_agg": "sum",
        },
        ".js-plotly-plot .scatterlayer",
        "15",
    ),
    "compare": (
        {"ws_task": "induction", "compare_topk": "50", "compare_value": "share_negative"},
        "h3:has-text('Circuits aligned by relative depth')",
        "50",
    ),
    "sql": ({"sql_text": "SELECT 6 * 7 AS answer"}, "button:has-text('Run query')", ""),
}


@pytest.mark.parametrize("name", list(LINKS))
def test_a_copied_link_reproduces_the_view(app, browser, name):
    url, db = app
    params, ready, text = LINKS[name]
    first, second = session(browser), session(browser)
    open_page(first, link(url, name, params), ready)
    no_exception(first)
    copied = _stable_url(first)
    view = _view(first, params)
    for k, v in params.items():  # the view is the one the link asked for
        assert view["params"].get(k) == (v if isinstance(v, list) else [v]), (k, view["params"])
    assert text in first.inner_text("body")
    assert "Cannot read the database" not in first.inner_text("body")
    if name == "sql":
        assert first.get_by_label("Query").input_value() == params["sql_text"]
    # a new browser session opens the copied link
    open_page(second, copied, ready)
    no_exception(second)
    _stable_url(second)
    again = _view(second, params)
    assert again == view, (again, view)
    if name == "sql":
        assert second.get_by_label("Query").input_value() == params["sql_text"]


def test_the_url_follows_the_view(app, browser):
    url, db = app
    page = session(browser)
    open_page(
        page,
        link(url, "compare", {"ws_task": "induction"}),
        "h3:has-text('Circuits aligned by relative depth')",
    )
    page.get_by_text("share_negative", exact=True).click()
    settle(page)
    assert "compare_value=share_negative" in page.url


def test_trace_on_demand_runs_on_a_ladder_checkpoint(app, browser):
    """The Prompt page of a toy-ladder checkpoint traces a reroot on demand: the
    checkpoint's name is the project's own alias (``ladder-d64@step972``), resolved
    locally, never taken for a hub name."""
    url, db = app
    model = LADDER[0] + "@" + LAST_D64
    page = session(browser)
    open_page(
        page, link(url, "prompt", {"ws_task": "induction", "ws_models": [model]}), ".unpack-tok"
    )
    no_exception(page)
    page.get_by_role("tab", name="Trace on demand").click()
    body = page.inner_text("body")
    assert "hub name" not in body and "not in the local Hugging Face cache" not in body, body[
        -2000:
    ]
    page.get_by_role("button", name="Trace from").click()
    page.get_by_text("Traced in").wait_for(timeout=120_000)
    no_exception(page)
    body = page.inner_text("body")
    assert re.search(r"Traced in [0-9.]+ ?s", body), body[-2000:]


# ------------------------------------------------------------------ docs/screenshots from a store
