"""Hostile stored text in a real browser (docs/SECURITY.md): a store whose prompt
texts, task, condition and template names, tokens, errors and circuit task are
the corpus of tests/hostile.py; every page of ``unpack app`` and every HTML
export (the CLI's prompt export, the app's circuit and top-paths downloads)
opened in headless Chromium. Nothing may open a dialog, ask for anything beyond
the app's own origin (or the file itself), or make an element or attribute
from the text; the text must show as the same characters."""

from __future__ import annotations

import time
from pathlib import Path

from tests.app_harness import MODELS, build_store
from tests.browser import (
    chromium_page,
    no_exception,
    open_page,
    require_browser,
    running_app,
    settle,
)
from tests.hostile import CORPUS, EVIL, HOSTILE

# What must never be on a page: event-handler attributes, a URL to EVIL, an
# element the corpus would make (img src=x, svg onload), a script that is not
# data and mentions alert(.
_BAD = (
    """() => {
  const bad = [];
  const host = v => { try { return new URL(v, location.href).host; } catch (e) { return ''; } };
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      const n = a.name.toLowerCase();
      if (n.startsWith('on')) bad.push(el.tagName + ' ' + n + '=' + a.value);
      if (['src', 'href', 'srcset', 'action', 'formaction', 'data', 'xlink:href', 'poster']
          .includes(n) && host(a.value).includes('"""
    + EVIL
    + """'))
        bad.push(el.outerHTML.slice(0, 200));
    }
  }
  document.querySelectorAll('img[src="x"], svg[onload]').forEach(e => bad.push(e.outerHTML));
  for (const s of document.scripts)
    if (!s.src && s.type !== 'application/json' && s.textContent.includes('alert('))
      bad.push('script ' + s.textContent.slice(0, 80));
  return bad;
}"""
)
T0 = 0.0
IMG = CORPUS[1]  # <img src=x onerror=...>
TASK = " ".join(s for s in CORPUS if s.startswith(("<a href", "`code`")))  # HTML and Markdown links
SHOWN = [s for s in CORPUS if not set(s) & set("\n\r\t\x00\u2028")]  # shown as is, one line


def hostile_store(where: Path) -> tuple[Path, int]:
    """``(db, prompt_id)``: a real ingest and a discovered circuit, then every
    stored text the pages show replaced by hostile strings."""
    import duckdb

    from ingest.discover import discover

    db, _ = build_store(where, n=1, models=MODELS[:1], roots=[])
    print(f"{time.perf_counter() - T0:6.1f} s  store")
    discover(db, seeds=2, per_mode=1, depth=0, min_share=0.01)  # its heads, no reroots
    print(f"{time.perf_counter() - T0:6.1f} s  circuit")
    con = duckdb.connect(str(db))
    try:
        con.execute(
            "UPDATE prompts SET text = ? || ' ' || text, task = ?, condition = ?, "
            "template = ?, target = ?, distractor = ?, "
            "error = CASE WHEN status = 'ok' THEN error ELSE ? END",
            [HOSTILE, TASK, IMG, CORPUS[3], TASK, CORPUS[5], HOSTILE],
        )
        for i, s in enumerate(CORPUS):
            con.execute("UPDATE tokens SET token = ? WHERE pos = ?", [s, i])
        con.execute(
            "UPDATE circuits SET task = ?, condition = ?, model = ?", [HOSTILE, CORPUS[5], TASK]
        )
        con.execute("UPDATE models SET name = ?", [TASK])
        pid = con.execute("SELECT min(prompt_id) FROM prompts WHERE status = 'ok'").fetchone()[0]
    finally:
        con.close()
    return db, int(pid)


def watch(page, origin: str) -> dict:
    """Record dialogs and every request not to ``origin`` (or a file); those are aborted."""
    seen = {"dialogs": [], "outside": []}

    def on_dialog(d):
        seen["dialogs"].append(d.message)
        d.dismiss()

    def route(r):
        if r.request.url.startswith((origin, "file:")):
            r.continue_()
        else:
            seen["outside"].append(r.request.url)
            r.abort()

    page.on("dialog", on_dialog)
    page.route("**/*", route)
    return seen


def check(page, seen: dict, where: str) -> None:
    print(f"{time.perf_counter() - T0:6.1f} s  {where}")
    page.wait_for_timeout(200)  # an onerror or a late fetch would have happened by now
    assert not seen["dialogs"], (where, seen["dialogs"])
    assert not seen["outside"], (where, seen["outside"])
    assert page.evaluate(_BAD) == [], where


def download(page, label: str, to: Path) -> Path:
    with page.expect_download() as dl:
        page.get_by_role("button", name=label).click()
    dl.value.save_as(to)
    return to


def check_export(page, seen: dict, path: Path, title_has: str) -> None:
    """An HTML export opened from its file: drawn, titled with the text, nothing else."""
    page.goto(path.as_uri())
    page.wait_for_selector("#graph g.node")
    check(page, seen, path.name)
    h3 = " ".join(page.inner_text("h3").split())
    assert " ".join(title_has.split()) in h3, (path.name, h3)


def test_hostile_text_on_every_page_and_export(tmp_path):
    global T0
    require_browser()
    from unpack.cli import main

    T0 = time.perf_counter()
    db, pid = hostile_store(tmp_path)
    out = tmp_path / "prompt.html"
    assert (
        main(
            ["export", "--db", str(db), "--prompt", str(pid), "--format", "html", "--out", str(out)]
        )
        == 0
    )
    with running_app(db) as url, chromium_page() as page:
        seen = watch(page, url)
        open_page(page, url + "/", "h1:has-text('Overview')")
        no_exception(page)
        check(page, seen, "overview")
        assert TASK in page.inner_text("body").replace("\u2060", "")  # the task, as text

        open_page(page, url + "/prompt", ".unpack-tok")
        no_exception(page)
        body = page.inner_text("body").replace("\u2060", "")  # word joiners (app/escape.py)
        for s in SHOWN:
            assert s in body, s
        page.get_by_text("Credit per position as a chart and a table").click()  # tokens in plotly
        page.wait_for_selector(".js-plotly-plot .xtick")
        settle(page)
        page.get_by_text("Export the top paths for a paper").click()
        paths_html = download(page, "Top paths (interactive HTML)", tmp_path / "paths.html")
        check(page, seen, "prompt")

        open_page(page, url + "/circuit", ".js-plotly-plot .scatterlayer")
        no_exception(page)
        circuit_html = download(page, "Circuit (interactive HTML)", tmp_path / "circuit.html")
        check(page, seen, "circuit")

        for name, h1 in (("compare", "Compare"), ("sql", "SQL")):
            open_page(page, f"{url}/{name}", f"h1:has-text('{h1}')")
            no_exception(page)
            check(page, seen, name)
        page.get_by_label("Query").fill("SELECT text, task, condition, error FROM prompts")
        page.keyboard.press("Control+Enter")
        settle(page)
        page.get_by_role("button", name="Run query").click()
        settle(page)
        assert page.get_by_text("rows").count() >= 1
        no_exception(page)
        check(page, seen, "sql result")
        page.get_by_label("Query").fill("SELECT CAST(text AS INTEGER) FROM prompts")
        page.keyboard.press("Control+Enter")
        settle(page)
        page.get_by_role("button", name="Run query").click()
        page.locator('[data-testid="stAlert"]').filter(has_text="Could not convert").wait_for()
        no_exception(page)
        check(page, seen, "sql error quoting the text")

        check_export(page, seen, out, IMG)
        check_export(page, seen, paths_html, IMG)
        check_export(page, seen, circuit_html, IMG)
