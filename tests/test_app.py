"""The Streamlit app on a store made by a real ingest (tiny random GPT-2 and
GPT-NeoX models saved as Hugging Face directories), driven page by page with
Streamlit's own test harness; the read-only SQL box; ``unpack app``."""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import socket
from pathlib import Path

import duckdb
import numpy as np
import pytest

from tests.app_harness import (
    APP,
    MODELS,
    PAGES,
    assert_clean,
    build_store,
    captions,
    con_of,
    figures,
    open_app,
    sql,
    widget,
)

# ------------------------------------------------------------------ a store from a real ingest


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("app-store"))


# ------------------------------------------------------------------ the harness


def strips(at) -> list[list[tuple[int, str, float]]]:
    """Every token strip on the page as [(pos, token, credit)]."""
    out = []
    for m in at.markdown:
        if 'class="unpack-strip"' not in m.value:
            continue
        boxes = re.findall(
            r'data-pos="(\d+)" data-credit="([^"]+)".*?white-space:pre">(.*?)<br>', m.value
        )
        out.append([(int(p), html.unescape(t), float(c)) for p, c, t in boxes])
    return out


def node_names(fig) -> set[str]:
    return {
        n
        for tr in fig["data"]
        if tr.get("name", "").endswith("components")
        for n in tr.get("customdata", [])
    }


# ------------------------------------------------------------------ the CLI


def test_cli_defaults_bind_localhost_and_command_is_headless():
    from app.cli import streamlit_command
    from unpack.cli import build_parser

    args = build_parser().parse_args(["app"])
    assert (args.db, args.port, args.host) == ("unpack.duckdb", 8501, "127.0.0.1")
    cmd = streamlit_command("/x/y.duckdb", "127.0.0.1", 8765)
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("app/streamlit_app.py")
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8765"
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    assert cmd[-3:] == ["--", "--db", "/x/y.duckdb"]


def test_cli_bad_input_names_it_and_the_fix(tmp_path, capsys, store):
    from unpack.cli import main

    missing = tmp_path / "nope.duckdb"
    assert main(["app", "--db", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nope.duckdb" in err and "does not exist" in err and "unpack demo" in err
    db, _ = store
    assert main(["app", "--db", str(db), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    with socket.socket() as s:  # a port in use
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", "--db", str(db), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err
    not_a_store = tmp_path / "plain.duckdb"
    duckdb.connect(str(not_a_store)).close()
    assert main(["app", "--db", str(not_a_store)]) == 2
    assert "schema" in capsys.readouterr().err


# ------------------------------------------------------------------ the SQL box refuses

REFUSED = {
    "copy": "COPY models TO '{out}/models.csv'",
    "attach": "ATTACH '{out}/other.duckdb' AS other",
    "install": "INSTALL httpfs",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "create_table": "CREATE TABLE t AS SELECT 1 AS x",
    "insert": "INSERT INTO models (model_id, name) VALUES (99, 'x')",
    "drop": "DROP VIEW trace_info",
    "set": "SET enable_external_access = true",
    "load": "LOAD httpfs",
    "export": "EXPORT DATABASE '{out}/dump'",
    "two_statements": "SELECT 1; DROP TABLE models",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "file_as_table": "SELECT * FROM '/etc/passwd'",
    "describe_file": "DESCRIBE SELECT * FROM read_csv_auto('/etc/hostname')",
    "with_file": "WITH t AS (SELECT * FROM read_parquet('{out}/x.parquet')) SELECT * FROM t",
    "comment_then_write": "/* hi */ -- note\nDELETE FROM prompts",
}


def db_digest(db) -> str:
    return hashlib.sha256(Path(db).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", list(REFUSED))
def test_run_query_refuses_writes_and_file_access(store, tmp_path, name):
    from app.db import run_query
    from unpack.errors import InputError

    db, _ = store
    before = db_digest(db)
    stmt = REFUSED[name].format(out=tmp_path)
    with pytest.raises(InputError) as e:
        run_query(con_of(db).cursor(), stmt)
    msg = str(e.value)
    # (a quoted path is not read as a file with external access off: it is an unknown table)
    assert re.search(
        r"read-only|not allowed|refused|one statement|file system|"
        r"Table with name /etc/passwd does not exist",
        msg,
    ), msg
    assert db_digest(db) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "stmt",
    [
        "COPY models TO '{out}/m.csv'",
        "ATTACH '{out}/o.duckdb'",
        "INSTALL httpfs",
        "SELECT * FROM read_csv('/etc/passwd')",
        "CREATE TABLE t (x INT)",
        "SET enable_external_access = true",
    ],
)
def test_the_connection_itself_refuses(store, tmp_path, stmt):
    """Second layer: even without the statement check, the connection cannot
    write, attach, install or read files."""
    db, _ = store
    cur = con_of(db).cursor()
    with pytest.raises(duckdb.Error):
        cur.execute(stmt.format(out=tmp_path)).fetchall()
    assert list(tmp_path.iterdir()) == []


def test_sql_page_refuses_each_statement_with_a_clear_message(monkeypatch, store, tmp_path):
    db, _ = store
    before = db_digest(db)
    at = open_app(monkeypatch, db, "sql")
    for name in ("copy", "attach", "install", "read_csv", "create_table", "two_statements"):
        at.text_area(key="sql_text").set_value(REFUSED[name].format(out=tmp_path))
        widget(at.button, "Run query").click()
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        errors = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]  # Markdown-escaped
        assert len(errors) == 1, (name, errors)
        assert re.search(r"read-only|not allowed|refused|one statement", errors[0]), errors[0]
        assert not any(c.endswith("rows") or "rows (" in c for c in captions(at))
        assert not at.get("download_button")
    assert db_digest(db) == before and list(tmp_path.iterdir()) == []


def test_sql_page_runs_examples_and_offers_downloads(monkeypatch, store):
    db, _ = store
    at = open_app(monkeypatch, db, "sql")
    examples = widget(at.selectbox, "Example queries")
    assert len(examples.options) >= 5
    examples.set_value("Credit at each role (IO, S1, S2, END / A, B, C)").run()
    assert "FROM credit_by_role" in at.text_area(key="sql_text").value
    at.text_area(key="sql_text").set_value(
        "SELECT prompt_id, status FROM prompts ORDER BY prompt_id"
    )
    widget(at.button, "Run query").click().run()
    assert_clean(at)
    want = sql(db, "SELECT prompt_id, status FROM prompts ORDER BY prompt_id")
    got = at.dataframe[0].value
    assert got["prompt_id"].tolist() == want["prompt_id"].tolist()
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download CSV", "Download Parquet"]
    at.number_input(key="sql_limit").set_value(3).run()  # the limit reruns the cached query
    assert len(at.dataframe[0].value) == 3
    assert any("3 rows" in c for c in captions(at))


# ------------------------------------------------------------------ Overview


def test_overview_counts_failures_and_working_set(monkeypatch, store):
    db, names = store
    at = open_app(monkeypatch, db)
    assert [t.value for t in at.title] == ["Overview"]
    metrics = {m.label: m.value for m in at.metric}
    c = sql(
        db,
        "SELECT count(*) FILTER (WHERE status = 'ok') AS ok, "
        "count(*) FILTER (WHERE status <> 'ok') AS bad FROM prompts",
    ).iloc[0]
    assert metrics["prompts"] == f"{int(c.ok):,}" and metrics["failures"] == f"{int(c.bad):,}"
    assert int(c.bad) == 1 and metrics["models"] == "2"
    fails = [d.value for d in at.dataframe if "error" in d.value.columns]
    assert fails and "target is empty" in fails[0]["error"].iloc[0]

    n_cond = sql(
        db, "SELECT count(*) AS n FROM prompts WHERE status = 'ok' AND condition = 'ioi_io'"
    ).n[0]
    assert f"{n_cond} prompts in the working set" in captions(at)
    widget(at.selectbox, "Condition").set_value("(all)").run()
    assert_clean(at)
    assert f"{int(c.ok)} prompts in the working set" in captions(at)
    widget(at.multiselect, "Models").set_value([names[1]]).run()
    assert_clean(at)
    summary = [d.value for d in at.dataframe if "mean_logit_diff" in d.value.columns][0]
    assert summary["model"].tolist() == [names[1]]


# ------------------------------------------------------------------ Prompt


def test_prompt_strip_shows_the_prompts_tokens_and_credit(monkeypatch, store):
    db, _ = store
    at = open_app(monkeypatch, db, "prompt")
    pick = widget(at.selectbox, "Prompt (10 in the working set)")

    def check(pid, root="target"):
        want = sql(
            db,
            "SELECT k.pos, k.token, c.credit FROM traces t "
            "JOIN token_credits c ON c.trace_id = t.trace_id "
            "JOIN tokens k ON k.prompt_id = t.prompt_id AND k.pos = c.pos "
            "WHERE t.prompt_id = ? AND t.root = ? ORDER BY k.pos",
            [pid, root],
        )
        strip = strips(at)[0]
        assert [t for _, t, _ in strip] == want["token"].tolist()
        np.testing.assert_allclose([c for *_, c in strip], want["credit"], rtol=1e-5, atol=1e-12)
        text = sql(db, "SELECT text FROM prompts WHERE prompt_id = ?", [pid]).text[0]
        assert all(t in text for t in want["token"] if t != "<|endoftext|>")

    first, other = pick.options[0], pick.options[3]
    check(int(pick.value))
    assert first.startswith(f"#{pick.value} ")
    pick.set_value(int(other.split()[0][1:])).run()
    assert_clean(at)
    check(int(other.split()[0][1:]))
    roots = widget(at.selectbox, "Stored trace (root)")
    assert roots.options == ["target", "attn_1_head_0@END", "attn_1_head_1@END"]
    roots.set_value("attn_1_head_1@END").run()
    assert_clean(at)
    check(int(other.split()[0][1:]), "attn_1_head_1@END")


def test_prompt_paths_have_kqv_labels_and_the_slider_counts(monkeypatch, store):
    db, _ = store
    at = open_app(monkeypatch, db, "prompt")
    pid = int(widget(at.selectbox, "Prompt (10 in the working set)").value)
    widget(at.selectbox, "Stored trace (root)").set_value("attn_1_head_0@END").run()
    want = sql(
        db,
        "SELECT p.chain, p.modes FROM paths p JOIN traces t USING (trace_id) "
        "WHERE t.prompt_id = ? AND t.root = 'attn_1_head_0@END' ORDER BY rank",
        [pid],
    )
    page = [m.value for m in at.markdown if "unpack-path" in m.value][0]  # the top paths
    assert page.count('class="unpack-path"') == min(8, len(want))
    first_modes = [m for m in want["modes"].iloc[0].split(",") if m]
    for m in first_modes:  # each attention hop's mode is shown as a badge
        assert f">{m}</span>" in page
    assert "attn_1_head_0" in page  # the rerooted paths start at the root head
    widget(at.slider, "Paths shown").set_value(3).run()
    assert_clean(at)
    page = [m.value for m in at.markdown if "unpack-path" in m.value][0]
    assert page.count('class="unpack-path"') == min(3, len(want))


def test_prompt_reroot_from_stored_rows(monkeypatch, store):
    db, _ = store
    at = open_app(monkeypatch, db, "prompt")
    pid = int(widget(at.selectbox, "Prompt (10 in the working set)").value)
    end = int(sql(db, "SELECT target_pos FROM prompts WHERE prompt_id = ?", [pid]).iloc[0, 0])
    comp = widget(at.selectbox, "Component")
    assert comp.options[0] == "embedding" and "mlp_1" in comp.options
    comp.set_value("attn_1_head_1").run()
    widget(at.selectbox, "Position").set_value(end).run()
    assert_clean(at)
    want = sql(
        db,
        "SELECT e.child, e.child_pos, e.mode, e.weight FROM edges e JOIN traces t "
        "USING (trace_id) WHERE t.prompt_id = ? AND t.root = 'target' AND "
        "e.parent = 'attn_1_head_1' AND e.parent_pos = ? "
        "ORDER BY abs(e.weight) DESC LIMIT 25",
        [pid, end],
    )
    assert len(want) > 0
    feed = [d.value for d in at.dataframe if "writer" in d.value.columns][0]
    assert feed["writer"].tolist() == want["child"].tolist()
    np.testing.assert_allclose(feed["weight"], want["weight"])
    # the stored reroot at that component and position is found and shown
    stored_strip = strips(at)[1]
    want_credit = sql(
        db,
        "SELECT c.credit FROM token_credits c JOIN traces t USING (trace_id) "
        "WHERE t.prompt_id = ? AND t.root = 'attn_1_head_1@END' ORDER BY c.pos",
        [pid],
    )["credit"]
    np.testing.assert_allclose([c for *_, c in stored_strip], want_credit, rtol=1e-5, atol=1e-12)
    # a position with no stored reroot says so and lists the stored roots
    widget(at.selectbox, "Position").set_value(end - 1).run()
    assert_clean(at)
    from app.escape import markdown

    want = "No stored trace is rooted at " + markdown("attn_1_head_1@")  # stored text, escaped
    assert any(want in i.value for i in at.info)


def test_prompt_trace_on_demand_equals_the_stored_reroot(monkeypatch, store):
    """Tracing on demand from the model directory gives the stored reroot's credit."""
    db, _ = store
    at = open_app(monkeypatch, db, "prompt")
    pid = int(widget(at.selectbox, "Prompt (10 in the working set)").value)
    end = int(sql(db, "SELECT target_pos FROM prompts WHERE prompt_id = ?", [pid]).iloc[0, 0])
    widget(at.selectbox, "Component").set_value("attn_1_head_0").run()
    widget(at.selectbox, "Position").set_value(end).run()
    from app.escape import markdown

    go = widget(at.button, "Trace from " + markdown(f"attn_1_head_0@{end}"))  # a Markdown label
    go.click().run()
    assert_clean(at)
    assert any("Traced in" in c for c in captions(at))
    live = strips(at)[-1]
    stored = sql(
        db,
        "SELECT c.credit FROM token_credits c JOIN traces t USING (trace_id) "
        "WHERE t.prompt_id = ? AND t.root = 'attn_1_head_0@END' ORDER BY c.pos",
        [pid],
    )["credit"]
    np.testing.assert_allclose([c for *_, c in live], stored, rtol=1e-4, atol=1e-9)


def test_prompt_trace_on_demand_unavailable_says_so(monkeypatch, tmp_path):
    """A store whose model directory is gone: a clear message and the stored roots."""
    db, names = build_store(tmp_path, n=1, models=MODELS[:1], failing=False)
    shutil.rmtree(names[0])
    at = open_app(monkeypatch, db, "prompt")
    warn = [w.value for w in at.warning]
    assert len(warn) == 1 and "not available" in warn[0] and "not on this machine" in warn[0]
    from app.escape import markdown

    assert markdown("target") in warn[0] and markdown("attn_1_head_0@END") in warn[0]
    assert not [b for b in at.button if b.label.startswith("Trace from")]


def test_model_availability_messages(tmp_path):
    from app.ui.state import model_availability

    (tmp_path / "config.json").write_text("{}")
    ok, why = model_availability(str(tmp_path))
    assert ok and str(tmp_path) in why
    ok, why = model_availability(str(tmp_path / "gone"))
    assert not ok and "not on this machine" in why
    ok, why = model_availability("EleutherAI/pythia-160m-deduped-not-cached")
    assert not ok and "hub name" in why and "unpack trace" in why


# ------------------------------------------------------------------ Circuit


def test_circuit_graph_matches_app_graphs_and_reacts(monkeypatch, store):
    from app.graphs import circuit_graph
    from app.ui.views import threshold

    db, names = store
    at = open_app(monkeypatch, db, "circuit")
    G = circuit_graph(
        con_of(db).cursor(),
        model=names[0],
        task="ioi",
        preset="kqv_aligned",
        condition="ioi_io",
        root="target",
    )
    H = threshold(G, 0.0, 40)
    fig = figures(at)[0]
    assert node_names(fig) == set(H.nodes) and len(H) >= 4
    assert any(
        f"the {H.number_of_edges()} strongest shown" in c
        and f"between {H.number_of_nodes()} components" in c
        for c in captions(at)
    )
    # top-k: fewer edges and nodes
    widget(at.slider, "Top-k edges").set_value(5).run()
    assert_clean(at)
    H5 = threshold(G, 0.0, 5)
    assert node_names(figures(at)[0]) == set(H5.nodes)
    assert any("the 5 strongest shown" in c for c in captions(at))
    # threshold: only edges with |weight| >= 50% of the strongest
    widget(at.slider, "Top-k edges").set_value(300).run()
    widget(at.slider, "Min |weight| (% of the strongest edge)").set_value(50.0).run()
    wmax = max(abs(w) for *_, w in G.edges(data="weight"))
    Hw = threshold(G, 0.5 * wmax, 300)
    assert (
        node_names(figures(at)[0]) == set(Hw.nodes) and Hw.number_of_edges() < G.number_of_edges()
    )
    # modes: K only -> every edge line is a K line
    widget(at.slider, "Min |weight| (% of the strongest edge)").set_value(0.0).run()
    widget(at.multiselect, "Modes").set_value(["K"]).run()
    assert_clean(at)
    lines = [tr for tr in figures(at)[0]["data"] if tr.get("mode") == "lines"]
    assert lines and {tr["name"] for tr in lines} == {"K"}


def test_circuit_node_details_and_reroot(monkeypatch, store):
    db, names = store
    at = open_app(monkeypatch, db, "circuit")
    node = widget(at.selectbox, "Inspect a component (or click a node)")
    target = "attn_1_head_0" if "attn_1_head_0" in node.options else node.options[0]
    node.set_value(target).run()
    assert_clean(at)
    from app.escape import markdown

    assert any(m.value.startswith(f"**{markdown(target)}**") for m in at.markdown)
    examples = [d.value for d in at.dataframe if "text" in d.value.columns][0]
    want = sql(
        db,
        "SELECT t.prompt_id FROM component_flows f JOIN trace_info t USING (trace_id) "
        "WHERE t.model = ? AND t.root = 'target' AND t.condition = 'ioi_io' AND "
        "f.component = ? GROUP BY 1 ORDER BY abs(sum(f.flow)) DESC LIMIT 5",
        [names[0], target],
    )
    assert examples["prompt_id"].tolist() == want["prompt_id"].tolist()
    widget(at.selectbox, "Root").set_value("attn_1_head_1@END").run()
    assert_clean(at)
    assert "attn_1_head_1" in node_names(figures(at)[0])  # the root feeds from upstream
    widget(at.selectbox, "Model").set_value(names[1]).run()
    assert_clean(at)
    assert any(
        f"{Path(names[1]).name} · ioi" in (f["layout"].get("title") or {}).get("text", "")
        for f in figures(at)
    )


# ------------------------------------------------------------------ Compare


def test_compare_two_models_by_role_suppression_and_depth(monkeypatch, store):
    db, names = store
    at = open_app(monkeypatch, db, "compare")
    widget(at.selectbox, "Condition").set_value("(all)").run()
    assert_clean(at)
    role_table = [d.value for d in at.dataframe if "role" in d.value.columns][0]
    want = sql(
        db, "SELECT model, condition, role, mean_credit FROM credit_by_role WHERE root = 'target'"
    )
    for r in want.itertuples():
        got = role_table[(role_table["condition"] == r.condition) & (role_table["role"] == r.role)]
        assert np.isclose(got[Path(r.model).name].iloc[0], r.mean_credit, rtol=1e-9)
    sup = [d.value for d in at.dataframe if "gap S1 - S2" in d.value.columns][0]
    assert sup["model"].tolist() == [Path(n).name for n in names]
    assert sup["n prompts"].tolist() == [5, 5]
    depth = [f for f in figures(at) if len(f["layout"].get("annotations", [])) == 2][0]
    titles = [a["text"] for a in depth["layout"]["annotations"]]
    assert titles == ["tiny-gpt2 (2 layers)", "tiny-neox (3 layers)"]
    xs = [x for tr in depth["data"] if tr.get("name", "").endswith("components") for x in tr["x"]]
    assert min(xs) == 0.0 and max(xs) <= 1.0 + 1e-9  # relative depth
    size = [d.value for d in at.dataframe if "mean_suppression" in d.value.columns][0]
    assert size["model"].tolist() == names and size["n_layers"].tolist() == [2, 3]
    diff = [d.value for d in at.dataframe if "status" in d.value.columns][0]
    assert set(diff["status"]) <= {"gained", "lost", "changed_mode", "same"} and len(diff)
    widget(at.radio, "Value").set_value("share_negative").run()
    assert_clean(at)
    # one model: a clear message instead of the comparison
    widget(at.multiselect, "Models").set_value([names[0]]).run()
    assert_clean(at)
    assert any("two or more models" in i.value for i in at.info)


def test_missing_database_gives_a_clear_message(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("UNPACK_DB", str(tmp_path / "missing.duckdb"))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert len(at.error) == 1 and "does not exist" in at.error[0].value
    assert "unpack demo" in at.error[0].value


def test_every_page_on_an_empty_store(monkeypatch, tmp_path):
    """A migrated store with no rows: every page explains instead of failing."""
    from ingest import store as ingest_store

    db = tmp_path / "empty.duckdb"
    ingest_store.connect(db).dispose()
    at = open_app(monkeypatch, db)
    assert {m.label: m.value for m in at.metric}["prompts"] == "0"
    for page, says in (
        ("prompt", "No prompt of the working set matches"),
        ("circuit", "No models in the store"),
        ("compare", "two or more models"),
        ("sql", None),
    ):
        at.switch_page(PAGES[page]).run()
        assert_clean(at)
        if says:
            assert any(says in i.value for i in at.info), [i.value for i in at.info]
