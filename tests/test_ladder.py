"""The toy ladder (three sizes × training steps), checkpoints by revision, and the
model facts the store keeps (migration 0004)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import torch

from tests.models import PROMPTS, tiny_gpt2, word_tokenizer
from unpack.errors import InputError
from unpack.loading import LADDER_DIR, load_model, model_info, split_revision, with_revision

ROOT = Path(__file__).resolve().parents[1]


def _checkpoints(tmp_path) -> Path:
    """A local directory of checkpoints: step0/ and step40/ (random tiny GPT-2s)."""
    base = tmp_path / "tiny-run"
    for step, seed in ((0, 1), (40, 2)):
        m = tiny_gpt2(seed=seed, dtype=torch.float32)
        m.config.training_step = step
        m.save_pretrained(base / f"step{step}")
        word_tokenizer().save_pretrained(base / f"step{step}")
    return base


# ------------------------------------------------------------------ revisions


def test_revision_of_a_local_directory_of_checkpoints(tmp_path):
    base = _checkpoints(tmp_path)
    model, _ = load_model(with_revision(str(base), "step40"))
    info = model_info(model)
    assert info["revision"] == "step40" and info["step"] == 40
    same, _ = load_model(f"{base}@step40")
    assert torch.equal(model.transformer.wte.weight, same.transformer.wte.weight)
    other, _ = load_model(f"{base}@step0")
    assert not torch.equal(model.transformer.wte.weight, other.transformer.wte.weight)
    with pytest.raises(InputError, match="no checkpoint 'step9'; it has step0, step40"):
        load_model(f"{base}@step9")
    with pytest.raises(InputError, match="directory of checkpoints.*@REVISION.*step0, step40"):
        load_model(str(base))
    with pytest.raises(InputError, match="already names revision"):
        with_revision(f"{base}@step0", "step40")


def test_name_at_revision_parsing(tmp_path):
    assert split_revision("EleutherAI/pythia-160m@step1000") == (
        "EleutherAI/pythia-160m",
        "step1000",
    )
    assert split_revision("gpt2") == ("gpt2", None)
    odd = tmp_path / "dir@x"
    odd.mkdir()
    assert split_revision(str(odd)) == (str(odd), None)  # an existing path is never split


def test_hub_revision_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="pythia-160m.*could not be downloaded.*offline"):
        load_model("EleutherAI/pythia-160m@step1000")


def test_ingest_stores_size_revision_and_step(tmp_path):
    """--revision loads the checkpoint and the models row records its facts."""
    base = _checkpoints(tmp_path)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": t, "target": a, "distractor": b}) + "\n" for t, a, b in PROMPTS)
    )
    db = tmp_path / "s.duckdb"
    from unpack.cli import main

    assert (
        main(
            [
                "ingest",
                "--model",
                str(base),
                "--revision",
                "step40",
                "--corpus",
                str(corpus),
                "--db",
                str(db),
                "--no-progress",
            ]
        )
        == 0
    )
    con = duckdb.connect(str(db), read_only=True)
    row = con.sql(
        "SELECT name, n_params, n_layers, n_heads, d_model, step, revision, family, "
        "parallel_residual, n_kv_heads, d_head FROM models"
    ).fetchall()
    con.close()
    n_params = sum(p.numel() for p in tiny_gpt2(dtype=torch.float32).parameters())
    assert row == [(f"{base}@step40", n_params, 2, 2, 16, 40, "step40", "gpt2", False, 2, 8)]


# ------------------------------------------------------------------ the shipped ladder


def _shipped() -> dict[str, list[dict]]:
    out = {}
    for member in sorted(d.name for d in LADDER_DIR.iterdir() if d.is_dir()):
        steps = []
        for d in (LADDER_DIR / member).iterdir():
            with open(d / "toy.json") as f:
                steps.append(json.load(f))
        out[member] = sorted(steps, key=lambda m: m["step"])
    return out


def test_shipped_ladder_sizes_steps_and_the_moment_the_circuit_forms():
    ladder = _shipped()
    assert len(ladder) >= 3
    widths = [m[0]["config"]["d_model"] for m in ladder.values()]
    assert len(set(widths)) == len(widths)  # three sizes
    total = sum(f.stat().st_size for f in LADDER_DIR.rglob("*") if f.is_file())
    assert total < 5 * 2**20, total
    for member, steps in ladder.items():
        assert len(steps) >= 6, member
        acc = [s["eval"]["acc_repeat"] for s in steps]
        assert acc[0] < 0.1 and acc[-1] > 0.9, (member, acc)
        assert any(0.1 <= a <= 0.9 for a in acc), (member, acc)  # a step while it forms
        assert (
            steps[-1]["ground_truth"]["prev_found"] and steps[-1]["ground_truth"]["induction_found"]
        )
        assert all(
            s["circuit"]["induction_heads"] == steps[-1]["ground_truth"]["induction_heads"]
            for s in steps
        )


def test_ladder_member_reproduces_within_tolerance(tmp_path):
    """The first 150 steps of the smallest member, retrained here: the snapshots at
    steps 0 and 150 match the shipped files by tolerance and by behaviour (a snapshot
    depends only on the steps before it, so this checks the same code path as a full
    run, cheaply). Trained floats are not bit-reproducible across CPUs (another
    vector unit rounds the training's sums differently), so bytes are compared only
    within one run (``test_toy.py::test_training_is_deterministic_by_seed``)."""
    from safetensors.torch import load_file

    from unpack.toy import ladder
    from unpack.toy.data import make_tokenizer
    from unpack.toy.train import train

    class Enough(Exception):
        pass

    cfg, tok = ladder.MEMBERS["ladder-d64"], make_tokenizer(ladder.MEMBERS["ladder-d64"].n_tokens)
    evals = {}

    def snap(step, model):
        evals[step] = ladder.save_step(model, tok, cfg, str(tmp_path), "ladder-d64", 0, step)
        if step == 150:
            raise Enough

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(Enough):
            train(cfg, seed=0, log=None, snapshot_at=(0, 150), on_snapshot=snap)
    finally:
        torch.set_num_threads(threads)
    for step in (0, 150):
        new = load_file(str(tmp_path / "ladder-d64" / f"step{step}" / "model.safetensors"))
        old = load_file(str(LADDER_DIR / "ladder-d64" / f"step{step}" / "model.safetensors"))
        assert new.keys() == old.keys(), step
        for k in old:
            a, b = new[k].float(), old[k].float()
            # float16 storage: one or two units in the last place where rounding differs
            scale = max(float(b.abs().max()), 1e-3)
            assert torch.allclose(a, b, rtol=1e-2, atol=1e-3 * scale), (
                step,
                k,
                float((a - b).abs().max()),
            )
        shipped = json.loads((LADDER_DIR / "ladder-d64" / f"step{step}" / "toy.json").read_text())[
            "eval"
        ]
        got = evals[step]  # save_step returns the snapshot's evaluation
        assert got["loss_repeat"] == pytest.approx(shipped["loss_repeat"], rel=1e-2), step
        assert got["acc_repeat"] == pytest.approx(shipped["acc_repeat"], abs=0.02), step


def test_ladder_checkpoint_loads_by_alias_with_its_facts():
    model, tok = load_model("ladder-d64@step0")
    info = model_info(model)
    assert info["step"] == 0 and info["revision"] == "step0"
    assert info["toy"]["circuit"]["prev_heads"] and info["toy"]["eval"]["acc_repeat"] < 0.1
    assert model.config.n_inner == 1 and model.dtype == torch.float32


def test_toy_train_refuses_to_overwrite_shipped_checkpoints(capsys, monkeypatch):
    from unpack.cli import main

    monkeypatch.chdir(ROOT)
    for out in (
        "unpack/toy/checkpoints",
        "unpack/toy/ladder/ladder-d64",
        "unpack/toy/checkpoints/x",
    ):
        assert main(["toy-train", "--variant", "tiny", "--out", out]) == 2
        assert "--overwrite-shipped" in capsys.readouterr().err, out
    from unpack.toy.cli import check_out

    check_out("unpack/toy/checkpoints/x", overwrite=True)  # asked for: allowed
