"""The baselines (unpack/baselines) on tiny fp64 models: each checked against an
independent computation."""

from __future__ import annotations

import pytest
import torch

from tests.models import tiny_gpt2, tiny_llama_gqa, word_tokenizer
from unpack.adapters import build_spec
from unpack.baselines import methods as M
from unpack.baselines.forward import Drop, embed, run
from unpack.intervene import forward, logit_diff

TEXTS = (
    "<bos> When Mary and John went to the store , John gave a drink to",
    "<bos> When Mary and John went to the park , Anne gave a drink to",
)


def _inputs(tok):
    ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS])
    lengths = torch.tensor([ids.shape[1]] * 2)
    tid = torch.tensor([tok.convert_tokens_to_ids("Mary")] * 2)
    did = torch.tensor([tok.convert_tokens_to_ids("John"), -1])
    return ids, lengths, tid, did


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request):
    model = tiny_gpt2(seed=3) if request.param == "gpt2" else tiny_llama_gqa(seed=3)
    tok = word_tokenizer()
    return model, build_spec(model), _inputs(tok)


def test_pass_equals_the_projects_forward(setup):
    """The split pass gives the same logits as unpack.intervene.forward."""
    _, spec, (ids, lengths, tid, did) = setup
    p = run(spec, embed(spec, ids, torch.float64), lengths, tid, did, split=True)
    ref = forward(spec, ids, lengths, dtype=torch.float64)
    assert torch.allclose(p.logits, ref, atol=1e-10)
    assert torch.allclose(p.metric, logit_diff(ref, tid, did), atol=1e-10)


def test_eap_equals_finite_differences(setup):
    """Each EAP edge score is the derivative of the metric along that edge's patch:
    moving one edge by ε toward the corrupted value changes the metric by −ε·score."""
    _, spec, (ids, lengths, tid, did) = setup
    corrupt = ids[[1, 0]]
    s = M.eap(spec, ids, corrupt, lengths, tid, did, dtype=torch.float64)
    e = embed(spec, ids, torch.float64)
    with torch.no_grad():
        ref = run(spec, embed(spec, corrupt, torch.float64), lengths, tid, did, keep=True).writers
        base = run(spec, e, lengths, tid, did).metric
    eps = 1e-6
    L = spec.n_layers - 1
    checks = [
        ("attn", L, (0, 1, 2)),
        ("attn", L, (spec.n_heads - 1, 2, 0)),
        ("attn", L, (1, 2, 3)),
        ("mlp", 0, (0,)),
        ("logits", None, (3,)),
    ]
    for kind, layer, idx in checks:
        drop = Drop.zeros(spec)
        target = drop.logits if kind == "logits" else getattr(drop, kind)[layer]
        target[idx] = eps
        with torch.no_grad():
            m = run(spec, e, lengths, tid, did, drop=drop, ref=ref).metric
        fd = (base - m) / eps
        got = (
            s.logits[:, idx[0]]
            if kind == "logits"
            else getattr(s, kind)[layer][(slice(None),) + idx]
        )
        assert got.abs().max() > 1e-4, (kind, idx)  # a real edge, not a zero
        assert torch.allclose(fd, got, rtol=1e-4, atol=1e-7), (kind, idx, fd, got)


def test_dropping_every_edge_gives_the_reference_run(setup):
    """With every edge removed each reader sees the reference residual: the metric
    of the corrupted prompt itself."""
    _, spec, (ids, lengths, tid, did) = setup
    corrupt = ids[[1, 0]]
    with torch.no_grad():
        c = run(spec, embed(spec, corrupt, torch.float64), lengths, tid, did, keep=True)
        drop = Drop.zeros(spec)
        for t in drop.attn + drop.mlp + [drop.logits]:
            t.fill_(1.0)
        m = run(
            spec, embed(spec, ids, torch.float64), lengths, tid, did, drop=drop, ref=c.writers
        ).metric
    assert torch.allclose(m, c.metric, atol=1e-9)


def test_ig_completeness_error_shrinks_with_steps(setup):
    """IG: Σ scores = metric(e) − metric(e'), within an error that falls as steps grow."""
    _, spec, (ids, lengths, tid, did) = setup
    errs = []
    for steps in (2, 8, 24):
        sc, m1, m0 = M.integrated_gradients(
            spec, ids, lengths, tid, did, baseline="mean", steps=steps, dtype=torch.float64
        )
        errs.append((sc.sum(-1) - (m1 - m0)).abs().max().item())
    assert errs[2] < errs[1] < errs[0], errs
    assert errs[2] < 2e-2 * (m1 - m0).abs().max().item(), errs


def test_grad_x_input_equals_autograd_on_the_hf_model(setup):
    """grad × input from the project's pass equals the same product computed with the
    Hugging Face model's own forward on its input embeddings."""
    model, spec, (ids, lengths, tid, did) = setup
    sc, _ = M.grad_x_input(spec, ids, lengths, tid, did, dtype=torch.float64)
    e = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=e).logits[:, -1]
    m = logit_diff(logits, tid, did)
    g = torch.autograd.grad(m.sum(), e)[0]
    # Llama: transformers builds its rotary tables in float32 (its logits differ from
    # the project's fp64 pass by ~1e-6), so there the agreement is to 1e-5
    tol = 1e-9 if spec.rotary is None else 1e-5
    assert torch.allclose(sc, (e * g).sum(-1).detach(), rtol=0, atol=tol)


def test_rollout_rows_sum_to_one(setup):
    _, spec, (ids, lengths, _, _) = setup
    R = M.rollout_matrix(spec, ids, lengths, dtype=torch.float64)
    assert torch.allclose(R.sum(-1), torch.ones(R.shape[:2], dtype=R.dtype), atol=1e-12)
    assert (R >= 0).all() and torch.triu(R[0], 1).abs().max() == 0  # causal


def test_eap_ig_converges_to_the_patching_difference():
    """EAP-IG's embedding scores add up to metric(clean) − metric(corrupt) (the
    completeness of IG along the corrupt→clean line); GPT-2 only, to keep it short."""
    spec = build_spec(tiny_gpt2(seed=3))
    ids, lengths, tid, did = _inputs(word_tokenizer())
    s = M.eap(spec, ids, ids[[1, 0]], lengths, tid, did, dtype=torch.float64, steps=64)
    assert torch.allclose(s.tokens.sum(-1), s.clean - s.corrupt, rtol=1e-2, atol=2e-4)


# what each family's spec has that the baselines' pass does not implement
REFUSED = {
    "gemma3": ["k_norm", "ln_attn_post", "ln_mlp_post", "q_norm", "window"],
    "gemma2": ["final_softcap", "ln_attn_post", "ln_mlp_post", "softcap", "window"],
    "qwen3": ["k_norm", "q_norm"],
    "qwen3_bias_window": ["k_norm", "q_norm", "window"],
    "olmo2": ["k_norm", "ln_attn_post", "ln_mlp_post", "q_norm"],
}


def test_unimplemented_features_are_refused(tmp_path, capsys):
    """A model with post-norms, qk-norm, a sliding window or soft-caps is refused when
    the baseline is made (before any prompt), naming the model, its family and each
    feature; a family without them (Gemma-1) is taken; through `unpack ingest` the
    refusal is exit 2 and no database file is made."""
    from tests.models import make_family
    from unpack.baselines.tracer import BaselineTracer
    from unpack.cli import main
    from unpack.errors import InputError

    tok = word_tokenizer()
    for name, features in REFUSED.items():
        model = make_family(name)
        with pytest.raises(InputError) as e:
            BaselineTracer("eap", model=model, tokenizer=tok)
        msg = str(e.value)
        listed = msg.split("does not implement ")[1].split(" (")[0].split(", ")
        assert listed == features, (name, msg)
        assert f"model {model.config.model_type!r}" in msg and "--method unpack" in msg
        assert f"family {build_spec(model).family!r}" in msg
    BaselineTracer("grad_x_input", model=make_family("gemma"), tokenizer=tok)
    make_family("gemma2", torch.float32).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    db = tmp_path / "s.duckdb"
    code = main(
        [
            "ingest",
            "--model",
            str(tmp_path / "m"),
            "--task",
            "induction",
            "--n",
            "2",
            "--db",
            str(db),
            "--method",
            "eap",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "does not implement final_softcap" in err and str(tmp_path / "m") in err
    assert not db.exists()
