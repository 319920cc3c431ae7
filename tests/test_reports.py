"""Reports (app/reports, ingest/composition.py): suppression and composition on hand-written stores
(known numbers), the CLI's exit codes and messages, the composition report's
ingest of missing reroots against the tracer itself, and the composition
report end to end on a trained toy induction model (ground truth from its
attention)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from app.reports import NoData
from ingest.composition import composition_report, rank_of, roles_table
from app.reports.suppression import bootstrap_ci, suppression_report
from tests.hand_store import edge, prompt, trace, write_store
from tests.models import INGEST_GPT2, build_model_dir
from unpack.cli import main as unpack_main
from unpack.errors import InputError


def report(args: list) -> int:
    """``unpack report ARGS``, as the command runs it."""
    return unpack_main(["report", *args])


# ------------------------------------------------------------------ suppression, by hand

# slot credits per condition: (IO/A, S1/B, S2/C) for group 0 and group 1
CREDITS = {
    "small": {
        "ioi_io": [(1.0, 0.2, -0.1), (0.8, 0.0, 0.1)],
        "ioi_s": [(0.1, 0.9, -0.5), (0.0, 0.7, -0.1)],
        "abc_c": [(0.0, 0.1, 1.2), (0.2, 0.1, 0.8)],
        "abc_b": [(0.0, 1.1, 0.1), (0.1, 0.9, -0.1)],
    },
    "big": {
        "ioi_io": [(2.0, 0.0, -0.4), (1.6, 0.2, -0.2)],
        "ioi_s": [(0.0, 1.5, -0.9), (0.2, 1.1, -0.7)],
        "abc_c": [(0.1, 0.0, 2.0), (0.1, 0.1, 1.0)],
        "abc_b": [(0.0, 2.0, 0.0), (0.0, 1.0, 0.2)],
    },
}
PROBS = {"ioi_io": 0.6, "ioi_s": 0.1, "abc_c": 0.5, "abc_b": 0.3}


def suppression_rows(models=("small", "big"), conditions=tuple(PROBS)) -> dict:
    rows = {k: [] for k in ("models", "runs", "prompts", "roles", "traces", "token_credits")}
    pid = 0
    for mi, m in enumerate(models, start=1):
        rows["models"].append(
            dict(
                model_id=mi,
                name=m,
                model_type="gpt2",
                n_layers=2,
                n_heads=2,
                d_model=8,
                n_params=1000 if m == "small" else 5000,
            )
        )
        rows["runs"].append(
            dict(
                run_id=mi,
                model_id=mi,
                preset="kqv_aligned",
                config="{}",
                config_hash=m,
                status="done",
            )
        )
        for cond in conditions:
            for g, credits in enumerate(CREDITS[m][cond]):
                pid += 1
                p = prompt(pid, mi, f"text {g} {cond[:3]}", cond, target=f" t{cond}")
                p.update(prompt_group=f"grp{g}", target_prob=PROBS[cond], logit_diff=1.0)
                rows["prompts"].append(p)
                names = ("IO", "S1", "S2") if cond.startswith("ioi") else ("A", "B", "C")
                for role, pos in zip(names + ("END",), (1, 2, 4, 5)):
                    rows["roles"].append(dict(prompt_id=pid, role=role, pos=pos))
                rows["traces"].append(trace(pid, pid))
                for pos, c in zip((1, 2, 4, 5), credits + (0.5,)):
                    rows["token_credits"].append(
                        dict(trace_id=pid, pos=pos, credit=c, credit_pct=100 * c)
                    )
    return rows


@pytest.fixture(scope="module")
def supp_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("supp") / "supp.duckdb"
    write_store(db, suppression_rows())
    return db


def test_suppression_table_has_the_exact_means(supp_db):
    rep = suppression_report(supp_db, n_boot=500, make_figure=False)
    t = rep.tables["by_model"]
    assert list(t["model"]) == ["small", "big"]  # ordered by size
    small = t.iloc[0]
    assert small["n prompts"] == 2
    assert small["S1 (ioi_s)"] == pytest.approx(0.8)
    assert small["S2 (ioi_s)"] == pytest.approx(-0.3)
    assert small["share S2 < 0 (ioi_s)"] == 1.0
    assert small["gap S1 - S2"] == pytest.approx(1.1)  # gaps 1.4 and 0.8
    assert small["gap CI low"] >= 0.8 - 1e-12 and small["gap CI high"] <= 1.4 + 1e-12
    assert small["C (abc_c, copy)"] == pytest.approx(1.0)
    assert small["C (abc_b, no copy)"] == pytest.approx(0.0)
    assert small["S2 (ioi_io)"] == pytest.approx(0.0)
    assert small["p(S) ioi_s"] == pytest.approx(0.1) and small["p(B) abc_b"] == pytest.approx(0.3)
    big = t.iloc[1]
    assert big["gap S1 - S2"] == pytest.approx(2.1)
    assert big["share S2 < 0 (ioi_s)"] == 1.0
    c = rep.tables["by_condition"].set_index(["model", "condition"])
    assert c.loc[("big", "ioi_io"), "share S2/C < 0"] == 1.0
    assert c.loc[("small", "ioi_io"), "share S2/C < 0"] == 0.5
    assert c.loc[("small", "abc_b"), "S1/B"] == pytest.approx(1.0)
    assert c.loc[("small", "abc_b"), "S1/B %"] == pytest.approx(100.0)
    assert "| small |" in rep.markdown and "+1.100 [" in rep.markdown


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 400)
    lo, hi = bootstrap_ci(x, 1000, 0)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.2)  # ~ ±1.96 sd/sqrt(n)
    lo2, hi2 = bootstrap_ci(x[:25], 1000, 0)
    assert hi2 - lo2 > 2 * (hi - lo)


def test_suppression_cli_writes_tables_and_a_small_figure(supp_db, tmp_path, capsys):
    out = tmp_path / "rep"
    assert report(["suppression", "--db", str(supp_db), "--out", str(out), "--n-boot", "200"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "suppression.md",
        "suppression.png",
        "suppression_by_condition.csv",
        "suppression_by_model.csv",
        "suppression_per_prompt.csv",
    ]
    assert 1_000 < (out / "suppression.png").stat().st_size < 300_000
    df = pd.read_csv(out / "suppression_by_model.csv")
    assert df["S2 (ioi_s)"].tolist() == pytest.approx([-0.3, -0.8])
    assert "Duplicate suppression" in capsys.readouterr().out


def test_suppression_without_rows_or_controls_exits_1_with_the_ingest_command(
    supp_db, tmp_path, capsys
):
    empty = tmp_path / "empty.duckdb"
    write_store(empty, {})
    assert report(["suppression", "--db", str(empty), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no IOI traces" in err
    assert f"unpack ingest --model MODEL --task ioi --n 100 --controls --db {empty}" in err
    no_ctrl = tmp_path / "noctrl.duckdb"
    write_store(no_ctrl, suppression_rows(models=("small",), conditions=("ioi_io",)))
    assert report(["suppression", "--db", str(no_ctrl)]) == 1
    err = capsys.readouterr().err
    assert "none of the controls" in err and "--model small --task ioi" in err
    with pytest.raises(NoData):
        suppression_report(supp_db, models=["nope"])
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ composition, by hand

R = "attn_2_head_0"
H10, H11, H00 = "attn_1_head_0", "attn_1_head_1", "attn_0_head_0"
COMP_EDGES = {  # per prompt: direct edges from the rooted head R
    1: [(H10, "Q", 0.5), (H11, "V", 0.3), (H00, "K", 0.2)],
    2: [(H11, "Q", 0.6), (H10, "Q", 0.1), (H10, "K", 0.05)],
    3: [(H11, "V", 0.4)],
}
ROLES_CSV = "head,role\n2.0,top\n1.0,mid\nattn_1_head_1,low\n0.0,base\n"


def composition_rows(reroot=True) -> dict:
    # 8 heads a layer: 8 candidates in layer 1, so a median rank <= 2 counts as recovered
    rows = {
        "models": [
            dict(
                model_id=1,
                name="hand3",
                model_type="gpt2",
                n_layers=3,
                n_heads=8,
                d_model=8,
                n_params=100,
            )
        ],
        "runs": [
            dict(
                run_id=1,
                model_id=1,
                preset="kqv_aligned",
                config="{}",
                config_hash="h",
                status="done",
            )
        ],
        "prompts": [],
        "traces": [],
        "edges": [],
    }
    tid = 0
    for pid, edges in COMP_EDGES.items():
        # prompt 3 has no distractor (like induction prompts)
        rows["prompts"].append(
            prompt(pid, 1, f"prompt {pid}", "ioi_io", distractor=None if pid == 3 else " John")
        )
        tid += 1
        rows["traces"].append(trace(tid, pid))
        if reroot:
            tid += 1
            rows["traces"].append(trace(tid, pid, f"{R}@END"))
            # the rooted head's edges, split over two positions, plus an edge deeper
            # in the trace that is not the root's and must be ignored
            for child, mode, w in edges:
                rows["edges"] += [
                    edge(tid, R, child, mode, w / 2, 5, 1),
                    edge(tid, R, child, mode, w / 2, 5, 2),
                ]
            rows["edges"].append(edge(tid, H10, H00, "K", 5.0))
    return rows


@pytest.fixture(scope="module")
def comp_db(tmp_path_factory):
    d = tmp_path_factory.mktemp("comp")
    db = d / "comp.duckdb"
    write_store(db, composition_rows())
    (d / "roles.csv").write_text(ROLES_CSV)
    return db


def comp(db, **kw):
    kw.setdefault("roles", db.parent / "roles.csv")
    kw.setdefault("connections", ["top@END:mid:Q", "top@END:low:K"])
    return composition_report(db, ingest_missing=False, make_figure=False, **kw)


def test_rank_of():
    assert rank_of(np.array([0.1, -0.5, 0.3]), np.array([False, False, True])) == 2
    assert rank_of(np.array([0.1, -0.5, 0.3]), np.array([False, True, False])) == 1
    assert np.isnan(rank_of(np.array([0.0, 0.5]), np.array([True, False])))


def test_composition_ranks_are_exact(comp_db):
    rep = comp(comp_db)
    s = rep.tables["ranks"].set_index(["upstream", "mode"])
    assert s.loc[("mid", "Q"), "median_rank"] == 1.5  # ranks 1, 2, not found
    assert s.loc[("mid", "Q"), "mean_rank"] == 1.5
    assert s.loc[("mid", "Q"), "share_found"] == pytest.approx(2 / 3)
    assert s.loc[("mid", "Q"), "n_candidates"] == 8  # the heads of layer 1
    assert s.loc[("low", "Q"), "median_rank"] == 1
    assert s.loc[("low", "Q"), "share_found"] == pytest.approx(1 / 3)
    assert s.loc[("mid", "all"), "median_rank"] == 1.5  # ranks 1, 2
    assert s.loc[("low", "all"), "mean_rank"] == pytest.approx(4 / 3)  # ranks 2, 1, 1
    assert s.loc[("mid", "K"), "share_found"] == pytest.approx(1 / 3)
    assert "base" not in set(rep.tables["ranks"]["upstream"])  # layer 0 is below --min-layer 1
    v = rep.connections.set_index("connection")
    ok = v.loc["top@END → mid via Q"]
    assert bool(ok["recovered"]) and ok["dominant_mode"] == "Q"
    assert ok["mode_share"] == pytest.approx(0.2 / (0.2 + 0.05 / 3))
    bad = v.loc["top@END → low via K"]
    assert not bool(bad["recovered"]) and bad["dominant_mode"] == "V"
    assert "recovered via Q" in rep.markdown and "not recovered" in rep.markdown


def test_composition_ranks_a_union_of_classes_together(comp_db):
    rep = comp(comp_db, connections=["top@END:mid+low:Q"])
    s = rep.tables["ranks"].set_index(["upstream", "mode"])
    assert s.loc[("mid+low", "Q"), "median_rank"] == 1  # ranks 1, 1, not found
    assert s.loc[("mid+low", "Q"), "share_found"] == pytest.approx(2 / 3)
    v = rep.connections.iloc[0]
    assert v["strength_Q"] == pytest.approx(1.2 / 3) and v["strength_V"] == pytest.approx(0.7 / 3)
    assert v["mode_share"] == pytest.approx(0.4 / (0.4 + 0.05 / 3 + 0.7 / 3))
    assert bool(v["recovered"])


def test_composition_min_layer_zero_adds_layer_0_heads(comp_db):
    rep = comp(comp_db, min_layer=0)
    s = rep.tables["ranks"].set_index(["upstream", "mode"])
    assert s.loc[("base", "K"), "median_rank"] == 1  # prompt 1 only: 0.2 via K
    assert s.loc[("base", "all"), "median_rank"] == 3  # after 0.5 (mid) and 0.3 (low)
    assert s.loc[("mid", "K"), "median_rank"] == 1  # prompt 2: 0.05 via K, the only K edge


def test_composition_cli_and_bad_input(comp_db, tmp_path, capsys):
    out = tmp_path / "c"
    args = [
        "composition",
        "--db",
        str(comp_db),
        "--roles",
        str(comp_db.parent / "roles.csv"),
        "--connections",
        "top@END:mid:Q",
        "--no-ingest",
        "--out",
        str(out),
    ]
    assert report(args) == 0
    assert {p.name for p in out.iterdir()} == {
        "composition.md",
        "composition.png",
        "composition_ranks.csv",
        "composition_connections.csv",
        "composition_per_prompt.csv",
    }
    assert (out / "composition.png").stat().st_size < 300_000
    assert "recovered via Q" in capsys.readouterr().out
    assert report(args[:3] + ["--no-ingest"]) == 2  # not GPT-2 small: needs --roles
    assert "--roles" in capsys.readouterr().err
    with pytest.raises(InputError, match="ROOT@WHERE"):
        comp(comp_db, connections=["top:mid"])
    with pytest.raises(InputError, match="not in the role table"):
        comp(comp_db, connections=["top@END:nobody:Q"])
    bad = tmp_path / "bad.csv"
    bad.write_text("head,role\n9,name mover\n")
    with pytest.raises(InputError, match="line 2"):
        roles_table(bad)


def test_builtin_gpt2_table():
    t = roles_table()
    assert t["name_mover"] == ["attn_9_head_9", "attn_9_head_6", "attn_10_head_0"]
    assert t["previous_token"] == ["attn_2_head_2", "attn_4_head_11"]
    assert sum(len(v) for v in t.values()) == 3 + 4 + 2 + 4 + 4 + 3 + 2


def test_composition_without_rows_exits_1_with_the_ingest_command(tmp_path, capsys):
    db = tmp_path / "noroot.duckdb"
    write_store(db, composition_rows(reroot=False))
    (tmp_path / "roles.csv").write_text(ROLES_CSV)
    args = [
        "composition",
        "--db",
        str(db),
        "--roles",
        str(tmp_path / "roles.csv"),
        "--connections",
        "top@END:mid:Q",
        "--no-ingest",
        "--n",
        "50",
    ]
    assert report(args) == 1
    err = capsys.readouterr().err
    assert "none rerooted at attn_2_head_0@END" in err
    assert f'unpack ingest --model hand3 --task ioi --n 50 --roots "2.0@END" --db {db}' in err
    empty = tmp_path / "empty.duckdb"
    write_store(empty, {})
    assert report(["composition", "--db", str(empty), "--model", "gpt2"]) == 1
    assert "unpack ingest --model gpt2 --task ioi" in capsys.readouterr().err


# ------------------------------------------------------------------ ingest of missing reroots


def test_composition_ingests_missing_reroots_and_matches_the_tracer(tmp_path):
    """Target traces only in the store: the report ingests the reroots (once) and
    its ranks equal those computed from the tracer's own edges."""
    from ingest.run import ingest
    from unpack import Tracer
    from unpack.loading import load_model
    from unpack.tasks import ioi

    model_dir = build_model_dir(tmp_path / "tiny", **INGEST_GPT2)
    m, tok = load_model(str(model_dir))
    tracer = Tracer(model=m, tokenizer=tok)
    records = ioi(tok, 4, seed=0)
    db = tmp_path / "s.duckdb"
    ingest(records, tracer=tracer, model_name=str(model_dir), db=db, progress=False)
    roles = tmp_path / "roles.csv"
    roles.write_text("head,role\n1.0,reader\n1.1,reader\n0.0,writer\n")
    kw = dict(
        roles=roles,
        connections=["reader@S2:writer:K"],
        min_layer=0,
        make_figure=False,
        tracer=tracer,
    )
    rep = composition_report(db, **kw)
    con = duckdb.connect(str(db), read_only=True)
    n_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
    roots = dict(con.execute("SELECT root, count(*) FROM traces GROUP BY root").fetchall())
    con.close()
    assert n_prompts == 4  # the reroots join the stored prompts; no second copy
    assert roots == {"target": 4, "attn_1_head_0@S2": 4, "attn_1_head_1@S2": 4}

    # the same ranks straight from the tracer's position edges (what the ingest stores)
    cands = ["attn_0_head_0", "attn_0_head_1"]
    expect = {m: [] for m in ("K", "Q", "V", "all")}
    for r in records:
        w = {m: np.zeros(2) for m in ("K", "Q", "V")}
        for h in ("attn_1_head_0", "attn_1_head_1"):
            e = tracer.trace(
                r.text, r.target, r.distractor, root=f"{h}@{r.roles['S2']}", position_edges=True
            ).position_edges
            e = e[(e.parent == h) & e.child.isin(cands)]
            for row in e.itertuples():
                if row.mode in w:
                    w[row.mode][cands.index(row.child)] += row.weight
        w["all"] = w["K"] + w["Q"] + w["V"]
        for m in expect:
            expect[m].append(rank_of(w[m], np.array([True, False])))
    assert len({x for v in expect.values() for x in v if not np.isnan(x)}) == 2  # ranks 1 and 2
    s = rep.tables["ranks"].set_index(["upstream", "mode"])
    for m, ranks in expect.items():
        assert s.loc[("writer", m), "median_rank"] == pytest.approx(
            np.nanmedian(ranks), nan_ok=True
        )
        assert s.loc[("writer", m), "mean_rank"] == pytest.approx(np.nanmean(ranks), nan_ok=True)
        assert s.loc[("writer", m), "share_found"] == pytest.approx(np.mean(~np.isnan(ranks)))
    # a second run finds everything stored and ingests nothing
    rep2 = composition_report(db, **kw)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute(
        "SELECT count(*), count(DISTINCT (prompt_id, root)) FROM traces"
    ).fetchone() == (12, 12)
    con.close()
    assert rep2.tables["ranks"].equals(rep.tables["ranks"])


# ------------------------------------------------------------------ the toy, end to end

# The toy model: UNPACK_TOY_MODEL (a `unpack toy-train --out DIR` directory), else
# the shipped checkpoint unpack/toy/checkpoints/attn-only-d64 when the checkout has it, else
# one trained here with the fast setting below (about 10 s).
TOY_ENV = "UNPACK_TOY_MODEL"
TOY_SHIPPED = "unpack/toy/checkpoints/attn-only-d64"
TOY_FAST = ("tiny", {})


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    import os
    from pathlib import Path

    from unpack.toy import train as T

    given = os.environ.get(TOY_ENV)
    if given:
        if not Path(given, "toy.json").is_file():
            raise AssertionError(f"{TOY_ENV}={given!r} is not a toy model directory (no toy.json)")
        return Path(given)
    shipped = Path(__file__).resolve().parents[1] / TOY_SHIPPED
    if (shipped / "toy.json").is_file():
        return shipped
    import torch

    name, overrides = TOY_FAST
    cfg = T.variant(name, **overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # training is deterministic by seed and thread count
    try:
        model, tok, info = T.train(cfg, seed=0, log=None)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("toy") / "toy"
    T.save(model, tok, cfg, str(out), name, 0, info)
    return out


def test_toy_composition_recovers_previous_token_to_induction_via_K(toy_dir, tmp_path):
    """Acceptance: on a toy induction model whose previous-token and induction heads
    are read off its own attention, the composition report, run from the CLI on a
    store holding only target traces, ingests the reroots and finds the
    previous-token heads feeding the induction heads through K."""
    from ingest.run import ingest
    from unpack import Tracer
    from unpack.tasks import induction
    from unpack.toy import train as T
    from unpack.toy.groundtruth import format_ground_truth, identify

    model, tok, cfg = T.load(str(toy_dir))
    gt = identify(model, cfg)
    assert gt.prev_found and gt.induction_found, (
        "the toy model shows no previous-token or induction head, so there is no ground "
        f"truth to recover:\n{format_ground_truth(gt)}"
    )
    roles = tmp_path / "roles.csv"
    roles.write_text(
        "head,role\n"
        + "".join(f"0.{h},previous_token\n" for h in gt.prev_heads)
        + "".join(f"1.{h},induction\n" for h in gt.induction_heads)
    )
    seg = min(8, cfg.seg_max)
    records = induction(tok, 24, seed=0, seg_len=seg)
    db = tmp_path / "toy.duckdb"
    ingest(
        records,
        tracer=Tracer(model=model, tokenizer=tok),
        model_name=str(toy_dir),
        db=db,
        progress=False,
    )
    out = tmp_path / "rep"
    rc = report(
        [
            "composition",
            "--db",
            str(db),
            "--model",
            str(toy_dir),
            "--task",
            "induction",
            "--roles",
            str(roles),
            "--min-layer",
            "0",
            "--n",
            "24",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    conn = pd.read_csv(out / "composition_connections.csv").iloc[0]
    ranks = pd.read_csv(out / "composition_ranks.csv").set_index(["upstream", "mode"])
    k = ranks.loc[("previous_token", "K")]
    print(
        f"\ntoy composition: {conn['verdict']}\n"
        + ranks.reset_index()[
            ["upstream", "mode", "median_rank", "mean_rank", "share_found"]
        ].to_string(index=False)
    )
    assert k["n_prompts"] == 24
    assert k["median_rank"] == 1 and k["share_found"] >= 0.9
    assert conn["dominant_mode"] == "K" and conn["mode_share"] > 0.5
    assert bool(conn["recovered"])
    # control: call the other layer-0 heads previous-token heads and K no longer ranks them first
    others = [h for h in range(model.config.n_head) if h not in gt.prev_heads]
    swapped = {
        "previous_token": [f"0.{h}" for h in others],
        "induction": [f"1.{h}" for h in gt.induction_heads],
    }
    rep = composition_report(
        db,
        model=str(toy_dir),
        roles=swapped,
        min_layer=0,
        n=24,
        ingest_missing=False,
        make_figure=False,
    )
    assert (
        rep.tables["ranks"]
        .set_index(["upstream", "mode"])
        .loc[("previous_token", "K"), "median_rank"]
        > 1
    )
    assert not bool(rep.connections.iloc[0]["recovered"])
