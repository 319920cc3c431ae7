"""The agreement of two methods' edge scores (unpack/baselines/agreement.py):
hand-computed values, and the same numbers by independent computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from unpack.baselines.agreement import kendall, overlap, rank_agreement, ranks, spearman


def close(a, b, tol=1e-12):
    return a is not None and abs(a - b) <= tol


def test_agreement_by_hand():
    a = pd.Series({"e1": 3.0, "e2": -2.0, "e3": 1.0, "e4": 0.5})
    b = pd.Series({"e1": 1.0, "e2": 4.0, "e3": -3.0, "e5": 2.0})
    # top 2 by |score|: A = {e1, e2}, B = {e2, e3}
    assert overlap(a, b, 2) == dict(k=2, n_a=2, n_b=2, both=1, jaccard=1 / 3)
    # a method storing fewer than k edges: all of them
    assert overlap(a, b, 10) == dict(k=10, n_a=4, n_b=4, both=3, jaccard=3 / 5)
    r = rank_agreement(a, b)
    # shared e1, e2, e3: |a| 3, 2, 1 against |b| 1, 4, 3; ranks 3,2,1 / 1,3,2;
    # d = 2,-1,-1: rho = 1 - 6·6 / (3·8) = -0.5; pairs: 2 discordant, 1 concordant
    assert (r["n_both"], r["only_a"], r["only_b"]) == (3, 1, 1)
    assert close(r["spearman"], -0.5) and close(r["kendall"], -1 / 3)
    assert close(r["same_sign"], 1 / 3)
    # the union with a missing edge 0: ranks 5,4,3,2,1 / 2,5,4,1,3, Σd² = 16
    assert close(r["spearman_union"], 1 - 6 * 16 / (5 * 24))
    # ties share their mean rank; tau-b's denominator leaves the tied pair out
    assert ranks([1.0, 1.0, 2.0]).tolist() == [1.5, 1.5, 3.0]
    assert close(kendall([1, 1, 2], [1, 2, 3]), 2 / math.sqrt(2 * 3))
    assert spearman([1.0], [2.0]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def _kendall_pairs(x, y):
    """tau-b by counting the pairs one by one."""
    c = d = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            sx, sy = (x[j] > x[i]) - (x[j] < x[i]), (y[j] > y[i]) - (y[j] < y[i])
            tx, ty = tx + (sx == 0), ty + (sy == 0)
            c, d = c + (sx * sy > 0), d + (sx * sy < 0)
    n0 = len(x) * (len(x) - 1) // 2
    return (c - d) / math.sqrt((n0 - tx) * (n0 - ty))


def test_agreement_against_independent_computations():
    rng = np.random.default_rng(0)
    keys = [f"e{i}" for i in range(300)]
    a = pd.Series(np.round(rng.normal(size=300), 1), index=keys)  # rounded: ties
    b = pd.Series(np.round(a.to_numpy() + rng.normal(size=300), 1), index=keys)
    a, b = a.drop(keys[:40]), b.drop(keys[-25:])
    both = a.index.intersection(b.index)
    r = rank_agreement(a, b)
    assert r["n_both"] == 235 and r["only_a"] == 25 and r["only_b"] == 40
    frame = pd.DataFrame({"a": a[both].abs(), "b": b[both].abs()})  # pandas' own ranks
    assert close(r["spearman"], frame.corr(method="spearman").iloc[0, 1], 1e-12)
    assert close(
        r["kendall"], _kendall_pairs(a[both].abs().tolist(), b[both].abs().tolist()), 1e-12
    )
    # the top-k sets by pandas' nlargest (distinct |score| values: no ties to break)
    u = pd.Series(rng.permutation(500) + 1.0, index=[f"e{i}" for i in range(500)])
    v = pd.Series(rng.permutation(500) - 250.5, index=u.index)
    for k in (5, 50, 200):
        A, B = set(u.abs().nlargest(k).index), set(v.abs().nlargest(k).index)
        assert overlap(u, v, k)["both"] == len(A & B)
        assert close(overlap(u, v, k)["jaccard"], len(A & B) / len(A | B))
