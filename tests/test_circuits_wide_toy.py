"""Discovery and verification on the wider shipped toy induction model (attn-only-d128,
four heads per layer): two previous-token heads share the induction heads' K, and a
current-token head feeds their Q and V. The heads are read off the model's own
attention (unpack.toy), independently of the traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WIDE = REPO / "unpack" / "toy" / "checkpoints" / "attn-only-d128"


def current_token_heads(model, threshold: float) -> set[str]:
    """Layer-0 heads whose mean attention to their own position reaches ``threshold``
    on fresh sequences of the toy's data (the seed unpack.toy.groundtruth uses)."""
    from unpack.toy.data import sample
    from unpack.toy.groundtruth import current_token_scores
    from unpack.toy.train import VARIANTS

    b = sample(VARIANTS["attn-only-d128"], torch.Generator().manual_seed(777), 128)
    score = current_token_scores(model, b)[0]
    return {f"attn_0_head_{h}" for h in (score >= threshold).nonzero().flatten().tolist()}


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A store of 16 induction prompts on attn-only-d128, its tracer, and the heads its
    own attention names: previous-token, induction (toy.json) and current-token."""
    from tests.helpers import toy_store, truth_heads

    db = tmp_path_factory.mktemp("wide") / "toy.duckdb"
    tracer, truth = toy_store(WIDE, db, 16)
    prev, induction = truth_heads(truth)
    heads = dict(
        prev=prev,
        induction=induction,
        current=current_token_heads(tracer.model, truth["threshold"]),
    )
    return db, tracer, heads


@pytest.fixture(scope="module")
def wide_circuit(wide):
    from ingest.discover import discover

    db, tracer, _ = wide
    return discover(db, seeds=4, per_mode=1, relative=0.5, depth=2, min_share=0.5, tracer=tracer)


def test_discovery_returns_both_previous_token_heads(wide, wide_circuit):
    """With --relative 0.5 the circuit is exactly the heads the model's attention names;
    with the strongest head per mode alone the weaker previous-token head is missed,
    since the stronger one out-reads it in the induction heads' K in every prompt."""
    from ingest.discover import discover

    db, tracer, heads = wide
    assert len(heads["prev"]) == 2 and len(heads["induction"]) == 4 and len(heads["current"]) == 1
    c = wide_circuit
    assert set(c.components["component"]) == heads["prev"] | heads["induction"] | heads["current"]
    assert set(c.components[c.components["depth"] == 0]["component"]) == heads["induction"]
    assert c.params["relative"] == 0.5
    e = c.edges
    for parent in heads["induction"]:  # K from both previous-token heads, Q and V from the other
        mine = e[e["parent"] == parent]
        assert set(mine[mine["mode"] == "K"]["child"]) == heads["prev"]
        assert set(mine[mine["mode"] != "K"]["child"]) == heads["current"]
    top1 = discover(db, seeds=4, per_mode=1, depth=2, min_share=0.5, tracer=tracer, store=False)
    missed = set(c.components["component"]) - set(top1.components["component"])
    assert len(missed) == 1 and missed <= heads["prev"] and top1.params["relative"] is None


def test_knocking_the_wide_circuit_out_destroys_induction(wide, wide_circuit):
    """The circuit knocked out: no repeated-half accuracy left; the head outside it
    knocked out (every draw, disjoint from the circuit): the accuracy stays; any one of
    the circuit's own heads costs more of the logit difference than it."""
    from ingest.verify import verify

    db, tracer, _ = wide
    v = verify(
        db,
        wide_circuit.circuit_id,
        ablation="resample",
        n_random=8,
        baseline="outside",
        tracer=tracer,
    )
    b, circuit = v.baseline, set(wide_circuit.components["component"])
    assert v.accuracy["clean"] >= 0.9 and v.accuracy["kept"] >= 0.9
    assert v.accuracy["knocked"] <= 0.1 and v.necessity >= 0.85 and v.faithfulness >= 0.9
    assert b["size"] == 1 and all(len(r) == 1 and not set(r) & circuit for r in b["circuits"])
    assert min(b["knocked_accuracy"]) >= 0.8 and max(b["necessity"]) < 0.2
    assert np.mean(b["faithfulness"]) < v.faithfulness - 0.5
    e = b["equal_size"]  # the circuit's 1-head subsets: each costs more than the head outside
    assert min(e["necessity"]) > max(b["necessity"])
    assert np.mean(e["necessity"]) > np.mean(b["necessity"]) + 0.2


def test_relative_selection_keeps_heads_close_to_the_strongest():
    """Per prompt and mode: the per_mode strongest, plus every head within the given
    fraction of the strongest; without it, exactly the per_mode strongest."""
    from ingest.discover import check_params, select_edges
    from unpack.errors import InputError

    rows = [
        (p, "r", c, "K", w)
        for p in (1, 2)
        for c, w in (("a", 1.0), ("b", 0.6 if p == 1 else 0.4), ("c", -0.1))
    ]
    w = pd.DataFrame(rows, columns=["prompt_id", "root", "child", "mode", "w"])
    off = select_edges(w, "r", [1, 2], 1, 0.5)
    assert off["child"].tolist() == ["a"]
    on = select_edges(w, "r", [1, 2], 1, 0.5, relative=0.5).set_index("child")
    assert sorted(on.index) == ["a", "b"] and on.loc["b", "share"] == 0.5
    assert on.loc["b", "weight"] == pytest.approx(0.5)  # mean over both prompts
    assert sorted(select_edges(w, "r", [1, 2], 1, 1.0, relative=0.35).child) == ["a", "b"]
    for bad in (0.0, 1.5, True):
        with pytest.raises(InputError, match="--relative"):
            check_params(3, 1, 2, 0.5, bad)


# ----------------------------------------------------------- a few heads of sixteen
SPARSE = REPO / "unpack" / "toy" / "checkpoints" / "attn-only-d128-sparse"


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """attn-only-d128-sparse (8 heads per layer, trained with a price on each head's
    output): 16 induction prompts stored, the 4-seed circuit, its heads by toy.json."""
    from ingest.discover import discover
    from tests.helpers import toy_store, truth_heads

    db = tmp_path_factory.mktemp("sparse") / "toy.duckdb"
    tracer, truth = toy_store(SPARSE, db, 16)
    c = discover(db, seeds=4, per_mode=1, relative=0.5, depth=2, min_share=0.5, tracer=tracer)
    return (db, tracer, c, *truth_heads(truth))


def test_sparse_toy_discovery_is_the_named_heads_that_write(sparse):
    """The previous-token head (the only one its attention names) and the four induction
    heads with the largest direct effect, each fed through K by that head. The other
    heads the attention names as induction heads stay out, and rightly: knocked out
    together on fresh prompts they cost almost nothing, while the circuit knocked out
    on the same fresh prompts leaves no accuracy."""
    db, tracer, c, prev, induction = sparse
    comps = set(c.components["component"])
    seeds = set(c.components[c.components["depth"] == 0]["component"])
    assert len(prev) == 1 and len(induction) >= 6
    assert len(seeds) == 4 and seeds <= induction and comps == seeds | prev
    k = c.edges[c.edges["mode"] == "K"]
    assert set(k["parent"]) == seeds and set(k["child"]) == prev
    assert (k["share"] >= 0.9).all()
    from ingest.verify import verify_on_task

    def fresh(heads):
        return verify_on_task(
            str(SPARSE),
            sorted(heads),
            task="induction",
            n=32,
            prompt_seed=1,
            ablation="resample",
            n_random=1,
            tracer=tracer,
        )

    left_out = fresh(induction - seeds)
    assert left_out.necessity < 0.15 and left_out.accuracy["knocked"] >= 0.9
    found = fresh(comps)
    assert found.necessity >= 0.85 and found.accuracy["knocked"] <= 0.1


def test_random_circuits_of_the_sparse_circuits_size_keep_the_induction(sparse):
    """Knocked out, the circuit's 5 heads take the repeated-half accuracy to nothing;
    5 random heads outside it, every draw, leave it whole. Drawn from all 16 heads,
    a random circuit fails only when it holds one of the circuit's heads."""
    from ingest.verify import verify

    db, tracer, c, _, _ = sparse
    circuit = set(c.components["component"])
    v = verify(db, c.circuit_id, ablation="resample", n_random=8, baseline="outside", tracer=tracer)
    b = v.baseline
    assert v.accuracy["clean"] >= 0.9 and v.accuracy["kept"] >= 0.9
    assert v.accuracy["knocked"] <= 0.1 and v.necessity >= 0.85
    assert b["size"] == len(circuit) == 5
    assert all(len(r) == 5 and not set(r) & circuit for r in b["circuits"])
    assert min(b["knocked_accuracy"]) >= 0.9 and max(b["necessity"]) < 0.2
    s = verify(
        db, c.circuit_id, ablation="resample", n_random=12, baseline="size", tracer=tracer
    ).baseline
    assert s["size"] == 5
    for r, acc in zip(s["circuits"], s["knocked_accuracy"]):
        if acc < 0.9:
            assert set(r) & circuit, (r, acc)
    assert max(s["knocked_accuracy"]) >= 0.9  # some draws miss the circuit, and keep the task
