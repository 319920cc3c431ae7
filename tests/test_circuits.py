"""Circuits: interventions checked against the models themselves, discovery and
verification on the shipped toy induction model, the store, exports, bad input."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from tests.models import MODEL_KINDS, tiny_llama_gqa
from unpack.adapters import build_spec
from unpack.intervene import forward

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "unpack" / "toy" / "checkpoints" / "attn-only-d64"
FAMILIES = dict(MODEL_KINDS, llama_gqa=lambda **kw: tiny_llama_gqa(**kw))


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def zero_head_weights(model, L: int, h: int):
    """A copy of ``model`` whose head ``h`` of layer ``L`` has its rows of ``W_O`` zeroed
    (written per family, independently of the adapters)."""
    m = copy.deepcopy(model)
    cfg = m.config
    with torch.no_grad():
        if cfg.model_type == "gpt2":
            d = cfg.n_embd // cfg.n_head
            m.transformer.h[L].attn.c_proj.weight[h * d : (h + 1) * d, :] = 0  # Conv1D: x @ W
        elif cfg.model_type == "gpt_neox":
            d = cfg.hidden_size // cfg.num_attention_heads
            m.gpt_neox.layers[L].attention.dense.weight[:, h * d : (h + 1) * d] = 0
        else:
            d = m.model.layers[L].self_attn.head_dim
            m.model.layers[L].self_attn.o_proj.weight[:, h * d : (h + 1) * d] = 0
    return m


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patched_forward_equals_the_model(family):
    """Nothing ablated: the model's own logits; a head zeroed by intervention: the logits
    of a copy of the model with that head's output weights zeroed."""
    model = FAMILIES[family](seed=3)
    spec = build_spec(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (3, 9), generator=g)
    lengths = torch.full((3,), 9)
    with torch.no_grad():
        want = model(ids).logits[:, -1]
    got = forward(spec, ids, lengths, dtype=torch.float64)
    assert rel(got, want) <= 1e-5
    L, h = spec.n_layers - 1, 1
    mask = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.bool)
    mask[L, h] = True
    with torch.no_grad():
        want_zero = zero_head_weights(model, L, h)(ids).logits[:, -1]
    got_zero = forward(spec, ids, lengths, dtype=torch.float64, ablate=mask)
    assert rel(got_zero, want_zero) <= 1e-5
    assert rel(got_zero, want) > 1e-3  # the knock-out changes something


def test_patching_a_head_with_its_own_values_changes_nothing():
    model = FAMILIES["gpt2"](seed=1)
    spec = build_spec(model)
    ids = torch.randint(
        2, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1)
    )
    lengths = torch.tensor([7, 5])
    clean, Z = forward(spec, ids, lengths, dtype=torch.float64, keep_z=True)
    every = torch.ones(spec.n_layers, spec.n_heads, dtype=torch.bool)
    same = forward(spec, ids, lengths, dtype=torch.float64, ablate=every, source=Z)
    assert rel(same, clean) <= 1e-12
    other = forward(spec, ids, lengths, dtype=torch.float64, ablate=every, source=Z.flip(0))
    assert rel(other, clean) > 1e-3


# ------------------------------------------------------------------ the toy induction model


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A store of 16 induction prompts on the shipped attn-only-d64 toy, its tracer and
    its ground truth (read off the model's own attention by unpack.toy)."""
    from tests.helpers import toy_store

    db = tmp_path_factory.mktemp("circuits") / "toy.duckdb"
    tracer, truth = toy_store(TOY, db, 16)
    return db, tracer, truth


@pytest.fixture(scope="module")
def toy_circuit(toy):
    from ingest.discover import discover

    db, tracer, _ = toy
    return discover(db, seeds=2, per_mode=1, depth=2, min_share=0.5, tracer=tracer)


def test_discovery_recovers_the_ground_truth(toy, toy_circuit):
    from tests.helpers import truth_heads

    _, _, truth = toy
    prev, induction = truth_heads(truth)
    c = toy_circuit
    assert set(c.components["component"]) == prev | induction
    seeds = set(c.components[c.components["depth"] == 0]["component"])
    assert seeds == induction
    k = c.edges[c.edges["mode"] == "K"]
    for h in truth["induction_heads"]:  # each induction head reads the prev-token head via K
        row = k[
            (k["parent"] == f"attn_1_head_{h}")
            & k["child"].isin([f"attn_0_head_{p}" for p in truth["prev_heads"]])
        ]
        assert len(row) == 1 and row["share"].iloc[0] >= 0.9
        strongest = c.edges[c.edges["parent"] == f"attn_1_head_{h}"]
        assert strongest.loc[strongest["weight"].abs().idxmax(), "mode"] == "K"


@pytest.fixture(scope="module")
def toy_verification(toy, toy_circuit):
    from ingest.verify import verify

    db, tracer, _ = toy
    return verify(
        db,
        toy_circuit.circuit_id,
        ablation="resample",
        n_random=8,
        baseline="outside",
        tracer=tracer,
    )


def test_knocking_the_circuit_out_destroys_induction(toy, toy_verification):
    db, _, _ = toy
    v = toy_verification
    assert v.accuracy["clean"] >= 0.9
    assert v.accuracy["knocked"] <= 0.1  # the repeated half is no longer predicted
    assert v.accuracy["kept"] >= 0.9  # the circuit alone still predicts it
    assert v.necessity >= 0.9 and v.faithfulness >= 0.8
    bf = np.array(v.baseline["faithfulness"])
    assert len(bf) == 8 and bf.mean() < v.faithfulness - 0.3  # random circuits of its size do not
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT necessity, faithfulness, n_random, baseline FROM "
            "circuit_verifications WHERE verification_id = ?",
            [v.verification_id],
        ).fetchone()
        n = con.execute(
            "SELECT count(*) FROM circuit_prompt_results WHERE verification_id = ?",
            [v.verification_id],
        ).fetchone()[0]
    finally:
        con.close()
    assert row[:3] == pytest.approx((v.necessity, v.faithfulness, 8))
    assert json.loads(row[3])["faithfulness"] == pytest.approx(list(bf))
    assert n == 16


def test_random_circuits_outside_the_circuit_leave_induction_intact(
    toy, toy_circuit, toy_verification
):
    """Knocking the circuit out destroys the repeated-half accuracy; knocking out random
    heads outside it does not. With 2 heads per layer only one head lies outside the
    3-head circuit, so the outside draws have 1 head, and the circuit's own 1-head
    subsets are the comparison at equal size. A baseline that overlapped the circuit
    (as every same-size draw on this model must) would knock the accuracy out too."""
    db, _, _ = toy
    v, b = toy_verification, toy_verification.baseline
    circuit = set(toy_circuit.components["component"])
    assert b["kind"] == "outside" and b["circuit_size"] == 3 and b["size"] == 1
    assert all(len(r) == 1 and not set(r) & circuit for r in b["circuits"])
    assert v.accuracy["knocked"] <= 0.1
    assert min(b["knocked_accuracy"]) >= 0.8  # margin: the circuit's knock-out leaves <= 0.1
    assert max(b["necessity"]) < v.necessity - 0.5 and v.summary()["necessity_rank"] == 0
    assert v.knocked_accuracy_rank == 0
    e = b["equal_size"]
    assert e["size"] == 1 and len(e["necessity"]) == 8
    # one circuit head at a time already costs more than the head outside it
    assert np.mean(e["knocked_accuracy"]) < np.mean(b["knocked_accuracy"]) - 0.2
    assert np.mean(e["necessity"]) > np.mean(b["necessity"]) + 0.2
    con = duckdb.connect(str(db), read_only=True)
    try:
        stored = json.loads(
            con.execute(
                "SELECT baseline FROM circuit_verifications WHERE verification_id = ?",
                [v.verification_id],
            ).fetchone()[0]
        )
    finally:
        con.close()
    assert stored["kind"] == "outside" and stored["size"] == 1
    assert stored["knocked_accuracy"] == pytest.approx(b["knocked_accuracy"])


def test_heads_on_fresh_prompts_equal_the_stored_verification(toy, toy_circuit, capsys):
    """`verify --heads` builds the prompts from the task instead of the store: on the
    same 16 prompts (same seed) it measures exactly what the stored circuit's
    verification measures; bad heads are refused with the fix."""
    from ingest.verify import verify, verify_on_task
    from unpack.cli import main

    db, tracer, _ = toy
    heads = ",".join(toy_circuit.components["component"])
    a = verify(db, toy_circuit.circuit_id, ablation="zero", n_random=3, tracer=tracer, store=False)
    b = verify_on_task(
        str(TOY),
        heads,
        task="induction",
        n=16,
        prompt_seed=0,
        ablation="zero",
        n_random=3,
        tracer=tracer,
    )
    assert b.clean == pytest.approx(a.clean, rel=1e-9) and len(b.clean) == 16
    assert (b.necessity, b.faithfulness) == pytest.approx((a.necessity, a.faithfulness), rel=1e-9)
    assert b.baseline["necessity"] == pytest.approx(a.baseline["necessity"], rel=1e-9)
    assert "fresh induction prompts" in b.format()
    for bad, says in (
        (["--heads", "2.0"], "not a head of the model"),
        (["--heads", "0.0"], "--heads needs --model"),
    ):
        model = ["--model", str(TOY)] if bad[1] == "2.0" else []
        assert main(["verify", *bad, *model, "--task", "induction", "--prompts", "2"]) == 2
        assert says in capsys.readouterr().err


def test_profile_baseline_keeps_the_layer_profile(toy, toy_circuit):
    from ingest.verify import random_masks

    heads = ["attn_0_head_0", "attn_1_head_0", "attn_1_head_1", "attn_3_head_2"]
    for m in random_masks(heads, 4, 3, 20, "profile", np.random.default_rng(0)):
        assert m.sum(1).tolist() == [1, 2, 0, 1]
    sizes = {int(m.sum()) for m in random_masks(heads, 4, 3, 20, "size", np.random.default_rng(0))}
    assert sizes == {4}
    inside = np.zeros((4, 3), dtype=bool)
    inside[[0, 1, 1, 3], [0, 0, 1, 2]] = True
    seen = set()
    for m in random_masks(heads, 4, 3, 50, "outside", np.random.default_rng(0)):
        assert not (m & inside).any() and m.sum() == 4
        # layers 0 and 3 have room (1 each), layer 1 has one head outside: one more elsewhere
        assert m[0].sum() >= 1 and m[3].sum() >= 1 and m[1].sum() >= 1
        seen.add(m.tobytes())
    assert len(seen) > 1  # a distribution, not one draw
    m = random_masks(heads[:3], 2, 2, 3, "outside", np.random.default_rng(0))[0]
    assert m.tolist() == [[False, True], [False, False]]  # fewer outside: all of them


def test_cli_json_and_bad_input(toy, toy_circuit, capsys):
    from unpack.cli import main

    db, _, _ = toy

    def count(table):
        con = duckdb.connect(str(db), read_only=True)
        try:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            con.close()

    before = count("circuit_verifications"), count("circuit_prompt_results")
    assert main(["verify", "--db", str(db), "--circuit", "999"]) == 2
    err = capsys.readouterr().err
    assert "circuit 999 does not exist" in err and "unpack discover" in err
    assert (
        main(
            [
                "verify",
                "--db",
                str(db),
                "--circuit",
                str(toy_circuit.circuit_id),
                "--ablation",
                "mean",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "mean ablation needs control prompts" in err and "--ablation zero" in err
    assert main(["verify", "--db", str(db), "--circuit", "1", "--n", "0"]) == 2
    assert "--n 0" in capsys.readouterr().err
    assert main(["discover", "--db", str(db), "--min-share", "1.5"]) == 2
    assert (count("circuit_verifications"), count("circuit_prompt_results")) == before
    assert (
        main(
            [
                "verify",
                "--db",
                str(db),
                "--circuit",
                str(toy_circuit.circuit_id),
                "--ablation",
                "zero",
                "--n",
                "3",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["circuit_id"] == toy_circuit.circuit_id
    assert len(out["baseline"]["necessity"]) == len(out["baseline"]["faithfulness"]) == 3
    assert out["reference"] == "zero output"
    assert 0.9 <= out["necessity"] <= 1.1


def test_a_store_without_the_circuits_prompts_is_refused(toy, toy_circuit, tmp_path, capsys):
    from unpack.cli import main

    db, _, _ = toy
    copy_db = tmp_path / "copy.duckdb"
    shutil.copy(db, copy_db)
    con = duckdb.connect(str(copy_db))
    con.execute("DELETE FROM prompts WHERE prompt_id = (SELECT min(prompt_id) FROM prompts)")
    con.close()
    assert main(["verify", "--db", str(copy_db), "--circuit", str(toy_circuit.circuit_id)]) == 2
    err = capsys.readouterr().err
    assert "does not hold" in err and "unpack discover" in err
    con = duckdb.connect(str(copy_db), read_only=True)
    try:
        assert (
            con.execute("SELECT count(*) FROM circuit_prompt_results").fetchone()[0]
            == duckdb.connect(str(db), read_only=True)
            .execute("SELECT count(*) FROM circuit_prompt_results")
            .fetchone()[0]
        )
    finally:
        con.close()


def test_discover_on_an_empty_store_names_the_ingest(tmp_path, capsys):
    from ingest import store
    from unpack.cli import main

    db = tmp_path / "empty.duckdb"
    store.connect(db).dispose()
    assert main(["discover", "--db", str(db)]) == 2
    assert "unpack ingest" in capsys.readouterr().err


# ------------------------------------------------------------------ exports


def test_tikz_export_structure(toy, toy_circuit, tmp_path):
    from unpack.cli import main

    db, _, _ = toy
    out = tmp_path / "c.tex"
    assert (
        main(
            [
                "export",
                "--db",
                str(db),
                "--circuit",
                str(toy_circuit.circuit_id),
                "--format",
                "tikz",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    tex = out.read_text()
    body = tex[tex.index("\\begin{tikzpicture}") :]
    assert body.rstrip().endswith("\\end{tikzpicture}")
    nodes = re.findall(r"\\node\[comp\] \((n\d+)\) at \(([-\d.]+), ([-\d.]+)\) \{([^}]*)\};", tex)
    draws = re.findall(
        r"\\draw\[->, draw=mode(K|Q|V|MLP),[^\]]*\] \((n\d+)\) \.\. controls .*"
        r"\.\. \((n\d+)\) node",
        tex,
    )
    assert sorted(n[3] for n in nodes) == sorted(
        f"{r.layer}.{r.head}" for r in toy_circuit.components.itertuples()
    )
    # one arrow per stored edge (reader, writer and mode)
    assert sorted(d[0] for d in draws) == sorted(toy_circuit.edges["mode"])
    assert {d[1] for d in draws} | {d[2] for d in draws} <= {n[0] for n in nodes}
    assert tex.count("{") == tex.count("}")


def test_html_export_opens_offline_in_chromium(toy, toy_circuit, tmp_path):
    from tests.browser import chromium_page, require_browser
    from unpack.cli import main

    require_browser()
    db, _, _ = toy
    files = {"circuit": tmp_path / "circuit.html", "paths": tmp_path / "paths.html"}
    assert (
        main(
            [
                "export",
                "--db",
                str(db),
                "--circuit",
                str(toy_circuit.circuit_id),
                "--format",
                "html",
                "--out",
                str(files["circuit"]),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                "--db",
                str(db),
                "--prompt",
                "1",
                "--top",
                "5",
                "--format",
                "html",
                "--out",
                str(files["paths"]),
            ]
        )
        == 0
    )
    requests = []
    with chromium_page() as page:
        page.route(
            "**/*",
            lambda r: (
                requests.append(r.request.url),
                r.abort() if not r.request.url.startswith("file:") else r.continue_(),
            ),
        )
        for kind, f in files.items():
            page.goto(f.as_uri())
            n_nodes = page.locator("svg g.node").count()
            n_edges = page.locator("svg path.edge").count()
            legend = page.locator("#legend").inner_text()
            assert n_nodes > 0 and n_edges > 0
            assert legend.startswith(f"{n_nodes} nodes, {n_edges} edges")
            if kind == "circuit":
                assert n_nodes == len(toy_circuit.components)
                assert n_edges == len(toy_circuit.edges)  # one arrow per reader, writer and mode
                assert sorted(page.locator("svg g.node text").all_text_contents()) == sorted(
                    f"{r.layer}.{r.head}" for r in toy_circuit.components.itertuples()
                )
                page.hover("svg g.node[data-id='attn_0_head_0']")
                assert "attn_0_head_0" in page.locator("#info").inner_text()
    assert all(u.startswith("file:") for u in requests)  # nothing but the file itself


# ------------------------------------------------------------------ the app


def test_circuit_page_shows_the_stored_circuit_and_its_verification(
    monkeypatch, toy, toy_circuit, toy_verification
):
    from tests.app_harness import assert_clean, figures, open_app, sql, widget

    db, _, _ = toy
    at = open_app(monkeypatch, db, "circuit")
    assert widget(at.selectbox, "Circuit").value == toy_circuit.circuit_id
    fig = [
        f
        for f in figures(at)
        if "circuit" in (f["layout"].get("title") or {}).get("text", "")
        and any(tr.get("name") == "circuit" for tr in f["data"])
    ][0]
    ringed = [tr for tr in fig["data"] if tr.get("name") == "circuit"][0]["customdata"]
    assert sorted(ringed) == sorted(toy_circuit.components["component"])
    tables = {tuple(d.value.columns): d.value for d in at.dataframe}
    ver = tables[
        ("measure", "circuit", "random_mean", "random_p5", "random_p95", "share_random_at_least")
    ]
    latest = sql(
        db,
        "SELECT verification_id, necessity, faithfulness, baseline FROM "
        "circuit_verifications WHERE circuit_id = ? ORDER BY verification_id DESC "
        "LIMIT 1",
        [toy_circuit.circuit_id],
    ).iloc[0]  # the page shows the latest
    vid, nec, faith, base = (
        int(latest["verification_id"]),
        latest["necessity"],
        latest["faithfulness"],
        latest["baseline"],
    )
    per = sql(
        db,
        "SELECT prompt_id FROM circuit_prompt_results WHERE verification_id = ? "
        "ORDER BY faithfulness NULLS FIRST, prompt_id LIMIT 5",
        [vid],
    )["prompt_id"].tolist()
    assert vid >= toy_verification.verification_id
    assert ver.set_index("measure")["circuit"].to_dict() == pytest.approx(
        {"necessity": nec, "faithfulness": faith}
    )
    assert ver.set_index("measure")["random_mean"]["faithfulness"] == pytest.approx(
        np.mean(json.loads(base)["faithfulness"])
    )
    kind = json.loads(base)["kind"]
    assert [c.value for c in at.caption if f"baseline {kind}" in c.value]  # says which one
    weakest = [d for k, d in tables.items() if "only_circuit" in k][0]
    assert sorted(weakest["prompt_id"].tolist()) == sorted(per)
    labels = [b.label for b in at.get("download_button")]
    assert "Circuit (interactive HTML)" in labels and "Circuit (TikZ)" in labels
    assert_clean(at)


# ------------------------------------------------------------------ IOI with controls: mean ablation


def test_mean_ablation_uses_the_abc_controls(tmp_path, capsys):
    """--conditions keeps an IOI prompt and its ABC control; a circuit's mean ablation
    replaces its heads by their mean over the controls of the same template and length."""
    from tests.models import build_model_dir
    from unpack.cli import main
    from unpack.intervene import forward, logit_diff

    model_dir = build_model_dir(tmp_path / "m", n_layer=2, seed=4)
    db = tmp_path / "ioi.duckdb"
    base = [
        "ingest",
        "--model",
        str(model_dir),
        "--task",
        "ioi",
        "--n",
        "6",
        "--db",
        str(db),
        "--no-progress",
    ]
    assert main(base + ["--controls", "--conditions", "ioi_io,nope"]) == 2
    assert "--conditions" in capsys.readouterr().err
    assert main(base + ["--controls", "--conditions", "ioi_io,abc_c"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(
        "SELECT condition, count(*) FROM prompts GROUP BY 1 ORDER BY 1"
    ).fetchall() == [("abc_c", 6), ("ioi_io", 6)]
    con.close()
    capsys.readouterr()
    assert (
        main(
            [
                "discover",
                "--db",
                str(db),
                "--seeds",
                "2",
                "--depth",
                "1",
                "--min-share",
                "0.3",
                "--json",
            ]
        )
        == 0
    )
    c = json.loads(capsys.readouterr().out)
    assert c["n_prompts"] == 6 and c["components"]
    assert (
        main(["verify", "--db", str(db), "--circuit", str(c["circuit_id"]), "--n", "4", "--json"])
        == 0
    )
    v = json.loads(capsys.readouterr().out)
    assert v["ablation"] == "mean" and "control prompts" in v["reference"]
    # the same knock-out computed here: controls' mixed values, averaged per template
    from ingest.discover import encode_batch
    from ingest.queries import prompt_records
    from ingest.reroots import load_tracer

    con = duckdb.connect(str(db), read_only=True)
    ids = json.loads(con.execute("SELECT prompt_ids FROM circuits").fetchone()[0])
    ctrl = [
        r[0]
        for r in con.execute(
            "SELECT prompt_id FROM prompts WHERE condition = 'abc_c' ORDER BY prompt_id"
        ).fetchall()
    ]
    recs, crecs = prompt_records(con, ids), prompt_records(con, ctrl)
    stored = dict(con.execute("SELECT prompt_id, knocked FROM circuit_prompt_results").fetchall())
    con.close()
    tr = load_tracer(str(model_dir))
    spec = tr.spec
    mask = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.bool)
    for h in c["components"]:
        mask[int(h.split("_")[1]), int(h.split("_")[3])] = True
    for pid, rec in zip(ids, recs):
        same = [r for r in crecs if r.template == rec.template]
        cids, clen, _, _ = encode_batch(tr, same)
        _, Z = forward(spec, cids, clen, dtype=tr.dtype, keep_z=True)
        assert (clen == clen[0]).all()
        pids, plen, tid, did = encode_batch(tr, [rec])
        assert int(plen[0]) == int(clen[0])
        logits = forward(
            spec, pids, plen, dtype=tr.dtype, ablate=mask, source=Z.mean(0, keepdim=True)
        )
        assert float(logit_diff(logits, tid, did)[0]) == pytest.approx(
            stored[pid], rel=1e-5, abs=1e-6
        )
