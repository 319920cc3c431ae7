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
COLORS = {"K": "#1f77b4", "Q": "#ff7f0e", "V": "#2ca02c", "MLP": "#7f7f7f"}


def _add_edge(G, parent, child, mode, w, **extra) -> None:
    if not G.has_edge(parent, child):
        G.add_edge(parent, child, by_mode={}, weight=0.0, **extra)
    d = G.edges[parent, child]
    d["by_mode"][mode] = d["by_mode"].get(mode, 0.0) + float(w)
    d["weight"] = sum(d["by_mode"].values())
    d["mode"] = max(d["by_mode"], key=lambda m: abs(d["by_mode"][m]))


def circuit_nx(con, circuit_id: int) -> nx.DiGraph:
    """The stored circuit ``circuit_id`` (nodes: its components; edges: its edges)."""
    row = con.execute("SELECT model, task, condition, n_prompts FROM circuits WHERE "
                      "circuit_id = ?", [circuit_id]).fetchone()
    if row is None:
        raise InputError(f"circuit {circuit_id} does not exist; list the stored ones with "
                         "SELECT circuit_id, model, task FROM circuits")
    G = nx.DiGraph(title=f"circuit {circuit_id}: {row[0]}, {row[1]}"
                         f"{' (' + row[2] + ')' if row[2] else ''}, {row[3]} prompts")
    for name, share, depth in con.execute(
            "SELECT component, share, depth FROM circuit_components WHERE circuit_id = ? "
            "ORDER BY layer, head", [circuit_id]).fetchall():
        G.add_node(name, **gr.component_attrs(name), share=share, hop=depth)
    for p, c, m, w, s in con.execute(
            "SELECT parent, child, mode, weight, share FROM circuit_edges WHERE circuit_id = ? "
            "ORDER BY parent, child, mode", [circuit_id]).fetchall():
        for n in (p, c):
            if n not in G:
                G.add_node(n, **gr.component_attrs(n))
        _add_edge(G, p, c, m, w)
        G.edges[p, c].setdefault("share", s)
    return G


def paths_nx(con, prompt_id: int, root: str = "target", top: int = 10) -> nx.DiGraph:
    """The ``top`` paths of one stored trace: nodes ``component@pos``, edges between
    consecutive hops weighted by the summed path scores."""
    row = con.execute("SELECT t.trace_id, p.text FROM traces t JOIN prompts p USING (prompt_id) "
                      "WHERE t.prompt_id = ? AND t.root = ?", [prompt_id, root]).fetchone()
    if row is None:
        raise InputError(f"prompt {prompt_id} has no stored trace with root {root!r}; see "
                         "SELECT prompt_id, root FROM traces")
    hops = con.execute(
        "SELECT p.path_id, p.score, h.hop, h.component, h.pos, h.mode FROM paths p "
        "JOIN path_hops h USING (path_id) WHERE p.trace_id = ? AND p.rank <= ? "
        "ORDER BY p.rank, h.hop", [row[0], top]).fetchall()
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
    """``{node: (x, y)}``: layers left to right; a paths graph puts each token
    position on its own row, a circuit uses :func:`app.graphs.layered_layout`."""
    if G.number_of_nodes() and all("position" in d for _, d in G.nodes(data=True)):
        return {n: (d["depth"], -d["position"]) for n, d in G.nodes(data=True)}
    return gr.layered_layout(G)


def label(n: str) -> str:
    comp, _, pos = n.partition("@")
    return gr.short_name(comp) + (f"@{pos}" if pos else "")


def _drawing(G: nx.DiGraph, width: int = 900, height: int = 560, pad: int = 60) -> dict:
    """Node and edge records with SVG coordinates, the data the HTML page draws."""
    pos = layout(G)
    xs = [p[0] for p in pos.values()] or [0]
    ys = [p[1] for p in pos.values()] or [0]
    sx = (width - 2 * pad) / max(max(xs) - min(xs), 1e-9)
    sy = (height - 2 * pad) / max(max(ys) - min(ys), 1e-9)
    at = {n: (pad + (x - min(xs)) * sx if max(xs) > min(xs) else width / 2,
              pad + (max(ys) - y) * sy if max(ys) > min(ys) else height / 2)
          for n, (x, y) in pos.items()}
    top = max([abs(d["weight"]) for _, _, d in G.edges(data=True)] or [1.0]) or 1.0
    nodes = [dict(id=n, label=label(n), x=round(at[n][0], 1), y=round(at[n][1], 1),
                  kind=d.get("kind"), info={k: v for k, v in d.items()
                                            if isinstance(v, (int, float, str)) and v is not None})
             for n, d in G.nodes(data=True)]
    edges = [dict(source=u, target=v, mode=d["mode"], weight=float(d["weight"]),
                  width=round(1 + 5 * abs(d["weight"]) / top, 2),
                  by_mode={m: float(w) for m, w in d["by_mode"].items()},
                  share=d.get("share"))
             for u, v, d in G.edges(data=True)]
    return dict(title=G.graph.get("title", ""), width=width, height=height, nodes=nodes,
                edges=edges, colors=COLORS)


_STYLE = """
body{font-family:sans-serif;margin:16px;color:#222}
svg{border:1px solid #ddd;background:#fff}
.node circle{fill:#fff;stroke:#333;stroke-width:1.5;cursor:pointer}
.node.mlp circle{fill:#eee}
.node text{font-size:11px;text-anchor:middle;pointer-events:none}
.edge{fill:none;opacity:.75}
.edge.neg{stroke-dasharray:5 3}
.dim{opacity:.12}
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
    var a = at[e.source], b = at[e.target], mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2 - 18;
    var p = el('path', {d: 'M' + a.x + ',' + a.y + ' Q' + mx + ',' + my + ' ' + b.x + ',' + b.y,
      'class': 'edge' + (e.weight < 0 ? ' neg' : ''), stroke: D.colors[e.mode] || '#000',
      'stroke-width': e.width, 'marker-end': 'url(#arrow-' + e.mode + ')',
      'data-source': e.source, 'data-target': e.target, 'data-mode': e.mode});
    p.addEventListener('mouseenter', function () { info.textContent = e.source + ' reads ' +
      e.target + ' via ' + e.mode + ': weight ' + e.weight.toFixed(4) +
      (e.share != null ? ', share of prompts ' + e.share.toFixed(2) : '') +
      '\\nby mode: ' + JSON.stringify(e.by_mode); });
    svg.appendChild(p); return p; });
  function focus(id) { edgeEls.forEach(function (p) {
    var on = id === null || p.getAttribute('data-source') === id || p.getAttribute('data-target') === id;
    p.classList.toggle('dim', !on); }); }
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
  var modes = {}; D.edges.forEach(function (e) { modes[e.mode] = (modes[e.mode] || 0) + 1; });
  document.getElementById('legend').textContent = D.nodes.length + ' nodes, ' + D.edges.length +
    ' edges; modes: ' + Object.keys(modes).map(function (m) { return m + ' ' + modes[m]; }).join(', ') +
    ' (colour = mode, width = |weight|, dashed = negative)';
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# nothing may load or run but the page's own style and script (by hash): no network,
# no inline script from the data, no form, no base URL
CSP = (f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
       "img-src 'none'; connect-src 'none'; font-src 'none'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'")

_PAGE = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
         f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
         '<title>{title}</title>\n<style>{style}</style></head><body>\n<h3>{title}</h3>\n'
         '<div id="legend"></div>\n<svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg>\n'
         '<div id="info">Hover an edge or a node; click a node to keep its edges highlighted.'
         '</div>\n<script id="data" type="application/json">{data}</script>\n'
         '<script>{script}</script></body></html>\n')


def to_html(G: nx.DiGraph) -> str:
    """One standalone page: the graph as inline SVG drawn by an inline script from the
    embedded data; nothing is fetched and nothing runs but its own script (its content
    security policy, :data:`CSP`). Stored text is escaped for each place it lands
    (:mod:`app.escape`: the title as HTML text, the data as script data)."""
    return _PAGE.format(title=escape.html_text(G.graph.get("title", "graph")),
                        data=escape.script_json(_drawing(G)), style=_STYLE, script=_SCRIPT)


def to_tikz(G: nx.DiGraph, scale: float = 1.6) -> str:
    """TikZ source (``\\usetikzlibrary{arrows.meta}``): one node per component, one
    arrow per edge, colour = mode, width = |weight|, dashed = negative."""
    pos = layout(G)
    ids = {n: f"n{i}" for i, n in enumerate(G.nodes)}
    top = max([abs(d["weight"]) for _, _, d in G.edges(data=True)] or [1.0]) or 1.0
    out = [f"% {escape.tex(G.graph.get('title', ''))}", "% needs \\usetikzlibrary{arrows.meta}"]
    out += [f"\\definecolor{{mode{m}}}{{HTML}}{{{c[1:].upper()}}}" for m, c in COLORS.items()]
    out.append("\\begin{tikzpicture}[>=Stealth, comp/.style={draw, circle, minimum size=7mm, "
               "inner sep=1pt, font=\\scriptsize}]")
    for n in G.nodes:
        x, y = pos[n]
        out.append(f"  \\node[comp] ({ids[n]}) at ({x * scale:.2f}, {y * scale * 0.7:.2f}) "
                   f"{{{escape.tex(label(n))}}};")
    for u, v, d in G.edges(data=True):
        mode = d["mode"] if d["mode"] in COLORS else None  # a colour name only for known modes
        style = [f"draw=mode{mode}" if mode else "draw=black",
                 f"line width={0.4 + 2.4 * abs(d['weight']) / top:.2f}pt"]
        if d["weight"] < 0:
            style.append("dashed")
        out.append(f"  \\draw[->, {', '.join(style)}] ({ids[u]}) to[bend left=10] "
                   "node[midway, font=\\tiny, fill=white, inner sep=0.5pt] "
                   f"{{{escape.tex(d['mode'])}}} "
                   f"({ids[v]});")
    out.append("\\end{tikzpicture}")
    return "\n".join(out) + "\n"


def write(G: nx.DiGraph, fmt: str, path) -> None:
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")
    if fmt == "graphml":
        gr.to_graphml(G, path)
        return
    text = {"html": to_html, "tikz": to_tikz,
            "json": lambda g: json.dumps(gr.to_json(g), indent=1, default=str)}[fmt](G)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
