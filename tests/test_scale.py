"""The engine at scale: chunked K/Q scores, the three contractions, metric seeds,
devices and weight dtypes. Every number is checked against the plain-loop
reference in fp64 (docs/METHOD.md §6-7), on prompts longer than the head dimension and
longer than a query chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import rel
from tests.models import tiny_gpt2, tiny_llama_gqa, tiny_neox
from unpack import InputError, Tracer, make_config
from unpack.capture import capture
from unpack.reference import Reference

TOL = 1e-8
LONG = "<bos> " + " ".join(
    [
        "When",
        "Mary",
        "and",
        "John",
        "went",
        "to",
        "the",
        "store",
        ",",
        "w3",
        "w1",
        "w4",
        "w1",
        "w5",
        "w9",
        "w2",
        "w6",
        "w5",
        "w3",
        "John",
        "gave",
        "a",
        "drink",
        "to",
    ]
)  # 25 tokens, d = 8
SHORT = "<bos> Then , Anne and Mary went to the park ."

KINDS = {
    "gpt2_learned_pos": lambda: tiny_gpt2(),
    "neox_partial_rotary": lambda: tiny_neox(parallel=True, rotary_pct=0.5),
    "neox_full_rotary_sequential": lambda: tiny_neox(parallel=False, rotary_pct=1.0),
    "llama_gqa": lambda: tiny_llama_gqa(),
}


def reference(tr, prep, cfg, root=None):
    cap = capture(
        tr.spec, torch.tensor([prep.ids]), torch.tensor([len(prep.ids)]), dtype=torch.float64
    )
    return Reference(cap, 0, cfg).trace(prep.target_id, prep.distractor_id, root=root)


def check(tr, res, p, cfg):
    prep = tr.prepare(p["text"], p["target"], p.get("distractor"), roots=[p.get("root")])
    root = prep.roots[0][1:] if prep.roots[0] else None
    credit, flow, edges, _ = reference(tr, prep, cfg, root)
    names, n = tr.comps.names, len(prep.ids)
    assert rel(res.token_credit, credit) <= TOL
    got = np.array([res.component_flow[nm] for nm in names])
    want = np.array([[flow[(c, q)] for q in range(n)] for c in range(len(names))])
    assert rel(got, want) <= TOL
    mine = {
        (names.index(a), names.index(c), m): w
        for a, c, m, w in res.edges[["parent", "child", "mode", "weight"]].itertuples(index=False)
    }
    keys = sorted(set(mine) | {k for k, v in edges.items() if v != 0})
    assert rel([mine.get(k, 0.0) for k in keys], [edges.get(k, 0.0) for k in keys]) <= TOL
    assert np.abs(credit).max() > 0


BATCH = [
    {"text": LONG, "target": " Mary", "distractor": " John"},
    {"text": SHORT, "target": " Anne", "distractor": None},
    {"text": LONG, "target": " Mary", "distractor": " John", "root": "attn_1_head_1@-1"},
    {"text": LONG, "target": " Mary", "distractor": " John", "root": "mlp_0@12"},
]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", ["fold", "project", "virtual"])
def test_chunked_modes_equal_reference(tok, kind, mode):
    """A padded batch with reroots, K/Q scored three query positions at a time
    (and one at a time), through each contraction, equals the reference."""
    tr = Tracer(model=KINDS[kind](), tokenizer=tok)
    assert len(tr.prepare(LONG, " Mary").ids) > 2 * tr.spec.d_head
    tr.engine.mode = mode
    spec = tr.spec
    from unpack.cost import chunk_rows, shape_of

    S, L = 25, spec.n_layers - 1
    per_row = 2 * spec.n_heads * S * max(2 * tr.comps.n_writers_attn(L), spec.d_model)
    for elements in (3 * per_row, 1):
        tr.engine.chunk_elements = elements
        rows = chunk_rows(shape_of(spec), L, 2, S, mode, elements)
        assert rows == 1 if elements == 1 else 1 < rows < S
        for preset in ("kqv_aligned", "kqv_weighted"):
            results = tr.trace_batch(BATCH, preset=preset, batch_size=8)
            for p, res in zip(BATCH, results):
                check(tr, res, p, make_config(preset))


def test_fused_equals_reference_and_plain_path(tok):
    """The fused K/Q path (unpack.fused.FusedKQ: no score tensor is centered or
    normalized whole) on GQA with rotary and virtual weights, a padded batch with a
    reroot, several chunks of query positions: the reference's credit, flow and
    edges within 1e-8, and the plain path's paths and position-resolved edges."""
    tr = Tracer(model=KINDS["llama_gqa"](), tokenizer=tok)
    tr.engine.mode, tr.engine.chunk_elements, tr.engine.fused = "virtual", 1 << 13, True
    assert 1 < dec_rows(tr) < 25
    ids = tr.prepare(LONG, " Mary").ids
    cap = capture(tr.spec, torch.tensor([ids]), torch.tensor([len(ids)]), dtype=tr.dtype)
    d_hat = tr.start(cap, torch.tensor([0]), None, "importance")[1]
    assert all(
        tr.layer_ops(cap, make_config("kqv_aligned"), d_hat)(L)[1].fused is not None
        for L in range(tr.spec.n_layers)
    )  # the fused path is the one tested
    kw = dict(path_min_frac=1e-3, top_paths_k=60, position_edges=True, edge_min_frac=1e-4)
    batch = BATCH[1:3]  # 11 and 25 tokens; the long one rerooted at a head
    fused = tr.trace_batch(batch, batch_size=8, **kw)
    for p, res in zip(batch, fused):
        check(tr, res, p, make_config("kqv_aligned", **kw))
    tr.engine.fused = False
    for p, a, b in zip(batch, fused, tr.trace_batch(batch, batch_size=8, **kw)):
        pa, pb = {q.chain: q.score for q in a.paths}, {q.chain: q.score for q in b.paths}
        assert len(pa) >= 20 and set(pa) == set(pb), p
        assert max(abs(pa[k] - pb[k]) / abs(pb[k]) for k in pb) <= TOL
        key = ["parent", "parent_pos", "child", "child_pos", "mode"]
        pe = a.position_edges.merge(b.position_edges, on=key, how="outer").fillna(0.0)
        assert len(pe) > 20 and rel(pe["weight_x"], pe["weight_y"]) <= TOL


@pytest.mark.parametrize("kind", ["neox_partial_rotary", "llama_gqa"])
def test_chunked_paths_and_position_edges(tok, kind):
    """Paths and position-resolved edges do not depend on the chunking: the same
    chains and scores with one query position per chunk as with one chunk, and the
    position edges add up to the aggregated edges."""
    tr = Tracer(model=KINDS[kind](), tokenizer=tok)
    kw = dict(path_min_frac=1e-3, top_paths_k=60, position_edges=True, edge_min_frac=0.0)
    tr.engine.chunk_elements = 1 << 30
    whole = tr.trace(LONG, " Mary", " John", **kw)
    tr.engine.chunk_elements = 1
    assert dec_rows(tr) == 1
    chunked = tr.trace(LONG, " Mary", " John", **kw)
    # paths tie exactly (a layer-0 head whose only writer is the embedding gives the
    # same score through K and V): compare those strictly above the 40th score
    cut = abs(whole.paths[40].score) * (1 + 1e-9)
    a = {p.chain: p.score for p in whole.paths if abs(p.score) > cut}
    b = {p.chain: p.score for p in chunked.paths if abs(p.score) > cut}
    assert len(a) >= 30 and set(a) == set(b)
    assert max(abs(a[k] - b[k]) / abs(a[k]) for k in a) <= TOL
    for res in (whole, chunked):
        pe = res.position_edges
        agg = pe.groupby(["parent", "child", "mode"])["weight"].sum()
        full = res.edges.set_index(["parent", "child", "mode"])["weight"]
        joined = full.to_frame("full").join(agg.to_frame("pos"), how="outer").fillna(0.0)
        assert rel(joined["pos"], joined["full"]) <= TOL
        assert (pe["child_pos"] <= pe["parent_pos"]).all()


def dec_rows(tr):
    from unpack.cost import chunk_rows, shape_of
    from unpack.decompose import score_mode

    S = len(tr.prepare(LONG, " Mary").ids)
    L = tr.spec.n_layers - 1
    return chunk_rows(
        shape_of(tr.spec),
        L,
        1,
        S,
        score_mode(tr.spec, 1, S, L, tr.engine),
        tr.engine.chunk_elements,
    )


@pytest.mark.parametrize("kind", list(KINDS))
@torch.no_grad()
def test_metric_seeds(tok, kind):
    """``seed="metric"``: with a distractor the seeds plus the bias parts add up to
    the logit difference; without one they are the default seeds (target minus
    mean logit), not zero."""
    tr = Tracer(model=KINDS[kind](), tokenizer=tok)
    spec = tr.spec
    for distractor in (" John", None):
        res = tr.trace(LONG, " Mary", distractor, seed="metric")
        imp = tr.trace(LONG, " Mary", distractor)
        prep = tr.prepare(LONG, " Mary", distractor)
        n = len(prep.ids)
        cap = capture(
            spec, torch.tensor([prep.ids]), torch.tensor([n]), dtype=torch.float64, center=False
        )
        W_U = spec.W_U.double()
        tid = prep.target_id
        u = W_U[tid] - (W_U[prep.distractor_id] if distractor else W_U.mean(0))
        d = spec.ln_final.weight.double() * u / cap.sigma_final[0, n - 1]
        Wt = cap.all_writers()[0, :, n - 1]
        if spec.ln_final.kind == "layer":
            Wt = Wt - Wt.mean(-1, keepdim=True)
        per_writer = (Wt @ d).detach()  # credited and bias components
        bias_parts = float(per_writer.sum()) - float(sum(res.seeds.values()))
        if spec.ln_final.bias is not None:
            bias_parts += float(spec.ln_final.bias.double() @ u)
        logits = cap.logits_t[0]
        if spec.b_U is not None:
            b = spec.b_U.double()
            bias_parts += float(b[tid] - (b[prep.distractor_id] if distractor else b.mean()))
        want = float(logits[tid] - (logits[prep.distractor_id] if distractor else logits.mean()))
        got = sum(res.seeds.values()) + bias_parts
        assert abs(got - want) <= 1e-9 * max(1.0, abs(want))
        assert max(abs(v) for v in res.seeds.values()) > 1e-3
        if distractor is None:
            assert all(abs(res.seeds[k] - imp.seeds[k]) <= 1e-12 for k in imp.seeds)
        else:
            assert any(abs(res.seeds[k] - imp.seeds[k]) > 1e-6 for k in imp.seeds)
            assert abs(sum(res.seeds.values()) - (res.logit_diff - bias_parts)) <= 1e-9 * max(
                1.0, abs(res.logit_diff)
            )
        check(
            tr,
            res,
            {"text": LONG, "target": " Mary", "distractor": distractor},
            make_config("kqv_aligned", seed="metric"),
        )


def test_device_that_is_not_there_is_a_clear_error():
    from unpack.loading import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(InputError, match=r"cuda:%d.*--device" % n):
        resolve_device(f"cuda:{n}")
    with pytest.raises(InputError, match="tpu9"):
        resolve_device("tpu9")


@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
def test_half_weights_math_in_fp32(tok, wdtype):
    """Weights stay bf16/fp16 (no fp32 copy of the model), the math runs in fp32:
    every §9 invariant holds at fp32 tolerances, invariant 9 included: it compares
    with the model's forward in fp32 math on the same weights, and the model's own
    low-precision forward, shown apart, differs by far more (its rounding)."""
    from unpack.validate import validate_model

    model = tiny_neox(hidden=32, rotary_pct=0.25).to(wdtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = Tracer(model=model, tokenizer=tok)
    assert tr.dtype == torch.float32 and tr.spec.layers[0].W_Q.dtype == wdtype
    checks = validate_model(tracer=tr, texts=[LONG, SHORT])
    for c in checks:
        assert c.ok and c.tolerance <= 1e-4, str(c)
    nine = {c.name: c for c in checks if c.name.startswith("9")}
    assert len(checks) == 10 and sorted(c.info for c in checks) == [False] * 9 + [True]
    own = nine[f"9 info: the model's own {str(wdtype)[6:]} forward"].worst_error
    assert own > 100 * nine["9 captured logits = model forward"].worst_error and own > 1e-4
    after = model.state_dict()  # the fp32 forward cast each module back, exactly
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    res = tr.trace(LONG, " Mary", " John")
    assert np.isfinite(res.token_credit).all() and np.abs(res.token_credit).max() > 0


def test_planner_cuts_batches_as_the_tracer(tok, monkeypatch):
    """`unpack plan` predicts a batch the way the tracer runs it: the same cut into
    batches under the score-buffer budget (its peak is the largest batch's)."""
    from unpack import cost
    from unpack.plan import predict

    tr = Tracer(model=tiny_gpt2(), tokenizer=tok)
    S = len(tr.prepare(LONG, " Mary").ids)
    shape = cost.shape_of(tr.spec)
    # a budget that holds three prompts of this length, not four
    monkeypatch.setattr(cost, "BATCH_BUDGET", 3 * shape.n_heads * S * S * shape.n_components + 1)
    seen, run = [], tr._run
    monkeypatch.setattr(
        tr, "_run", lambda preps, cfg: (seen.append(len(preps)), run(preps, cfg))[1]
    )
    words = ["w1", "w2", "w3", "w4", "w5", "w6", "w9"]
    prompts = [{"text": LONG.replace("w6", w), "target": " Mary"} for w in words]
    tr.trace_batch(prompts, batch_size=16)
    assert seen == [3, 3, 1]
    assert predict(shape, S, len(prompts))["batches"] == seen
    one = predict(shape, S, 3)["peak"]
    assert predict(shape, S, len(prompts))["peak"] == one > predict(shape, S, 1)["peak"]


@pytest.mark.parametrize(
    "model",
    [lambda: tiny_gpt2(n_layer=4), lambda: tiny_neox(n_layer=4)],
    ids=["gpt2_learned_pos", "neox_partial_rotary"],
)
def test_sweep_skips_what_holds_no_credit(tok, model, monkeypatch):
    """The sweep makes no K/Q chunk for a layer above the root or for query
    positions where no head holds credit (the seeds sit at the last position, so
    the last layer needs that one query), and what it leaves out changes nothing:
    credit, edges, paths and position edges equal a sweep that scores every
    layer and position, and the reference."""
    import unpack.flow as flow
    from unpack.decompose import AttnScores

    tr = Tracer(model=model(), tokenizer=tok)
    tr.engine.chunk_elements = 1  # one query position per chunk
    made = []
    key = AttnScores.key
    monkeypatch.setattr(
        AttnScores, "key", lambda self, q0, q1: made.append((self.lc.L, q0)) or key(self, q0, q1)
    )
    kw = dict(path_min_frac=1e-3, top_paths_k=40, position_edges=True, edge_min_frac=0.0)
    S = len(tr.prepare(LONG, " Mary").ids)
    runs = {}
    for root in (None, "attn_1_head_1@-1"):
        made.clear()
        runs[root] = tr.trace(LONG, " Mary", " John", root=root, **kw)
        check(
            tr,
            runs[root],
            {"text": LONG, "target": " Mary", "distractor": " John", "root": root},
            make_config("kqv_aligned"),
        )
        if root is None:  # every layer; the last one only at the target position
            assert sorted(made) == sorted(
                [(L, q) for L in range(3) for q in range(S)] + [(3, S - 1)]
            )
        else:  # nothing above layer 1, and layer 1 only where the root sits
            assert max(L for L, _ in made) == 1 and [q for L, q in made if L == 1] == [S - 1]
    monkeypatch.setattr(flow, "query_range", lambda xs, search=None: (0, xs.shape[3]))
    monkeypatch.setattr(flow.Flow, "holds", lambda self, lo, hi: True)
    for root, res in runs.items():
        made.clear()
        full = tr.trace(LONG, " Mary", " John", root=root, **kw)
        assert len(made) == 4 * S
        assert np.array_equal(full.token_credit, res.token_credit)
        assert [(p.chain, p.score) for p in full.paths] == [(p.chain, p.score) for p in res.paths]
        cols = ["parent", "parent_pos", "child", "child_pos", "mode"]
        a = full.position_edges.sort_values(cols).reset_index(drop=True)
        b = res.position_edges.sort_values(cols).reset_index(drop=True)
        assert a[cols].equals(b[cols]) and np.allclose(a["weight"], b["weight"], rtol=1e-12, atol=0)


def test_planner_counts_the_layers_a_root_leaves():
    """A root at layer L leaves the sweep L + 1 layers: the planner's decomposition
    time shrinks with them (to nothing for an embedding root), the forward pass
    does not, and all layers is the default; the bench maps a root to them."""
    from unpack import bench
    from unpack.plan import Rates, predict, resolve_shape

    shape = resolve_shape("gpt2-small", 4)
    rates = Rates(1e11, 5e9, "cpu", 5e10)
    secs = {k: predict(shape, 64, rates=rates, layers=k)["seconds"] for k in (None, 12, 6, 1, 0)}
    assert secs[None] == secs[12]
    assert len({s["forward"] for s in secs.values()}) == 1
    dec = [secs[k]["decompose"] for k in (12, 6, 1, 0)]
    assert dec[0] > dec[1] > dec[2] > dec[3] == 0
    model, tk = bench.random_model("tiny")
    tr = Tracer(model=model, tokenizer=tk)
    by_root = {
        r: bench.predicted(tr, 8, 1, rates, 0, r)["seconds"]
        for r in (None, "attn_1_head_0@-1", "mlp_0@3", "embedding@0")
    }
    assert (
        by_root[None] == by_root["attn_1_head_0@-1"] > by_root["mlp_0@3"] > by_root["embedding@0"]
    )
