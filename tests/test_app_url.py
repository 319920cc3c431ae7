"""Shareable views (app/ui/url.py): a page opened with the query parameters of a
link shows the view they describe, and changing a widget writes it into the URL.
Driven with Streamlit's test harness on the real-ingest store of tests/app_harness.py."""

from __future__ import annotations

import json

import pytest

from tests.app_harness import APP, PAGES, assert_clean, build_store, captions, open_app, sql, widget


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("url-store"), n=3)


def open_link(monkeypatch, db, page: str, params: dict):
    """The app as a browser opening ``/page?params``: the parameters are in place
    before the first run of the session."""
    return open_app(monkeypatch, db, page, params)


def url_of(at) -> dict:
    return {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in at.query_params.items()}


def test_working_set_and_compare_view_from_a_link(monkeypatch, store):
    db, names = store
    params = {
        "ws_models": names,
        "ws_condition": "ioi_s",
        "compare_value": "share_negative",
        "compare_topk": "50",
        "compare_modes": ["K", "V"],
    }
    at = open_link(monkeypatch, db, "compare", params)
    assert widget(at.multiselect, "Models").value == names
    assert widget(at.selectbox, "Condition").value == "ioi_s"
    assert widget(at.radio, "Value").value == "share_negative"
    assert widget(at.slider, "Top-k edges per model").value == 50
    assert widget(at.multiselect, "Modes").value == ["K", "V"]
    assert url_of(at)["compare_topk"] == ["50"] and url_of(at)["ws_condition"] == ["ioi_s"]
    widget(at.slider, "Top-k edges per model").set_value(30).run()
    assert url_of(at)["compare_topk"] == ["30"]  # the link follows the view


def test_prompt_view_from_a_link(monkeypatch, store):
    db, names = store
    pid = int(sql(db, "SELECT max(prompt_id) FROM trace_info WHERE root <> 'target'").iat[0, 0])
    root = sql(
        db, "SELECT max(root) FROM traces WHERE prompt_id = ? AND root <> 'target'", [pid]
    ).iat[0, 0]
    model = sql(db, "SELECT model FROM trace_info WHERE prompt_id = ?", [pid]).iat[0, 0]
    at = open_link(
        monkeypatch,
        db,
        "prompt",
        {
            "ws_models": [model],
            "ws_condition": "(all)",
            "prompt_id": str(pid),
            "prompt_root": root,
            "prompt_k": "3",
            "prompt_excl_last": "false",
        },
    )
    assert widget(at.selectbox, "Stored trace (root)").value == root
    assert [s for s in at.selectbox if s.label.startswith("Prompt (")][0].value == pid
    assert widget(at.slider, "Paths shown").value == 3
    assert widget(at.toggle, "Color scale ignores the last token").value is False
    assert url_of(at)["prompt_id"] == [str(pid)]


def test_circuit_view_from_a_link(monkeypatch, store):
    db, names = store
    at = open_link(
        monkeypatch,
        db,
        "circuit",
        {
            "ws_models": names,
            "circuit_model": names[1],
            "circuit_agg": "sum",
            "circuit_topk": "15",
            "circuit_minw": "2.5",
            "circuit_modes": ["Q"],
        },
    )
    assert widget(at.selectbox, "Model").value == names[1]
    assert widget(at.selectbox, "Aggregate").value == "sum"
    assert widget(at.slider, "Top-k edges").value == 15
    assert widget(at.slider, "Min |weight| (% of the strongest edge)").value == 2.5
    assert widget(at.multiselect, "Modes").value == ["Q"]


def test_overview_from_a_link(monkeypatch, store):
    db, names = store
    at = open_link(monkeypatch, db, "overview", {"ws_models": [names[1]], "ws_condition": "abc_b"})
    assert widget(at.multiselect, "Models").value == [names[1]]
    assert widget(at.selectbox, "Condition").value == "abc_b"
    shown = [d.value for d in at.dataframe if "n_params" in d.value.columns][0]
    assert shown["model"].tolist() == names  # every model, smallest first


def test_sql_view_and_a_bad_link(monkeypatch, store):
    db, _ = store
    at = open_link(monkeypatch, db, "sql", {"sql_text": "SELECT 42 AS answer"})
    assert widget(at.text_area, "Query").value == "SELECT 42 AS answer"
    # values that do not parse or are not offered open the page on its defaults
    at = open_link(
        monkeypatch,
        db,
        "compare",
        {"compare_topk": "many", "ws_task": "nope", "prompt_excl_last": "maybe"},
    )
    assert widget(at.slider, "Top-k edges per model").value == 25


def test_a_linked_query_runs_and_one_row_is_one_row(monkeypatch, store):
    """The SQL page opened from a link runs its query; the count reads '1 row'."""
    db, _ = store
    at = open_link(monkeypatch, db, "sql", {"sql_text": "SELECT 42 AS answer"})
    widget(at.button, "Run query").click().run()
    assert_clean(at)
    assert at.dataframe[0].value["answer"].tolist() == [42]
    assert "1 row" in captions(at) and not any("1 rows" in c for c in captions(at))


def test_overview_formats_the_parameter_count(monkeypatch, store):
    db, names = store
    at = open_link(monkeypatch, db, "overview", {})
    table = [d for d in at.dataframe if "n_params" in d.value.columns][0]
    config = json.loads(table.proto.columns)
    assert config["n_params"]["type_config"]["format"] == "localized"  # 53,058, not 53058


# ------------------------------------------------------------------ values out of range, short links


def first_run_on(monkeypatch, db, page: str, params: dict, state: dict | None = None):
    """A browser opening ``/page?params``: the session's first run is that page."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("UNPACK_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    for k, v in (state or {}).items():
        at.session_state[k] = v
    if PAGES.get(page):
        at.switch_page(PAGES[page])
    return at.run()


BAD_LINKS = [  # page, parameters, {slider label: the value it opens on}
    ("prompt", {"prompt_k": "51"}, {"Paths shown": 50}),
    ("prompt", {"prompt_k": "-5"}, {"Paths shown": 1}),
    (
        "circuit",
        {"circuit_topk": "1e12", "circuit_minw": "-inf", "circuit_minshare": "-1"},
        {
            "Top-k edges": 300,
            "Min |weight| (% of the strongest edge)": 0.0,
            "Min share of prompts with the edge": 0.0,
        },
    ),
    (
        "circuit",
        {"circuit_topk": "-1", "circuit_minw": "1e308", "circuit_minshare": "inf"},
        {
            "Top-k edges": 5,
            "Min |weight| (% of the strongest edge)": 50.0,
            "Min share of prompts with the edge": 0.0,
        },
    ),
    ("compare", {"compare_topk": "-7"}, {"Top-k edges per model": 5}),
]


@pytest.mark.parametrize("page,params,opens", BAD_LINKS)
def test_out_of_range_link_values_are_clamped_or_dropped_with_a_notice(
    monkeypatch, store, page, params, opens
):
    db, names = store
    at = first_run_on(monkeypatch, db, page, params)
    assert_clean(at)  # no traceback, no error
    for label, value in opens.items():
        assert widget(at.slider, label).value == value
    said = " ".join(w.value for w in at.warning if w.value.startswith("Link:"))
    for key in params:
        assert f"`{key}=" in said, (key, said)


def test_a_failing_page_shows_a_short_message_not_a_traceback(monkeypatch, store):
    """A value no widget accepts (a slider given text) stops the page inside
    Streamlit; the page-level guard says so in one line, the log has the rest."""
    db, _ = store
    at = first_run_on(monkeypatch, db, "prompt", {}, state={"prompt_k": "many"})
    assert not at.exception, [e.value for e in at.exception]
    msg = [e.value for e in at.error]
    assert len(msg) == 1 and msg[0].startswith("This page could not be drawn"), msg
    assert "Traceback" not in msg[0] and "site-packages" not in msg[0]


def test_a_link_carries_only_its_page_and_nothing_at_its_default(monkeypatch, store):
    from app.ui import url

    db, names = store
    at = first_run_on(monkeypatch, db, "prompt", {})
    assert_clean(at)
    assert "ws_models" not in url_of(at)  # the models a first visit opens on
    assert "prompt_id" in url_of(at) and "prompt_k" not in url_of(at)  # 8, its default
    pid = int(sql(db, "SELECT max(prompt_id) FROM trace_info").iat[0, 0])
    at = first_run_on(
        monkeypatch, db, "prompt", {"prompt_id": str(pid), "prompt_k": "3", "ws_condition": "(all)"}
    )
    assert_clean(at)
    assert url_of(at)["prompt_id"] == [str(pid)] and url_of(at)["prompt_k"] == ["3"]
    assert "reroot_comp" in at.session_state
    at.switch_page("ui/pages/circuit.py").run()
    assert_clean(at)
    keys = set(url_of(at))
    assert keys <= set(url.link_keys("circuit")), keys  # no prompt_id, no reroot_*
    assert not keys & {"circuit_topk", "circuit_agg", "circuit_modes"}  # at their defaults
    widget(at.slider, "Top-k edges").set_value(15).run()
    assert url_of(at)["circuit_topk"] == ["15"]
