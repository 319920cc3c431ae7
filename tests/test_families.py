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

from tests.helpers import assert_contractions_agree, rel
from tests.models import FAMILIES, WORDS, make_config, make_family, word_tokenizer
from unpack import Tracer, cli
from unpack import make_config as preset
from unpack.adapters import build_spec
from unpack.capture import capture
from unpack.reference import Reference
from unpack.validate import validate_model

TOL = 1e-8
FIRST = sorted({k.split("_")[0]: k for k in reversed(list(FAMILIES))}.values())

# 11 tokens: longer than the head dim (8) and the windows (3, 4)
LONG = "<bos> When Mary and John went to the store , John gave"
PROMPTS = [(LONG, " Mary", " John"), ("<bos> w1 w2 w3 w1 w2", " w3", None)]


@pytest.fixture(scope="module", params=list(FAMILIES))
def named_tracer(request, tok):
    return request.param, Tracer(model=make_family(request.param), tokenizer=tok)


def reference(tracer, prep, cfg, root=None, **kw):
    cap = capture(
        tracer.spec, torch.tensor([prep.ids]), torch.tensor([len(prep.ids)]), dtype=torch.float64
    )
    return Reference(cap, 0, cfg).trace(prep.target_id, prep.distractor_id, root=root, **kw)


def assert_same(res, ref_out, names):
    credit, flow, edges, _ = ref_out
    assert np.abs(credit).max() > 0
    assert rel(res.token_credit, credit) <= TOL
    n = len(res.tokens)
    got = np.array([res.component_flow[nm] for nm in names])
    want = np.array([[flow[(c, q)] for q in range(n)] for c in range(len(names))])
    assert rel(got, want) <= TOL
    mine = {
        (names.index(p), names.index(c), m): w
        for p, c, m, w in res.edges[["parent", "child", "mode", "weight"]].itertuples(index=False)
    }
    keys = sorted(set(mine) | {k for k, v in edges.items() if v != 0})
    assert rel([mine.get(k, 0.0) for k in keys], [edges.get(k, 0.0) for k in keys]) <= TOL


@pytest.mark.parametrize("name", list(FAMILIES))
def test_validate_cli(name, tmp_path, capsys):
    """`unpack validate --model DIR` on a saved random model of the family: 9/9."""
    make_family(name, torch.float32).save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    code = cli.main(["validate", "--model", str(tmp_path), "--text", LONG, "--text", PROMPTS[1][0]])
    out = capsys.readouterr().out
    assert code == 0 and "9 passed, 0 failed" in out, out


@pytest.mark.parametrize("name", FIRST)
def test_plan_from_config_only(name, tmp_path, capsys):
    """`unpack plan --model DIR` for a directory holding only the family's config.json."""
    make_config(name).save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    code = cli.main(["plan", "--model", str(tmp_path), "--tokens", "16", "--json"])
    out = capsys.readouterr().out
    import json

    d = json.loads(out)
    assert code == 0 and d["fits"] and d["peak_bytes"] > 0 and d["seconds_per_prompt"] > 0


def test_batch_and_reroot_equal_reference(named_tracer):
    """A padded batch (two lengths; for each family's first entry a reroot too) equals
    each prompt traced alone by the reference: token credit, flows and edges to 1e-8."""
    name, tracer = named_tracer
    batch = [{"text": t, "target": tg, "distractor": d} for t, tg, d in PROMPTS]
    if name in FIRST:
        batch.append(
            {"text": LONG, "target": " Mary", "distractor": " John", "root": "attn_1_head_2@-3"}
        )
    results = tracer.trace_batch(batch, preset="kqv_aligned", batch_size=8)
    assert len({len(r.tokens) for r in results}) > 1
    for p, res in zip(batch, results):
        prep = tracer.prepare(p["text"], p["target"], p.get("distractor"), roots=[p.get("root")])
        root = prep.roots[0][1:] if prep.roots[0] else None
        assert_same(
            res, reference(tracer, prep, preset("kqv_aligned"), root=root), tracer.comps.names
        )


@pytest.mark.parametrize("name", FIRST)
def test_paths_equal_reference(name, tok):
    """§7: the engine's top pruned paths are the reference's enumeration (chains
    and scores), and unpruned paths add up to the token credit."""
    tracer = Tracer(model=make_family(name), tokenizer=tok)
    text, target, distractor = PROMPTS[1]
    res = tracer.trace(text, target, distractor, path_min_frac=1e-3, top_paths_k=30)
    prep = tracer.prepare(text, target, distractor)
    *_, paths = reference(tracer, prep, preset("kqv_aligned"), with_paths=True, path_min_frac=1e-3)
    names = tracer.comps.names
    chain = lambda hops: "→".join(
        f"{names[c]}[{m}]@{p}"
        if m in ("K", "Q", "V")  # noqa: E731
        else f"{names[c]}@{p}"
        for c, p, m in hops
    )
    ref = sorted(((chain(h), s) for h, s in paths), key=lambda x: -abs(x[1]))
    assert len(res.paths) == 30 and len(ref) >= 30
    # the same 30 largest scores (paths of equal size may swap places at the cut) ...
    assert rel(sorted(abs(p.score) for p in res.paths), sorted(abs(s) for _, s in ref[:30])) <= TOL
    # ... and every path the engine reports is one of the reference's, with its score
    ref = dict(ref)
    for p in res.paths:
        assert abs(p.score - ref[p.chain]) <= TOL * abs(ref[p.chain]), p.chain
    short = tracer.trace(
        "<bos> Mary John", " Mary", None, path_min_frac=0.0, max_path_nodes=5_000_000
    )
    assert not short.paths_truncated
    assert rel(short.path_credit, short.token_credit) <= TOL


def test_gemma3_spec_and_window(tok):
    """Gemma-3's spec: a local layer with its window and its own rotary, √D embedding
    scale; removing the window breaks invariant 9 on a prompt longer than it (so
    the window is really used), and the unsupported error points to the guide."""
    model = make_family("gemma3")
    spec = build_spec(model)
    assert [lw.window for lw in spec.layers] == [4, None]
    assert spec.layers[0].rotary is not spec.layers[1].rotary
    assert spec.embed_scale == pytest.approx(16**0.5)
    assert spec.layers[0].q_norm is not None and spec.layers[0].ln_attn_post is not None
    tr = Tracer(model=model, tokenizer=tok)
    for lw in tr.spec.layers:
        lw.window = None
    bad = {c.name[0]: c for c in validate_model(tracer=tr, texts=[LONG])}
    assert not bad["9"].ok and bad["9"].worst_error > 1e-3


def test_gemma2_soft_caps(tok):
    """Gemma-2's soft-caps: metric seeds add up to the capped logit difference (not
    the uncapped one), and the trace equals the reference's."""
    tr = Tracer(model=make_family("gemma2"), tokenizer=tok)
    assert tr.spec.final_softcap == 3.0 and all(lw.softcap == 2.0 for lw in tr.spec.layers)
    res = tr.trace(LONG, " Mary", " John", seed="metric")
    prep = tr.prepare(LONG, " Mary", " John")
    assert_same(res, reference(tr, prep, preset("kqv_aligned", seed="metric")), tr.comps.names)
    cap = capture(
        tr.spec, torch.tensor([prep.ids]), torch.tensor([len(prep.ids)]), dtype=torch.float64
    )
    tid, did = torch.tensor([prep.target_id]), torch.tensor([prep.distractor_id])
    seeds, _ = tr.start(cap, tid, did, "metric")
    raw = float(cap.logits_raw_t[0, tid] - cap.logits_raw_t[0, did])
    assert abs(float(seeds.sum().detach()) - res.logit_diff) <= 1e-9 * abs(res.logit_diff)
    assert abs(raw - res.logit_diff) > 1e-2


def test_unsupported_type_lists_the_supported_and_points_to_the_guide(tmp_path, capsys):
    """build_spec and `unpack plan` refuse a model type no adapter knows (exit 2),
    naming every supported type and docs/ADAPTERS.md."""
    from unpack import InputError

    cfg = tf.BloomConfig(vocab_size=len(WORDS), hidden_size=16, n_layer=1, n_head=2)
    with pytest.raises(InputError, match=r"gemma3_text.*olmo2.*phi3.*qwen3.*docs/ADAPTERS\.md"):
        build_spec(tf.BloomForCausalLM(cfg))
    cfg.save_pretrained(tmp_path)
    assert cli.main(["plan", "--model", str(tmp_path), "--tokens", "8"]) == 2
    assert "docs/ADAPTERS.md" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["gemma3", "gemma2", "olmo2", "qwen3_bias_window", "gptj"])
def test_contractions_agree(name, tok):
    """The three K/Q contractions (fold, project, virtual; docs/METHOD.md §4) give
    the same raw scores under qk-norm, post-norms, windows, soft-caps and per-layer
    rotary (everything after the scores is shared by the three)."""
    tr = Tracer(model=make_family(name), tokenizer=tok)
    assert_contractions_agree(tr, tr.prepare(LONG, " Mary", " John"))
