"""Circuit: the aggregated circuit graph of the working set, one model at a time."""

import json

import pandas as pd
import streamlit as st

from app.escape import html_text, markdown as md
from app.ui import data as D
from app.ui import state, views
from app.ui.tables import table

ws: D.WorkingSet = st.session_state["ws"]
st.title("Circuit")

if not ws.models:
    st.info("No models in the store.")
    st.stop()
c1, c2, c3 = st.columns([2, 2, 1])
model = c1.selectbox("Model", ws.models, key="circuit_model", format_func=D.short_model)
mws = D.WorkingSet((model,), ws.task, ws.preset, ws.condition, ws.template)
roots = state.query(D.roots, mws)
if not roots:
    st.info(
        f"No traces of {D.short_model(model)} match the working set ({mws.describe()}). "
        "Widen it in the sidebar."
    )
    st.stop()
if st.session_state.get("circuit_root") not in roots:
    st.session_state["circuit_root"] = roots[0]
root = c2.selectbox(
    "Root",
    roots,
    key="circuit_root",
    help="'target': everything that feeds the target logit; a stored reroot: "
    "everything that feeds that component",
)
agg = c3.selectbox(
    "Aggregate",
    ["mean", "sum"],
    key="circuit_agg",
    help="mean over the selected prompts (a prompt without an edge counts 0) or sum",
)
c4, c5, c6, c7 = st.columns([3, 2, 2, 2])  # room for four mode chips
modes = c4.multiselect(
    "Modes", ["K", "Q", "V", "MLP"], default=["K", "Q", "V", "MLP"], key="circuit_modes"
)
if not modes:
    st.warning("Pick at least one mode (K, Q, V or MLP).")
    st.stop()
top_k = c5.slider("Top-k edges", 5, 300, 40, step=5, key="circuit_topk")
rel = c6.slider(
    "Min |weight| (% of the strongest edge)", 0.0, 50.0, 0.0, step=0.5, key="circuit_minw"
)
min_share = c7.slider(
    "Min share of prompts with the edge", 0.0, 1.0, 0.0, step=0.05, key="circuit_minshare"
)


try:
    with st.spinner("Aggregating the circuit over the working set ..."):
        G_all = state.circuit(model, ws, root, tuple(modes), agg, float(min_share))
except Exception as e:  # InputError from app.graphs names the filters
    st.error(str(e))
    st.stop()
wmax = max([abs(w) for *_, w in G_all.edges(data="weight")] or [0.0])
G = views.threshold(G_all, rel / 100.0 * wmax, top_k)
from app.graphs import layered_layout  # noqa: E402

st.caption(
    f"{G_all.graph.get('n_prompts')} prompts · {G_all.number_of_edges()} reader–writer "
    f"pairs in all, the {G.number_of_edges()} strongest shown · "
    f"{views.graph_caption(G)} · edges go from a reader to the writer it reads (credit "
    "flows right to left) · width = |interaction strength|, colour = mode · node size = "
    "|flow| · the ringed node is the one inspected below, its edges drawn on top"
)
if G.number_of_nodes() == 0:
    st.info("No edges pass the thresholds: lower the minimum weight or share.")
    st.stop()

# the inspected node: a click on a node (the chart's last selection) or the box below
nodes = sorted(G.nodes, key=lambda n: -abs(G.nodes[n].get("flow", 0.0) or 0.0))
try:
    pts = st.session_state["circuit_chart"]["selection"]["points"]
except (KeyError, TypeError):
    pts = []
clicked = next((p.get("customdata") for p in pts if p.get("customdata") in G), None)
if clicked and clicked != st.session_state.get("circuit_clicked"):
    st.session_state["circuit_clicked"] = clicked
    st.session_state["circuit_node"] = clicked
if st.session_state.get("circuit_node") not in nodes:
    st.session_state["circuit_node"] = nodes[0]
fig = views.graph_figure(
    G,
    layered_layout(G),
    selected=st.session_state["circuit_node"],
    # plotly reads tags in a title: stored text escaped as HTML
    title=html_text(f"{D.short_model(model)} · {ws.task} · root {root}"),
    height=max(560, 56 * ((G_all.graph.get("n_heads") or 1) + 3)),
)
st.plotly_chart(fig, key="circuit_chart", on_select="rerun", selection_mode="points")
node = st.selectbox("Inspect a component (or click a node)", nodes, key="circuit_node")

a = G.nodes[node]
st.markdown(
    f"**{md(node)}** · kind {md(a.get('kind'))} · layer {a.get('layer')} · flow "
    f"{float(a.get('flow', 0) or 0):+.4g}"
)


def edge_table(pairs):
    rows = [
        dict(
            component=o,
            mode=d.get("mode"),
            weight=d.get("weight"),
            share=d.get("share"),
            **{f"w_{m}": w for m, w in (d.get("by_mode") or {}).items()},
        )
        for o, d in pairs
    ]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.reindex(df["weight"].abs().sort_values(ascending=False).index).head(10)


def show_edges(title, rows):
    st.markdown(title)
    t = edge_table(rows)
    if len(t):
        table(t)
    else:
        st.caption("none")


show_edges(
    "Reads from (upstream writers)",  # one above the other: each fits the page
    [(v, d) for _, v, d in G_all.out_edges(node, data=True)],
)
show_edges("Read by (downstream readers)", [(u, d) for u, _, d in G_all.in_edges(node, data=True)])
st.markdown("Example prompts where it carries the most |flow|")
table(state.query(D.example_prompts, mws, node, root, 5))

with st.expander("Download the graph"):
    from app.graphs import graph_frame, to_json

    st.download_button(
        "Edges (CSV)",
        graph_frame(G).to_csv(index=False).encode(),
        file_name="circuit_edges.csv",
        mime="text/csv",
        key="circuit_csv",
    )
    st.download_button(
        "Graph (JSON)",
        json.dumps(to_json(G)).encode(),
        file_name="circuit.json",
        mime="application/json",
        key="circuit_json",
    )


def show_beside(mws):
    """Unpack beside another method on one prompt: top-k edge overlap and rank
    correlation (app.ui.method_compare; docs/RESULTS_BASELINES.md, "Agreement")."""
    from app.ui import method_compare as MC

    st.subheader("Beside another method, on one prompt")
    plist = state.query(D.prompt_list, mws, "", 1000)
    if plist.empty:
        return
    ids = [int(i) for i in plist["prompt_id"]]
    text = dict(zip(ids, plist["text"]))
    if st.session_state.get("circuit_cmp_prompt") not in ids:
        st.session_state["circuit_cmp_prompt"] = ids[0]
    pid = st.selectbox(
        "Prompt", ids, key="circuit_cmp_prompt", format_func=lambda i: f"#{i} · {text[i][-70:]}"
    )
    this, others = state.query(MC.edge_runs, pid)
    if others.empty:
        st.info(
            "No other method's run of this model stores edges for this prompt: ingest the "
            "same prompts with `unpack ingest --method eap` (or eap_ig, or unpack)."
        )
        return
    c1, c2 = st.columns(2)
    pick = c1.selectbox("Other method", others["method"].tolist(), key="circuit_cmp_method")
    k = c2.slider("k: top edges by |score| of each method", 5, 500, 50, step=5, key="circuit_cmp_k")
    a_name = this.iloc[0]["method"]
    res = state.query(
        MC.compare,
        int(this.iloc[0]["trace_id"]),
        int(others[others["method"] == pick].iloc[0]["trace_id"]),
        k,
    )
    ov, rk = res["overlap"], res["rank"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    m = st.columns(4)
    m[0].metric(f"|A ∩ B| of the top {k}", f"{ov['both']}")
    m[1].metric("Jaccard", fmt(ov["jaccard"]))
    m[2].metric("Spearman (|score|)", fmt(rk["spearman"]))
    m[3].metric("Kendall τ-b (|score|)", fmt(rk["kendall"]))
    st.markdown(
        f'<div class="unpack-agreement" data-both="{ov["both"]}" data-jaccard="{ov["jaccard"]}" '
        f'data-spearman="{rk["spearman"]}" data-kendall="{rk["kendall"]}" '
        f'data-n-both="{rk["n_both"]}" data-k="{k}"></div>',
        unsafe_allow_html=True,
    )
    st.caption(
        f"A = {md(a_name)} ({res['n_a']:,} edges stored), B = {md(pick)} ({res['n_b']:,}); an "
        "edge is (reader, writer, mode), its score the stored weight summed over positions. "
        f"Top k: the k largest |score| of each (all of them when fewer are stored: A "
        f"{ov['n_a']}, B {ov['n_b']}). The rank correlations compare the {rk['n_both']:,} edges "
        f"both store; an edge stored by one method only is left out (A only {rk['only_a']:,}, "
        f"B only {rk['only_b']:,}): Unpack stores an edge only above the ingest's edge_min_frac. "
        f"Counting a missing edge as 0, Spearman is {fmt(rk['spearman_union'])}; "
        f"{fmt(rk['same_sign'])} of the shared edges have the same sign. Kendall is left out "
        "('-') beyond 5,000 shared edges."
    )
    table(res["top"])


from app.ui import circuit_stored  # noqa: E402

circuit_stored.show(model, G_all)
show_beside(mws)
