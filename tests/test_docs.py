"""The docs: the method document has every section the code cites; every
reference in the README, the docs pages, the CLI help and the app points at
``docs/METHOD.md``; the docs site builds with warnings as errors; every results
table names its command and commit; the README stays short."""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

from unpack.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"
BARE = re.compile(r"(?<![/\w])METHOD\.md")
LINK = re.compile(r"\]\([^)]*\)")  # a Markdown link's target: docs pages link METHOD.md relatively
MKDOCS = ROOT / "docs" / "mkdocs" / "mkdocs.yml"
MARK = re.compile(r"<!-- results: ([\w-]+) -->")


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


def _doc_pages():
    """Every Markdown page of the docs site but the method itself."""
    return [p for p in (ROOT / "docs").rglob("*.md") if p != METHOD]


def _hooks():
    spec = importlib.util.spec_from_file_location(
        "docs_hooks", ROOT / "docs" / "mkdocs" / "hooks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_method_document_has_every_section_with_formulas():
    assert _sections() == {str(i) for i in range(1, 11)}
    text = METHOD.read_text()
    for formula in (
        "m(c)[s] = γ ⊙ (c[s] − mean(c[s])) / σ(x[s])",
        "safe_denom(v) = sign(T) · max(|T|, β·N)",
        "key_c[h,q,s] = rawK_c[h,q,s] − mean_{s' ≤ q} rawK_c[h,q,s']",
        "kqv_aligned",
        "k_only_l2",
        "Residual closure",
        "Duplicate suppression",
    ):
        assert formula in text, formula


def test_every_reference_points_at_docs_method():
    texts = {"README.md": (ROOT / "README.md").read_text()}
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in _app_sources()})
    texts.update({str(p.relative_to(ROOT)): LINK.sub("]()", p.read_text()) for p in _doc_pages()})
    texts.update({f"help {i}": h for i, h in enumerate(_help_texts(build_parser()))})
    bare = [name for name, t in texts.items() if BARE.search(t)]
    assert not bare, f"METHOD.md cited without docs/: {bare}"
    cited = set()
    for t in texts.values():
        for m in re.finditer(r"docs/METHOD\.md,? §(\d+)(?:-(\d+))?", t):
            cited.update(str(i) for i in range(int(m[1]), int(m[2] or m[1]) + 1))
    assert cited and cited <= _sections(), cited - _sections()
    assert any("docs/METHOD.md" in h for h in _help_texts(build_parser()))


def test_docs_site_builds_with_warnings_as_errors(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page, a docstring the API
    reference cannot read or a results table without its command fails here."""
    site = tmp_path / "site"
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(MKDOCS), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = p.stdout + p.stderr
    assert p.returncode == 0 and "WARNING" not in log, log[-4000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for name in _subcommands(build_parser(), "unpack"):  # the CLI reference has every command
        assert f"<code>{name}</code>" in cli, name
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "trace_batch" in api and "circuit_graph" in api
    built = "".join(f.read_text() for f in site.rglob("index.html"))
    for t in _results():
        assert f"<code>{t['commit']}</code>" in built and t["title"] in built, t["title"]


def _subcommands(parser: argparse.ArgumentParser, name: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield f"{name} {sub_name}"
                yield from _subcommands(sub, f"{name} {sub_name}")


def _results() -> list[dict]:
    hooks = _hooks()
    return [hooks.load_table(p.stem) for p in sorted((ROOT / "docs" / "results").glob("*.json"))]


def test_every_results_table_names_a_command_and_a_commit_of_this_repository():
    tables = _results()  # load_table checks the fields, the hash and the rows' width
    assert len(tables) >= 20
    marks = [m for p in _doc_pages() for m in MARK.findall(p.read_text())]
    names = sorted(p.stem for p in (ROOT / "docs" / "results").glob("*.json"))
    assert sorted(marks) == names, "each table is shown exactly once, and each mark has its table"
    for t in tables:
        git = subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", t["commit"] + "^{commit}"],
            capture_output=True,
            text=True,
        )
        assert git.returncode == 0, f"{t['title']}: commit {t['commit']} is not in this repository"
        cmds = t["command"] if isinstance(t["command"], list) else [t["command"]]
        for c in cmds:  # an `unpack` command parses as written (placeholders in capitals)
            words = shlex.split(re.sub(r"\s+#.*$", "", c))
            if words and words[0].endswith("bin/unpack"):
                build_parser().parse_args(words[1:])


def test_results_tables_render_with_their_command_and_commit():
    hooks = _hooks()
    name = "bench_gpt2_small"
    t = hooks.load_table(name)
    md = hooks.on_page_markdown(f"before\n\n<!-- results: {name} -->\n\nafter", None, None, None)
    assert f"`{t['commit']}`" in md and t["command"][0] in md
    assert md.count("\n| ") == len(t["rows"]) + 1 and "<!--" not in md
    import mkdocs.exceptions

    try:
        hooks.on_page_markdown("<!-- results: no_such_table -->", None, None, None)
    except mkdocs.exceptions.PluginError as e:
        assert "no_such_table" in str(e)
    else:
        raise AssertionError("an unknown results table must stop the build")


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)\)", text)
    local = [ln for ln in links if not ln.startswith("http")]
    assert local and all((ROOT / ln).exists() for ln in local), [
        ln for ln in local if not (ROOT / ln).exists()
    ]


def test_links_from_the_docs_to_code_are_checked():
    """A page may link a file of the repository outside docs/: it is shown as its path,
    and a link to a file that is not there stops the build."""
    import mkdocs.exceptions

    hooks, page = _hooks(), ROOT / "docs" / "guide" / "page.md"
    md = hooks.repo_links("[the tracer](../../unpack/tracer.py) and [m](../METHOD.md)", page)
    assert md == "the tracer (`unpack/tracer.py`) and [m](../METHOD.md)"
    try:
        hooks.repo_links("[gone](../../unpack/no_such_module.py)", page)
    except mkdocs.exceptions.PluginError as e:
        assert "no_such_module.py" in str(e) and "docs/guide/page.md" in str(e)
    else:
        raise AssertionError("a link to a missing file must stop the build")
