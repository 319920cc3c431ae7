"""The component-name API (unpack/components.py, docs/METHOD.md §1): parsing,
labels, the reading order and the layer index, on a sequential GPT-2 and a
parallel GPT-NeoX, checked against the Components of their ModelSpec."""

from __future__ import annotations

import random

import pytest
from tests.models import tiny_gpt2, tiny_neox

from unpack import components as C
from unpack.adapters import build_spec
from unpack.errors import InputError


@pytest.fixture(scope="module", params=["gpt2", "neox_parallel"])
def comps(request):
    model = tiny_gpt2(n_layer=3) if request.param == "gpt2" else tiny_neox(n_layer=3)
    return C.Components.from_spec(build_spec(model))


def test_parse_and_layer_head():
    assert C.parse_component("attn_12_head_3") == ("head", 12, 3)
    assert C.parse_component("attn_2_bias") == ("attn_bias", 2, None)
    assert C.parse_component("mlp_7") == ("mlp", 7, None)
    assert C.parse_component("pos_embedding") == ("pos_embedding", None, None)
    assert C.layer_head("attn_12_head_3") == (12, 3)
    assert C.layer_head("mlp_7") == (7, None) and C.layer_head("embedding") == (-1, None)
    for bad in ("attn_1", "mlp_x", "head_1_attn_2", "attn_1_head_2@END", ""):
        with pytest.raises(InputError, match="unknown component"):
            C.parse_component(bad)


def test_short_labels():
    assert [
        C.short_label(n) for n in ("attn_9_head_11", "mlp_3", "embedding", "pos_embedding")
    ] == ["9.11", "m3", "emb", "pos"]
    assert C.short_label("attn_2_bias") == "attn_2_bias"  # not a credited component: as is
    assert C.short_label("attn_9_head_9@END") == "attn_9_head_9@END"


def test_sort_key_gives_the_reading_order(comps):
    names = list(comps.all_names)
    shuffled = random.Random(0).sample(names, len(names))
    assert sorted(shuffled, key=C.sort_key) == names
    assert sorted(["not_a_component", "mlp_0", "embedding"], key=C.sort_key) == [
        "embedding",
        "mlp_0",
        "not_a_component",
    ]


def test_layer_index_and_attrs_follow_the_topology(comps):
    parallel = comps.parallel
    assert parallel is (comps.has_pos is False)  # the tiny GPT-2 is sequential, the NeoX parallel
    for n in comps.all_names:
        a = C.attrs(n, parallel)
        assert a["depth"] == comps.layer_index(n) == C.layer_index(n, parallel)
        assert (a["layer"], a["head"]) == C.layer_head(n)
    assert C.layer_index("mlp_1", parallel) == (1.0 if parallel else 1.5)
    assert C.layer_index("attn_1_head_0", parallel) == 1.0
    assert C.layer_index("embedding", parallel) == -1.0
    # an MLP reads the heads of its own layer only in a sequential block (§1)
    L = 1
    reads_own_heads = comps.n_writers_mlp(L) > comps.head_slot(L, comps.n_heads - 1)
    assert reads_own_heads is (not parallel)
    assert C.attrs("attn_2_head_1", parallel) == dict(kind="head", layer=2, head=1, depth=2.0)
