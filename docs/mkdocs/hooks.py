"""MkDocs hooks of the docs site (docs/mkdocs/mkdocs.yml).

- ``<!-- results: NAME -->`` in a page becomes the table of
  ``docs/results/NAME.json`` with the command and commit that produced it;
  a table without them, or an unknown name, stops the build.
- ``reference/cli.md`` is generated from ``unpack.cli.build_parser()``.
- Every ``docs/*.md`` page the nav does not list is added under "More".
- A link from a page to a file of the repository outside docs/ (code, tests)
  becomes the file's path in code type; a link to a file that does not exist
  stops the build, so such links cannot rot either.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s#:]+)(#[^)\s]*)?\)")
RESULTS = DOCS / "results"
MARK = re.compile(r"<!-- results: ([\w-]+) -->")
COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
FIELDS = ("title", "command", "commit", "date", "columns", "rows")


# ---------------------------------------------------------------- results tables


def load_table(name: str) -> dict:
    """One results table, checked: every field there, a commit hash, rows as wide
    as the header."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise PluginError(f"results table {name!r}: no file {path}")
    t = json.loads(path.read_text())
    missing = [f for f in FIELDS if not t.get(f)]
    if missing:
        raise PluginError(f"{path}: missing {missing} (every table names its command and commit)")
    if not COMMIT.match(t["commit"]):
        raise PluginError(f"{path}: commit {t['commit']!r} is not a commit hash")
    bad = [i for i, r in enumerate(t["rows"]) if len(r) != len(t["columns"])]
    if bad:
        raise PluginError(f"{path}: rows {bad} do not have {len(t['columns'])} cells")
    return t


def render_table(name: str) -> str:
    t = load_table(name)
    cmds = t["command"] if isinstance(t["command"], list) else [t["command"]]
    where = f" Conditions: {t['conditions']}." if t.get("conditions") else ""
    out = [
        f"**{t['title']}**",
        "",
        f"Produced at commit `{t['commit']}` ({t['date']}) by the command below.{where}",
        "",
        "```bash",
        *cmds,
        "```",
        "",
        "| " + " | ".join(t["columns"]) + " |",
        "|" + "---|" * len(t["columns"]),
    ]
    out += ["| " + " | ".join(r) + " |" for r in t["rows"]]
    return "\n".join(out) + "\n"


def repo_links(markdown: str, page_path: Path) -> str:
    """``[text](../unpack/x.py)`` → ``text (`unpack/x.py`)`` for files outside docs/."""

    def one(m):
        target = (page_path.parent / m[2]).resolve()
        if target.is_relative_to(DOCS) or not target.is_relative_to(REPO):
            return m[0]  # a page or asset of the site: MkDocs checks it
        if not target.exists():
            raise PluginError(
                f"{page_path.relative_to(REPO)}: link to {m[2]!r}, which does not exist"
            )
        rel = target.relative_to(REPO).as_posix()
        return f"{m[1]} (`{rel}`)" if m[1] and m[1].strip("`") != rel else f"`{rel}`"

    return LINK.sub(one, markdown)


def on_page_markdown(markdown, page, config, files):
    if page is not None and page.file.abs_src_path:
        markdown = repo_links(markdown, Path(page.file.abs_src_path))
    return MARK.sub(lambda m: render_table(m[1]), markdown)


# ---------------------------------------------------------------- CLI reference


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    fmt = parser._get_formatter()
    rows = ["| option | what | default |", "|---|---|---|"]
    for a in parser._actions:
        if a.help == argparse.SUPPRESS or isinstance(
            a, (argparse._SubParsersAction, argparse._HelpAction)
        ):
            continue
        flags = ", ".join(f"`{f}`" for f in a.option_strings) or f"`{a.dest}`"
        if a.choices and not isinstance(a.choices, dict):
            flags += " (" + ", ".join(f"`{c}`" for c in a.choices) + ")"
        if a.required and a.option_strings:
            flags += " **required**"
        default = (
            ""
            if a.default in (None, argparse.SUPPRESS, False) or not a.option_strings
            else f"`{a.default}`"
        )
        rows.append(
            f"| {flags} | {_cell(fmt._expand_help(a) if a.help else '')} | {_cell(default)} |"
        )
    return rows if len(rows) > 2 else []


def _command(parser: argparse.ArgumentParser, name: str, level: int) -> list[str]:
    out = [f"{'#' * level} `{name}`", ""]
    if parser.description:
        out += [parser.description, ""]
    out += ["```text", parser.format_usage().strip(), "```", "", *_options(parser), ""]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub_name, sub in a.choices.items():
                out += _command(sub, f"{name} {sub_name}", min(level + 1, 4))
    return out


def cli_markdown() -> str:
    from unpack.cli import build_parser

    head = [
        "# CLI reference",
        "",
        "Generated from the argparse parsers of `unpack` (`unpack.cli.build_parser`) "
        "when the site is built; `.venv/bin/unpack COMMAND --help` prints the same.",
        "",
    ]
    return "\n".join(head + _command(build_parser(), "unpack", 2)) + "\n"


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_markdown()))
    return files


# ---------------------------------------------------------------- nav


def _listed(nav) -> set[str]:
    out = set()
    for item in nav or []:
        for v in item.values() if isinstance(item, dict) else [item]:
            out |= _listed(v) if isinstance(v, list) else {v}
    return out


def on_config(config):
    listed = _listed(config["nav"])
    more = [p.name for p in sorted(DOCS.glob("*.md")) if p.name not in listed]
    if config["nav"] is not None and more:
        config["nav"].append({"More": more})
    return config
