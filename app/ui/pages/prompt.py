"""Prompt: one prompt's token credit, top paths, and what feeds any component."""

import json

import pandas as pd
import streamlit as st

from app.escape import html_text, markdown as md
from app.ui import data as D
from app.ui import state, views
from unpack.components import parse_component
from app.ui.tables import table

ws: D.WorkingSet = st.session_state["ws"]
st.title("Prompt")

search = st.text_input(
    "Filter prompts by text", key="prompt_search", placeholder="e.g. Mary (case-insensitive)"
)
prompts = state.query(D.prompt_list, ws, search.strip(), 1000)
if prompts.empty:
    st.info(
        "No prompt of the working set matches. Clear the filter or widen the working set in "
        "the sidebar."
    )
    st.stop()
labels = {
    int(r.prompt_id): f"#{r.prompt_id} · {D.short_model(r.model)} · {r.condition or '-'} · "
    f"{r.text[-70:]}"
    for r in prompts.itertuples(index=False)
}
ids = list(labels)
if st.session_state.get("prompt_id") not in ids:
    st.session_state["prompt_id"] = ids[0]
pid = st.selectbox(
    f"Prompt ({len(ids)} in the working set{', first 1000' if len(ids) == 1000 else ''})",
    ids,
    key="prompt_id",
    format_func=labels.get,
)
info = state.query(D.prompt_info, pid)
traces = state.query(D.prompt_traces, pid)
toks = state.query(D.tokens, pid)
tokens = toks["token"].tolist()

st.markdown(
    f"**Text:** {md(info['text'])}  \n**Model:** {md(info['model'])} · preset "
    f"{md(info['preset'])} · task {md(info['task'])} · condition "
    f"{md(info['condition'] or '-')} · template {md(info['template'] or '-')}"
)
m = st.columns(5)
m[0].metric("target", md(repr(info["target"])))  # a metric's value is Markdown too
m[1].metric("distractor", md(repr(info["distractor"])) if info["distractor"] else "-")
m[2].metric("p(target)", f"{info['target_prob']:.4f}" if pd.notna(info["target_prob"]) else "-")
m[3].metric("logit diff", f"{info['logit_diff']:+.3f}" if pd.notna(info["logit_diff"]) else "-")

roots = traces["root"].tolist()
if st.session_state.get("prompt_root") not in roots:
    st.session_state["prompt_root"] = roots[0]
root = st.selectbox(
    "Stored trace (root)",
    roots,
    key="prompt_root",
    help="'target' is the trace from the target logit; the others are stored "
    "reroots at a component",
)
tr = traces[traces["root"] == root].iloc[0]
tid = int(tr["trace_id"])
m[4].metric("suppression", f"{tr['suppression']:.3f}")

st.subheader("Token credit")
excl = st.toggle(
    "Color scale ignores the last token",
    value=True,
    key="prompt_excl_last",
    help="The target position often holds most of the credit; leaving it out of "
    "the color scale makes the other tokens readable",
)
credit = state.query(D.token_credit, tid)
st.markdown(views.token_strip_html(credit, exclude_last=excl), unsafe_allow_html=True)

others = state.query(D.other_methods, pid)
if not others.empty:  # the same prompt by another method (unpack ingest --method)
    pick = st.selectbox(
        "Beside it: the same prompt by another method",
        others["method"].tolist(),
        key="prompt_other_method",
        help="Runs of the same model that hold this prompt: a baseline "
        "(EAP, EAP-IG, IG, gradient × input, rollout) or another preset",
    )
    other_tid = int(others[others["method"] == pick].iloc[0]["trace_id"])
    st.markdown(
        f'<div class="unpack-other" data-method="{pick}">'
        + views.token_strip_html(state.query(D.token_credit, other_tid), exclude_last=excl)
        + "</div>",
        unsafe_allow_html=True,
    )

if st.toggle("Credit per position as a chart and a table", key="prompt_chart"):
    import plotly.graph_objects as go

    scale = views.color_scale(credit["credit"], excl)
    fig = go.Figure(
        go.Bar(
            x=[html_text(f"{p}:{t}") for p, t in zip(credit["pos"], credit["token"])],  # plotly
            y=credit["credit"],  # reads tags in its texts: stored text is escaped as HTML
            marker_color=[views.diverging(v, scale) for v in credit["credit"]],
            hovertext=[
                html_text(f"{r if isinstance(r, str) else ''} {pct:+.2f}%")
                for r, pct in zip(credit["role"], credit["credit_pct"])
            ],
        )
    )
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="credit")
    st.plotly_chart(fig, key="prompt_credit_chart")
    table(credit)

st.subheader("Top paths")
k = st.slider("Paths shown", 1, 50, 8, key="prompt_k")
paths = state.query(D.top_paths, tid, 50)
if paths.empty:
    st.info("No paths stored for this trace.")
else:
    st.markdown(views.paths_html(paths, tokens, n=k), unsafe_allow_html=True)
    with st.expander("All stored paths as a table"):
        table(paths)
    with st.expander("Export the top paths for a paper"):
        from app.ui.circuit_stored import path_downloads

        path_downloads(int(pid), root)

# ------------------------------------------------------------------ reroot
st.subheader("Reroot: what feeds a component")
comps = state.query(D.components, pid)
roles = info["roles"]
role_at = {}
for r, p in roles.items():
    role_at.setdefault(int(p), []).append(r)
if not comps:  # a token-level baseline's run (unpack ingest --method): no component flows
    st.info(
        "This run's method stores no component flows; reroot from an Unpack run of the same prompt."
    )
    st.stop()
c1, c2 = st.columns(2)
default_comp = next((c for c in reversed(comps) if parse_component(c)[0] == "head"), comps[-1])
if st.session_state.get("reroot_comp") not in comps:
    st.session_state["reroot_comp"] = default_comp
comp = c1.selectbox("Component", comps, key="reroot_comp")
positions = list(range(len(tokens)))
if st.session_state.get("reroot_pos") not in positions:
    st.session_state["reroot_pos"] = int(info["target_pos"])
pos = c2.selectbox(
    "Position",
    positions,
    key="reroot_pos",
    format_func=lambda p: (
        f"{p}: {tokens[p]!r}" + (f" ({','.join(role_at[p])})" if p in role_at else "")
    ),
)
spec = f"{comp}@{pos}"

stored = traces[(traces["root_component"] == comp) & (traces["root_pos"] == pos)]
tab_rows, tab_stored, tab_live = st.tabs(["From stored edges", "Stored reroot", "Trace on demand"])
with tab_rows:
    flow = state.query(D.flow_at, tid, comp, pos)
    feed = state.query(D.feeders, tid, comp, pos, 25)
    st.caption(
        f"Within the stored trace from {md(root)}: {flow:+.4g} of its credit flows "
        f"through {md(spec)}. The writers it reads, strongest first (edges are stored "
        "above the ingest's edge_min_frac):"
    )
    if feed.empty:
        hint = (
            "another component (the Circuit page shows which carry credit)"
            if pos == int(info["target_pos"])
            else f"the target position ({int(info['target_pos'])}) or another component"
        )
        st.info(
            f"No stored edges read by {md(spec)} in this trace: little or no credit reaches "
            f"it. Try {hint}."
        )
    else:
        table(feed)
with tab_stored:
    if stored.empty:
        st.info(
            f"No stored trace is rooted at {md(spec)}. Stored roots of this prompt: "
            + ", ".join(md(r) for r in roots)
            + ". Ingest more with "
            "`unpack ingest ... --roots COMPONENT@ROLE`, or trace on demand."
        )
    else:
        st_tid = int(stored.iloc[0]["trace_id"])
        st.caption(
            f"Stored trace {md(stored.iloc[0]['root'])}: token credit of everything "
            f"that feeds {md(spec)}."
        )
        st.markdown(
            views.token_strip_html(state.query(D.token_credit, st_tid), exclude_last=False),
            unsafe_allow_html=True,
        )
        st.markdown(
            views.paths_html(state.query(D.top_paths, st_tid, 50), tokens, n=k),
            unsafe_allow_html=True,
        )
with tab_live:
    ok, why = state.model_availability(info["model"])
    if not ok:
        st.warning(
            f"Tracing on demand is not available: {md(why)}. Stored roots of this "
            "prompt: " + ", ".join(md(r) for r in roots) + "."
        )
    else:
        st.caption(
            f"Model: {md(why)}. Traces this prompt again from {md(spec)} with the run's config."
        )
        if st.button(f"Trace from {md(spec)}", key="reroot_go"):
            st.session_state["reroot_live"] = spec
        if st.session_state.get("reroot_live") == spec:
            try:
                model_label = D.short_model(info["model"])
                with st.spinner(f"Loading {md(model_label)} and tracing from {md(spec)} ..."):
                    res = state.trace_on_demand(
                        info["model"],
                        info["text"],
                        info["target"],
                        info["distractor"],
                        json.dumps(info["config"]),
                        spec,
                    )
            except Exception as e:  # a model that fails to load or trace: say so, keep the page
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                st.error(f"Tracing {md(spec)} failed: {md(why)}")
            else:
                live = pd.DataFrame(
                    {
                        "pos": range(len(res["tokens"])),
                        "token": res["tokens"],
                        "credit": res["credit"],
                        "credit_pct": res["credit_pct"],
                        "role": [
                            ",".join(role_at.get(p, [])) or None for p in range(len(res["tokens"]))
                        ],
                    }
                )
                st.caption(
                    f"Traced in {res['timing_s']:.2f} s; suppression {res['suppression']:.3f}."
                )
                st.markdown(
                    views.token_strip_html(live, exclude_last=False), unsafe_allow_html=True
                )
                st.markdown(
                    views.paths_html(pd.DataFrame(res["paths"]), tokens, n=k),
                    unsafe_allow_html=True,
                )
                if res["feeders"] is not None and len(res["feeders"]):
                    f = res["feeders"].copy()
                    f["writer_token"] = [
                        tokens[p] if 0 <= p < len(tokens) else None for p in f["writer_pos"]
                    ]
                    table(f.reindex(f["weight"].abs().sort_values(ascending=False).index).head(25))
