"""The example notebook docs/examples/trace.ipynb, run cell by cell as Jupyter
would (the value of a cell's last expression is what the notebook displays), on
the shipped toy model; and ``TraceResult._repr_html_``, what it displays."""

from __future__ import annotations

import ast
import contextlib
import html
import io
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "examples" / "trace.ipynb"
TOY = ROOT / "unpack" / "toy" / "checkpoints" / "attn-only-d64"


def run_notebook(path: Path) -> tuple[dict, list, str]:
    """Execute every code cell in one namespace: (namespace, displayed values, stdout)."""
    nb = json.loads(path.read_text())
    ns, shown, out = {"__name__": "__main__"}, [], io.StringIO()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        with contextlib.redirect_stdout(out):
            exec(compile(tree, str(path), "exec"), ns)
            value = (
                None
                if last is None
                else eval(compile(ast.Expression(last.value), str(path), "eval"), ns)
            )
            if value is not None:  # what Jupyter would display under the cell
                shown.append(value)
    return ns, shown, out.getvalue()


@pytest.fixture(scope="module")
def notebook():
    return run_notebook(NOTEBOOK)


def test_notebook_runs_and_finds_the_toy_circuit(notebook):
    ns, shown, out = notebook
    ground = json.loads((TOY / "toy.json").read_text())["ground_truth"]
    res = ns["res"]
    assert len(shown) == 1 and shown[0] is res, "the notebook should display the trace"
    # the credit peaks on the token after the earlier occurrence: the target itself
    assert res.tokens[int(res.token_credit.argmax())] == res.target.strip()
    assert f"credit peaks at position {int(res.token_credit.argmax())}" in out
    # the induction head's keys read the previous-token head of the ground truth
    prev = {f"attn_0_head_{h}" for h in ground["prev_heads"]}
    assert ns["strongest_k"]["child"] in prev, out
    assert f"its keys read most from: {ns['strongest_k']['child']}" in out


def test_repr_html_shows_tokens_and_paths_escaped(notebook):
    res = notebook[0]["res"]
    page = res._repr_html_()
    assert "<bos>" not in page and "&lt;bos&gt;" in page  # token text is escaped
    assert len(re.findall(r'<span title="position \d+: credit', page)) == len(res.tokens)
    assert re.search(r"rgba\(31,119,180,[\d.]+\)", page)  # a positive token in blue
    rows = re.findall(r"<tr><td", page)
    assert len(rows) == min(10, len(res.paths))
    for p in res.paths[:10]:
        for name, pos, mode in p.hops:
            assert f"<code>{html.escape(name)}</code>" in page
    modes = {m for p in res.paths[:10] for m in p.modes}
    assert modes & {"K", "Q", "V"}
    for m in modes:
        assert f">{m}</span>" in page, m


def test_repr_html_escapes_what_it_is_given(notebook):
    """A target or root with markup in it is shown as text, never as markup."""
    import dataclasses

    res = notebook[0]["res"]
    odd = dataclasses.replace(res, target="<script>x</script>", distractor="\"'&", root="<b>r</b>")
    page = odd._repr_html_()
    assert "<script>" not in page and "<b>r</b>" not in page
    assert html.escape(repr("<script>x</script>")) in page and "&lt;b&gt;r&lt;/b&gt;" in page
