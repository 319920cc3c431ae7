"""Stored text is data in every output: one escaping function per context
(app/escape.py, docs/SECURITY.md), checked with a corpus of hostile strings by
parsing each output back (HTML with the standard parser, Markdown with a
CommonMark renderer, TeX with a small tokenizer) and through the exports.
The app's pages and the HTML exports in a browser: test_app_hostile_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser

import networkx as nx
import pytest

from app import escape
from app import export as ex
from tests.hostile import CORPUS, HOSTILE


def _no_control(s: str) -> str:
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "\ufffd", s)


class _Tree(HTMLParser):
    """Every start tag with its attributes, and all text, of an HTML string."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.stack, self.inside = [], [], [], {}

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            del self.stack[self.stack.index(tag) :]

    def handle_data(self, data):
        self.text.append(data)
        where = self.stack[-1] if self.stack else None
        self.inside[where] = self.inside.get(where, "") + data


def parse_html(text: str) -> _Tree:
    t = _Tree()
    t.feed(text)
    t.close()
    return t


@pytest.mark.parametrize("s", CORPUS)
def test_html_text_and_attribute_come_back_as_the_same_text(s):
    t = parse_html(f"<p>{escape.html_text(s)}</p>")
    assert t.tags == [("p", {})] and "".join(t.text) == _no_control(s)
    t = parse_html(f'<p title="{escape.html_attr(s)}">x</p>')
    assert t.tags == [("p", {"title": _no_control(s)})]


@pytest.mark.parametrize("s", CORPUS)
def test_script_json_parses_back_and_cannot_end_the_script(s):
    out = escape.script_json({"title": s, "list": [s]})
    assert not set("<>&") & set(out)
    assert json.loads(out) == {"title": s, "list": [s]}
    t = parse_html(f'<script type="application/json">{out}</script><p>after</p>')
    assert [tag for tag, _ in t.tags] == ["script", "p"] and t.inside["p"] == "after"


@pytest.mark.parametrize("s", CORPUS)
def test_markdown_renders_as_the_text_alone(s):
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    out = md.render(f"**Text:** {escape.markdown(s)}")
    t = parse_html(out)
    assert [tag for tag, _ in t.tags] == ["p", "strong"], out  # no a, img, code, em, h1 ...
    want = "Text: " + re.sub(r"\r\n|\n|\r", " ", _no_control(s))
    assert "".join(t.text).replace("\u2060", "").strip() == want.strip()  # word joiners aside
    # GFM's bare links (found after escapes are read, and not in this renderer)
    read = "".join(t.text)
    assert not re.search(r"(?i)https?://|www\.|mailto:\w|[\w.+-]@[\w-]+\.", read), read


_TEX_BACK = {
    r"\textbackslash{}": "\\",
    r"\textasciitilde{}": "~",
    r"\textasciicircum{}": "^",
    r"\textless{}": "<",
    r"\textgreater{}": ">",
    r"\textbar{}": "|",
}


def untex(s: str) -> str:
    """Read escaped TeX text back: fails on any control sequence or special
    character that :func:`app.escape.tex` does not write."""
    out, i = [], 0
    while i < len(s):
        for k, v in _TEX_BACK.items():
            if s.startswith(k, i):
                out.append(v)
                i += len(k)
                break
        else:
            c = s[i]
            if c == "\\":
                assert s[i + 1] in "{}$&#%_", f"live control sequence at {s[i : i + 20]!r}"
                out.append(s[i + 1])
                i += 2
                continue
            assert c not in "{}$&#%^_~\n\r", f"unescaped {c!r} at {s[i : i + 20]!r}"
            out.append(c)
            i += 1
    return "".join(out)


def tex_text(s: str) -> str:
    """What TeX should print for ``s``: one line, control characters as '?'."""
    return re.sub(r"[\n\r\t\x85\u2028\u2029]", " ", _no_control(s)).replace("\ufffd", "?")


@pytest.mark.parametrize("s", CORPUS)
def test_tex_reads_back_as_the_text_on_one_line(s):
    assert untex(escape.tex(s)) == tex_text(s)


# ------------------------------------------------------------------ the exports


def hostile_graph() -> nx.DiGraph:
    """A paths-shaped graph whose title, node names and mode are all hostile."""
    G = nx.DiGraph(title=f"prompt 1, root target: top 10 paths — {HOSTILE}")
    for i, n in enumerate(["attn_0_head_1@2", "mlp_0@3", f"{CORPUS[1]}@4"]):
        G.add_node(
            n,
            kind="head" if i != 1 else "mlp",
            layer=0,
            head=1,
            depth=i,
            position=i,
            note=CORPUS[i],
        )
    ex._add_edge(G, "mlp_0@3", "attn_0_head_1@2", "K", 0.5)
    ex._add_edge(G, f"{CORPUS[1]}@4", "mlp_0@3", "V}\\input{/etc/hostname}", -0.25)
    return G


def test_html_export_keeps_the_text_as_text_and_runs_only_its_own_script():
    G = hostile_graph()
    page = ex.to_html(G)
    t = parse_html(page)
    tags = [tag for tag, _ in t.tags]
    assert tags.count("script") == 2 and "img" not in tags and "svg" in tags, tags
    assert t.inside["title"] == t.inside["h3"] == _no_control(G.graph["title"])
    data = json.loads(
        page.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    )
    assert data["title"] == G.graph["title"]
    assert {n["id"] for n in data["nodes"]} == set(G.nodes)
    # the policy: nothing from outside, and the one script that runs is the page's own
    csp = next(a["content"] for _, a in t.tags if a.get("http-equiv") == "Content-Security-Policy")
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp
    own = page.split("<script>")[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(own.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in csp


def test_tikz_export_has_no_live_tex_from_the_text():
    G = hostile_graph()
    lines = ex.to_tikz(G).splitlines()
    assert lines[0].startswith("% ") and untex(lines[0][2:]) == tex_text(G.graph["title"])
    assert len(lines) == 3 + 4 + 1 + 3 + 2 + 1  # comments, colours, begin, nodes, edges, end
    body = "\n".join(lines[1:])
    # the only control sequences are the template's and the escapes' own
    names = set(re.findall(r"\\([A-Za-z]+)", body))
    assert names <= {
        "usetikzlibrary",
        "definecolor",
        "begin",
        "end",
        "node",
        "draw",
        "tiny",
        "scriptsize",
        "textbackslash",
        "textless",
        "textgreater",
        "textbar",
        "textasciitilde",
        "textasciicircum",
    }, names
    node = next(ln for ln in lines if ln.startswith("  \\node") and "(n2)" in ln)
    assert untex(node.split("{", 1)[1].rsplit("}", 1)[0]) == ex.label(f"{CORPUS[1]}@4")
    edge = next(ln for ln in lines if "dashed" in ln)
    assert "draw=black" in edge and "\\textbackslash{}input" in edge
