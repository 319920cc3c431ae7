"""Circuit figures a reader can read (app/graphs.py geometry, app/ui/views.py,
app/export.py): every edge — one per reader, writer and mode — is drawn as its
own curve that no other curve hides, each mode keeps one colour and one place in
the legend, layers are integer ticks, the inspected node is highlighted, and the
counts said are the edges drawn. Graphs are built by hand, so what must be drawn
is known; the same checks run on a real store in test_app_read_browser.py."""

from __future__ import annotations

import itertools
import re

import networkx as nx

from app import export as ex
from app import graphs as gr
from app.ui import views
from tests.curves import worst_overlap

# a row of collinear nodes (emb, 0.0, 1.0 in one line, as on the toy ladder before),
# three modes between one pair, and an MLP row whose edges skip an MLP
EDGES = [
    ("attn_1_head_0", "embedding", {"Q": 0.9, "V": 0.8}),
    ("attn_1_head_0", "attn_0_head_0", {"K": 1.0, "Q": 0.01, "V": 0.05}),
    ("attn_0_head_0", "embedding", {"V": 0.8, "K": 0.03}),
    ("mlp_2", "mlp_0", {"MLP": 0.5}),
    ("mlp_2", "mlp_1", {"MLP": 0.4}),
    ("mlp_1", "mlp_0", {"MLP": 0.3}),
    ("attn_2_head_1", "mlp_1", {"MLP": 0.2}),
]


def graph(edges=EDGES, n_heads=1, parallel=False) -> nx.DiGraph:
    G = nx.DiGraph(n_heads=n_heads, n_layers=3, parallel=parallel)
    for u, v, by in edges:
        G.add_edge(
            u, v, by_mode=dict(by), weight=sum(by.values()), mode=max(by, key=lambda m: abs(by[m]))
        )
    for n in G.nodes:
        G.nodes[n].update(gr.component_attrs(n, parallel), flow=1.0)
    return G


def n_drawn(G) -> int:
    return sum(1 for *_, d in G.edges(data=True) for w in d["by_mode"].values() if w)


def figure_paths(fig, width=1300.0, height=480.0) -> list:
    """The edge curves of a plotly figure in pixels of a ``width`` x ``height`` plot:
    every line trace split at its gaps (None)."""
    lines = [tr for tr in fig.data if tr.mode == "lines" and tr.x is not None and len(tr.x) > 1]
    pts = [(x, y) for tr in lines for x, y in zip(tr.x, tr.y) if x is not None]
    xr = fig.layout.xaxis.range or (min(p[0] for p in pts), max(p[0] for p in pts))
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    px = lambda p: (
        (p[0] - xr[0]) / (xr[1] - xr[0]) * width,  # noqa: E731
        (p[1] - y0) / ((y1 - y0) or 1.0) * height,
    )
    paths, cur = [], []
    for tr in lines:
        for x, y in list(zip(tr.x, tr.y)) + [(None, None)]:
            if x is None:
                if cur:
                    paths.append(cur)
                cur = []
            else:
                cur.append(px((x, y)))
    return paths


def test_every_edge_and_mode_is_its_own_curve_none_hidden():
    G = graph()
    fig = views.graph_figure(G, gr.layered_layout(G))
    paths = figure_paths(fig)
    assert len(paths) == n_drawn(G) == 11  # K, Q and V between one pair: three curves
    assert worst_overlap(paths) < 0.5
    # the caption counts what is drawn
    assert views.graph_caption(G).startswith("11 edges drawn")


def test_the_same_geometry_in_the_html_and_tikz_exports():
    G = graph()
    d = ex._drawing(G)
    assert len(d["edges"]) == n_drawn(G)
    at = {n["id"]: (n["x"], n["y"]) for n in d["nodes"]}
    curves = [gr.curve_points(at[e["source"]], e["c"], at[e["target"]]) for e in d["edges"]]
    assert worst_overlap(curves) < 0.5
    assert d["n_pairs"] == G.number_of_edges() == 7 and d["modes"] == ["K", "Q", "V", "MLP"]
    assert "reader-writer pairs" in ex.to_html(G)  # the page's count (drawn in Chromium elsewhere)
    tex = ex.to_tikz(G)
    draws = re.findall(
        r"\\draw\[->, draw=mode(K|Q|V|MLP),[^\]]*\] \((n\d+)\) \.\. controls "
        r"\(([-\d.]+), ([-\d.]+)\) and \(([-\d.]+), ([-\d.]+)\)",
        tex,
    )
    assert len(draws) == n_drawn(G)
    assert len({d[1:] for d in draws}) == len(draws)  # no two arrows on one curve
    assert "% 7 nodes, 11 edges" in tex


def test_one_colour_and_one_legend_place_per_mode_in_every_graph():
    orders = []
    for edges in (EDGES, EDGES[::-1], [EDGES[3], EDGES[0]]):
        G = graph(edges)
        traces = views.graph_traces(G, gr.layered_layout(G))
        legend = [t for t in traces if t.showlegend]
        orders.append([t.name for t in sorted(legend, key=lambda t: t.legendrank)])
        assert {t.line.width for t in legend} == {3}
        for t in traces:
            if t.mode == "lines":
                assert t.line.color == gr.MODE_COLORS[t.legendgroup]
    assert orders[0] == orders[1] == ["K", "Q", "V", "MLP"] and orders[2] == ["Q", "V", "MLP"]
    assert ex.COLORS == views.MODE_COLORS == gr.MODE_COLORS


def test_integer_layer_ticks_and_mlps_apart_from_heads():
    for parallel in (False, True):
        G = graph(parallel=parallel)
        xy = gr.layered_layout(G)
        fig = views.graph_figure(G, xy)
        assert list(fig.layout.xaxis.tickvals) == [-1, 0, 1, 2]
        assert list(fig.layout.xaxis.ticktext) == ["emb", "0", "1", "2"]
        assert xy["mlp_1"][0] != xy["attn_1_head_0"][0]  # a parallel MLP too
        assert len(set(xy.values())) == len(xy)  # no two nodes in one place


def test_the_inspected_node_is_ringed_and_its_edges_drawn_on_top():
    G = graph()
    fig = views.graph_figure(G, gr.layered_layout(G), selected="attn_0_head_0")
    ring = [t for t in fig.data if t.name == "selected"]
    assert len(ring) == 1 and list(ring[0].customdata) == ["attn_0_head_0"]
    lines = [t for t in fig.data if t.mode == "lines" and t.customdata is not None]
    on = [t for t in lines if any(c and "attn_0_head_0" in c for c in t.customdata)]
    off = [t for t in lines if t not in on]
    assert on and off and {t.opacity for t in on} == {1.0} and max(t.opacity for t in off) < 0.5


def test_paths_graph_gives_each_node_its_own_place_and_the_labels_room():
    """Nodes at one token position in one layer (paths.html overlapped them)."""
    G = nx.DiGraph(title="paths")
    nodes = [
        "attn_1_head_0@5",
        "attn_1_head_3@5",
        "attn_1_head_2@5",
        "attn_0_head_1@2",
        "attn_0_head_0@2",
        "embedding@2",
        "mlp_0@5",
        "embedding@5",
    ]
    for n in nodes:
        comp, _, pos = n.partition("@")
        G.add_node(n, **gr.component_attrs(comp), position=int(pos))
    for a, b, m in [
        (0, 3, "Q"),
        (1, 4, "K"),
        (2, 3, "V"),
        (3, 5, "V"),
        (4, 5, "K"),
        (6, 7, "MLP"),
        (0, 7, "Q"),
    ]:
        ex._add_edge(G, nodes[a], nodes[b], m, 0.5)
    d = ex._drawing(G)
    boxes = [
        (n["x"] - 3.5 * len(n["label"]), n["y"] - 8, n["x"] + 3.5 * len(n["label"]), n["y"] + 8)
        for n in d["nodes"]
    ]  # 11-pixel text: about 7 pixels a character
    for a, b in itertools.combinations(boxes, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    assert d["modes"] == ["K", "Q", "V", "MLP"]
