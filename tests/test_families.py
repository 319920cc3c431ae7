"""Every adapter family on tiny random models made from its Hugging Face config
class: §9 invariants, and the engine against the plain-loop reference in fp64
(token credit, flows, edges, paths) on prompts longer than the head dim and the
sliding window, in a padded batch and from a reroot (docs/ADAPTERS.md).

A new family joins by adding its configs to ``FAMILIES``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from models import WORDS, randomize, word_tokenizer
from unpack import Tracer, make_config
from unpack.adapters import build_spec
from unpack.capture import capture
from unpack.reference import Reference
from unpack.validate import validate_model

TOL = 1e-8
BASE = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=40, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
            bos_token_id=0, eos_token_id=0, pad_token_id=1, attn_implementation="eager")
GEMMA3_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]
GEMMA3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
               "full_attention": {"rope_type": "default", "rope_theta": 1000.0}}

# name: (config class, model class, config beyond BASE)
FAMILIES = {
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(layer_types=GEMMA3_TYPES, sliding_window=4, rope_parameters=GEMMA3_ROPE,
                    query_pre_attn_scalar=12)),
    "gemma3_bias_mha_untied": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                               dict(layer_types=GEMMA3_TYPES, sliding_window=3,
                                    rope_parameters=GEMMA3_ROPE, attention_bias=True,
                                    num_key_value_heads=4, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3_bias_window": ("Qwen3Config", "Qwen3ForCausalLM",
                          dict(attention_bias=True, use_sliding_window=True, sliding_window=4,
                               layer_types=["full_attention", "sliding_attention", "full_attention"])),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict()),
    "olmo2_bias_mha_tied": ("Olmo2Config", "Olmo2ForCausalLM",
                            dict(attention_bias=True, num_key_value_heads=4, tie_word_embeddings=True)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             dict(rope_parameters={"rope_type": "default", "rope_theta": 100.0,
                                   "partial_rotary_factor": 0.5})),
    "phi3_mha_tied": ("Phi3Config", "Phi3ForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(n_embd=32, n_head=4, n_layer=3, rotary_dim=4, n_positions=64)),
    "gptj_full_rotary": ("GPTJConfig", "GPTJForCausalLM",
                         dict(n_embd=32, n_head=4, n_layer=2, rotary_dim=8, n_positions=64)),
}

# longer than the head dim (8) and the windows (3, 4)
LONG = "<bos> When Mary and John went to the store , John gave a drink to"
PROMPTS = [(LONG, " Mary", " John"), ("<bos> w1 w2 w3 w1 w2", " w3", None)]


def make_family(name, dtype=torch.float64, seed=0):
    cfg_cls, model_cls, extra = FAMILIES[name]
    cfg = getattr(tf, cfg_cls)(**{**BASE, **extra})
    torch.manual_seed(seed)
    return randomize(getattr(tf, model_cls)(cfg), seed, std=0.3).to(dtype)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module", params=list(FAMILIES))
def tracer(request, tok):
    return Tracer(model=make_family(request.param), tokenizer=tok)


def reference(tracer, prep, cfg, root=None, **kw):
    cap = capture(tracer.spec, torch.tensor([prep.ids]), torch.tensor([len(prep.ids)]),
                  dtype=torch.float64)
    return Reference(cap, 0, cfg).trace(prep.target_id, prep.distractor_id, root=root, **kw)


def assert_same(res, ref_out, names):
    credit, flow, edges, _ = ref_out
    assert np.abs(credit).max() > 0
    assert rel(res.token_credit, credit) <= TOL
    n = len(res.tokens)
    got = np.array([res.component_flow[nm] for nm in names])
    want = np.array([[flow[(c, q)] for q in range(n)] for c in range(len(names))])
    assert rel(got, want) <= TOL
    mine = {(names.index(p), names.index(c), m): w for p, c, m, w in
            res.edges[["parent", "child", "mode", "weight"]].itertuples(index=False)}
    keys = sorted(set(mine) | {k for k, v in edges.items() if v != 0})
    assert rel([mine.get(k, 0.0) for k in keys], [edges.get(k, 0.0) for k in keys]) <= TOL


def test_invariants_fp64(tracer):
    """§9 9/9: exact closures (1e-12); 9 against the model's own forward."""
    checks = validate_model(tracer=tracer, texts=[p[0] for p in PROMPTS])
    assert len(checks) == 9
    for c in checks:
        assert c.ok and c.worst_error <= (1e-6 if c.name.startswith("9") else 1e-12), str(c)


def test_batch_and_reroot_equal_reference(tracer):
    """A padded batch (two lengths, a reroot among them) equals each prompt traced
    alone by the reference: token credit, flows and edges to 1e-8."""
    batch = [{"text": t, "target": tg, "distractor": d} for t, tg, d in PROMPTS]
    batch.append({"text": LONG, "target": " Mary", "distractor": " John", "root": "attn_1_head_2@-2"})
    results = tracer.trace_batch(batch, preset="kqv_aligned", batch_size=8)
    assert len({len(r.tokens) for r in results}) > 1
    for p, res in zip(batch, results):
        prep = tracer.prepare(p["text"], p["target"], p.get("distractor"), roots=[p.get("root")])
        root = prep.roots[0][1:] if prep.roots[0] else None
        assert_same(res, reference(tracer, prep, make_config("kqv_aligned"), root=root),
                    tracer.comps.names)


def test_paths_equal_reference(tracer):
    """§7: the engine's top pruned paths are the reference's enumeration (chains
    and scores), and unpruned paths add up to the token credit."""
    text, target, distractor = PROMPTS[1]
    res = tracer.trace(text, target, distractor, path_min_frac=1e-3, top_paths_k=30)
    prep = tracer.prepare(text, target, distractor)
    *_, paths = reference(tracer, prep, make_config("kqv_aligned"), with_paths=True,
                          path_min_frac=1e-3)
    names = tracer.comps.names
    chain = lambda hops: "→".join(f"{names[c]}[{m}]@{p}" if m in ("K", "Q", "V")  # noqa: E731
                                  else f"{names[c]}@{p}" for c, p, m in hops)
    ref = dict(sorted(((chain(h), s) for h, s in paths), key=lambda x: -abs(x[1]))[:30])
    assert len(res.paths) == len(ref) == 30
    for p in res.paths:
        assert abs(p.score - ref[p.chain]) <= TOL * abs(ref[p.chain]), p.chain
    short = tracer.trace("<bos> Mary John", " Mary", None, path_min_frac=0.0,
                         max_path_nodes=5_000_000)
    assert not short.paths_truncated
    assert rel(short.path_credit, short.token_credit) <= TOL


def test_window_is_exact_beyond_its_length(tok):
    """A local layer's scores are centered over its window: breaking the window
    (the model attends to all s <= q) breaks the K closure of that layer."""
    model = make_family("gemma3")
    spec = build_spec(model)
    assert [lw.window for lw in spec.layers] == [4, None, 4]
    assert spec.layers[0].rotary is not spec.layers[1].rotary
    assert spec.embed_scale == pytest.approx(32 ** 0.5)
    tr = Tracer(model=model, tokenizer=tok)
    good = validate_model(tracer=tr, texts=[LONG])
    assert all(c.ok for c in good)
    for lw in tr.spec.layers:
        lw.window = None
    bad = {c.name[0]: c for c in validate_model(tracer=tr, texts=[LONG])}
    assert not bad["9"].ok
