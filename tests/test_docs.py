"""The method document: it exists, has every section the code cites, and every
reference in the README, the CLI help and the app points at ``docs/METHOD.md``."""
from __future__ import annotations

import argparse
import pathlib
import re

from unpack.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"
BARE = re.compile(r"(?<![/\w])METHOD\.md")


def _sections() -> set[str]:
    return set(re.findall(r"^## §(\d+) ", METHOD.read_text(), flags=re.M))


def _help_texts(parser: argparse.ArgumentParser):
    """Every description, epilog and option help of the ``unpack`` command tree."""
    yield parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _help_texts(sub)


def _app_sources():
    return [p for p in (ROOT / "app").rglob("*.py")]


def test_method_document_has_every_section_with_formulas():
    assert _sections() == {str(i) for i in range(1, 11)}
    text = METHOD.read_text()
    for formula in ("m(c)[s] = γ ⊙ (c[s] − mean(c[s])) / σ(x[s])", "safe_denom(v) = sign(T) · max(|T|, β·N)",
                    "key_c[h,q,s] = rawK_c[h,q,s] − mean_{s' ≤ q} rawK_c[h,q,s']", "kqv_aligned",
                    "k_only_l2", "Residual closure", "Duplicate suppression"):
        assert formula in text, formula


def test_every_reference_points_at_docs_method():
    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in _app_sources()})
    texts.update({f"help {i}": h for i, h in enumerate(_help_texts(build_parser()))})
    bare = [name for name, t in texts.items() if BARE.search(t)]
    assert not bare, f"METHOD.md cited without docs/: {bare}"
    cited = set()
    for t in texts.values():
        for m in re.finditer(r"docs/METHOD\.md,? §(\d+)(?:-(\d+))?", t):
            cited.update(str(i) for i in range(int(m[1]), int(m[2] or m[1]) + 1))
    assert cited and cited <= _sections(), cited - _sections()
    assert any("docs/METHOD.md" in h for h in _help_texts(build_parser()))
