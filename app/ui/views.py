"""What the pages draw: the token credit strip, path chains with K/Q/V labels,
and circuit graphs as plotly figures. Pure functions (HTML strings and figures)."""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from app.graphs import MODE_COLORS, MODES, drawn_edges, edge_geometry, layer_ticks
from unpack.components import short_label

KIND_COLORS = {
    "embedding": "#8c564b",
    "pos_embedding": "#c49c94",
    "head": "#9467bd",
    "mlp": "#bcbd22",
}
_NEG, _MID, _POS = (178, 24, 43), (247, 247, 247), (33, 102, 172)


def diverging(v: float, scale: float) -> str:
    """Red (negative) - white - blue (positive), saturating at ``|v| = scale``."""
    t = 0.0 if not scale or not math.isfinite(v) else max(-1.0, min(1.0, v / scale))
    end = _POS if t >= 0 else _NEG
    a = abs(t)
    r, g, b = (round(m + (e - m) * a) for m, e in zip(_MID, end))
    return f"rgb({r},{g},{b})"


def color_scale(values, exclude_last: bool) -> float:
    vals = [abs(float(x)) for x in values if x is not None and math.isfinite(float(x))]
    if exclude_last and len(vals) > 1:
        vals = vals[:-1]
    return max(vals) if vals else 0.0


def token_strip_html(df: pd.DataFrame, exclude_last: bool = True) -> str:
    """The prompt's tokens as boxes colored by signed credit; hovering a box shows
    its position, role, credit and percent. ``df``: pos, token, credit, credit_pct, role."""
    scale = color_scale(df["credit"], exclude_last)
    boxes = []
    for row in df.itertuples(index=False):
        credit = float(row.credit)
        pct = float(row.credit_pct) if row.credit_pct is not None else float("nan")
        role = row.role if isinstance(row.role, str) else ""
        t = 0.0 if not scale else min(1.0, abs(credit) / scale)
        fg = "#fff" if t > 0.6 else "#111"
        where = f"pos {row.pos}{' · ' + role if role else ''} · {row.token!r}"
        tip = f"{where}\ncredit {credit:+.6g} ({pct:+.2f}%)"
        label = f"{row.pos}{' ' + role if role else ''}"
        boxes.append(
            f'<span class="unpack-tok" title="{html.escape(tip)}" data-pos="{row.pos}" '
            f'data-credit="{credit:.6g}" style="display:inline-block;margin:2px 1px;'
            f'padding:2px 4px;border-radius:4px;background:{diverging(credit, scale)};color:{fg};'
            f'text-align:center;font-family:monospace;white-space:pre">'
            f'{html.escape(str(row.token)) or "&nbsp;"}<br>'
            f'<span style="font-size:0.7em;opacity:0.75">{html.escape(label)}</span></span>'
        )
    legend = (
        f'<div style="font-size:0.8em;margin-top:4px">'
        f'<span style="background:{diverging(-1, 1)};color:#fff;padding:1px 6px">'
        f'−{scale:.3g}</span><span style="background:{diverging(0, 1)};padding:1px 6px">0'
        f'</span><span style="background:{diverging(1, 1)};color:#fff;padding:1px 6px">'
        f'+{scale:.3g}</span> credit (hover a token for its value)</div>'
    )
    return f'<div class="unpack-strip" style="line-height:1.2">{"".join(boxes)}</div>{legend}'


_HOP = re.compile(r"^(?P<comp>[^\[@]+)(\[(?P<mode>[A-Z]+)\])?@(?P<pos>-?\d+)$")


def chain_html(chain: str, tokens: list[str] | None = None) -> str:
    """A path chain with each hop's K/Q/V mode as a colored badge and, when
    ``tokens`` are given, the token at each position."""
    parts = []
    for hop in str(chain).split("→"):
        m = _HOP.match(hop.strip())
        if not m:
            parts.append(html.escape(hop))
            continue
        comp, mode, pos = m["comp"], m["mode"], int(m["pos"])
        tok = ""
        if tokens is not None and 0 <= pos < len(tokens):
            tok = f' <span style="opacity:0.7">{html.escape(repr(tokens[pos]))}</span>'
        badge = ""
        if mode:
            badge = (
                f'<span style="background:{MODE_COLORS.get(mode, "#999")};color:#fff;'
                'border-radius:3px;padding:0 4px;margin-left:2px;font-size:0.85em">'
                f'{mode}</span>'
            )
        parts.append(
            f'<code>{html.escape(comp)}</code>{badge}<span style="opacity:0.8">@{pos}</span>{tok}'
        )
    return " → ".join(parts)


def paths_html(paths: pd.DataFrame, tokens: list[str], n: int = 8) -> str:
    rows = []
    for r in paths.head(n).itertuples(index=False):
        rows.append(
            f'<div class="unpack-path" style="margin:2px 0"><b>{r.score_pct:+.2f}%</b> '
            f'({r.score:+.4g}) {chain_html(r.chain, tokens)}</div>'
        )
    return "".join(rows)


# ------------------------------------------------------------------ graphs


def threshold(G, min_weight: float = 0.0, top_k: int | None = None):
    """A view of a circuit graph for display: the ``top_k`` strongest edges with
    |weight| >= ``min_weight`` and their nodes (a rerooted graph's root stays)."""
    edges = sorted(G.edges(data="weight"), key=lambda e: -abs(e[2]))
    keep = [(u, v) for u, v, w in edges if abs(w) >= min_weight][:top_k]
    H = G.edge_subgraph(keep).copy()
    H.graph.update(G.graph)
    for n in G.nodes:
        if G.degree(n) == 0 and n not in H:
            H.add_node(n, **G.nodes[n])
    return H


def _edge_traces(geo: list, selected, name_prefix: str) -> list:
    """Line traces of the edge curves, one per (mode, width bucket, highlighted):
    few traces for any graph. Widths grow with sqrt(|weight|) so that weak edges
    stay visible next to one dominant edge; with a ``selected`` node its edges
    are drawn on top and the others faded. Each point's ``customdata`` names its
    edge (``parent→child mode``)."""
    import plotly.graph_objects as go

    wmax = max([abs(e["weight"]) for e in geo] or [1.0]) or 1.0
    groups: dict = {}
    for e in geo:
        b = min(4, int(5 * math.sqrt(abs(e["weight"]) / wmax)))
        on = selected is not None and selected in (e["parent"], e["child"])
        groups.setdefault((on, b, e["mode"]), []).append(e)
    traces = []
    for (on, b, mode), es in sorted(groups.items(), key=lambda kv: kv[0][:2]):
        xs, ys, ids = [], [], []
        for e in es:
            xs += [p[0] for p in e["points"]] + [None]
            ys += [p[1] for p in e["points"]] + [None]
            ids += [f"{e['parent']}→{e['child']} {mode}"] * len(e["points"]) + [None]
        opacity = 0.45 + 0.12 * b if selected is None else (1.0 if on else 0.15)
        traces.append(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                hoverinfo="skip",
                legendgroup=mode,
                showlegend=False,
                line=dict(
                    color=MODE_COLORS.get(mode, "#999"), width=0.8 + 1.6 * b + (1.5 if on else 0)
                ),
                opacity=opacity,
                name=f"{name_prefix}{mode}",
                customdata=ids,
                meta="edges",
            )
        )
    return traces


def graph_traces(
    G,
    xy: dict,
    show_legend: bool = True,
    name_prefix: str = "",
    legend_seen: set | None = None,
    selected: str | None = None,
):
    """Plotly traces: one curve per reader, writer and mode (app.graphs.edge_geometry;
    width by |weight|), the legend (one entry per mode drawn, in K, Q, V, MLP order,
    each mode's one colour), then the nodes (size by |flow|, colour by kind, hover
    with flow and layer), with ``selected`` a ring round that node under them.
    ``legend_seen``: modes already in the figure's legend, shared by several graphs
    drawn in one figure so that every mode drawn anywhere is listed once."""
    import plotly.graph_objects as go

    geo = edge_geometry(G, xy)
    traces = _edge_traces(geo, selected if selected in G else None, name_prefix)
    seen = legend_seen if legend_seen is not None else set()
    for i, mode in enumerate(MODES):  # fixed order and width, whatever the graph
        if any(e["mode"] == mode for e in geo):
            traces.append(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="lines",
                    legendgroup=mode,
                    legendrank=i + 1,
                    line=dict(color=MODE_COLORS[mode], width=3),
                    name=f"{name_prefix}{mode}",
                    showlegend=show_legend and mode not in seen,
                    hoverinfo="skip",
                )
            )
            seen.add(mode)
    if geo:  # hover targets at the middle of each curve
        mid = [e["points"][len(e["points"]) // 2] for e in geo]
        traces.append(
            go.Scatter(
                x=[p[0] for p in mid],
                y=[p[1] for p in mid],
                mode="markers",
                marker=dict(size=6, color="rgba(0,0,0,0)"),
                hoverinfo="text",
                showlegend=False,
                hovertext=[
                    f"{e['parent']} reads {e['child']}<br>{e['mode']}: {e['weight']:+.4g}"
                    for e in geo
                ],
                name=f"{name_prefix}edges",
            )
        )
    if selected in G:  # under the nodes: the nodes stay the last trace
        traces.append(
            go.Scatter(
                x=[xy[selected][0]],
                y=[xy[selected][1]],
                mode="markers",
                customdata=[selected],
                marker=dict(size=44, color="rgba(0,0,0,0)", line=dict(color="crimson", width=3)),
                hoverinfo="skip",
                name=f"{name_prefix}selected",
                showlegend=False,
            )
        )
    names = list(G.nodes)
    flows = [abs(float(G.nodes[n].get("flow", 0.0) or 0.0)) for n in names]
    fmax = max(flows) if flows and max(flows) > 0 else 1.0
    traces.append(
        go.Scatter(
            x=[xy[n][0] for n in names],
            y=[xy[n][1] for n in names],
            mode="markers+text",
            marker=dict(
                size=[8 + 22 * math.sqrt(f / fmax) for f in flows],
                color=[KIND_COLORS.get(G.nodes[n].get("kind"), "#444") for n in names],
                line=dict(color="#222", width=1),
            ),
            text=[short_label(n) for n in names],
            textposition=[LABEL_SIDE.get(G.nodes[n].get("kind"), "top center") for n in names],
            customdata=names,
            hoverinfo="text",
            hovertext=[
                f"{n}<br>layer {G.nodes[n].get('layer')}<br>flow "
                f"{float(G.nodes[n].get('flow', 0) or 0):+.4g}"
                for n in names
            ],
            name=f"{name_prefix}components",
            showlegend=False,
        )
    )
    return traces


# Where a node's label sits: heads above their marker; MLPs, in the bottom row, below
# theirs, and embeddings, in the first column, to their left, so that neither runs
# into the labels of the heads next to them.
LABEL_SIDE = {
    "head": "top center",
    "mlp": "bottom center",
    "embedding": "middle left",
    "pos_embedding": "middle left",
}


def graph_figure(G, xy: dict, title: str = "", height: int = 520, selected: str | None = None):
    """A layered circuit graph: :func:`graph_traces` on integer layer ticks."""
    import plotly.graph_objects as go

    fig = go.Figure(graph_traces(G, xy, selected=selected))
    ticks, names = layer_ticks(G)
    xs = [x for tr in fig.data for x in (tr.x or ()) if x is not None] + ticks
    span = max(xs) - min(xs)  # room for the curves and, left, the embeddings' labels
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=10, r=10, t=40, b=30),
        hovermode="closest",
        clickmode="event+select",
        legend=dict(title="mode", orientation="h", y=-0.08, traceorder="normal"),
        xaxis=dict(
            title="layer",
            zeroline=False,
            tickmode="array",
            tickvals=ticks,
            ticktext=names,
            range=[min(xs) - 0.06 * span - 0.6, max(xs) + 0.02 * span + 0.2],
        ),
        yaxis=dict(visible=False),
    )
    return fig


def graph_caption(G) -> str:
    """What a circuit figure draws, counted as drawn."""
    drawn = drawn_edges(G)
    return (
        f"{len(drawn)} edges drawn (one curve per reader, writer and mode; "
        f"{G.number_of_edges()} reader–writer pairs) between {G.number_of_nodes()} components"
    )
