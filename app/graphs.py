"""Circuit graphs from the store (docs/METHOD.md §6 interaction edges, §1 layers).

:func:`circuit_graph` selects traces (model, run, task, preset, condition,
template, prompts, root), sums each trace's position-resolved edges over
positions (§6: "the sum over positions is the interaction strength") and
aggregates over the selected prompts into a ``networkx.DiGraph``:

- nodes: components, with ``layer`` (int: -1 for embeddings, ``L`` for
  ``attn_L_head_h`` and ``mlp_L``), ``depth`` (float, the §1 layer index: MLPs
  at ``L + 0.5`` in sequential blocks, ``L`` in parallel ones), ``head``
  (int or None), ``kind`` (embedding, pos_embedding, head, mlp) and ``flow``
  (the component's flow summed over positions, aggregated like the edges);
- edges ``parent -> child`` in the direction credit moves (a reader to the
  writer it reads): ``weight`` (all selected modes together), ``by_mode``
  (mode -> weight), ``mode`` (the mode with the largest ``|weight|``),
  ``sum`` and ``mean`` (over the selected prompts, a prompt without the edge
  counting 0), ``share`` (fraction of the selected prompts that have the edge)
  and ``n_prompts`` (how many have it).

Edges below the ingest's ``edge_min_frac`` were never stored, so "has the
edge" means "has it above that threshold at some position pair".

Helpers: :func:`layered_layout`, :func:`top_paths`, :func:`credit_subgraph`,
:func:`compare_graphs`, :func:`to_graphml`, :func:`to_json`, and
:func:`available` (what the store holds, to fill filters).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable

import networkx as nx
import numpy as np
import pandas as pd

from ingest.queries import as_list, selection_sql  # noqa: F401 (app.graphs' names)
from unpack import components
from unpack.errors import InputError

MODES = ("K", "Q", "V", "MLP")
AGGS = ("mean", "sum")


# ------------------------------------------------------------------ selection


def available(con) -> pd.DataFrame:
    """What the store holds: one row per model, preset, task, condition and root,
    with the number of traces (duplicates counted once)."""
    sel, params = selection_sql(root=None)
    return con.execute(
        f"SELECT model, preset, task, condition, root, count(*) AS n_traces FROM ({sel}) "
        "GROUP BY ALL ORDER BY model, preset, task, condition, root",
        params,
    ).df()


def _describe(filters: dict) -> str:
    shown = {k: v for k, v in filters.items() if v is not None}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "no filters"


# ------------------------------------------------------------------ the graph


def component_attrs(name: str, parallel: bool = False) -> dict:
    """``kind``, ``layer``, ``head`` and ``depth`` of a component name (§1;
    :func:`unpack.components.attrs`)."""
    return components.attrs(name, parallel)


def circuit_graph(
    con,
    *,
    model=None,
    run_id=None,
    task=None,
    preset=None,
    condition=None,
    template=None,
    prompt_ids=None,
    root="target",
    modes=MODES,
    min_weight: float = 0.0,
    min_share: float = 0.0,
    top_k: int | None = None,
    agg: str = "mean",
) -> nx.DiGraph:
    """The circuit of the selected traces as a DiGraph (see the module docstring).

    ``modes``: the modes kept (a subset of K, Q, V, MLP); ``weight`` adds them.
    ``agg``: ``'mean'`` (over the selected prompts, absent = 0) or ``'sum'``.
    Edges are kept when ``|weight| >= min_weight`` and ``share >= min_share``,
    then the ``top_k`` largest by ``|weight|``. Nodes are the endpoints of the
    kept edges (plus the root component of a rerooted selection). Graph
    attributes: ``model, preset, task, condition, root, n_prompts, n_layers,
    n_heads, parallel, agg, modes, filters``.

    The selection must hold one model and one preset; an empty selection
    raises InputError naming the filters."""
    modes = _check_graph_args(agg, modes, top_k, min_weight, min_share)
    filters = dict(
        model=model,
        run_id=run_id,
        task=task,
        preset=preset,
        condition=condition,
        template=template,
        prompt_ids=prompt_ids,
        root=root,
    )
    n_sel, per, flows, meta, roots = _read_selection(con, filters, modes)
    parallel = _parallel(meta["parallel_residual"], per, meta["model_type"])
    scale = 1.0 / n_sel if agg == "mean" else 1.0
    G = nx.DiGraph(
        model=meta["model"],
        preset=meta["preset"],
        task=meta["task"],
        condition=meta["condition"],
        root=meta["root"],
        n_prompts=n_sel,
        n_layers=meta["n_layers"],
        n_heads=meta["n_heads"],
        parallel=parallel,
        agg=agg,
        modes=list(modes),
        filters={k: v for k, v in filters.items() if v is not None},
    )
    if len(per):
        edges = _aggregate(per, modes, n_sel, scale)
        keep = (edges["weight"].abs() >= min_weight) & (edges["share"] >= min_share)
        edges = edges[keep & (edges["weight"] != 0)]
        edges = edges.reindex(
            edges["weight"].abs().sort_values(ascending=False, kind="stable").index
        )
        _add_edges(G, edges if top_k is None else edges.head(top_k), modes, n_sel)
    for c in roots:
        G.add_node(c)
    flow = dict(zip(flows["component"], flows["flow"] * scale))
    for n in G.nodes:
        G.nodes[n].update(component_attrs(n, parallel), flow=float(flow.get(n, 0.0)))
    return G


def _check_graph_args(agg, modes, top_k, min_weight, min_share) -> tuple:
    """The modes as a tuple, or an InputError naming the bad argument."""
    if agg not in AGGS:
        raise InputError(f"agg={agg!r}: choose one of {', '.join(AGGS)}")
    modes = tuple(as_list(modes) or ())
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise InputError(f"modes={modes!r}: choose among {', '.join(MODES)}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InputError(f"top_k={top_k!r} must be a positive integer or None")
    if not min_weight >= 0 or not 0 <= min_share <= 1:
        raise InputError(
            f"min_weight={min_weight} must be >= 0 and min_share={min_share} in [0, 1]"
        )
    return modes


_META = (
    "model",
    "preset",
    "task",
    "condition",
    "root",
    "n_layers",
    "n_heads",
    "model_type",
    "parallel_residual",
)


def _read_selection(con, filters: dict, modes: tuple):
    """``(n_traces, per-trace edges, flows, meta, root components)`` of the
    selection; ``meta`` holds the :data:`_META` facts of the selection and its model."""
    sel, params = selection_sql(**filters)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _sel AS {sel}", params)
    try:
        info = con.execute("SELECT model, preset, count(*) FROM _sel GROUP BY ALL").fetchall()
        if not info:
            raise InputError(
                f"no traces match {_describe(filters)}; see app.graphs.available(con) "
                "for what the store holds, or ingest them with `unpack ingest`"
            )
        for what, i in (("models", 0), ("presets", 1)):
            found = sorted({str(r[i]) for r in info})
            if len(found) > 1:
                raise InputError(
                    f"the selection mixes {what} {found}; pass "
                    f"{'model' if i == 0 else 'preset'}= to pick one"
                )
        mode_list = ", ".join(f"'{m}'" for m in modes)
        per = con.execute(
            "SELECT e.trace_id, e.parent, e.child, e.mode, sum(e.weight) AS w "
            f"FROM edges e JOIN _sel s USING (trace_id) WHERE e.mode IN ({mode_list}) "
            "GROUP BY ALL"
        ).df()
        flows = con.execute(
            "SELECT f.component, sum(f.flow) AS flow FROM component_flows f "
            "JOIN _sel s USING (trace_id) GROUP BY ALL"
        ).df()
        meta = con.execute(
            "SELECT any_value(s.model), any_value(s.preset), string_agg(DISTINCT s.task, ','), "
            "string_agg(DISTINCT s.condition, ','), string_agg(DISTINCT s.root, ','), "
            "any_value(m.n_layers), any_value(m.n_heads), any_value(m.model_type), "
            "any_value(m.parallel_residual) FROM _sel s JOIN models m ON m.name = s.model"
        ).fetchone()
        roots = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT root_component FROM _sel WHERE root_component IS NOT NULL"
            ).fetchall()
        ]
    finally:
        con.execute("DROP TABLE IF EXISTS _sel")
    return int(sum(r[2] for r in info)), per, flows, dict(zip(_META, meta)), roots


def _add_edges(G: nx.DiGraph, edges: pd.DataFrame, modes: tuple, n_sel: int) -> None:
    for r in edges.itertuples(index=False):
        by_mode = {m: float(getattr(r, f"w_{m}")) for m in modes}
        G.add_edge(
            r.parent,
            r.child,
            weight=float(r.weight),
            by_mode=by_mode,
            mode=max(by_mode, key=lambda m: abs(by_mode[m])),
            sum=float(r.sum),
            mean=float(r.sum) / n_sel,
            share=float(r.share),
            n_prompts=int(r.n),
        )


def _parallel(stored, per: pd.DataFrame, model_type) -> bool:
    """The residual topology (§1) as the ingest stored it from the adapter's
    ``ModelSpec`` (``models.parallel_residual``). A model stored before that
    column (NULL) falls back to the edges: sequential when an MLP reads a head
    of its own layer, else parallel for GPT-NeoX."""
    if stored is not None and not pd.isna(stored):
        return bool(stored)
    if len(per):
        mlp = per[
            (per["mode"] == "MLP")
            & per["parent"].str.startswith("mlp_")
            & per["child"].str.startswith("attn_")
        ]
        pl = [components.layer_head(n)[0] for n in mlp["parent"]]
        cl = [components.layer_head(n)[0] for n in mlp["child"]]
        if any(a == b for a, b in zip(pl, cl)):
            return False
    return model_type == "gpt_neox"


def _aggregate(per: pd.DataFrame, modes, n_sel: int, scale: float) -> pd.DataFrame:
    """Per (parent, child): each mode's aggregate, the total, and in how many
    traces the edge appears."""
    wide = per.pivot_table(
        index=["trace_id", "parent", "child"],
        columns="mode",
        values="w",
        aggfunc="sum",
        fill_value=0.0,
    )
    for m in modes:
        if m not in wide:
            wide[m] = 0.0
    wide = wide[list(modes)]
    wide["total"] = wide.sum(axis=1)
    g = wide.groupby(level=["parent", "child"])
    out = g.sum() * scale
    out.columns = [f"w_{c}" if c in modes else c for c in out.columns]
    out = out.rename(columns={"total": "weight"})
    out["sum"] = g["total"].sum()
    out["n"] = g.size()
    out["share"] = out["n"] / n_sel
    return out.reset_index()


# ------------------------------------------------------------------ helpers


def layered_layout(G: nx.DiGraph, layer_gap: float = 1.0, row_gap: float = 1.0) -> dict:
    """``{node: (x, y)}`` with layers left to right: ``x`` is the §1 layer index
    (embeddings -1, heads L, MLPs L + 0.5; in a parallel block, where the MLP
    shares its layer index with the heads, L + 0.3 so that it stands apart from
    them); ``y`` puts heads in the row of their head index (top to bottom), MLPs
    in a row below the heads and embeddings in the middle, off the heads' rows."""
    n_heads = G.graph.get("n_heads") or 1 + max(
        [d.get("head") for _, d in G.nodes(data=True) if d.get("head") is not None] or [0]
    )
    mid = (n_heads - 1) / 2
    parallel = G.graph.get("parallel", False)
    pos = {}
    for n, d in G.nodes(data=True):
        a = d if "kind" in d else component_attrs(n, parallel)
        kind, x = a["kind"], a["depth"]
        if kind == "head":
            y = a["head"]
        elif kind == "mlp":
            y = n_heads
            x = x + 0.3 if x == a["layer"] else x  # a parallel block's MLP
        elif kind == "pos_embedding":
            y = mid + 0.35
        elif any(G.nodes[m].get("kind") == "pos_embedding" for m in G):
            y = mid - 0.35
        else:  # between two head rows, never on one: no head hides an edge into it
            y = mid if n_heads % 2 == 0 else mid + 0.35
        pos[n] = (x * layer_gap, -y * row_gap)
    return pos


# ------------------------------------------------------------------ drawing geometry

MODE_COLORS = {"K": "#1f77b4", "Q": "#ff7f0e", "V": "#2ca02c", "MLP": "#7f7f7f"}
"""One colour per mode in every figure and export (the app, HTML, TikZ, matplotlib)."""


def drawn_edges(G: nx.DiGraph) -> list[tuple]:
    """``(parent, child, mode, weight)``: one drawn edge per reader, writer and mode
    with a nonzero weight (``by_mode``; an edge without it: its ``mode``), modes
    in :data:`MODES` order. What every figure draws and counts."""
    out = []
    for u, v, d in G.edges(data=True):
        by = d.get("by_mode") or {d.get("mode") or "MLP": d.get("weight", 0.0)}
        for m in sorted(by, key=lambda m: MODES.index(m) if m in MODES else len(MODES)):
            if by[m]:
                out.append((u, v, m, float(by[m])))
    return out


_LANES = {"K": 1, "Q": -1, "V": 2, "MLP": -2}  # side (sign) and distance from the chord


def curve_control(p0, p1, mode: str, scale=(1.0, 1.0)) -> tuple[float, float]:
    """The control point of the quadratic Bezier curve drawn from ``p0`` to ``p1``.

    The curve leaves its chord at an angle set by the mode (K and V bend to one
    side, Q and MLP to the other, V and MLP further: the four modes between one
    pair of nodes take four distinct curves) and by the chord's length (edges
    from one node to nodes further along one line leave it at distinct angles,
    and an edge over several layers arcs over the nodes between). Computed where
    one unit of x is ``scale[0]`` and of y ``scale[1]`` (a layer step about 1), so
    that curves look alike on any axes."""
    (x0, y0), (x1, y1) = p0, p1
    sx, sy = scale
    dx, dy = (x1 - x0) * sx, (y1 - y0) * sy
    length = math.hypot(dx, dy) or 1e-9
    lane = _LANES.get(mode, 3)
    angle = math.radians(10 + 12 * (abs(lane) - 1) + 6 * min(length, 4.0))
    bend = math.copysign(length / 2 * math.tan(angle), lane)
    nx_, ny_ = -dy / length, dx / length
    return ((x0 + x1) / 2 + bend * nx_ / sx, (y0 + y1) / 2 + bend * ny_ / sy)


def curve_points(p0, c, p1, n: int = 24) -> list[tuple[float, float]]:
    """``n + 1`` points along the quadratic Bezier curve ``p0``, ``c``, ``p1``."""
    pts = []
    for i in range(n + 1):
        t = i / n
        a, b, e = (1 - t) ** 2, 2 * t * (1 - t), t * t
        pts.append((a * p0[0] + b * c[0] + e * p1[0], a * p0[1] + b * c[1] + e * p1[1]))
    return pts


def figure_scale(xy: dict, aspect: float = 2.4, steps: float = 3.0) -> tuple[float, float]:
    """Units per data unit of :func:`curve_control` for a figure ``aspect`` times as
    wide as high: the nodes' box becomes ``steps * aspect`` by ``steps`` units."""
    xs = [p[0] for p in xy.values()] or [0.0]
    ys = [p[1] for p in xy.values()] or [0.0]
    return (steps * aspect / max(max(xs) - min(xs), 1.0), steps / max(max(ys) - min(ys), 1.0))


def edge_geometry(G: nx.DiGraph, xy: dict, scale=None, n: int = 24) -> list[dict]:
    """Every drawn edge (:func:`drawn_edges`) with its curve on the positions
    ``xy``: ``parent, child, mode, weight, control`` and ``points`` (sampled)."""
    scale = scale or figure_scale(xy)
    out = []
    for u, v, m, w in drawn_edges(G):
        c = curve_control(xy[u], xy[v], m, scale)
        out.append(
            dict(
                parent=u,
                child=v,
                mode=m,
                weight=w,
                control=c,
                points=curve_points(xy[u], c, xy[v], n),
            )
        )
    return out


def layer_ticks(G: nx.DiGraph) -> tuple[list[int], list[str]]:
    """Integer layer ticks of a layered drawing: ``emb`` at -1, then 0 .. L-1."""
    nl = G.graph.get("n_layers") or 1 + max(
        [d.get("layer", -1) for _, d in G.nodes(data=True) if d.get("layer") is not None] or [0]
    )
    vals = list(range(-1, int(nl)))
    return vals, ["emb" if v < 0 else str(v) for v in vals]


def _mode_edges(G: nx.DiGraph, node):
    for child, d in G[node].items():
        by = d.get("by_mode") or {d.get("mode", "?"): d["weight"]}
        for m, w in by.items():
            if w:
                yield child, m, w


def top_paths(G: nx.DiGraph, k: int = 10, source=None, complete: bool = True) -> list[dict]:
    """The ``k`` paths with the largest ``|score|`` from a source to a sink.

    A path is a chain of (edge, mode) hops, so one edge carries up to four
    paths, one per mode. Its score follows §7 on the aggregated graph: the
    source's own credit times, at each hop ``p -> c`` in mode ``m``, the share
    of ``p``'s flow it passes, ``by_mode[m] / flow(p)``. Sources: ``source`` or
    the root component of a rerooted graph, starting with their flow; in a
    graph rooted at the target every node is a source with its seed, estimated
    as its flow minus what its incoming edges bring (exact when no edge was
    cut by a threshold or a mode filter). Ends: the embeddings, or with ``complete=False`` every node without
    outgoing edges (a head whose edges all fell under the store's threshold).
    Each path: ``nodes``, ``modes``, ``score``, ``chain``
    (``attn_9_head_9[Q]→attn_7_head_3[V]→embedding``) and ``complete`` (ends at
    an embedding). Exact: ``|score|`` is a product, so the best ``k`` paths
    through a node extend the best ``k`` paths that reach it."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k={k!r} must be a positive integer")
    if source is not None:
        if source not in G:
            raise InputError(f"source {source!r} is not a node of the graph")
        start = {source: G.nodes[source].get("flow", 0.0)}
    else:
        roots = [
            n
            for n in G.nodes
            if G.graph.get("root")
            and any(n == r.split("@")[0] for r in str(G.graph["root"]).split(","))
        ]
        if roots:
            start = {n: G.nodes[n].get("flow", 0.0) for n in roots}
        else:
            start = {
                n: G.nodes[n].get("flow", 0.0) - sum(w for *_, w in G.in_edges(n, data="weight"))
                for n in G.nodes
            }
    best: dict = {n: [] for n in G.nodes}  # node -> [(|score|, score, nodes, modes)]
    for s, f in start.items():
        if abs(f) > 1e-12:
            best[s].append((abs(f), f, (s,), ()))
    done = []
    order = list(nx.topological_sort(G))
    for n in order:
        if not best[n]:
            continue
        best[n] = heapq.nlargest(k, best[n], key=lambda t: t[0])
        out = list(_mode_edges(G, n))
        if not out:
            if not complete or G.nodes[n].get("kind") in ("embedding", "pos_embedding"):
                done.extend(best[n])
            continue
        fn = G.nodes[n].get("flow", 0.0)
        if not fn:
            continue
        for child, m, w in out:
            f = w / fn
            best[child].extend(
                (abs(sc * f), sc * f, nodes + (child,), ms + (m,)) for _, sc, nodes, ms in best[n]
            )
    done = heapq.nlargest(k, done, key=lambda t: t[0])
    out = []
    for _, sc, nodes, ms in done:
        chain = "→".join(f"{a}[{m}]" for a, m in zip(nodes, ms)) + ("→" if ms else "") + nodes[-1]
        out.append(
            dict(
                nodes=list(nodes),
                modes=list(ms),
                score=float(sc),
                chain=chain,
                complete=G.nodes[nodes[-1]].get("kind") in ("embedding", "pos_embedding"),
            )
        )
    return out


def credit_subgraph(G: nx.DiGraph, share: float = 0.8) -> nx.DiGraph:
    """The fewest edges, strongest first by ``|weight|``, whose ``|weight|`` adds
    up to at least ``share`` of the graph's total ``|weight|``, with their nodes."""
    if not 0 < share <= 1:
        raise InputError(f"share={share} must lie in (0, 1]")
    edges = sorted(G.edges(data="weight"), key=lambda e: -abs(e[2]))
    total = sum(abs(w) for *_, w in edges)
    keep, acc = [], 0.0
    for u, v, w in edges:
        if acc >= share * total * (1 - 1e-12) and keep:
            break
        keep.append((u, v))
        acc += abs(w)
    H = G.edge_subgraph(keep).copy()
    H.graph.update(G.graph, credit_share=share, credit_covered=acc / total if total else 0.0)
    return H


def _align_label(attrs: dict, n_layers: int, n_bins: int) -> str:
    kind = attrs["kind"]
    if kind in ("embedding", "pos_embedding"):
        return kind
    b = min(n_bins - 1, int((attrs["layer"] + 0.5) / n_layers * n_bins))
    return f"{'heads' if kind == 'head' else 'mlp'}@{b}"


def _collapse(G: nx.DiGraph, n_bins: int) -> dict:
    """Edges keyed by (aligned parent, aligned child): summed weight and modes,
    the largest share."""
    nl = G.graph.get("n_layers") or 1 + max(d["layer"] for _, d in G.nodes(data=True))
    out: dict = {}
    for u, v, d in G.edges(data=True):
        key = (_align_label(G.nodes[u], nl, n_bins), _align_label(G.nodes[v], nl, n_bins))
        e = out.setdefault(key, dict(weight=0.0, by_mode={}, share=0.0))
        e["weight"] += d["weight"]
        for m, w in (d.get("by_mode") or {d["mode"]: d["weight"]}).items():
            e["by_mode"][m] = e["by_mode"].get(m, 0.0) + w
        e["share"] = max(e["share"], d.get("share", 1.0))
    for e in out.values():
        e["mode"] = max(e["by_mode"], key=lambda m: abs(e["by_mode"][m]))
    return out


def compare_graphs(
    G1: nx.DiGraph, G2: nx.DiGraph, align: str = "auto", n_bins: int | None = None
) -> pd.DataFrame:
    """Edges of two graphs side by side, with ``status``: ``gained`` (only in
    G2), ``lost`` (only in G1), ``changed_mode`` (in both, another dominant
    mode) or ``same``.

    ``align='name'`` matches edges by component names. ``align='depth'`` (models
    of different depth, e.g. Pythia sizes) maps each component to its kind and
    relative depth bin (``heads@b``, ``mlp@b``, ``b = floor((L + 0.5) / n_layers *
    n_bins)``; default ``n_bins`` = the smaller depth) and sums the edges per
    pair of bins. ``'auto'``: by name when both have the same layers and heads.
    Columns: parent, child, status, weight_1, weight_2, weight_diff, mode_1,
    mode_2, share_1, share_2; ``df.attrs`` holds the alignment and the counts."""
    if align == "auto":
        same = (G1.graph.get("n_layers"), G1.graph.get("n_heads")) == (
            G2.graph.get("n_layers"),
            G2.graph.get("n_heads"),
        )
        align = "name" if same else "depth"
    if align == "name":
        e1 = {(u, v): d for u, v, d in G1.edges(data=True)}
        e2 = {(u, v): d for u, v, d in G2.edges(data=True)}
    elif align == "depth":
        depths = [g.graph.get("n_layers") for g in (G1, G2)]
        if n_bins is None:
            if not all(depths):
                raise InputError(
                    "align='depth' needs n_layers in both graphs' attributes or n_bins="
                )
            n_bins = min(depths)
        e1, e2 = _collapse(G1, n_bins), _collapse(G2, n_bins)
    else:
        raise InputError(f"align={align!r}: choose auto, name or depth")
    rows = []
    for key in sorted(set(e1) | set(e2), key=str):
        a, b = e1.get(key), e2.get(key)
        if a is None:
            status = "gained"
        elif b is None:
            status = "lost"
        else:
            status = "same" if a["mode"] == b["mode"] else "changed_mode"
        w1 = a["weight"] if a else 0.0
        w2 = b["weight"] if b else 0.0
        rows.append(
            dict(
                parent=key[0],
                child=key[1],
                status=status,
                weight_1=w1,
                weight_2=w2,
                weight_diff=w2 - w1,
                mode_1=a["mode"] if a else None,
                mode_2=b["mode"] if b else None,
                share_1=a.get("share") if a else None,
                share_2=b.get("share") if b else None,
            )
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "parent",
            "child",
            "status",
            "weight_1",
            "weight_2",
            "weight_diff",
            "mode_1",
            "mode_2",
            "share_1",
            "share_2",
        ],
    )
    df.attrs.update(
        align=align,
        n_bins=n_bins,
        model_1=G1.graph.get("model"),
        model_2=G2.graph.get("model"),
        counts={
            s: int((df["status"] == s).sum()) for s in ("gained", "lost", "changed_mode", "same")
        },
    )
    return df


# ------------------------------------------------------------------ export


def _plain(v):
    """A JSON/GraphML-safe value: None for NaN, lists and dicts kept for JSON."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (tuple, set)):
        return list(v)
    return v


def to_json(G: nx.DiGraph) -> dict:
    """``{"graph": {...}, "nodes": [{"id", ...}], "edges": [{"source", "target", ...}]}``,
    plain JSON types only (``json.dumps`` works on it)."""

    def clean(d):
        return {k: (clean(v) if isinstance(v, dict) else _plain(v)) for k, v in d.items()}

    return {
        "graph": clean(dict(G.graph)),
        "nodes": [dict(id=n, **clean(d)) for n, d in G.nodes(data=True)],
        "edges": [dict(source=u, target=v, **clean(d)) for u, v, d in G.edges(data=True)],
    }


def to_graphml(G: nx.DiGraph, path) -> None:
    """Write GraphML: ``by_mode`` becomes ``weight_K`` .. ``weight_MLP``, a missing
    head is -1, graph attributes that are lists or dicts are JSON strings."""
    H = nx.DiGraph()
    for k, v in G.graph.items():
        if v is None:
            continue
        H.graph[k] = json.dumps(_plain(v), default=str) if isinstance(v, (list, dict, tuple)) else v
    for n, d in G.nodes(data=True):
        H.add_node(
            n,
            **{
                k: (-1 if v is None and k == "head" else v)
                for k, v in d.items()
                if v is not None or k == "head"
            },
        )
    for u, v, d in G.edges(data=True):
        attrs = {k: x for k, x in d.items() if k != "by_mode" and x is not None}
        for m in MODES:
            attrs[f"weight_{m}"] = float((d.get("by_mode") or {}).get(m, 0.0))
        H.add_edge(u, v, **attrs)
    nx.write_graphml(H, str(path))


short_name = components.short_label  # attn_9_head_9 -> 9.9, mlp_3 -> m3, emb, pos


def draw(G: nx.DiGraph, ax=None, pos=None, max_width: float = 6.0, labels: bool = True):
    """Matplotlib drawing on :func:`layered_layout`: one curve per reader, writer
    and mode (:func:`edge_geometry`), width ∝ ``|weight|``, colour = mode
    (:data:`MODE_COLORS`), dashed when negative; node size ∝ ``|flow|``."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ax = ax or plt.gca()
    pos = pos or layered_layout(G)
    geo = edge_geometry(G, pos)
    wmax = max([abs(e["weight"]) for e in geo] or [1.0]) or 1.0
    fmax = max([abs(d.get("flow", 0.0)) for _, d in G.nodes(data=True)] or [1.0]) or 1.0
    for e in geo:
        xs, ys = zip(*e["points"])
        ax.plot(
            xs,
            ys,
            color=MODE_COLORS.get(e["mode"], "black"),
            alpha=0.75,
            lw=0.3 + max_width * abs(e["weight"]) / wmax,
            linestyle="--" if e["weight"] < 0 else "-",
        )
    xs = [pos[n][0] for n in G]
    ys = [pos[n][1] for n in G]
    sizes = [15 + 250 * abs(G.nodes[n].get("flow", 0.0)) / fmax for n in G]
    ax.scatter(xs, ys, s=sizes, color="white", edgecolors="black", zorder=3, linewidths=0.8)
    if labels:
        for n in G:
            ax.text(
                pos[n][0], pos[n][1], short_name(n), fontsize=6, ha="center", va="center", zorder=4
            )
    ax.legend(
        handles=[Line2D([], [], color=MODE_COLORS[m], lw=2, label=m) for m in MODES],
        fontsize=7,
        loc="lower right",
        title="mode",
        title_fontsize=7,
    )
    ticks, names = layer_ticks(G)
    ax.set_xticks(ticks, names)
    ax.set_xlabel("layer")
    ax.set_yticks([])
    return ax


def graph_frame(G: nx.DiGraph) -> pd.DataFrame:
    """The edges as a table: parent, child, weight, mode, share, n_prompts, and
    one column per mode."""
    rows = []
    for u, v, d in G.edges(data=True):
        row = dict(
            parent=u,
            child=v,
            weight=d["weight"],
            mode=d["mode"],
            share=d.get("share"),
            n_prompts=d.get("n_prompts"),
        )
        row.update({m: w for m, w in (d.get("by_mode") or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def nodes_of(G: nx.DiGraph, kinds: Iterable[str]) -> list:
    """Nodes of the given kinds, by depth then head."""
    kinds = set(kinds)
    return sorted(
        (n for n, d in G.nodes(data=True) if d.get("kind") in kinds),
        key=lambda n: (G.nodes[n]["depth"], G.nodes[n].get("head") or 0),
    )
