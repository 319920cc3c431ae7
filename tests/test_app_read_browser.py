"""In Chromium, on a store of the toy ladder's smallest model (ladder-d64, whose
embeddings and heads 0.0 and 1.0 stood on one row):
every edge of the Circuit page's graph is its own visible curve, read from the
rendered figure's data; the inspected node is ringed; no page requests anything
from outside the machine; a link with values out of range opens with a notice
and no traceback, and a link carries only its page's state; the paths export
gives every label its own room and has a legend. One app and one browser for all."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from tests.browser import (
    chromium_page,
    no_exception,
    open_page,
    require_browser,
    running_app,
    settle,
    shot,
    sql,
)
from tests.curves import worst_overlap

MODEL = "ladder-d64"
PAGES = [
    ("overview", "h1:has-text('Overview')"),
    ("prompt", ".unpack-tok"),
    ("circuit", ".js-plotly-plot .scatterlayer"),
    ("compare", "h1:has-text('Compare')"),
    ("sql", "button:has-text('Run query')"),
]


def build_store(where: Path) -> Path:
    """ladder-d64 at its last step, 3 induction prompts rerooted at its induction
    heads, as `unpack demo` ingests the ladder."""
    from ingest.ladder import checkpoints, ingest_ladder

    last = {m: r for m, r, _ in checkpoints()}
    db = where / "d64.duckdb"
    ingest_ladder(
        db,
        n=3,
        progress=False,
        out=lambda *a, **k: None,
        keep=lambda m, r: m == MODEL and r == last[m],
    )
    return db


# the edge curves of the page's first figure, in pixels, and its "selected" ring
_FIGURE = """() => { const gd = document.querySelectorAll('.js-plotly-plot')[0];
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, paths = [];
  let ring = null;
  for (const t of gd.data) {
    if (t.name === 'selected') ring = t.customdata[0];
    if (t.mode !== 'lines' || !t.x || t.x.length < 2 || t.name === 'circuit edges') continue;
    let cur = [];
    for (let i = 0; i <= t.x.length; i++) {
      const x = t.x[i], y = t.y[i];
      if (x === null || x === undefined) { if (cur.length) paths.push(cur); cur = []; }
      else cur.push([xa.l2p(x), ya.l2p(y)]);
    } }
  return {paths: paths, ring: ring}; }"""


def test_pages_read_right_in_chromium(tmp_path_factory):
    """One app and one browser: a link out of range, then every page; the
    requests of all of them."""
    require_browser()
    db = build_store(tmp_path_factory.mktemp("read-store"))
    with running_app(db) as url, chromium_page() as page:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        link_out_of_range_then_short(url, page)  # Prompt, then Circuit
        every_edge_visible_and_the_node_highlighted(db, page)
        for name, ready in PAGES:
            if name not in ("prompt", "circuit"):
                open_page(page, f"{url}/{name}", ready)
                no_exception(page)
        paths_export_labels_keep_apart_with_a_legend(db, page, tmp_path_factory.mktemp("paths"))
    hosts = {
        urlparse(u).hostname
        for u in requests
        if urlparse(u).scheme in ("http", "https", "ws", "wss")
    }
    assert requests and hosts == {"127.0.0.1"}, sorted(u for u in requests if "127.0.0.1" not in u)


def link_out_of_range_then_short(url, page):
    open_page(page, f"{url}/prompt?prompt_k=51", ".unpack-tok")
    no_exception(page)
    assert "prompt_k=51 is outside 1 … 50: 50 is used" in page.inner_text("body")
    page.get_by_role("link", name="Circuit").click()
    page.wait_for_selector(".js-plotly-plot .scatterlayer", state="visible")
    settle(page)
    no_exception(page)
    q = urlparse(page.url).query
    assert "prompt" not in q and "reroot" not in q and len(page.url) < 600, page.url


def every_edge_visible_and_the_node_highlighted(db, page):
    import duckdb

    from app.graphs import circuit_graph, drawn_edges
    from app.ui.views import threshold
    from unpack.components import short_label

    con = duckdb.connect(str(db), read_only=True)
    try:
        G = threshold(circuit_graph(con, task="induction"), 0.0, 40)
    finally:
        con.close()
    got = page.evaluate(_FIGURE)
    n = len(drawn_edges(G))
    assert len(got["paths"]) == n > G.number_of_edges()  # K, Q and V of one pair: three curves
    assert f"{n} edges drawn" in page.inner_text("body")
    assert worst_overlap([[tuple(p) for p in c] for c in got["paths"]]) < 0.5
    combo = page.get_by_role("combobox", name="Inspect a component (or click a node)")
    assert got["ring"] == combo.input_value()
    # a click on another node moves the ring there
    plot = page.locator(".js-plotly-plot").first
    labels = plot.locator(".textpoint").all_text_contents()
    nodes = plot.locator(".scatterlayer .trace").filter(has=page.locator(".textpoint")).first
    i = next(k for k, t in enumerate(labels) if t != short_label(got["ring"]))
    box = nodes.locator("path.point").nth(i).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    settle(page)
    again = page.evaluate(_FIGURE)
    assert short_label(again["ring"]) == labels[i] and again["ring"] == combo.input_value()
    # the four mode chips are whole (the MLP chip was cut)
    cut = page.evaluate("""() => [...document.querySelectorAll('[data-baseweb="tag"] span')]
        .filter(s => s.scrollWidth > s.clientWidth + 1).map(s => s.textContent)""")
    assert cut == []
    shot(page, "circuit_read")


def paths_export_labels_keep_apart_with_a_legend(db, page, where: Path):
    from unpack.cli import main

    pid = int(sql(db, "SELECT min(prompt_id) FROM traces WHERE root = 'target'").iat[0, 0])
    out = where / "paths.html"
    assert (
        main(
            [
                "export",
                "--db",
                str(db),
                "--prompt",
                str(pid),
                "--top",
                "10",
                "--format",
                "html",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    page.goto(out.as_uri())
    boxes = page.evaluate("""() => [...document.querySelectorAll('svg g.node')].map(g => {
        const r = g.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""")
    assert len(boxes) > 3
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    modes = page.locator("#legend .mode").all_text_contents()
    assert modes and all(m.split()[0] in ("K", "Q", "V", "MLP") for m in modes)
