"""The command line checks what it can before loading a model, says how to fix
what it refuses, takes --threads on every command that runs a model, and prints
hints that run as printed; the main job's setup installs no browser."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from unpack.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
MODEL_COMMANDS = {  # command -> the arguments it needs besides --threads
    "trace": ["--model", "m", "--text", "a b", "--target", " b"],
    "validate": ["--model", "m"],
    "bench": [],
    "plan": ["--model", "tiny", "--tokens", "8"],
    "ingest": ["--model", "m", "--task", "ioi"],
    "demo": [],
    "app": [],
    "discover": [],
    "verify": ["--circuit", "1"],
}


def test_a_missing_prompts_file_names_the_file_and_the_fix(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["trace", "--model", "smollm2-135m", "--prompts", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--prompts {missing}: no such file" in err and '"target"' in err, err
    assert "Errno" not in err


@pytest.mark.parametrize(
    "argv,said",
    [
        (["trace", "--text", "", "--target", " Mary"], "--text is empty"),
        (["trace", "--text", "   ", "--target", " Mary"], "--text is empty"),
        (["trace", "--text", "When Mary", "--target", ""], "--target is empty"),
        (["validate", "--text", ""], "--text is empty"),
        (["trace", "--text", "a b", "--target", " b", "--threads", "0"], "--threads 0"),
    ],
)
def test_what_needs_no_model_is_refused_before_loading_one(argv, said, capsys):
    assert main(argv + ["--model", "smollm2-135m"]) == 2
    err = capsys.readouterr().err
    assert said in err and "loading" not in err, err  # refused before "loading smollm2-135m"


def test_a_bad_line_of_a_prompts_file_is_named_before_loading(tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text('{"text": "", "target": " x"}\n{"text": "a b", "target": " b", "root": "x"}\n')
    assert main(["trace", "--model", "smollm2-135m", "--prompts", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:1: text is empty" in err and f"{f}:2: root 'x'" in err and "loading" not in err


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_every_model_command_takes_threads(command):
    args = build_parser().parse_args([command, *MODEL_COMMANDS[command], "--threads", "2"])
    assert args.threads == 2


def test_the_demos_hint_runs_as_printed_from_anywhere(tmp_path):
    from ingest import store
    from ingest.demo import explore_hint

    db = tmp_path / "demo.duckdb"
    store.connect(db).dispose()
    hint = explore_hint(db)
    r = subprocess.run(
        hint, shell=True, cwd="/", capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )  # no venv on the PATH
    assert r.returncode == 0, (hint, r.stderr)
    assert "mean_credit" in r.stdout  # the view's columns


def test_the_main_job_installs_no_browser_and_the_tests_do():
    setup = (REPO / ".ci" / "setup").read_text()
    browser = re.search(r"^if (.*)\n(?:.*\n)*?.*apt-get install -y -qq chromium", setup, re.M)
    assert browser and '"${1:-}" = "--test"' in browser.group(1), "Chromium only with --test"
    assert "bash .ci/setup --test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    two = readme[readme.index("## Two commands") : readme.index("## Trace a prompt")]
    assert "bash .ci/setup && .venv/bin/unpack demo && .venv/bin/unpack app" in two
    assert "bash .ci/setup --test && .venv/bin/python -m pytest -q" in two
