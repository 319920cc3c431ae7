"""Every method ingested side by side on a shipped toy, then `unpack evaluate`
(ingest/evaluate.py) on the real store."""

from __future__ import annotations

import json

import duckdb
import numpy as np

from tests.helpers import TOY, toy_ingest
from unpack.cli import main

METHODS = (
    ["unpack"],
    ["eap"],
    ["eap_ig", "--steps", "2"],
    ["ig", "--steps", "4"],
    ["grad_x_input"],
    ["rollout"],
)


def test_ingest_every_method_then_evaluate(tmp_path, capsys):
    db = str(tmp_path / "s.duckdb")
    for m in METHODS:
        assert main(toy_ingest(db, 4, "--no-progress", "--method", *m)) == 0, m
    con = duckdb.connect(db, read_only=True)
    runs = dict(con.sql("SELECT method, method_params FROM runs").fetchall())
    n_ok = con.execute("SELECT count(*) FROM prompts WHERE status = 'ok'").fetchone()[0]
    con.close()
    assert set(runs) == {m[0] for m in METHODS} and runs["unpack"] is None
    assert json.loads(runs["eap_ig"]) == {"steps": 2}
    assert json.loads(runs["ig"]) == {"steps": 4, "baseline": "zero"}
    assert n_ok == 4 * len(METHODS)
    capsys.readouterr()

    png = tmp_path / "f.png"
    assert (
        main(
            [
                "evaluate",
                "--db",
                db,
                "--model",
                TOY,
                "--task",
                "induction",
                "--json",
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    res = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(res) == {m[0] for m in METHODS}
    truth = 3  # the toy's previous-token and induction heads (toy.json)
    for m in ("unpack", "eap", "eap_ig"):
        r = res[m]
        assert np.isfinite([r["cpr"], r["cmd"]]).all()
        assert r["cpr_ci"][0] <= r["cpr"] <= r["cpr_ci"][1]
        # the whole graph is the model itself: faithfulness 1 at 100% of the edges
        assert abs(r["faithfulness"][-1] - 1) < 1e-5
        # and every head is in it: recall 1, precision = truth / all heads
        last = r["ground_truth"][-1]
        assert last["recall"] == 1.0 and abs(last["precision"] - truth / last["n_heads"]) < 1e-12
        assert 0 < r["edges_scored"] <= r["n_edges"]
        assert r["edge_storage"] == (
            "position-resolved, |weight| >= 0.001·Σ|seeds|"
            if m == "unpack"
            else "summed over positions"
        )
        if m != "unpack":  # how its ranking agrees with Unpack's
            assert -1 <= r["vs_unpack"]["spearman"] <= 1 and 0 <= r["vs_unpack"]["overlap_5%"] <= 1
    for r in res.values():
        assert np.isfinite(
            [r["comprehensiveness"], r["sufficiency"], r["seconds_per_prompt"]]
        ).all()
    assert "cpr" not in res["ig"] and png.stat().st_size > 1000


def test_bad_method_input_is_refused_before_the_store(tmp_path, capsys):
    db = tmp_path / "s.duckdb"
    assert main(toy_ingest(db, 2, "--method", "eap", "--roots", "1.0@END")) == 2
    assert main(toy_ingest(db, 2, "--steps", "3")) == 2
    assert main(toy_ingest(db, 2, "--method", "ig", "--steps", "0")) == 2
    assert "--steps 0 must be a positive integer" in capsys.readouterr().err
    assert not db.exists()
    assert main(["evaluate", "--db", str(db), "--model", TOY, "--task", "induction"]) == 2


def test_agreement_between_rankings():
    """Spearman and circuit overlap: 1 for the same |scores| (signs do not matter),
    near 0 for independent ones."""
    from ingest.evaluate import agreement

    a = np.random.default_rng(0).normal(size=2000)
    assert agreement(a, -2 * a) == {
        "spearman": 1.0,
        "overlap_1%": 1.0,
        "overlap_5%": 1.0,
        "overlap_10%": 1.0,
    }
    b = agreement(a, np.random.default_rng(1).normal(size=2000))
    assert abs(b["spearman"]) < 0.1 and b["overlap_10%"] < 0.15


def test_unpack_summed_edges_are_its_position_edges_summed(tmp_path):
    """`--set position_edges=false` stores Unpack's edges summed over positions
    (positions NULL): the same numbers as every position-resolved edge
    (`--edge-min-frac 0`) summed in SQL, and the summed store has no threshold."""
    sums = []
    for name, flags in (
        ("summed", ["--set", "position_edges=false"]),
        ("pos", ["--edge-min-frac", "0"]),
    ):
        db = str(tmp_path / f"{name}.duckdb")
        assert main(toy_ingest(db, 1, "--no-progress", *flags)) == 0
        con = duckdb.connect(db, read_only=True)
        n_pos = con.execute("SELECT count(parent_pos) FROM edges").fetchone()[0]
        assert (n_pos == 0) == (name == "summed")
        sums.append(
            dict(
                ((k, p, c, m), w)
                for k, p, c, m, w in con.execute(
                    "SELECT p.prompt_key, e.parent, e.child, e.mode, sum(e.weight) FROM edges e JOIN "
                    "traces t USING (trace_id) JOIN prompts p USING (prompt_id) GROUP BY ALL"
                ).fetchall()
            )
        )
        con.close()
    a, b = sums
    keys = sorted(set(a) | set(b))
    x, y = np.array([a.get(k, 0.0) for k in keys]), np.array([b.get(k, 0.0) for k in keys])
    assert len(a) > 25 and np.abs(x - y).max() <= 1e-5 * np.abs(y).max()
