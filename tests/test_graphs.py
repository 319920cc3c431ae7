"""Circuit graphs (app/graphs.py) on a store whose rows are written by hand, so
every weight, mode, share and comparison below is known exactly."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from app import graphs as gr
from app.db import open_db
from tests.hand_store import edge, flow, prompt, trace, write_store
from unpack.errors import InputError


# ------------------------------------------------------------------ a hand-written store

# Model m2: 2 layers x 2 heads. Prompts 1-3 are ioi_io, 4 is abc_c, 5 repeats
# prompt 1 (a second ingest of the same text: it must count once), 6 is a
# reroot of prompt 1 at attn_1_head_0. Model m4: 4 layers x 8 heads, one prompt.
H10, H01, H11 = "attn_1_head_0", "attn_0_head_1", "attn_1_head_1"
EDGES = [
    # trace 1: K split over two position pairs (0.2 + 0.1)
    edge(1, H10, H01, "K", 0.2, 5, 2),
    edge(1, H10, H01, "K", 0.1, 5, 3),
    edge(1, H10, H01, "V", 0.05),
    edge(1, H10, "embedding", "Q", 0.4),
    edge(1, "mlp_1", H10, "MLP", 0.5),
    edge(1, H01, "embedding", "V", 0.25),
    # trace 2
    edge(2, H10, H01, "K", 0.1),
    edge(2, H10, "embedding", "Q", 0.2),
    edge(2, "mlp_1", H10, "MLP", 0.3),
    # trace 3: the H10 -> H01 edge goes through V
    edge(3, H10, H01, "V", 0.6),
    edge(3, H01, "embedding", "V", -0.15),
    # trace 4 (abc_c): H10 -> H01 via K, a new edge from H11, H10 -> embedding absent
    edge(4, H10, H01, "K", 0.5),
    edge(4, H11, "embedding", "V", 0.2),
    edge(4, "mlp_1", H10, "MLP", 0.1),
    # trace 5: duplicate of prompt 1, must be ignored
    edge(5, "attn_0_head_0", "embedding", "V", 9.0),
    # trace 6: reroot at H10
    edge(6, H10, H01, "K", 0.7),
    edge(6, H10, "embedding", "Q", 0.3),
    # trace 7 (m4)
    edge(7, "attn_3_head_5", "attn_1_head_2", "K", 0.3),
    edge(7, "attn_2_head_1", "attn_0_head_0", "K", 0.2),
    edge(7, "attn_1_head_2", "embedding", "Q", 0.4),
    edge(7, "mlp_3", "attn_3_head_5", "MLP", 0.1),
]
FLOWS = (
    [flow(t, "mlp_1", 1.0) for t in (1, 2, 3)]
    + [flow(t, H10, 0.8) for t in (1, 2, 3)]
    + [flow(t, H01, 0.3, 2) for t in (1, 2, 3)]
    + [flow(t, H01, 0.2, 3) for t in (1, 2, 3)]
    + [flow(t, "embedding", f) for t, f in ((1, 0.65), (2, 0.2), (3, -0.15))]
    + [flow(5, "attn_0_head_0", 50.0)]
    + [flow(6, H10, 1.0), flow(6, H01, 0.7, 2), flow(6, "embedding", 0.3)]
)
TEXT = "<bos> When Mary and John went to the store , John gave a drink to"
ROWS = {
    "models": [
        dict(
            model_id=1,
            name="m2",
            model_type="gpt2",
            n_layers=2,
            n_heads=2,
            d_model=8,
            n_params=1000,
        ),
        dict(
            model_id=2,
            name="m4",
            model_type="gpt2",
            n_layers=4,
            n_heads=8,
            d_model=16,
            n_params=9000,
        ),
    ],
    "runs": [
        dict(
            run_id=1, model_id=1, preset="kqv_aligned", config="{}", config_hash="a", status="done"
        ),
        dict(
            run_id=2, model_id=2, preset="kqv_aligned", config="{}", config_hash="b", status="done"
        ),
    ],
    "prompts": [
        prompt(1, 1, TEXT, "ioi_io"),
        prompt(2, 1, TEXT + " x", "ioi_io"),
        prompt(3, 1, TEXT + " y", "ioi_io"),
        prompt(4, 1, TEXT + " z", "abc_c"),
        prompt(5, 1, TEXT, "ioi_io"),
        prompt(7, 2, TEXT, "ioi_io"),
    ],
    "traces": [
        trace(1, 1),
        trace(2, 2),
        trace(3, 3),
        trace(4, 4),
        trace(5, 5),
        trace(6, 1, f"{H10}@END"),
        trace(7, 7),
    ],
    "edges": EDGES,
    "component_flows": FLOWS,
}


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    db = tmp_path_factory.mktemp("graphs") / "hand.duckdb"
    write_store(db, ROWS)
    c = open_db(db)
    yield c
    c.close()


def ioi_graph(con, **kw):
    return gr.circuit_graph(con, model="m2", task="ioi", condition="ioi_io", **kw)


# ------------------------------------------------------------------ the graph


def test_weights_modes_and_shares_are_aggregated_exactly(con):
    G = ioi_graph(con)
    assert G.graph["n_prompts"] == 3  # prompt 5 repeats prompt 1 and counts once
    assert set(G.edges) == {(H10, H01), (H10, "embedding"), ("mlp_1", H10), (H01, "embedding")}
    e = G.edges[H10, H01]
    assert e["by_mode"] == pytest.approx({"K": 0.4 / 3, "Q": 0.0, "V": 0.65 / 3, "MLP": 0.0})
    assert e["weight"] == pytest.approx(1.05 / 3)
    assert e["mode"] == "V"
    assert e["share"] == 1.0 and e["n_prompts"] == 3
    assert e["sum"] == pytest.approx(1.05) and e["mean"] == pytest.approx(0.35)
    e = G.edges[H10, "embedding"]
    assert e["weight"] == pytest.approx(0.2) and e["mode"] == "Q"
    assert e["share"] == pytest.approx(2 / 3) and e["n_prompts"] == 2
    assert G.edges[H01, "embedding"]["weight"] == pytest.approx(0.1 / 3)
    assert "attn_0_head_0" not in G  # only in the duplicate trace


def test_node_attributes(con):
    G = ioi_graph(con)
    assert G.nodes[H10] == dict(kind="head", layer=1, head=0, depth=1.0, flow=pytest.approx(0.8))
    assert G.nodes[H01]["flow"] == pytest.approx(0.5)  # summed over positions 2 and 3
    assert G.nodes["mlp_1"]["depth"] == 1.5  # sequential: an MLP reads its own layer's heads
    assert G.nodes["mlp_1"]["kind"] == "mlp" and G.nodes["mlp_1"]["head"] is None
    assert G.nodes["embedding"]["layer"] == -1 and G.nodes["embedding"]["kind"] == "embedding"
    assert G.graph["parallel"] is False and G.graph["n_layers"] == 2


def test_sum_aggregation(con):
    G = ioi_graph(con, agg="sum")
    assert G.edges[H10, H01]["weight"] == pytest.approx(1.05)
    assert G.edges["mlp_1", H10]["weight"] == pytest.approx(0.8)
    assert G.nodes[H10]["flow"] == pytest.approx(2.4)


def test_thresholds_top_k_modes_and_share(con):
    assert set(ioi_graph(con, min_weight=0.1).edges) == {
        (H10, H01),
        (H10, "embedding"),
        ("mlp_1", H10),
    }
    assert list(ioi_graph(con, top_k=2).edges) == [(H10, H01), ("mlp_1", H10)]
    G = ioi_graph(con, modes=("K",))
    assert set(G.edges) == {(H10, H01)}
    assert G.edges[H10, H01]["weight"] == pytest.approx(0.4 / 3)
    assert G.edges[H10, H01]["share"] == pytest.approx(2 / 3)  # trace 3 has V only
    assert set(ioi_graph(con, min_share=0.9).edges) == {(H10, H01)}


def test_root_and_prompt_filters(con):
    G = gr.circuit_graph(con, model="m2", root=f"{H10}@END")
    assert G.graph["n_prompts"] == 1
    assert G.edges[H10, H01]["weight"] == pytest.approx(0.7)
    assert gr.circuit_graph(con, model="m2", root=H10).graph["n_prompts"] == 1
    G = gr.circuit_graph(con, model="m2", prompt_ids=[2])
    assert G.edges[H10, "embedding"]["weight"] == pytest.approx(0.2)
    both = gr.circuit_graph(con, model="m2", condition=["ioi_io", "abc_c"])
    assert both.graph["n_prompts"] == 4
    assert both.edges[H10, H01]["weight"] == pytest.approx((1.05 + 0.5) / 4)


def test_bad_and_empty_selections_raise(con):
    with pytest.raises(InputError, match="no traces match"):
        gr.circuit_graph(con, model="nope")
    with pytest.raises(InputError, match="mixes models"):
        gr.circuit_graph(con, task="ioi")
    with pytest.raises(InputError, match="agg"):
        ioi_graph(con, agg="max")
    with pytest.raises(InputError, match="modes"):
        ioi_graph(con, modes=("X",))
    with pytest.raises(InputError, match="top_k"):
        ioi_graph(con, top_k=0)


def test_available_lists_what_the_store_holds(con):
    df = gr.available(con)
    row = df[(df.model == "m2") & (df.condition == "ioi_io") & (df.root == "target")]
    assert int(row.n_traces.iloc[0]) == 3


# ------------------------------------------------------------------ helpers


def test_top_paths_follow_the_flow_shares(con):
    G = ioi_graph(con)
    paths = gr.top_paths(G, k=3)
    # own credit (flow minus what comes in): H10 0.8 - 0.8/3, H01 0.5 - 0.35, mlp_1 1.0
    own_h10, own_h01, w_mh, fh, f1 = 0.8 - 0.8 / 3, 0.15, 0.8 / 3, 0.8, 0.5
    expect = [
        ("attn_1_head_0[Q]→embedding", own_h10 * 0.2 / fh),
        ("mlp_1[MLP]→attn_1_head_0[Q]→embedding", w_mh * 0.2 / fh),
        ("attn_0_head_1[V]→embedding", own_h01 * (0.1 / 3) / f1),
    ]
    assert [p["chain"] for p in paths] == [c for c, _ in expect]
    assert [p["score"] for p in paths] == pytest.approx([s for _, s in expect])
    assert paths[1]["modes"] == ["MLP", "Q"] and paths[1]["complete"]
    # from one source: every path starts there
    paths = gr.top_paths(G, k=10, source="mlp_1")
    assert len(paths) == 3 and paths[0]["score"] == pytest.approx(w_mh * 0.2 / fh)
    assert paths[2]["chain"] == "mlp_1[MLP]→attn_1_head_0[K]→attn_0_head_1[V]→embedding"
    assert paths[2]["score"] == pytest.approx(w_mh * (0.4 / 3) / fh * (0.1 / 3) / f1)
    # a rerooted graph starts at its root; ends cut by a threshold only when asked
    R = gr.circuit_graph(con, model="m2", root=f"{H10}@END")
    assert [p["chain"] for p in gr.top_paths(R, 5)] == ["attn_1_head_0[Q]→embedding"]
    assert gr.top_paths(R, 5)[0]["score"] == pytest.approx(0.3)
    cut = gr.top_paths(R, 5, complete=False)
    assert [(p["chain"], p["complete"]) for p in cut] == [
        ("attn_1_head_0[K]→attn_0_head_1", False),
        ("attn_1_head_0[Q]→embedding", True),
    ]


def test_credit_subgraph_takes_the_strongest_edges(con):
    G = ioi_graph(con)
    H = gr.credit_subgraph(G, 0.5)  # total |w| 0.85: 0.35 + 0.267 >= 0.425
    assert set(H.edges) == {(H10, H01), ("mlp_1", H10)}
    assert H.graph["credit_covered"] == pytest.approx((0.35 + 0.8 / 3) / 0.85)
    assert set(gr.credit_subgraph(G, 1.0).edges) == set(G.edges)
    with pytest.raises(InputError):
        gr.credit_subgraph(G, 0)


def test_layered_layout_puts_layers_left_to_right(con):
    pos = gr.layered_layout(ioi_graph(con))
    assert pos["embedding"][0] == -1 and pos[H01][0] == 0 and pos[H10][0] == 1
    assert pos["mlp_1"][0] == 1.5
    assert pos[H01][1] == -1 and pos[H10][1] == 0  # heads in the row of their index
    assert pos["mlp_1"][1] == -2 and pos["embedding"][1] == -0.5  # MLPs below, embeddings mid


def test_compare_by_name(con):
    G1 = ioi_graph(con)
    G2 = gr.circuit_graph(con, model="m2", condition="abc_c")
    df = gr.compare_graphs(G1, G2).set_index(["parent", "child"])
    assert df.attrs["align"] == "name"
    assert df.loc[(H10, H01), "status"] == "changed_mode"  # V -> K
    assert (df.loc[(H10, H01), "mode_1"], df.loc[(H10, H01), "mode_2"]) == ("V", "K")
    assert df.loc[(H10, "embedding"), "status"] == "lost"
    assert df.loc[(H01, "embedding"), "status"] == "lost"
    assert df.loc[(H11, "embedding"), "status"] == "gained"
    assert df.loc[(H11, "embedding"), "weight_2"] == pytest.approx(0.2)
    assert df.loc[("mlp_1", H10), "status"] == "same"
    assert df.loc[("mlp_1", H10), "weight_diff"] == pytest.approx(0.1 - 0.8 / 3)
    assert df.attrs["counts"] == {"gained": 1, "lost": 2, "changed_mode": 1, "same": 1}


def test_compare_models_of_different_depth(con):
    G2 = ioi_graph(con)
    G4 = gr.circuit_graph(con, model="m4")
    df = gr.compare_graphs(G2, G4).set_index(["parent", "child"])
    assert df.attrs["align"] == "depth" and df.attrs["n_bins"] == 2
    r = df.loc[("heads@1", "heads@0")]  # m4: 3.5->1.2 and 2.1->0.0 both land here
    assert (r["status"], r["mode_1"], r["mode_2"]) == ("changed_mode", "V", "K")
    assert r["weight_2"] == pytest.approx(0.5)
    assert df.loc[("heads@1", "embedding"), "status"] == "lost"
    r = df.loc[("heads@0", "embedding")]
    assert (r["status"], r["mode_2"], r["weight_2"]) == ("changed_mode", "Q", pytest.approx(0.4))
    assert df.loc[("mlp@1", "heads@1"), "status"] == "same"
    assert len(df) == 4


def test_json_and_graphml_export(con, tmp_path):
    G = ioi_graph(con)
    d = json.loads(json.dumps(gr.to_json(G)))
    assert {n["id"] for n in d["nodes"]} == set(G.nodes)
    e = next(x for x in d["edges"] if (x["source"], x["target"]) == (H10, H01))
    assert e["by_mode"]["V"] == pytest.approx(0.65 / 3) and e["mode"] == "V"
    assert d["graph"]["n_prompts"] == 3
    p = tmp_path / "g.graphml"
    gr.to_graphml(G, p)
    back = nx.read_graphml(p)
    assert set(back.edges) == set(G.edges)
    assert back.edges[H10, H01]["weight_K"] == pytest.approx(0.4 / 3)
    assert back.nodes["embedding"]["head"] == -1 and back.nodes[H10]["layer"] == 1


def test_draw_and_frame(con, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G = ioi_graph(con)
    fig, ax = plt.subplots()
    gr.draw(G, ax=ax)
    fig.savefig(tmp_path / "g.png")
    plt.close(fig)
    assert (tmp_path / "g.png").stat().st_size > 1000
    df = gr.graph_frame(G).set_index(["parent", "child"])
    assert df.loc[(H10, H01), "V"] == pytest.approx(0.65 / 3)
    assert gr.short_name("attn_9_head_11") == "9.11" and gr.short_name("mlp_3") == "m3"


# ------------------------------------------------------------------ the stored residual topology


def test_ingest_stores_the_model_facts_and_graphs_read_the_topology(tmp_path):
    """A GPT-NeoX with ``use_parallel_residual=False`` is sequential (§1): the
    ingest stores that from the adapter's ModelSpec, and the graph reads it from
    the models table, also where no MLP edge would show it (K/Q/V modes only)."""
    import torch

    from ingest.run import ingest
    from tests.models import tiny_neox, word_tokenizer
    from unpack import Tracer
    from unpack.tasks import induction

    tok = word_tokenizer()
    db = tmp_path / "neox.duckdb"
    for name, parallel in (("neox_seq", False), ("neox_par", True)):
        tracer = Tracer(model=tiny_neox(parallel=parallel, dtype=torch.float32), tokenizer=tok)
        ingest(
            induction(tok, 2, seed=0, seg_len=4),
            tracer=tracer,
            model_name=name,
            db=db,
            progress=False,
        )
    con = open_db(db)
    try:
        facts = con.execute(
            "SELECT name, family, parallel_residual, n_kv_heads, d_head FROM models ORDER BY name"
        ).fetchall()
        assert facts == [
            ("neox_par", "gpt_neox", True, 2, 8),
            ("neox_seq", "gpt_neox", False, 2, 8),
        ]
        for name, parallel in (("neox_seq", False), ("neox_par", True)):
            G = gr.circuit_graph(con, model=name, task="induction", modes=("K", "Q", "V"))
            assert G.graph["parallel"] is parallel
            G = gr.circuit_graph(con, model=name, task="induction")
            assert G.graph["parallel"] is parallel
            assert G.nodes["mlp_0"]["depth"] == (0.0 if parallel else 0.5)
    finally:
        con.close()


def test_a_model_stored_before_the_facts_falls_back_to_its_edges(con):
    """The hand-written models have no ``parallel_residual`` (NULL, as in a store
    made before migration 0004): GPT-2 stays sequential."""
    assert (
        con.execute("SELECT count(*) FROM models WHERE parallel_residual IS NULL").fetchone()[0]
        == 2
    )
    assert ioi_graph(con).graph["parallel"] is False
