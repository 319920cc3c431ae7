"""Unpack beside another method on one prompt (the Circuit page): read-only SQL
for the two traces' edges and the agreement of their scores
(:mod:`unpack.baselines.agreement`; docs/RESULTS_BASELINES.md, "Agreement").
No Streamlit here."""

from __future__ import annotations

import pandas as pd

from app.ui.data import other_methods, q
from unpack.baselines.agreement import overlap, rank_agreement, top_k


def edge_runs(con, prompt_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(this, others)``: the prompt's own target trace and those of the other
    methods' runs that store edges (:func:`app.ui.data.other_methods`), each
    with ``method`` (a label) and ``trace_id``; both empty without other runs."""
    others = other_methods(con, prompt_id)
    if others.empty:  # also a store from before runs.method (migration 0005)
        return others, others
    ids = ",".join(str(int(t)) for t in others["trace_id"])
    has = set(q(con, f"SELECT DISTINCT trace_id FROM edges WHERE trace_id IN ({ids})")["trace_id"])
    others = others[others["trace_id"].isin(has)].reset_index(drop=True)
    this = q(
        con,
        """
        SELECT coalesce(r.method, 'unpack') || CASE WHEN coalesce(r.method, 'unpack') = 'unpack'
               THEN ' (' || r.preset || ')' ELSE '' END AS method, t.trace_id
        FROM prompts p JOIN runs r USING (run_id) JOIN traces t USING (prompt_id)
        WHERE p.prompt_id = ? AND t.root = 'target'""",
        [prompt_id],
    )
    return this, others


def edge_scores(con, trace_id: int) -> pd.Series:
    """A trace's edge scores, ``(parent, child, mode) -> weight`` summed over
    positions (Unpack's edges are position-resolved, a baseline's summed)."""
    df = q(
        con,
        "SELECT parent, child, mode, sum(weight) AS weight FROM edges "
        "WHERE trace_id = ? GROUP BY parent, child, mode",
        [trace_id],
    )
    return df.set_index(["parent", "child", "mode"])["weight"].astype(float)


def compare(con, trace_a: int, trace_b: int, k: int) -> dict:
    """The agreement of two traces' edges: ``overlap`` of the top-``k`` by
    ``|score|`` and the ``rank`` correlation (see the agreement module), plus
    ``top``: the union of the two top-``k`` sets with each side's score and rank."""
    a, b = edge_scores(con, trace_a), edge_scores(con, trace_b)
    ra = a.abs().rank(ascending=False, method="min")
    rb = b.abs().rank(ascending=False, method="min")
    keys = sorted(top_k(a, k) | top_k(b, k), key=lambda e: min(ra.get(e, 1e18), rb.get(e, 1e18)))
    top = pd.DataFrame(
        [
            dict(
                reader=e[0],
                writer=e[1],
                mode=e[2],
                score_a=a.get(e),
                rank_a=ra.get(e),
                score_b=b.get(e),
                rank_b=rb.get(e),
            )
            for e in keys
        ]
    )
    return dict(
        n_a=len(a), n_b=len(b), overlap=overlap(a, b, k), rank=rank_agreement(a, b), top=top
    )
