"""Overview: what the store holds and the working set picked in the sidebar."""

import pandas as pd
import streamlit as st

from app.escape import markdown as md
from app.ui import data as D
from app.ui import state
from app.ui.tables import not_applicable, table

ws: D.WorkingSet = st.session_state["ws"]
st.title("Overview")

with st.spinner("Counting the store ..."):
    c = state.query(D.counts)
cols = st.columns(6)
for col, (label, key) in zip(
    cols,
    [
        ("models", "models"),
        ("runs", "runs"),
        ("tasks", "tasks"),
        ("prompts", "prompts_ok"),
        ("failures", "prompts_failed"),
        ("traces", "traces"),
    ],
):
    col.metric(label, f"{c[key]:,}")

st.subheader("Working set")
st.caption(
    "Pick models, task, preset, condition and template in the sidebar; the Prompt, "
    "Circuit and Compare pages show this working set."
)
st.markdown(f"**{md(ws.describe())}**")
summary = state.query(D.ws_summary, ws)
if summary.empty:
    st.info(
        "No prompts match the working set: widen it in the sidebar (condition and "
        "template '(all)')."
    )
else:
    # the logit difference needs a distractor: "not applicable" to induction, not None or 0
    summary = not_applicable(
        summary, {"mean_logit_diff": "{:+.3f}", "share_logit_diff_pos": "{:.2f}"}
    )
    num = pd.api.types.is_numeric_dtype
    table(
        summary,
        config={
            "mean_p_target": st.column_config.NumberColumn("mean p(target)", format="%.4f"),
            "mean_logit_diff": (
                st.column_config.NumberColumn("mean logit diff", format="%+.3f")
                if num(summary["mean_logit_diff"])
                else "mean logit diff"
            ),
            "share_logit_diff_pos": (
                st.column_config.NumberColumn("share logit diff > 0", format="%.2f")
                if num(summary["share_logit_diff_pos"])
                else "share logit diff > 0"
            ),
        },
    )

st.subheader("Models")
table(
    state.query(D.models_table),
    config={"n_params": st.column_config.NumberColumn("n_params", format="localized")},
)
st.subheader("Runs")
table(state.query(D.runs_table))
st.subheader("Prompts per task and condition")
tasks = state.query(D.tasks_table)
if not tasks.empty:  # a row per model (a ladder has many), a column per task and condition
    by_model = tasks.set_index(["task", "condition"]).T
    by_model.columns = [f"{t} · {c}" if c and c != t else t for t, c in by_model.columns]
    tasks = by_model.rename_axis("model").reset_index()
table(tasks)

st.subheader("Failures")
fails = state.query(D.failures, 200)
if fails.empty:
    st.success("No failed prompts.")
else:
    st.caption(
        f"{c['prompts_failed']:,} failed prompts; each is stored with its error and "
        "never stops a batch. Most common errors:"
    )
    reasons = state.query(D.failure_reasons, 5)
    st.markdown(
        "\n".join(
            f"- {int(r.n)} × {md(str(r.error)[:200])}" for r in reasons.itertuples(index=False)
        )
    )
    table(fails)
