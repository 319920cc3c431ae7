"""Compare: models side by side on the working set's task, aligned by role and depth."""

import plotly.express as px
import streamlit as st

from app.escape import html_text, markdown as md
from app.ui import data as D
from app.ui import state, views
from app.ui.tables import not_applicable, table

ws: D.WorkingSet = st.session_state["ws"]
st.title("Compare")

# ------------------------------------------------------------------ the toy ladder
ladder = state.query(D.induction_strength, ws.preset)
if not ladder.empty and ws.task == "induction":
    st.subheader("The induction circuit across size and training")
    st.caption(
        "docs/METHOD.md §10 · every toy model in the store (all sizes and steps, whatever "
        "the sidebar picks): the K-mode interaction from the induction heads (rerooted at "
        "END) into the previous-token heads, its share of K+Q+V, and the accuracy on the "
        "repeated half. The circuit forms where both jump. K share = K / "
        "(K + Q + V) of those edges only (docs/APP.md, Measures)."
    )
    c1, c2 = st.columns(2)
    for col, y, title in (
        (c1, "K_prev_to_ind", "K interaction, previous-token → induction"),
        (c2, "acc_repeat", "accuracy on the repeated half"),
    ):
        f = px.line(
            ladder,
            x="step",
            y=y,
            color="family",
            markers=True,
            height=300,
            title=title,
            category_orders={"family": list(dict.fromkeys(ladder["family"]))},
        )
        f.update_layout(margin=dict(l=10, r=10, t=40, b=10))
        col.plotly_chart(f, key=f"ladder_{y}")
    # a row per checkpoint: the model as its size (n_params) and step
    table(
        ladder.drop(columns=["model", "d_model", "n_heads", "traces"], errors="ignore"),
        labels={"family": "model"},
        config={"n_params": st.column_config.NumberColumn(format="localized")},
    )
elif not ladder.empty:
    st.caption(
        f"The store holds {len(ladder)} toy ladder checkpoints: pick the task "
        "`induction` in the sidebar to see the induction circuit across size and training."
    )

summary = state.query(D.ws_summary, ws)
models = summary["model"].tolist() if not summary.empty else []
if len(models) < 2:
    st.info(
        f"Compare needs two or more models with prompts in the working set "
        f"({len(models)} now: {md(', '.join(D.short_model(m) for m in models) or 'none')}). "
        "Pick more models in the sidebar, or ingest the same task on another model: "
        "`unpack ingest --model MODEL --task TASK --controls` with task "
        f"{md(ws.task or 'ioi')}."
    )
    st.stop()
st.caption(f"{md(ws.describe())} · models ordered by size, one model's checkpoints by step")

# ------------------------------------------------------------------ credit by role
st.subheader("Credit by role")
cbr = state.query(D.credit_by_role, ws)
if cbr.empty:
    st.info("No role positions stored for these prompts.")
else:
    cbr = cbr.assign(model=cbr["model"].map(D.short_model))
    value = st.radio(
        "Value",
        ["mean_credit", "mean_credit_pct", "share_negative"],
        horizontal=True,
        key="compare_value",
    )
    fig = px.bar(
        cbr,
        x="role",
        y=value,
        color="model",
        barmode="group",
        facet_col="condition" if cbr["condition"].nunique() > 1 else None,
        facet_col_wrap=4,
        height=340,
        category_orders={
            "role": [r for r in D.ROLE_ORDER if r in set(cbr["role"])],
            "model": [D.short_model(m) for m in models],
        },
    )
    fig.update_layout(margin=dict(l=10, r=10, t=30, b=10))
    fig.update_yaxes(matches=None)
    st.plotly_chart(fig, key="compare_roles_chart")
    wide = cbr.pivot_table(
        index=["condition", "role"], columns="model", values=value, sort=False
    ).reset_index()
    table(wide)

# ------------------------------------------------------------------ duplicate suppression
st.subheader("Duplicate suppression")
try:
    if ws.task != "ioi":
        raise ValueError(f"it is an IOI measure and the working set's task is {ws.task!r}")
    with st.spinner("Computing the duplicate-suppression table ..."):
        sup, sup_cond = state.suppression(tuple(models), ws.preset)
except Exception as e:  # NoData / InputError explain what is missing
    st.info(f"No duplicate-suppression table for this working set: {e}")
else:
    st.caption(
        "docs/METHOD.md §10: IOI with target = S (ioi_s): credit at S1 stays positive while "
        "S2 turns negative; ABC controls abc_c (copying, C positive) and abc_b."
    )
    table(sup.assign(model=sup["model"].map(D.short_model)))
    with st.expander("Per condition"):
        table(sup_cond)

# ------------------------------------------------------------------ graphs by relative depth
st.subheader("Circuits aligned by relative depth")
c1, c2 = st.columns(2)
top_k = c1.slider("Top-k edges per model", 5, 150, 25, step=5, key="compare_topk")
modes = c2.multiselect(
    "Modes", ["K", "Q", "V", "MLP"], default=["K", "Q", "V"], key="compare_modes"
)
if not modes:
    st.warning("Pick at least one mode.")
    st.stop()
from plotly.subplots import make_subplots  # noqa: E402

from app.graphs import compare_graphs, layered_layout  # noqa: E402

graphs = {}
with st.spinner("Aggregating each model's circuit ..."):
    for m in models:
        try:
            graphs[m] = state.circuit(m, ws, "target", tuple(modes))
        except Exception as e:
            st.warning(f"{md(D.short_model(m))}: {md(e)}")
fig = make_subplots(
    rows=len(graphs),
    cols=1,
    shared_xaxes=True,
    vertical_spacing=min(0.12, 0.3 / max(1, len(graphs))),
    subplot_titles=[
        html_text(f"{D.short_model(m)} ({G.graph.get('n_layers')} layers)")
        for m, G in graphs.items()
    ],
)
in_legend: set = set()  # each mode drawn in any model's graph is listed once
for i, (m, G) in enumerate(graphs.items(), start=1):
    H = views.threshold(G, 0.0, top_k)
    pos = layered_layout(H)
    nl = G.graph.get("n_layers") or 1
    # relative depth: embeddings 0, the last layer's (sequential) MLP 1
    xy = {
        n: ((H.nodes[n].get("depth", H.nodes[n].get("layer", 0)) + 1.0) / (nl + 0.5), pos[n][1])
        for n in H.nodes
    }
    for tr in views.graph_traces(H, xy, legend_seen=in_legend):
        fig.add_trace(tr, row=i, col=1)
    fig.update_yaxes(visible=False, row=i, col=1)
fig.update_xaxes(
    title_text="relative depth (0 = embeddings, 1 = the last layer)", row=len(graphs), col=1
)
fig.update_layout(
    height=max(320, 260 * len(graphs)),
    margin=dict(l=10, r=10, t=40, b=30),
    legend=dict(title="mode", orientation="h"),
)
st.plotly_chart(fig, key="compare_graphs_chart")

# ------------------------------------------------------------------ what changes with size
st.subheader("What changes with size")
size = state.query(D.size_table, ws)
shares = [c for c in size.columns if c.startswith("edge_share_") or c == "top_heads_at_target"]
table(not_applicable(size.drop(columns=shares), {"mean_logit_diff": "{:+.3f}"}))  # behaviour
if shares:  # then where the credit flows
    st.caption(
        "edge_share_K, _Q, _V, _MLP: each mode's share of the |weight| of every stored "
        "edge of the target traces (all components and positions). Not the ladder "
        "table's K share, which is K / (K + Q + V) of the edges from the induction heads "
        "into the previous-token heads only (docs/APP.md, Measures)."
    )
    table(size[["model"] + shares].assign(model=size["model"].map(D.short_model)))
names = list(graphs)
if len(names) >= 2:
    pairs = [(a, b) for a, b in zip(names, names[1:])]
    pick = st.selectbox(
        "Edges, smaller model against the next larger",
        pairs,
        key="compare_pair",
        format_func=lambda p: f"{D.short_model(p[0])} → {D.short_model(p[1])}",
    )
    a, b = pick
    diff = compare_graphs(
        views.threshold(graphs[a], 0.0, top_k), views.threshold(graphs[b], 0.0, top_k)
    )
    counts = diff.attrs.get("counts", {})
    st.caption(
        f"aligned by {diff.attrs.get('align')}"
        + (f" ({diff.attrs.get('n_bins')} depth bins)" if diff.attrs.get("n_bins") else "")
        + " · "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
    )
    table(diff.reindex(diff["weight_diff"].abs().sort_values(ascending=False).index))
