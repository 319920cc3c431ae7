"""End to end in a real browser: ``unpack app`` on a fresh port, Debian's
Chromium (/usr/bin/chromium) driven by Playwright, every page opened and its
visible content checked; screenshots go to artifacts/screenshots/.

Playwright must drive the system Chromium; it never downloads a browser
(no ``playwright install``). Missing Chromium or Playwright fails the test with
the setup command.

Page-load measurement (docs/results/page_load.json, shown on the benchmarks page), on a store of N prompts:
    python tests/test_app_browser.py bench --prompts 1000 --out artifacts/bench
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import query_db  # noqa: E402
from test_app import MODELS, build_store  # noqa: E402  (the same real-ingest store)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("UNPACK_CHROMIUM", "/usr/bin/chromium")
SETUP = ("bash .ci/setup --test (it runs apt-get install -y chromium; Playwright comes with "
         "the project's test extra) -- Playwright drives /usr/bin/chromium; never run "
         "`playwright install`")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SHOTS = REPO / "artifacts" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
LOAD_TIMEOUT_MS = 120_000


# ------------------------------------------------------------------ the app and the browser

def require_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; set it up with: {SETUP}",
                    pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail(f"Playwright is not installed; set it up with: {SETUP}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unpack_command() -> list[str]:
    exe = Path(sys.executable).parent / "unpack"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "unpack.cli"]


@contextlib.contextmanager
def running_app(db, port: int | None = None, log: Path | None = None):
    """``unpack app --db DB --port P`` in its own process group; yields the URL."""
    port = port or free_port()
    log = log or Path(db).with_suffix(".app.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(unpack_command() + ["app", "--db", str(db), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`unpack app` exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"`unpack app` did not answer in 90 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the app and its streamlit child
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def chromium_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright gives every launch a fresh temporary profile (--user-data-dir)
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(LOAD_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def settle(page, quiet_s: float = 1.0) -> float:
    """Wait until Streamlit has finished: no running indicator and the page's text
    unchanged for ``quiet_s``. Returns the time (perf_counter) of the last change."""
    page.wait_for_selector('[data-testid="stApp"]')
    state = ("() => [document.body.innerText.length, document.querySelectorAll('*').length,"
             " !!document.querySelector('[data-testid=\"stStatusWidget\"]')"
             " || !!document.querySelector('[data-testid=\"stSpinner\"]')]")
    last, changed = None, time.perf_counter()
    deadline = changed + LOAD_TIMEOUT_MS / 1000
    while True:
        now = page.evaluate(state)
        t = time.perf_counter()
        if now != last or now[2]:
            last, changed = now, t
        elif t - changed >= quiet_s:
            return changed
        if t > deadline:
            raise TimeoutError(f"the page did not settle in {LOAD_TIMEOUT_MS / 1000:.0f} s")
        page.wait_for_timeout(100)


def open_page(page, url: str, ready: str) -> float:
    """Go to ``url``, wait for the ``ready`` selector and a settled page; seconds from
    navigation to the last change on the page."""
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(ready, state="visible")
    return settle(page) - t0


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    p = SHOTS / f"{name}.png"
    page.screenshot(path=str(p))
    return p


def no_exception(page) -> None:
    """No traceback on the page, and no error the app's page-level guard caught."""
    errs = page.locator('[data-testid="stException"]')
    assert errs.count() == 0, errs.first.inner_text()
    guarded = page.locator('[data-testid="stAlert"]').filter(has_text="could not be drawn")
    assert guarded.count() == 0, guarded.first.inner_text()


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


def sql(db, q, params=None):
    """A read-only query from the test process (the app's process holds its own)."""
    return query_db(db, q, params, df=True)


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
        assert page.locator('[data-testid="stSidebarNav"]').get_by_text(link, exact=True).count() == 1
    shot(page, "overview")


def test_prompt_token_strip_paths_and_reroot(app, page):
    url, db, names = app
    open_page(page, url + "/prompt", ".unpack-tok")
    no_exception(page)
    pid = int(sql(db, "SELECT min(p.prompt_id) FROM prompts p JOIN runs USING (run_id) "
                      "JOIN models m USING (model_id) WHERE m.name = ? AND p.condition = 'ioi_io'"
                      " AND p.status = 'ok'", [names[0]]).iloc[0, 0])
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
        G = threshold(circuit_graph(con, model=names[0], task="ioi", preset="kqv_aligned",
                                    condition="ioi_io"), 0.0, 40)
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
    for text in ("Credit by role", "Duplicate suppression", "tiny-gpt2 (2 layers)",
                 "tiny-neox (3 layers)", "relative depth", "What changes with size"):
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
    for q in ("COPY models TO '/tmp/unpack_app_copy.csv'", "ATTACH '/tmp/unpack_x.duckdb'",
              "INSTALL httpfs", "SELECT * FROM read_csv('/etc/passwd')",
              "CREATE TABLE t AS SELECT 1"):
        run(q)
        alert = page.locator('[data-testid="stAlert"]').filter(has_text="read-only")
        alert.or_(page.locator('[data-testid="stAlert"]').filter(has_text="refused")).first.wait_for()
        assert page.get_by_role("button", name="Download CSV").count() == 0
    assert not Path("/tmp/unpack_app_copy.csv").exists()
    shot(page, "sql_refused")


# ------------------------------------------------------------------ page-load measurement

BENCH_PAGES = [("Overview", "/", "h1:has-text('Overview')"),
               ("Prompt", "/prompt", ".unpack-tok"),
               ("Circuit", "/circuit", ".js-plotly-plot .scatterlayer"),
               ("Compare", "/compare", "h3:has-text('What changes with size')"),
               ("SQL", "/sql", "button:has-text('Run query')")]
HARNESS_PAGES = {"Overview": None, "Prompt": "ui/pages/prompt.py",
                 "Circuit": "ui/pages/circuit.py", "Compare": "ui/pages/compare.py",
                 "SQL": "ui/pages/sql.py"}


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

    p = argparse.ArgumentParser(prog="tests/test_app_browser.py bench",
                                description="Measure page loads on a store of N prompts.")
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
        db, _ = build_store(Path(tempfile.mkdtemp(prefix="unpack-bench-")), n=per_model,
                            failing=False, progress=True)
        print(f"built {db} in {time.perf_counter() - t0:.0f} s", flush=True)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    sizes = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
             for t in ("prompts", "traces", "edges", "component_flows", "paths")}
    con.close()
    h = harness_times(db)
    b = browser_times(db, out / "screenshots")
    lines = [f"Store: {sizes['prompts']:,} prompts, {sizes['traces']:,} traces, "
             f"{sizes['edges']:,} edges, {sizes['component_flows']:,} component flows, "
             f"{sizes['paths']:,} paths; {os.cpu_count()} CPU cores.", "",
             "| page | harness, first run (s) | harness, again (s) | browser, first visit (s) "
             "| browser, reload (s) | browser, sidebar click (s) |", "|---|---|---|---|---|---|"]
    for name, *_ in BENCH_PAGES:
        lines.append(f"| {name} | {h[name][0]:.2f} | {h[name][1]:.2f} | {b[name][0]:.2f} | "
                     f"{b[name][1]:.2f} | {b[name][2]:.2f} |")
    table = "\n".join(lines)
    (out / "page_load_times.md").write_text(table + "\n")
    (out / "page_load_times.json").write_text(json.dumps({"sizes": sizes, "harness": h,
                                                          "browser": b}, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["bench"]:
        sys.exit(bench(sys.argv[2:]))
    sys.exit(pytest.main([__file__, "-q"] + sys.argv[1:]))
