"""The Circuit page's stored circuits (``unpack discover`` / ``unpack verify``):
a circuit highlighted on the aggregate graph, its verification against random
circuits, the prompts where it holds least, and exports for papers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st

from app.escape import markdown as md
from app.ui import data as D
from app.ui import state, views


# ------------------------------------------------------------------ queries (no Streamlit)


def circuits_of(con, model: str) -> pd.DataFrame:
    return D.q(
        con,
        """SELECT circuit_id, task, condition, preset, n_prompts, n_components,
                              n_edges, params, created_at
                       FROM circuits WHERE model = ? ORDER BY circuit_id DESC""",
        [model],
    )


def circuit_parts(con, circuit_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    comps = D.q(
        con,
        "SELECT component, layer, head, depth, root, share, direct_effect FROM "
        "circuit_components WHERE circuit_id = ? ORDER BY layer, head",
        [circuit_id],
    )
    edges = D.q(
        con,
        "SELECT parent, child, mode, weight, share FROM circuit_edges WHERE "
        "circuit_id = ? ORDER BY abs(weight) DESC",
        [circuit_id],
    )
    return comps, edges


def verifications(con, circuit_id: int) -> pd.DataFrame:
    return D.q(
        con,
        "SELECT * FROM circuit_verifications WHERE circuit_id = ? ORDER BY verification_id DESC",
        [circuit_id],
    )


def weakest_prompts(con, verification_id: int, limit: int = 5) -> pd.DataFrame:
    """Prompts where the circuit alone keeps the least of the clean logit difference."""
    return D.q(
        con,
        """SELECT r.prompt_id, p.condition, p.text, round(r.clean, 3) AS clean,
                              round(r.kept, 3) AS only_circuit, round(r.knocked, 3) AS knocked_out,
                              round(r.faithfulness, 3) AS faithfulness
                       FROM circuit_prompt_results r JOIN prompts p USING (prompt_id)
                       WHERE r.verification_id = ? ORDER BY r.faithfulness ASC NULLS FIRST, r.prompt_id
                       LIMIT ?""",
        [verification_id, limit],
    )


def verification_table(v: pd.Series) -> pd.DataFrame:
    """One row per measure: the circuit, the random circuits' mean and 5–95% range, and
    the share of random circuits that reach the circuit's value."""
    base = json.loads(v["baseline"])
    rows = []
    for m in ("necessity", "faithfulness"):
        b = np.array(base[m])
        rows.append(
            dict(
                measure=m,
                circuit=float(v[m]),
                random_mean=float(b.mean()),
                random_p5=float(np.percentile(b, 5)),
                random_p95=float(np.percentile(b, 95)),
                share_random_at_least=float(v[f"{m}_rank"]),
            )
        )
    return pd.DataFrame(rows)


def baseline_caption(base: dict) -> str:
    """Which random circuits the verification compared against (older rows: kind only)."""
    size = f"{base['size']} heads" if "size" in base else "the circuit's size"
    text = f"Random circuits: {size}, baseline {base.get('kind')}"
    text += f" ({base['described']})" if "described" in base else ""
    if "equal_size" in base:
        text += (
            f"; heads outside the circuit: {base['size']} (it has {base['circuit_size']}), "
            f"so its own {base['size']}-head subsets knocked out lose "
            f"{np.mean(base['equal_size']['necessity']):.3f} of the logit difference on "
            "average"
        )
    return text + "."


# ------------------------------------------------------------------ the section


def highlight_figure(G, comps: pd.DataFrame, edges: pd.DataFrame, title: str):
    """The aggregate graph with the circuit's heads ringed and its edges drawn over it."""
    import plotly.graph_objects as go

    import networkx as nx

    from app.graphs import component_attrs, edge_geometry, figure_scale, layered_layout

    H = G.copy()
    for n in comps["component"]:
        if n not in H:
            H.add_node(n, **component_attrs(n))
    xy = layered_layout(H)
    fig = views.graph_figure(H, xy, title=title, height=560)
    C = nx.DiGraph()  # the circuit's own edges, on the same curves as the graph's
    for e in edges.itertuples():
        C.add_edge(e.parent, e.child, by_mode={})
        C.edges[e.parent, e.child]["by_mode"][e.mode] = float(e.weight)
    xs, ys = [], []
    for g in edge_geometry(C, xy, figure_scale(xy)):
        xs += [p[0] for p in g["points"]] + [None]
        ys += [p[1] for p in g["points"]] + [None]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines",
            name="circuit edges",
            meta="circuit",
            line=dict(color="crimson", width=4),
            opacity=0.8,
            hoverinfo="skip",
        )
    )
    names = list(comps["component"])
    fig.add_trace(
        go.Scatter(
            x=[xy[n][0] for n in names],
            y=[xy[n][1] for n in names],
            mode="markers",
            name="circuit",
            marker=dict(size=34, color="rgba(0,0,0,0)", line=dict(color="crimson", width=3)),
            customdata=names,
            hovertext=names,
            hoverinfo="text",
        )
    )
    return fig


def show(model: str, G_all) -> None:
    """The stored-circuits section for ``model`` under the aggregate graph ``G_all``."""
    st.subheader("Stored circuits")
    circuits = state.query(circuits_of, model)
    if circuits.empty:
        st.caption(
            f"No stored circuit for {md(D.short_model(model))}: find one with "
            "`unpack discover --db DB --model MODEL` and check it with `unpack verify`."
        )
        return
    cid = st.selectbox(
        "Circuit",
        circuits["circuit_id"].tolist(),
        key="stored_circuit",
        format_func=lambda i: _label(circuits, i),
    )
    comps, edges = state.query(circuit_parts, int(cid))
    st.plotly_chart(
        highlight_figure(G_all, comps, edges, f"circuit {cid} on the aggregate graph"),
        key="stored_circuit_chart",
    )
    c1, c2 = st.columns(2)
    c1.markdown("Components")
    c1.dataframe(comps, hide_index=True)
    c2.markdown("Edges (reader ← writer)")
    c2.dataframe(edges, hide_index=True)
    ver = state.query(verifications, int(cid))
    if ver.empty:
        st.caption(f"Not verified yet: `unpack verify --db DB --circuit {cid}`.")
    else:
        v = ver.iloc[0]
        st.markdown(
            f"**Verification {v['verification_id']}**: {md(v['ablation'])} ablation "
            f"({md(v['reference'])}), {v['n_prompts']} prompts, {v['n_random']} random "
            f"circuits · clean logit difference {v['clean_logit_diff']:+.3f}, circuit "
            f"knocked out {v['knocked_logit_diff']:+.3f}, only the circuit "
            f"{v['kept_logit_diff']:+.3f}"
        )
        st.dataframe(verification_table(v), hide_index=True, key="stored_circuit_verification")
        st.caption(md(baseline_caption(json.loads(v["baseline"]))))
        st.markdown("Prompts where it holds least (lowest faithfulness)")
        st.dataframe(state.query(weakest_prompts, int(v["verification_id"]), 5), hide_index=True)
    _downloads(int(cid))


def _label(circuits: pd.DataFrame, cid) -> str:
    r = circuits[circuits["circuit_id"] == cid].iloc[0]
    return (
        f"{cid}: {r['task']}{' ' + r['condition'] if r['condition'] else ''}, "
        f"{r['n_components']} heads, {r['n_prompts']} prompts"
    )


def _downloads(cid: int) -> None:
    from app import export as ex

    with state.connection().cursor() as cur:
        G = ex.circuit_nx(cur, cid)
    c1, c2, c3 = st.columns(3)
    c1.download_button(
        "Circuit (interactive HTML)",
        ex.to_html(G).encode(),
        file_name=f"circuit_{cid}.html",
        mime="text/html",
        key="circuit_html",
    )
    c2.download_button(
        "Circuit (TikZ)",
        ex.to_tikz(G).encode(),
        file_name=f"circuit_{cid}.tex",
        mime="text/x-tex",
        key="circuit_tikz",
    )
    c3.download_button(
        "Circuit (JSON)",
        json.dumps(ex.gr.to_json(G), default=str).encode(),
        file_name=f"circuit_{cid}.json",
        mime="application/json",
        key="circuit_stored_json",
    )


def path_downloads(prompt_id: int, root: str) -> None:
    """The Prompt page's exports of a trace's top paths."""
    from app import export as ex

    with state.connection().cursor() as cur:
        G = ex.paths_nx(cur, prompt_id, root, 10)
    c1, c2 = st.columns(2)
    c1.download_button(
        "Top paths (interactive HTML)",
        ex.to_html(G).encode(),
        file_name=f"paths_{prompt_id}.html",
        mime="text/html",
        key="paths_html",
    )
    c2.download_button(
        "Top paths (TikZ)",
        ex.to_tikz(G).encode(),
        file_name=f"paths_{prompt_id}.tex",
        mime="text/x-tex",
        key="paths_tikz",
    )
