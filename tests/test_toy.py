"""Toy induction models: data, trainer (tiny setting), ground truth from the
attention, and the recovery report (trained vs random init)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unpack.cli import main as unpack_main
from unpack.errors import InputError
from unpack.tokens import bos_text, encode
from unpack.toy import data, groundtruth, report
from unpack.toy import train as toy
from unpack.toy.cli import SHIPPED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_MODELS = os.path.join(ROOT, "unpack", "toy", "checkpoints")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny variant trained once through the CLI (about 10 s)."""
    d = str(tmp_path_factory.mktemp("toy") / "tiny")
    assert unpack_main(["toy-train", "--variant", "tiny", "--out", d, "--seed", "0"]) == 0
    return d


# ------------------------------------------------------------------ data


def test_tokenizer_one_token_per_word(tmp_path):
    from transformers import AutoTokenizer

    data.make_tokenizer(10).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids, offsets = encode(tok, "<bos> t5 t7 t3")
    assert ids == [0, 7, 9, 5]
    assert offsets == [(0, 5), (6, 8), (9, 11), (12, 14)]
    assert encode(tok, " t7")[0] == [9]
    assert encode(tok, " foo")[0] == [1]  # <unk>
    assert bos_text(tok) == "<bos>"
    assert data.to_text([0, 7, 9]) == "<bos> t5 t7"


@pytest.mark.parametrize("distinct", [False, True])
def test_sequences_repeat_the_segment(distinct):
    b = data.sample_batch(torch.Generator().manual_seed(0), 64, 33, 64, 4, 16, distinct)
    again = data.sample_batch(torch.Generator().manual_seed(0), 64, 33, 64, 4, 16, distinct)
    assert torch.equal(b.ids, again.ids)
    assert (b.ids[:, 0] == 0).all() and (b.ids[:, 1:] >= data.N_SPECIAL).all()
    rep, first, uniq = b.repeat_mask(), b.first_mask(), b.unique_mask()
    for i in range(64):
        n, s1, s2 = int(b.n[i]), int(b.start1[i]), int(b.start2[i])
        assert 4 <= n <= 16 and s1 >= 1 and s2 >= s1 + n and s2 + n <= 33
        assert torch.equal(b.ids[i, s1 : s1 + n], b.ids[i, s2 : s2 + n])
        assert rep[i].nonzero().flatten().tolist() == list(range(s2, s2 + n - 1))
        assert first[i].nonzero().flatten().tolist() == list(range(s1, s1 + n - 1))
        for q in uniq[i].nonzero().flatten().tolist():
            assert (b.ids[i, :q] == b.ids[i, q]).sum() == 1
        if distinct:
            assert len(set(b.ids[i].tolist())) == 33 - n
            assert uniq[i].equal(rep[i])
    assert (b.n.unique().numel() > 5) and (b.start2 - b.start1).unique().numel() > 5


# ------------------------------------------------------------------ ground truth


class _KnownAttention(torch.nn.Module):
    """A stand-in model whose layer-0 head 0 attends exactly to p-1 and whose layer-1
    head 0 attends exactly to the position after the latest earlier occurrence of
    the current word; the other heads attend uniformly."""

    def forward(self, ids, output_attentions=True):
        B, S = ids.shape
        causal = torch.ones(S, S).tril()
        uniform = (causal / causal.sum(-1, keepdim=True)).expand(B, S, S)
        prev = torch.zeros(B, S, S)
        p = torch.arange(1, S)
        prev[:, p, p - 1] = 1.0
        prev[:, 0, 0] = 1.0
        ind = torch.zeros(B, S, S)
        for b in range(B):
            for q in range(S):
                s = [s for s in range(1, q + 1) if ids[b, s - 1] == ids[b, q] and s - 1 < q]
                ind[b, q, s[-1] if s else 0] = 1.0
        return SimpleNamespace(
            attentions=(torch.stack([prev, uniform], 1), torch.stack([ind, uniform], 1))
        )


def test_head_scores_on_known_attention():
    cfg = toy.variant("tiny", distinct=True)
    gt = groundtruth.identify(_KnownAttention(), cfg, n_seqs=32)
    assert gt.prev_scores[0][0] == pytest.approx(1.0)
    assert gt.induction_scores[1][0] == pytest.approx(1.0)
    # uniform causal attention to p-1 averages 1/(p+1) over p = 2..S-1
    S = cfg.seq_len
    assert gt.prev_scores[0][1] == pytest.approx(
        np.mean([1 / (p + 1) for p in range(2, S)]), abs=1e-4
    )
    assert gt.induction_scores[1][1] < 0.2
    assert gt.prev_heads == [0] and gt.induction_heads == [0]
    assert gt.prev_found and gt.induction_found


def test_random_model_has_no_circuit():
    cfg = toy.variant("tiny")
    gt = groundtruth.identify(toy.build_model(cfg, seed=5), cfg)
    assert not gt.prev_found and not gt.induction_found
    assert max(gt.prev_scores[0]) < 0.2 and max(gt.induction_scores[1]) < 0.2
    assert len(gt.prev_heads) == 1 and len(gt.induction_heads) == 1  # best head, for the control


# ------------------------------------------------------------------ training


def test_training_is_deterministic_by_seed():
    cfg = toy.variant("tiny", induction_steps=8, lm_steps=4)
    a, _, _ = toy.train(cfg, seed=3, log=None)
    b, _, _ = toy.train(cfg, seed=3, log=None)
    c, _, _ = toy.train(cfg, seed=4, log=None)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["transformer.h.0.attn.c_attn.weight"], sc["transformer.h.0.attn.c_attn.weight"]
    )


def test_head_penalty_is_the_sum_of_each_heads_output_norm_and_silences_heads():
    """head_penalty against a loop over the heads' rows of c_proj (GPT-2's Conv1D:
    rows are the input, head-major); trained with head_l1 the heads write less than
    the same seed trained without it."""
    cfg = toy.variant("tiny", induction_steps=15, lm_steps=5, n_head=4)
    m = toy.build_model(cfg, seed=1)
    d = cfg.d_model // cfg.n_head
    by_hand = sum(
        float(blk.attn.c_proj.weight.detach()[h * d : (h + 1) * d].norm())
        for blk in m.transformer.h
        for h in range(cfg.n_head)
    )
    assert float(toy.head_penalty(m, cfg).detach()) == pytest.approx(by_hand, rel=1e-6)
    plain, _, _ = toy.train(cfg, seed=1, log=None)
    priced, _, _ = toy.train(
        toy.variant("tiny", induction_steps=15, lm_steps=5, n_head=4, head_l1=0.5), seed=1, log=None
    )
    with torch.no_grad():
        assert float(toy.head_penalty(priced, cfg)) < 0.5 * float(toy.head_penalty(plain, cfg))


def test_attention_only_mlps_write_zero():
    cfg = toy.variant("tiny", induction_steps=5, lm_steps=5)
    m, _, _ = toy.train(cfg, seed=0, log=None)
    assert toy.is_attn_only(m)
    x = torch.randn(2, 5, cfg.d_model)
    assert torch.equal(m.transformer.h[0].mlp(x), torch.zeros_like(x))
    cfg2 = toy.variant("tiny", attn_only=False, induction_steps=5, lm_steps=5)
    m2, _, _ = toy.train(cfg2, seed=0, log=None)
    assert not toy.is_attn_only(m2)


def test_trained_tiny_is_a_standard_hf_dir_that_does_induction(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for f in ("config.json", "model.safetensors", "tokenizer.json", "toy.json"):
        assert os.path.isfile(os.path.join(tiny_dir, f)), f
    m = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert m.config.model_type == "gpt2" and m.config.n_layer == 2
    assert toy.is_attn_only(m)
    meta = json.load(open(os.path.join(tiny_dir, "toy.json")))
    ev = meta["eval"]
    assert ev["loss_repeat"] < 0.25 * ev["loss_first"]
    assert abs(ev["loss_first"] - ev["chance_loss"]) < 0.2
    assert ev["acc_repeat"] >= 0.9
    gt = meta["ground_truth"]
    assert gt["prev_found"] and gt["induction_found"]
    # the saved model predicts the repeat on a hand-written sequence
    ids, _ = encode(tok, "<bos> t1 t9 t4 t30 t2 t7 t9 t4 t30")
    nxt = m(torch.tensor([ids])).logits[0, -1].argmax().item()
    assert tok.decode([nxt]) == "t2"


# ------------------------------------------------------------------ recovery report


def test_recovery_trained_vs_random(tiny_dir):
    trained, rand = report.run(tiny_dir, n=30, seed=1, control=True)
    s, r = trained.summary(), rand.summary()
    assert s["n_probes"] == 30 and s["n_reroots"] == 30 * len(s["induction_heads"])
    assert s["k_recovery_seq"] >= 0.9 and s["k_recovery_min_head"] >= 0.9
    assert s["k_largest_rate"] >= 0.8
    assert s["mode_mean"]["K"] > max(s["mode_mean"]["Q"], s["mode_mean"]["V"])
    assert s["credit_peak"] >= 0.9
    assert report.passes(trained)
    # the control: no circuit, credit peak near chance, and it fails the same bar
    assert not (r["prev_found"] or r["induction_found"])
    assert r["credit_peak"] <= r["credit_chance"] + 0.25
    assert not report.passes(rand)


def test_probes_point_after_the_first_occurrence():
    cfg = toy.variant("tiny")
    for p in report.probes(cfg, 20, seed=2):
        words = p.text.split()
        assert len(words) == p.q + 1
        first = [i for i, w in enumerate(words[:-1]) if w == words[-1]]
        assert len(first) == 1 and p.peak == first[0] + 1
        assert " " + words[p.peak] == p.target


def test_report_cli_writes_files(tiny_dir, tmp_path, capsys):
    out = str(tmp_path / "rep")
    assert unpack_main(["toy-report", "--model", tiny_dir, "--n", "6", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "| model | prev-token heads" in text and "(random init)" in text
    for f in (
        "induction.md",
        "induction_summary.csv",
        "induction_reroots.csv",
        "induction_credit.csv",
        "induction.png",
    ):
        assert os.path.isfile(os.path.join(out, f)), f
    import pandas as pd

    summ = pd.read_csv(os.path.join(out, "induction_summary.csv"))
    assert len(summ) == 2 and summ["n_probes"].tolist() == [6, 6]


def test_report_induction_subcommand(tiny_dir, tmp_path):
    """``unpack report induction`` (registered by app.reports) runs this report."""
    import argparse

    from unpack.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "report" not in sub.choices:
        pytest.fail("`unpack report` is not registered; `unpack toy-report` is the same report")
    assert unpack_main(["report", "induction", "--model", tiny_dir, "--out", str(tmp_path)]) == 0
    assert os.path.isfile(tmp_path / "induction.md")


def test_bad_input(tmp_path, capsys):
    assert unpack_main(["toy-report", "--model", str(tmp_path / "nope")]) == 2
    assert "toy-train" in capsys.readouterr().err
    assert unpack_main(["toy-report", "--model", str(tmp_path)]) == 2  # no toy.json
    assert "toy.json" in capsys.readouterr().err
    with pytest.raises(InputError, match="n_head"):
        toy.variant("tiny", d_model=30, n_head=4)
    with pytest.raises(InputError, match="unknown toy variant"):
        toy.variant("huge")
    with pytest.raises(InputError, match="--n"):
        report.main(SimpleNamespace(model=str(tmp_path), n=0))
    with pytest.raises(SystemExit):
        unpack_main(["toy-train", "--variant", "huge", "--out", str(tmp_path)])


# ------------------------------------------------------------------ shipped checkpoints


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint(name):
    d = os.path.join(TOY_MODELS, name)
    if not os.path.isdir(d):
        pytest.fail(
            f"{d} is missing; rebuild with `unpack toy-train --variant all --out unpack/toy/checkpoints`"
        )
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert size < 5e6
    meta = json.load(open(os.path.join(d, "toy.json")))
    # a field added later is at its default in an older toy.json
    assert meta["variant"] == name
    assert toy.ToyConfig(**meta["config"]).__dict__ == toy.variant(name).__dict__
    trained, rand = report.run(d, n=30, seed=7, control=True)
    s, r = trained.summary(), rand.summary()
    assert s["eval_acc_repeat"] >= 0.9 and s["eval_loss_repeat"] < 0.25 * s["eval_loss_first"]
    assert report.passes(trained), s
    assert not report.passes(rand) and r["credit_peak"] <= r["credit_chance"] + 0.25
