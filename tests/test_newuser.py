"""What a new user tripped on, each pinned: `trace --prompts` goes on past a bad
line, `trace --bos` offers the beginning-of-sequence token as ingest does, model
loading and `validate` say what they are doing, the Compare legend lists every
mode drawn, the Prompt page's reroot hint, and the commands of the README and
the docs pages (docs/**/*.md), read as one text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from unpack.cli import main

ROOT = Path(__file__).resolve().parents[1]
# the README and every page of the docs site: the user guide moved out of the README
README = "\n".join(
    p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
)


def test_trace_prompts_goes_on_past_a_bad_line(word_gpt2_dir, tmp_path, capsys):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"text": "<bos> Mary John", "target": " Mary"})
        + "\n"
        + "{not json\n"
        + json.dumps({"text": "<bos> John"})
        + "\n"
        + json.dumps({"text": "<bos> John Mary", "target": " John"})
        + "\n"
    )
    assert main(["trace", "--model", word_gpt2_dir, "--prompts", str(f), "--json"]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(x) for x in out.strip().splitlines()]
    assert [r["tokens"][-1] for r in rows] == ["John", "Mary"]  # both good lines traced
    assert f"{f}:2: not valid JSON" in err and f"{f}:3: each line needs 'text' and 'target'" in err
    assert "loading" in err  # model loading is announced
    f.write_text("{not json\n")
    assert main(["trace", "--model", word_gpt2_dir, "--prompts", str(f)]) == 2  # all failed


def test_trace_bos_choice(word_gpt2_dir, capsys):
    args = [
        "trace",
        "--model",
        word_gpt2_dir,
        "--text",
        " Mary John",
        "--target",
        " Mary",
        "--json",
    ]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args + ["--bos"]) == 0
    bos = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["tokens"] == ["Mary", "John"] and bos["tokens"] == ["<bos>", "Mary", "John"]


def test_validate_says_what_it_checks_before_the_results(word_gpt2_dir, capsys):
    assert main(["validate", "--model", word_gpt2_dir, "--text", "<bos> Mary John"]) == 0
    out = capsys.readouterr().out
    assert out.index("checking the docs/METHOD.md §9 invariants on 1 prompt") < out.index("PASS")


def test_compare_legend_lists_every_mode_drawn_in_any_graph():
    import networkx as nx

    from app.ui import views

    g1, g2 = nx.DiGraph(), nx.DiGraph()
    g1.add_edge("attn_1_head_0", "attn_0_head_0", weight=1.0, mode="Q")
    g2.add_edge("attn_1_head_0", "attn_0_head_0", weight=1.0, mode="K")
    g2.add_edge("attn_1_head_1", "embedding", weight=0.5, mode="V")
    seen: set = set()
    names = []
    for G in (g1, g2):
        xy = {n: (0.0, float(i)) for i, n in enumerate(G.nodes)}
        names += [t.name for t in views.graph_traces(G, xy, legend_seen=seen) if t.showlegend]
    assert sorted(names) == ["K", "Q", "V"]


# ------------------------------------------------------------------ README claims


def test_readme_commands_use_the_venv_and_no_duckdb_cli():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip()]
    assert not [ln for ln in lines if re.match(r"^unpack\s", ln)], (
        "bare unpack: use .venv/bin/unpack"
    )
    assert "duckdb -readonly" not in README and not re.search(r"^\s*duckdb ", README, flags=re.M)
    assert "toy-train --variant all --out unpack/toy/checkpoints" not in README


def test_readme_root_example_exists_on_the_offline_model():
    """The --root example names a head SmolLM2-135M has (30 layers x 9 heads)."""
    roots = re.findall(r"--root (attn_(\d+)_head_(\d+))@", README)
    assert roots and all(int(L) < 30 and int(h) < 9 for _, L, h in roots), roots


def test_readme_corpus_command_has_its_required_flags():
    from unpack.cli import build_parser

    cmds = re.findall(r"`(\.venv/bin/unpack tasks corpus [^`]*)`", README)
    assert cmds
    for c in cmds:
        build_parser().parse_args(c.split()[1:])  # argparse exits 2 on a missing flag


def test_random_model_is_the_architecture_with_fresh_weights(word_gpt2_dir, tmp_path, capsys):
    """`unpack random-model` (the README's untrained baseline), on a tiny model."""
    from unpack.loading import load_model

    out = tmp_path / "rnd"
    assert (
        main(
            [
                "random-model",
                "--like",
                word_gpt2_dir,
                "--layers",
                "1",
                "--seed",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rnd, tok = load_model(str(out))
    ref, _ = load_model(word_gpt2_dir)
    assert rnd.config.n_layer == 1 and rnd.config.n_embd == ref.config.n_embd
    assert not torch.equal(rnd.transformer.wte.weight, ref.transformer.wte.weight)
    assert tok.get_vocab() == load_model(word_gpt2_dir)[1].get_vocab()
    assert main(["random-model", "--like", word_gpt2_dir, "--layers", "9", "--out", str(out)]) == 2


def _readme_commands() -> list[str]:
    """Every `.venv/bin/unpack ...` command of the README: lines of ```bash blocks
    (continuations joined, comments dropped) and inline code spans. Synopsis lines
    (with [optional] parts or ...) are not commands."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            cmds += [c.strip() for c in line.split("&&")]
    cmds += re.findall(r"`(\.venv/bin/unpack [^`]*)`", README)
    cmds = [re.sub(r"\s+#.*$", "", c) for c in cmds]
    return [c for c in cmds if c.startswith(".venv/bin/unpack") and "[" not in c and "..." not in c]


def test_every_readme_command_parses_as_written():
    """Each command's subcommand, flags and choices exist as written (argparse exits 2
    on anything else). Running them all would take far too long for the suite (the
    SmolLM2 and training ones take minutes); the next test runs a fast one for real."""
    import shlex

    from unpack.cli import build_parser

    cmds = _readme_commands()
    assert len(cmds) >= 20
    for c in cmds:
        args = build_parser().parse_args(shlex.split(c)[1:])
        assert getattr(args, "func", None), c


def test_readme_ladder_trace_runs_as_written(capsys, monkeypatch):
    import shlex

    monkeypatch.chdir(ROOT)
    cmd = next(
        c for c in _readme_commands() if c.startswith(".venv/bin/unpack trace --model ladder")
    )
    assert main(shlex.split(cmd)[1:]) == 0
    out = capsys.readouterr().out
    assert "target: ' t1'" in out and "token credit" in out


def test_node_labels_of_the_mlp_row_and_embeddings_keep_clear_of_the_heads():
    import networkx as nx

    from app.graphs import component_attrs
    from app.ui import views

    G = nx.DiGraph()
    G.add_edge("attn_0_head_1", "embedding", weight=1.0, mode="V")
    G.add_edge("mlp_0", "attn_0_head_0", weight=0.5, mode="MLP")
    for n in G.nodes:
        G.nodes[n].update(component_attrs(n, False))
    xy = {n: (0.0, float(i)) for i, n in enumerate(G.nodes)}
    nodes = [t for t in views.graph_traces(G, xy) if t.name == "components"][0]
    side = dict(zip(nodes.customdata, nodes.textposition))
    assert side == {
        "attn_0_head_1": "top center",
        "embedding": "middle left",
        "mlp_0": "bottom center",
        "attn_0_head_0": "top center",
    }


def test_wide_tables_fit_the_page_numbers_whole_text_cut():
    """A table wider than the page: its text columns are cut to fit, its numbers and
    headers keep their width; a table that fits keeps every column whole."""
    import pandas as pd

    from app.ui.tables import MIN_TEXT_PX, fit_widths, natural_px

    df = pd.DataFrame(
        {
            "model": ["ladder-d128@step1065", "smollm2-135m"],
            "text": ["When Mary and John went to the store, " * 6, "x"],
            "n_params": [171650, 134515008],
            "mean_p_target": [0.7348, 0.0282],
        }
    )
    whole = {c: natural_px(df, c, c) for c in df.columns}
    assert whole["text"] > 400 and whole["n_params"] == len("134,515,008") * 8 + 26
    w = fit_widths(df, 520)
    assert sum(w.values()) <= 520
    assert (w["n_params"], w["mean_p_target"]) == (whole["n_params"], whole["mean_p_target"])
    assert MIN_TEXT_PX <= w["text"] < whole["text"] and w["model"] <= whole["model"]
    assert fit_widths(df, 2000) == whole
    assert fit_widths(df.head(0), 100) == {c: max(50, len(c) * 8 + 26) for c in df.columns}


def test_reroot_hint_never_sends_to_the_position_it_is_at(monkeypatch, tmp_path):
    """The Prompt page's reroot with nothing stored to show: at the target position
    it suggests another component, elsewhere the target position."""
    from tests.app_harness import build_store, open_app, sql, widget

    db, _ = build_store(tmp_path, n=1, models=[("tiny-gpt2", "gpt2", 2)], roots=(), failing=False)
    at = open_app(monkeypatch, db, "prompt")
    pid = int(widget(at.selectbox, "Prompt (1 in the working set)").value)
    end = int(sql(db, "SELECT target_pos FROM prompts WHERE prompt_id = ?", [pid]).iloc[0, 0])
    widget(at.selectbox, "Component").set_value("embedding").run()
    widget(at.selectbox, "Position").set_value(end).run()

    def info_hints():  # the page Markdown-escapes the component's name (app.escape.markdown)
        texts = (re.sub(r"\\(.)", r"\1", i.value).replace("\u2060", "") for i in at.info)
        return [t for t in texts if "No stored edges read by embedding@" in t]

    hints = info_hints()
    assert hints and "Try another component" in hints[0] and "target position" not in hints[0]
    widget(at.selectbox, "Position").set_value(end - 1).run()
    hints = info_hints()
    assert hints and f"Try the target position ({end}) or another component" in hints[0]
