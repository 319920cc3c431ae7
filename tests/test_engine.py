"""The vectorized engine against the plain-loop reference, and §9 on tiny models.

Everything here runs in fp64 on tiny random models, where the two
implementations must agree to 1e-8 relative (docs/METHOD.md §6-7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import assert_contractions_agree, rel
from tests.models import MODEL_KINDS, PROMPTS, tiny_gpt2, tiny_neox
from unpack import InputError, Tracer, make_config
from unpack.capture import capture
from unpack.config import PRESETS
from unpack.reference import Reference
from unpack.validate import validate_model

TOL = 1e-8


@pytest.fixture(scope="module", params=list(MODEL_KINDS))
def tracer(request, tok):
    return Tracer(model=MODEL_KINDS[request.param](), tokenizer=tok)


def reference_for(tracer, prep, cfg, root=None, **kw):
    """The reference run on the prompt traced alone (no batch, no padding)."""
    cap = capture(
        tracer.spec, torch.tensor([prep.ids]), torch.tensor([len(prep.ids)]), dtype=torch.float64
    )
    ref = Reference(cap, 0, cfg)
    return ref.trace(prep.target_id, prep.distractor_id, root=root, **kw)


def edges_dict(res, names):
    return {
        (names.index(p), names.index(c), m): w
        for p, c, m, w in res.edges[["parent", "child", "mode", "weight"]].itertuples(index=False)
    }


def assert_same(res, ref_out, names):
    credit, flow, edges, _ = ref_out
    assert rel(res.token_credit, credit) <= TOL
    n = len(res.tokens)
    vec_flow = np.array([res.component_flow[nm] for nm in names])
    ref_flow = np.array([[flow[(c, q)] for q in range(n)] for c in range(len(names))])
    assert rel(vec_flow, ref_flow) <= TOL
    mine = edges_dict(res, names)
    keys = set(mine) | {k for k, v in edges.items() if v != 0}
    a = np.array([mine.get(k, 0.0) for k in sorted(keys)])
    b = np.array([edges.get(k, 0.0) for k in sorted(keys)])
    assert rel(a, b) <= TOL
    # from the seeds the edges carry every mode the preset uses
    used = {
        m for m, w in zip("KQV", (res.config["w_K"], res.config["w_Q"], res.config["w_V"])) if w
    }
    assert res.root is not None or used | {"MLP"} <= set(res.edges["mode"])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_sweep_equals_reference_all_presets(tracer, preset):
    text, target, distractor = PROMPTS[0]
    for d in (distractor, None):
        res = tracer.trace(text, target, d, preset=preset)
        prep = tracer.prepare(text, target, d)
        assert_same(res, reference_for(tracer, prep, make_config(preset)), tracer.comps.names)


def test_seed_metric_and_overrides(tracer):
    text, target, distractor = PROMPTS[0]
    over = dict(seed="metric", beta=0.5, w_K=0.2, w_Q=0.5, w_V=0.3, mlp_rule="weighted")
    res = tracer.trace(text, target, distractor, **over)
    prep = tracer.prepare(text, target, distractor)
    assert_same(
        res, reference_for(tracer, prep, make_config("kqv_aligned", **over)), tracer.comps.names
    )
    # metric seeds add up (with the norm-bias and unembedding parts) to the logit difference
    assert res.config["seed"] == "metric" and res.config["beta"] == 0.5


def test_reroot_equals_reference(tracer):
    text, target, distractor = PROMPTS[0]
    names = tracer.comps.names
    for root in ("attn_1_head_1@-1", "mlp_0@5", "attn_1_head_0@7"):
        res = tracer.trace(text, target, distractor, root=root)
        prep = tracer.prepare(text, target, distractor, roots=[root])
        _, idx, pos = prep.roots[0]
        assert res.seeds == {f"{names[idx]}@{pos}": 1.0}
        assert_same(
            res, reference_for(tracer, prep, make_config("kqv_aligned"), root=(idx, pos)), names
        )


def test_batch_with_padding_equals_alone(tracer):
    """Prompts of different lengths and several roots in one batch give the numbers
    of each prompt traced alone by the reference."""
    names = tracer.comps.names
    batch = [{"text": t, "target": tg, "distractor": d} for t, tg, d in PROMPTS]
    batch.append(
        {
            "text": PROMPTS[0][0],
            "target": PROMPTS[0][1],
            "distractor": PROMPTS[0][2],
            "root": "attn_1_head_0@-1",
        }
    )
    results = tracer.trace_batch(batch, preset="kqv_weighted", batch_size=8)
    assert len({len(r.tokens) for r in results}) > 1
    for p, res in zip(batch, results):
        prep = tracer.prepare(p["text"], p["target"], p.get("distractor"), roots=[p.get("root")])
        root = prep.roots[0][1:] if prep.roots[0] else None
        assert res.root == p.get("root")
        assert_same(res, reference_for(tracer, prep, make_config("kqv_weighted"), root=root), names)


def test_unpruned_paths_sum_to_token_credit(tok):
    """§7: without pruning, path scores summed per source position = token credit."""
    for model in (tiny_gpt2(n_embd=8, n_head=2, n_layer=2), tiny_neox(hidden=8, n_head=2)):
        tr = Tracer(model=model, tokenizer=tok)
        for root in (None, "attn_1_head_1@-1"):
            res = tr.trace(
                "<bos> Mary John Mary",
                " John",
                None,
                root=root,
                path_min_frac=0.0,
                max_path_nodes=5_000_000,
            )
            assert not res.paths_truncated
            assert rel(res.path_credit, res.token_credit) <= TOL
            assert abs(res.token_credit).max() > 0


def test_top_paths_equal_reference_enumeration(tok):
    """The vectorized expansion finds the same pruned paths, with the same scores,
    as the reference's recursive enumeration."""
    tr = Tracer(model=tiny_gpt2(n_embd=8), tokenizer=tok)
    text, target, distractor = "<bos> Mary John store Mary", " John", " Mary"
    res = tr.trace(text, target, distractor, path_min_frac=1e-3, top_paths_k=50)
    prep = tr.prepare(text, target, distractor)
    *_, paths = reference_for(
        tr, prep, make_config("kqv_aligned"), with_paths=True, path_min_frac=1e-3
    )
    names = tr.comps.names

    def chain(hops):
        return "→".join(
            f"{names[c]}[{m}]@{p}" if m in ("K", "Q", "V") else f"{names[c]}@{p}"
            for c, p, m in hops
        )

    ref = sorted(((chain(h), s) for h, s in paths), key=lambda x: -abs(x[1]))[:50]
    got = [(p.chain, p.score) for p in res.paths]
    assert len(got) == len(ref) == 50
    ref_d = dict(ref)
    for c, s in got:
        assert c in ref_d, c
        assert abs(s - ref_d[c]) <= TOL * abs(ref_d[c])
    # the chain format of docs/METHOD.md §7, with positions and modes
    p = res.paths[0]
    assert p.chain.split("→")[-1].startswith(("embedding@", "pos_embedding@"))
    assert p.depth == len(p.modes) == len(p.hops) - 1


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_invariants_fp32(kind, tok):
    """§9 invariants at fp32 tolerance (1e-4 relative)."""
    model = MODEL_KINDS[kind](dtype=torch.float32)
    checks = validate_model(model, tok, texts=[p[0] for p in PROMPTS])
    assert len(checks) == 9
    for c in checks:
        assert c.ok, str(c)
        assert c.worst_error <= 1e-4


def test_invariants_fp64_are_exact(tok):
    checks = validate_model(tiny_neox(parallel=True), tok, texts=[p[0] for p in PROMPTS])
    for c in checks:
        if not c.name.startswith("9"):  # the HF NeoX softmax runs in fp32
            assert c.worst_error <= 1e-12, str(c)


def test_validate_detects_a_broken_capture(tok, monkeypatch):
    """The checks can fail: a wrong attention scale breaks the K/Q closures and logits."""
    import unpack.adapters.gpt2 as g

    orig = g.build_spec

    def broken(model):
        spec = orig(model)
        spec.layers[1].attn_scale *= 1.1
        return spec

    monkeypatch.setattr(g, "build_spec", broken)
    checks = {
        c.name[0]: c
        for c in validate_model(tiny_gpt2(dtype=torch.float32), tok, texts=[PROMPTS[0][0]])
    }
    assert not checks["9"].ok


def test_results_api(tok):
    tr = Tracer(model=tiny_gpt2(dtype=torch.float32), tokenizer=tok)
    text, target, distractor = PROMPTS[0]
    res = tr.trace(text, target, distractor, top_paths_k=5)
    assert res.tokens[:3] == ["<bos>", "When", "Mary"] and len(res.tokens) == len(res.token_credit)
    pos = res.token_credit[res.token_credit > 0].sum()
    assert abs(res.token_credit_pct.sum() - 100 * res.token_credit.sum() / pos) < 1e-3
    assert 0 <= res.suppression <= 1
    assert len(res.paths) == 5
    assert res.logit_diff is not None and 0 < res.target_prob < 1
    d = res.to_dict()
    for key in (
        "tokens",
        "token_credit",
        "token_credit_pct",
        "suppression",
        "paths",
        "component_flow",
        "edges",
        "seeds",
        "target_prob",
        "logit_diff",
        "config",
        "timing",
    ):
        assert key in d
    assert set(d["timing"]) == {"forward_s", "decompose_s", "sweep_s", "paths_s", "total_s"}
    assert "token credit" in str(res)
    assert list(res.to_frame().columns) == ["position", "token", "token_id", "credit", "credit_pct"]


def test_position_edges_add_up_to_aggregated_edges(tok):
    tr = Tracer(model=tiny_neox(), tokenizer=tok)
    text, target, distractor = PROMPTS[0]
    res = tr.trace(text, target, distractor, position_edges=True, edge_min_frac=0.0)
    pe = res.position_edges
    assert {"parent", "parent_pos", "child", "child_pos", "mode", "weight"} <= set(pe.columns)
    agg = pe.groupby(["parent", "child", "mode"])["weight"].sum()
    full = res.edges.set_index(["parent", "child", "mode"])["weight"]
    joined = full.to_frame("full").join(agg.to_frame("pos"), how="outer").fillna(0.0)
    assert rel(joined["pos"], joined["full"]) <= TOL
    # K and V children sit at or before the parent's position; Q children at it
    assert (pe["child_pos"] <= pe["parent_pos"]).all()
    q = pe[pe["mode"] == "Q"]
    assert (q["child_pos"] == q["parent_pos"]).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(text="", target=" Mary"), "text is empty"),
        (dict(text="<bos> Mary", target=""), "target is empty"),
        (dict(text="<bos> Mary", target=" Mary", root="attn_7_head_0@1"), "does not exist"),
        (dict(text="<bos> Mary", target=" Mary", root="attn_0_bias@1"), "bias component"),
        (dict(text="<bos> Mary", target=" Mary", root="nonsense@1"), "unknown component"),
        (dict(text="<bos> Mary", target=" Mary", root="mlp_0@5"), "out of range"),
        (dict(text="<bos> Mary", target=" Mary", root="mlp_0"), "COMPONENT@POSITION"),
        (dict(text="<bos> " + " ".join(["Mary"] * 80), target=" Mary"), "context"),
    ],
)
def test_bad_input_is_a_clear_error(tok, bad, match):
    tr = Tracer(model=tiny_gpt2(dtype=torch.float32), tokenizer=tok)
    with pytest.raises(InputError, match=match):
        tr.trace(bad["text"], bad["target"], root=bad.get("root"))


def test_target_that_encodes_to_nothing_and_multi_token_warning(tok):
    tr = Tracer(model=tiny_gpt2(dtype=torch.float32), tokenizer=tok)
    with pytest.raises(InputError, match="encodes to no token"):
        tr.trace("<bos> Mary", "   ")
    res = tr.trace("<bos> Mary", " John Mary")
    assert res.target_id == tok.convert_tokens_to_ids("John")
    assert any("2 tokens" in w for w in res.warnings)


def test_collect_errors_keeps_the_batch_going(tok):
    from unpack import TraceFailure

    tr = Tracer(model=tiny_gpt2(dtype=torch.float32), tokenizer=tok)
    out = tr.trace_batch(
        [
            {"text": "<bos> Mary John", "target": " Mary"},
            {"text": "", "target": " Mary"},
            {"text": "<bos> John", "target": " Mary", "root": "mlp_9@0"},
        ],
        on_error="collect",
    )
    assert out[0].tokens == ["<bos>", "Mary", "John"]
    assert isinstance(out[1], TraceFailure) and "empty" in out[1].error
    assert isinstance(out[2], TraceFailure) and "does not exist" in out[2].error


def test_unsupported_architecture_names_the_supported_ones(tok):
    from transformers import BertConfig, BertForMaskedLM
    from unpack.adapters import build_spec

    m = BertForMaskedLM(
        BertConfig(
            num_hidden_layers=1,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=60,
        )
    )
    with pytest.raises(InputError, match="gpt2.*gpt_neox"):
        build_spec(m)


def test_unknown_preset_and_field():
    with pytest.raises(InputError, match="unknown preset"):
        make_config("kqv_magic")
    with pytest.raises(InputError, match="unknown config field"):
        make_config("kqv_aligned", beta_typo=1)
    cfg = make_config("k_only_aligned")
    assert (cfg.w_K, cfg.w_Q, cfg.w_V) == (1.0, 0.0, 0.0)  # (deviation) not 0.3


@pytest.mark.parametrize(
    "make",
    [
        lambda: tiny_neox(parallel=True, hidden=32),
        lambda: tiny_neox(parallel=False, hidden=32),
        lambda: tiny_gpt2(n_embd=32),
    ],
    ids=["neox_par", "neox_seq", "gpt2"],
)
def test_fold_project_and_virtual_agree(tok, make):
    """The three K/Q contractions (docs/METHOD.md §4: fold W_K (R_s^T) Q into one vector;
    project and rotate each writer; project head writers through virtual weights)
    are the same numbers, on prompts shorter and longer than d; each is also
    checked against the reference."""
    tr = Tracer(model=make(), tokenizer=tok)  # d = 16
    long_text = "<bos> " + " ".join(f"w{i % 7}" for i in range(20))
    for text in (PROMPTS[0][0], long_text):
        assert_contractions_agree(tr, tr.prepare(text, " Mary"))
        for mode in ("fold", "project", "virtual"):
            tr.engine.mode = mode
            res = tr.trace(text, " Mary", " John")
            prep = tr.prepare(text, " Mary", " John")
            assert_same(res, reference_for(tr, prep, make_config("kqv_aligned")), tr.comps.names)
        tr.engine.mode = None
