"""Exports for papers: a stored circuit, or a prompt's top paths, as one
standalone interactive HTML file (inline SVG and script, no network) or as
TikZ source; GraphML and JSON through :mod:`app.graphs`.

Both graphs are ``networkx`` digraphs in the shape :mod:`app.graphs` uses:
nodes carry ``kind``, ``layer``, ``head`` and ``depth`` (the docs/METHOD.md §1 layer
index), edges point the way credit moves (reader → the writer it reads) with
``weight``, ``mode`` (the dominant one) and ``by_mode``.
"""

from __future__ import annotations

import base64
import hashlib
import json

import networkx as nx

from app import escape
from app import graphs as gr
from unpack.errors import InputError

FORMATS = ("html", "tikz", "graphml", "json")
COLORS = gr.MODE_COLORS  # one colour per mode, as in the app


def _add_edge(G, parent, child, mode, w, **extra) -> None:
    if not G.has_edge(parent, child):
        G.add_edge(parent, child, by_mode={}, weight=0.0, **extra)
    d = G.edges[parent, child]
    d["by_mode"][mode] = d["by_mode"].get(mode, 0.0) + float(w)
    d["weight"] = sum(d["by_mode"].values())
    d["mode"] = max(d["by_mode"], key=lambda m: abs(d["by_mode"][m]))


def circuit_nx(con, circuit_id: int) -> nx.DiGraph:
    """The stored circuit ``circuit_id`` (nodes: its components; edges: its edges)."""
    row = con.execute(
        "SELECT model, task, condition, n_prompts FROM circuits WHERE circuit_id = ?", [circuit_id]
    ).fetchone()
    if row is None:
        raise InputError(
            f"circuit {circuit_id} does not exist; list the stored ones with "
            "SELECT circuit_id, model, task FROM circuits"
        )
    G = nx.DiGraph(
        title=f"circuit {circuit_id}: {row[0]}, {row[1]}"
        f"{' (' + row[2] + ')' if row[2] else ''}, {row[3]} prompts"
    )
    for name, share, depth in con.execute(
        "SELECT component, share, depth FROM circuit_components WHERE circuit_id = ? "
        "ORDER BY layer, head",
        [circuit_id],
    ).fetchall():
        G.add_node(name, **gr.component_attrs(name), share=share, hop=depth)
    for p, c, m, w, s in con.execute(
        "SELECT parent, child, mode, weight, share FROM circuit_edges WHERE circuit_id = ? "
        "ORDER BY parent, child, mode",
        [circuit_id],
    ).fetchall():
        for n in (p, c):
            if n not in G:
                G.add_node(n, **gr.component_attrs(n))
        _add_edge(G, p, c, m, w)
        G.edges[p, c].setdefault("share", s)
    return G


def paths_nx(con, prompt_id: int, root: str = "target", top: int = 10) -> nx.DiGraph:
    """The ``top`` paths of one stored trace: nodes ``component@pos``, edges between
    consecutive hops weighted by the summed path scores."""
    row = con.execute(
        "SELECT t.trace_id, p.text FROM traces t JOIN prompts p USING (prompt_id) "
        "WHERE t.prompt_id = ? AND t.root = ?",
        [prompt_id, root],
    ).fetchone()
    if row is None:
        raise InputError(
            f"prompt {prompt_id} has no stored trace with root {root!r}; see "
            "SELECT prompt_id, root FROM traces"
        )
    hops = con.execute(
        "SELECT p.path_id, p.score, h.hop, h.component, h.pos, h.mode FROM paths p "
        "JOIN path_hops h USING (path_id) WHERE p.trace_id = ? AND p.rank <= ? "
        "ORDER BY p.rank, h.hop",
        [row[0], top],
    ).fetchall()
    G = nx.DiGraph(title=f"prompt {prompt_id}, root {root}: top {top} paths — {row[1]}")
    prev = {}
    for path_id, score, hop, comp, pos, mode in hops:
        node = f"{comp}@{pos}"
        if node not in G:
            G.add_node(node, **gr.component_attrs(comp), position=int(pos))
        if path_id in prev:
            p_node, p_mode = prev[path_id]
            _add_edge(G, p_node, node, p_mode or "MLP", score)
        prev[path_id] = (node, mode)
    return G


def layout(G: nx.DiGraph) -> dict:
    """``{node: (x, y)}``: layers left to right. A circuit uses
    :func:`app.graphs.layered_layout`; a paths graph (nodes ``component@pos``)
    puts the layers its nodes use in columns, in order, and each token position
    in a band of rows, one row per node of a layer at that position, so that no
    two nodes (and no two labels) share a place."""
    if not (G.number_of_nodes() and all("position" in d for _, d in G.nodes(data=True))):
        return gr.layered_layout(G)
    col = {x: i for i, x in enumerate(sorted({d["depth"] for _, d in G.nodes(data=True)}))}
    groups: dict = {}
    for n, d in sorted(G.nodes(data=True), key=lambda nd: (nd[1].get("head") or 0, nd[0])):
        groups.setdefault((d["position"], col[d["depth"]]), []).append(n)
    out, top = {}, 0
    for p in sorted({d["position"] for _, d in G.nodes(data=True)}):
        band = [g for (q, _), g in groups.items() if q == p]
        for (q, c), g in groups.items():
            if q == p:
                out.update({n: (c, -(top + j)) for j, n in enumerate(g)})
        top += max(len(g) for g in band)
    return out


def label(n: str) -> str:
    comp, _, pos = n.partition("@")
    return gr.short_name(comp) + (f"@{pos}" if pos else "")


def _drawing(
    G: nx.DiGraph, width: int = 900, height: int = 560, pad: int = 60, unit=(64, 44)
) -> dict:
    """Node and edge records with SVG coordinates, the data the HTML page draws:
    one edge per reader, writer and mode (:func:`app.graphs.edge_geometry`, its
    curve's control point in ``c``); the page grows so that a layout step is at
    least ``unit`` pixels (x, y)."""
    pos = layout(G)
    xs = [p[0] for p in pos.values()] or [0]
    ys = [p[1] for p in pos.values()] or [0]
    width = max(width, int(2 * pad + unit[0] * (max(xs) - min(xs))))
    height = max(height, int(2 * pad + unit[1] * (max(ys) - min(ys))))
    sx = (width - 2 * pad) / max(max(xs) - min(xs), 1e-9)
    sy = (height - 2 * pad) / max(max(ys) - min(ys), 1e-9)
    at = {
        n: (
            round(pad + (x - min(xs)) * sx if max(xs) > min(xs) else width / 2, 1),
            round(pad + (max(ys) - y) * sy if max(ys) > min(ys) else height / 2, 1),
        )
        for n, (x, y) in pos.items()
    }
    geo = gr.edge_geometry(G, at, scale=(1 / unit[0], 1 / unit[0]))
    # curves bend out of the nodes' box: move everything so that they stay on the page
    pts = list(at.values()) + [q for e in geo for q in e["points"]]
    dx = pad / 2 - min(q[0] for q in pts)
    dy = pad / 2 - min(q[1] for q in pts)
    dx, dy = max(dx, 0.0), max(dy, 0.0)
    width = int(max(width, max(q[0] for q in pts) + dx + pad / 2))
    height = int(max(height, max(q[1] for q in pts) + dy + pad / 2))
    at = {n: (round(x + dx, 1), round(y + dy, 1)) for n, (x, y) in at.items()}
    for e in geo:
        e["control"] = (e["control"][0] + dx, e["control"][1] + dy)
    top = max([abs(e["weight"]) for e in geo] or [1.0]) or 1.0
    nodes = [
        dict(
            id=n,
            label=label(n),
            x=at[n][0],
            y=at[n][1],
            kind=d.get("kind"),
            info={k: v for k, v in d.items() if isinstance(v, (int, float, str)) and v is not None},
        )
        for n, d in G.nodes(data=True)
    ]
    edges = [
        dict(
            source=e["parent"],
            target=e["child"],
            mode=e["mode"],
            weight=e["weight"],
            c=[round(e["control"][0], 1), round(e["control"][1], 1)],
            width=round(1 + 5 * abs(e["weight"]) / top, 2),
            share=G.edges[e["parent"], e["child"]].get("share"),
        )
        for e in geo
    ]
    modes = [m for m in gr.MODES if any(e["mode"] == m for e in edges)]
    return dict(
        title=G.graph.get("title", ""),
        width=width,
        height=height,
        nodes=nodes,
        edges=edges,
        colors=COLORS,
        modes=modes,
        n_pairs=G.number_of_edges(),
    )


_STYLE = """
body{font-family:sans-serif;margin:16px;color:#222}
svg{border:1px solid #ddd;background:#fff}
.node circle{fill:#fff;stroke:#333;stroke-width:1.5;cursor:pointer}
.node.mlp circle{fill:#eee}
.node text{font-size:11px;text-anchor:middle;pointer-events:none}
.edge{fill:none;opacity:.75}
.edge.neg{stroke-dasharray:5 3}
.dim{opacity:.12}
.edge.on{opacity:1}
.node.selected circle{stroke:crimson;stroke-width:3}
.mode{margin-left:12px;font-weight:bold}
.swatch{display:inline-block;width:22px;height:4px;margin:0 4px 3px 0;vertical-align:middle}
#legend{font-size:13px;margin-bottom:6px}
#info{font-size:13px;min-height:3em;white-space:pre-wrap}
"""

_SCRIPT = """
(function () {
  var D = JSON.parse(document.getElementById('data').textContent);
  var NS = 'http://www.w3.org/2000/svg', svg = document.getElementById('graph');
  svg.setAttribute('width', D.width); svg.setAttribute('height', D.height);
  svg.setAttribute('viewBox', '0 0 ' + D.width + ' ' + D.height);
  var at = {}, info = document.getElementById('info'), pinned = null;
  D.nodes.forEach(function (n) { at[n.id] = n; });
  function el(tag, attrs) { var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]); return e; }
  var defs = el('defs', {});
  Object.keys(D.colors).forEach(function (m) {
    var mk = el('marker', {id: 'arrow-' + m, viewBox: '0 0 10 10', refX: 22, refY: 5,
      markerWidth: 5, markerHeight: 5, orient: 'auto-start-reverse'});
    mk.appendChild(el('path', {d: 'M0,0 L10,5 L0,10 z', fill: D.colors[m]}));
    defs.appendChild(mk); });
  svg.appendChild(defs);
  var edgeEls = D.edges.map(function (e) {
    var a = at[e.source], b = at[e.target];
    var p = el('path', {d: 'M' + a.x + ',' + a.y + ' Q' + e.c[0] + ',' + e.c[1] + ' ' + b.x + ',' + b.y,
      'class': 'edge' + (e.weight < 0 ? ' neg' : ''), stroke: D.colors[e.mode] || '#000',
      'stroke-width': e.width, 'marker-end': 'url(#arrow-' + e.mode + ')',
      'data-source': e.source, 'data-target': e.target, 'data-mode': e.mode});
    p.addEventListener('mouseenter', function () { info.textContent = e.source + ' reads ' +
      e.target + ' via ' + e.mode + ': weight ' + e.weight.toFixed(4) +
      (e.share != null ? ', share of prompts ' + e.share.toFixed(2) : ''); });
    svg.appendChild(p); return p; });
  function focus(id) { edgeEls.forEach(function (p) {
    var on = id === null || p.getAttribute('data-source') === id || p.getAttribute('data-target') === id;
    p.classList.toggle('dim', !on); p.classList.toggle('on', id !== null && on); });
    svg.querySelectorAll('g.node').forEach(function (g) {
      g.classList.toggle('selected', g.getAttribute('data-id') === pinned); }); }
  D.nodes.forEach(function (n) {
    var g = el('g', {'class': 'node ' + (n.kind || ''), 'data-id': n.id,
      transform: 'translate(' + n.x + ',' + n.y + ')'});
    g.appendChild(el('circle', {r: 15}));
    var t = el('text', {dy: 4}); t.textContent = n.label; g.appendChild(t);
    g.addEventListener('mouseenter', function () { if (pinned === null) focus(n.id);
      info.textContent = n.id + '\\n' + JSON.stringify(n.info); });
    g.addEventListener('mouseleave', function () { if (pinned === null) focus(null); });
    g.addEventListener('click', function () { pinned = pinned === n.id ? null : n.id; focus(pinned); });
    svg.appendChild(g); });
  var legend = document.getElementById('legend'), counts = {};
  D.edges.forEach(function (e) { counts[e.mode] = (counts[e.mode] || 0) + 1; });
  legend.appendChild(document.createTextNode(D.nodes.length + ' nodes, ' + D.edges.length +
    ' edges (one arrow per reader, writer and mode; ' + D.n_pairs + ' reader-writer pairs); ' +
    'colour = mode, width = |weight|, dashed = negative:'));
  D.modes.forEach(function (m) {
    var item = document.createElement('span'); item.className = 'mode'; item.setAttribute('data-mode', m);
    var sw = document.createElement('span'); sw.className = 'swatch'; sw.style.background = D.colors[m];
    item.appendChild(sw); item.appendChild(document.createTextNode(m + ' ' + counts[m]));
    legend.appendChild(item); });
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# nothing may load or run but the page's own style and script (by hash): no network,
# no inline script from the data, no form, no base URL
CSP = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "img-src 'none'; connect-src 'none'; font-src 'none'; object-src 'none'; "
    "base-uri 'none'; form-action 'none'"
)

_PAGE = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
    f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
    '<title>{title}</title>\n<style>{style}</style></head><body>\n<h3>{title}</h3>\n'
    '<div id="legend"></div>\n<svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg>\n'
    '<div id="info">Hover an edge or a node; click a node to keep its edges highlighted.'
    '</div>\n<script id="data" type="application/json">{data}</script>\n'
    '<script>{script}</script></body></html>\n'
)


def to_html(G: nx.DiGraph) -> str:
    """One standalone page: the graph as inline SVG drawn by an inline script from the
    embedded data; nothing is fetched and nothing runs but its own script (its content
    security policy, :data:`CSP`). Stored text is escaped for each place it lands
    (:mod:`app.escape`: the title as HTML text, the data as script data)."""
    return _PAGE.format(
        title=escape.html_text(G.graph.get("title", "graph")),
        data=escape.script_json(_drawing(G)),
        style=_STYLE,
        script=_SCRIPT,
    )


def to_tikz(G: nx.DiGraph, scale: float = 1.6) -> str:
    """TikZ source (``\\usetikzlibrary{arrows.meta}``): one node per component, one
    arrow per reader, writer and mode on the curves of the app and the HTML page
    (:func:`app.graphs.edge_geometry`), colour = mode, width = |weight|, dashed =
    negative."""
    pos = {n: (x * scale, y * scale * 0.7) for n, (x, y) in layout(G).items()}
    ids = {n: f"n{i}" for i, n in enumerate(G.nodes)}
    geo = gr.edge_geometry(G, pos, scale=(1 / scale, 1 / scale))
    top = max([abs(e["weight"]) for e in geo] or [1.0]) or 1.0
    out = [
        f"% {escape.tex(G.graph.get('title', ''))}",
        "% needs \\usetikzlibrary{arrows.meta}",
        f"% {G.number_of_nodes()} nodes, {len(geo)} edges (one per reader, writer and mode; "
        f"{G.number_of_edges()} reader-writer pairs)",
    ]
    out += [f"\\definecolor{{mode{m}}}{{HTML}}{{{c[1:].upper()}}}" for m, c in COLORS.items()]
    out.append(
        "\\begin{tikzpicture}[>=Stealth, comp/.style={draw, circle, minimum size=7mm, "
        "inner sep=1pt, font=\\scriptsize}]"
    )
    for n in G.nodes:
        x, y = pos[n]
        out.append(f"  \\node[comp] ({ids[n]}) at ({x:.2f}, {y:.2f}) {{{escape.tex(label(n))}}};")
    for e in geo:
        u, v, (cx, cy) = e["parent"], e["child"], e["control"]
        (x0, y0), (x1, y1) = pos[u], pos[v]  # the quadratic curve as a cubic one
        c1 = (x0 + 2 / 3 * (cx - x0), y0 + 2 / 3 * (cy - y0))
        c2 = (x1 + 2 / 3 * (cx - x1), y1 + 2 / 3 * (cy - y1))
        mode = e["mode"] if e["mode"] in COLORS else None  # a colour name only for known modes
        style = [
            f"draw=mode{mode}" if mode else "draw=black",
            f"line width={0.4 + 2.4 * abs(e['weight']) / top:.2f}pt",
        ]
        if e["weight"] < 0:
            style.append("dashed")
        out.append(
            f"  \\draw[->, {', '.join(style)}] ({ids[u]}) .. controls ({c1[0]:.2f}, "
            f"{c1[1]:.2f}) and ({c2[0]:.2f}, {c2[1]:.2f}) .. ({ids[v]}) "
            f"node[pos=0.5, font=\\tiny, fill=white, inner sep=0.5pt] {{{escape.tex(e['mode'])}}};"
        )
    out.append("\\end{tikzpicture}")
    return "\n".join(out) + "\n"


def write(G: nx.DiGraph, fmt: str, path) -> None:
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")
    if fmt == "graphml":
        gr.to_graphml(G, path)
        return
    text = {
        "html": to_html,
        "tikz": to_tikz,
        "json": lambda g: json.dumps(gr.to_json(g), indent=1, default=str),
    }[fmt](G)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
