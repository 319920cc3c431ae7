"""The Prompt page shows Unpack and a baseline on the same prompt, and the Circuit
page how their edges agree, in headless Chromium (the harness of
tests/browser.py)."""

from __future__ import annotations

from tests.browser import (
    chromium_page,
    no_exception,
    open_page,
    require_browser,
    running_app,
    shot,
    sql,
)
from tests.helpers import toy_ingest
from unpack.cli import main


def test_prompt_page_shows_a_baseline_beside_unpack(tmp_path):
    require_browser()
    db = tmp_path / "s.duckdb"
    for m in ("unpack", "grad_x_input", "eap"):
        assert main(toy_ingest(db, 2, "--no-progress", "--method", m)) == 0
    stored = sql(
        db,
        "SELECT r.method, r.preset, p.prompt_id, p.prompt_key, list(c.credit ORDER BY c.pos) "
        "AS credit FROM token_credits c JOIN traces t USING (trace_id) JOIN prompts "
        "p USING (prompt_id) JOIN runs r USING (run_id) GROUP BY ALL",
    )
    credit = {(r.method, r.prompt_key): list(r.credit) for r in stored.itertuples()}
    close = lambda a, b: (
        len(a) == len(b)
        and all(  # noqa: E731
            abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in zip(a, b)
        )
    )
    with running_app(db) as url, chromium_page() as page:
        token_runs = stored[stored.method != "eap"]  # eap: on the Circuit page below
        for r in token_runs.drop_duplicates("method").itertuples():  # a prompt of each run
            open_page(
                page,
                f"{url}/prompt?ws_preset={r.preset}&prompt_id={r.prompt_id}",
                ".unpack-other .unpack-tok",
            )
            no_exception(page)
            strips = page.locator(".unpack-strip")
            values = lambda loc: [
                float(b.get_attribute("data-credit"))  # noqa: E731
                for b in loc.locator(".unpack-tok").all()
            ]
            main_credit, other = values(strips.first), page.locator(".unpack-other")
            method = other.get_attribute("data-method").split(" ")[0]
            # the first strip is the page's prompt by its own method, the second the same
            # prompt by the other method, each with that method's stored credit
            assert {method, r.method} == {"unpack", "grad_x_input"}
            assert close(main_credit, credit[(r.method, r.prompt_key)])
            assert close(values(other), credit[(method, r.prompt_key)])
            assert not close(values(other), main_credit)
            if r.method == "grad_x_input":  # no component flows: no reroot section
                assert page.get_by_text("stores no component flows").count() == 1
        shot(page, "prompt_baseline")
        check_circuit_agreement(page, url, db)


def check_circuit_agreement(page, url, db):
    """The Circuit page's comparison of Unpack's first prompt with EAP on it: the
    numbers it shows equal pandas' on the edges read straight from the store."""
    import pandas as pd

    open_page(page, f"{url}/circuit?ws_preset=kqv_aligned", "text=Beside another method")
    page.wait_for_selector(".unpack-agreement", state="attached")  # an empty marker: no size
    no_exception(page)
    edges = sql(
        db,
        "SELECT r.method, p.prompt_id, p.prompt_key, e.parent, e.child, e.mode, "
        "sum(e.weight) AS w FROM edges e JOIN traces t USING (trace_id) JOIN prompts "
        "p USING (prompt_id) JOIN runs r USING (run_id) WHERE t.root = 'target' "
        "GROUP BY ALL",
    )
    key = edges[edges.method == "unpack"].sort_values("prompt_id").prompt_key.iloc[0]
    a, b = (
        edges[(edges.method == m) & (edges.prompt_key == key)]
        .set_index(["parent", "child", "mode"])
        .w
        for m in ("unpack", "eap")
    )
    got = page.locator(".unpack-agreement")
    k = int(got.get_attribute("data-k"))
    top = []
    for s in (a, b):  # no tie at the k-th place, so the set is one
        v = s.abs().sort_values(ascending=False).to_numpy()
        assert len(v) <= k or v[k - 1] != v[k]
        top.append(set(s.abs().nlargest(k).index))
    assert int(got.get_attribute("data-both")) == len(top[0] & top[1]) > 0
    assert (
        abs(float(got.get_attribute("data-jaccard")) - len(top[0] & top[1]) / len(top[0] | top[1]))
        < 1e-12
    )
    both = pd.DataFrame({"a": a.abs(), "b": b.abs()}).dropna()
    assert int(got.get_attribute("data-n-both")) == len(both) > 2
    assert (
        abs(float(got.get_attribute("data-spearman")) - both.corr(method="spearman").iloc[0, 1])
        < 1e-9
    )
    assert -1 <= float(got.get_attribute("data-kendall")) <= 1
    page.get_by_text("Beside another method").scroll_into_view_if_needed()
    shot(page, "circuit_agreement")
