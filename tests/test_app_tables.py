"""Tables that read right (app/ui/tables.py, app/ui/data.py): times as times,
names whole, parameter counts with separators, training steps in their natural
order, "not applicable" where a measure does not apply, and one name per
measure. On a hand-written store: a model at steps 0, 150 and 1065 and
induction prompts, which have no distractor and so no logit difference."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from app.ui import data as D
from app.ui import tables as T
from tests.hand_store import edge, prompt, trace, write_store

STEPS = (0, 1065, 150)  # stored in this order: text order would keep it


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    db = tmp_path_factory.mktemp("tables") / "steps.duckdb"
    models = [
        dict(
            model_id=i + 1,
            name=f"ladder-d64@step{s}",
            model_type="gpt2",
            n_layers=2,
            n_heads=2,
            d_model=64,
            n_params=171650,
            step=s,
        )
        for i, s in enumerate(STEPS)
    ]
    runs = [
        dict(
            run_id=i + 1,
            model_id=i + 1,
            preset="kqv_aligned",
            config="{}",
            config_hash=f"h{i}",
            status="done",
        )
        for i in range(len(STEPS))
    ]
    prompts = [
        prompt(10 * r + k, r, f"a b c {k}", None, target=" c", distractor=None, task="induction")
        for r in (1, 2, 3)
        for k in range(2)
    ]
    traces = [trace(p["prompt_id"], p["prompt_id"]) for p in prompts]
    edges = [
        edge(t["trace_id"], "attn_1_head_0", "attn_0_head_0", m, w)
        for t in traces
        for m, w in (("K", 0.3), ("Q", 0.1))
    ]
    write_store(
        db, {"models": models, "runs": runs, "prompts": prompts, "traces": traces, "edges": edges}
    )
    c = duckdb.connect(str(db), read_only=True)
    yield c
    c.close()


def test_times_show_as_times_and_parameter_counts_with_separators(con):
    runs = D.runs_table(con)
    cfg = T.column_config(runs)
    for c in ("started_at", "finished_at"):
        assert cfg[c]["type_config"]["type"] == "datetime", cfg[c]  # not epoch milliseconds
    models = D.models_table(con)
    assert T.column_config(models)["n_params"]["type_config"]["format"] == "localized"


def test_names_that_tell_rows_apart_are_never_cut():
    names = [f"ladder-d{d}@step{s}" for d in (64, 96, 128) for s in (0, 150, 200, 500, 972, 1065)]
    df = pd.DataFrame(
        {
            "model": names,
            "code_version": ["0123456789abcdef" * 3] * len(names),
            "preset": ["kqv_aligned"] * len(names),
            "prompts_ok": 3,
        }
    )
    w = T.fit_widths(df, 400)
    assert w["model"] == T.natural_px(df, "model", "model")  # whole: 18 runs tell apart
    assert w["code_version"] < T.natural_px(df, "code_version", "code_version")


def test_steps_in_their_natural_order(con):
    tasks = D.tasks_table(con)
    assert [c for c in tasks.columns if c.startswith("ladder")] == [
        "ladder-d64@step0",
        "ladder-d64@step150",
        "ladder-d64@step1065",
    ]


def test_a_measure_that_does_not_apply_says_so(con):
    ws = D.WorkingSet(models=("ladder-d64@step0",), task="induction")
    summary = D.ws_summary(con, ws)
    assert summary["mean_logit_diff"].isna().all()
    assert summary["share_logit_diff_pos"].isna().all()  # not 0.00 beside a missing mean
    shown = T.not_applicable(
        summary, {"mean_logit_diff": "{:+.3f}", "share_logit_diff_pos": "{:.2f}"}
    )
    assert (
        shown["mean_logit_diff"].tolist()
        == shown["share_logit_diff_pos"].tolist()
        == ["not applicable"]
    )
    kept = T.not_applicable(pd.DataFrame({"x": [0.5, -1.0]}), {"x": "{:+.3f}"})
    assert kept["x"].tolist() == [0.5, -1.0]  # numbers stay numbers where all apply


def test_one_name_per_measure(con, tmp_path):
    """Compare's all-edge mode shares and the ladder's K share are two measures
    with two names, each defined in docs/APP.md."""
    size = D.size_table(con, D.WorkingSet(models=("ladder-d64@step0",), task="induction"))
    shares = [c for c in size.columns if "share" in c]
    assert shares == ["edge_share_K", "edge_share_Q"], shares
    assert size["edge_share_K"].iloc[0] == pytest.approx(0.75)  # 0.3 of 0.3 + 0.1
    doc = (Path(__file__).resolve().parents[1] / "docs" / "APP.md").read_text()
    for name in ("edge_share_K", "K_share", "K_prev_to_ind", "share_logit_diff_pos"):
        assert f"`{name}`" in doc, name
