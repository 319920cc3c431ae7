"""How two methods' edge scores agree (docs/RESULTS_BASELINES.md, "Agreement"):
the overlap of their top-k edges and the rank correlation of their scores.

An edge is a key (reader, writer, mode); a method's score of an edge is its
stored weight summed over positions. Edges are ranked by ``|score|``, the order
in which a circuit takes them (``unpack evaluate``). Plain numpy, no Streamlit:
the app's Circuit page and ``unpack evaluate`` both use it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KENDALL_MAX = 5000  # Kendall's tau is O(n²) here: computed up to this many edges


def top_k(score: pd.Series, k: int) -> set:
    """The keys of the ``k`` largest ``|score|`` (all of them when fewer are
    stored); ties by key order, so the set is the same on every call."""
    s = score.abs().sort_index(kind="stable")
    return set(s.sort_values(ascending=False, kind="stable").index[:k])


def overlap(a: pd.Series, b: pd.Series, k: int) -> dict:
    """``|A ∩ B|`` and Jaccard ``|A ∩ B| / |A ∪ B|`` of the two top-``k`` sets
    (``jaccard`` None when both are empty)."""
    A, B = top_k(a, k), top_k(b, k)
    union = len(A | B)
    return dict(
        k=k, n_a=len(A), n_b=len(B), both=len(A & B), jaccard=len(A & B) / union if union else None
    )


def ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing their mean rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(first) - 1
    start = np.flatnonzero(first)
    end = np.r_[start[1:], len(x)]
    mean_rank = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
    out = np.empty(len(x))
    out[order] = mean_rank[group]
    return out


def spearman(x, y) -> float | None:
    """Spearman's rho: Pearson's correlation of the (tie-averaged) ranks; None
    for fewer than two values or a constant side."""
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else None


def kendall(x, y) -> float | None:
    """Kendall's tau-b ``(C − D) / sqrt((n0 − n1)(n0 − n2))`` over all pairs
    (``n0`` pairs, ``n1``/``n2`` tied in x/y); None for fewer than two values,
    a constant side, or more than :data:`KENDALL_MAX` values."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 2 or n > KENDALL_MAX:
        return None
    s, tx, ty = 0.0, 0, 0
    for i in range(n - 1):  # one row of pairs (i, j > i) at a time
        dx, dy = np.sign(x[i + 1 :] - x[i]), np.sign(y[i + 1 :] - y[i])
        s += float((dx * dy).sum())
        tx += int((dx == 0).sum())
        ty += int((dy == 0).sum())
    n0 = n * (n - 1) // 2
    den = np.sqrt(float(n0 - tx) * float(n0 - ty))
    return s / den if den > 0 else None


def rank_agreement(a: pd.Series, b: pd.Series) -> dict:
    """Rank correlation of ``|a|`` and ``|b|`` on the edges both store
    (``n_both``; an edge stored by one method only is left out and counted in
    ``only_a``/``only_b``), the share of those edges with the same sign, and
    Spearman over the union with a missing edge scored 0 (``spearman_union``)."""
    both = a.index.intersection(b.index)
    x, y = a[both].abs().to_numpy(), b[both].abs().to_numpy()
    union = a.index.union(b.index)
    same = np.sign(a[both].to_numpy()) == np.sign(b[both].to_numpy())
    return dict(
        n_both=len(both),
        only_a=len(a) - len(both),
        only_b=len(b) - len(both),
        spearman=spearman(x, y),
        kendall=kendall(x, y),
        same_sign=float(same.mean()) if len(both) else None,
        spearman_union=spearman(
            a.reindex(union, fill_value=0.0).abs().to_numpy(),
            b.reindex(union, fill_value=0.0).abs().to_numpy(),
        ),
    )
