"""Duplicate-suppression report (docs/METHOD.md §10).

For every model with IOI traces (root = the target logit) the report reads the
token credit at the name slots of the four conditions of each prompt group:

=========  ==========================  =====================================
condition  target vs distractor        slots (first name, second, repeat)
=========  ==========================  =====================================
ioi_io     IO vs S                     IO, S1, S2
ioi_s      S vs IO                     IO, S1, S2  (S2 repeats the target)
abc_c      C vs A                      A, B, C     (C holds the target once)
abc_b      B vs A                      A, B, C     (C is not the target)
=========  ==========================  =====================================

Duplicate suppression is the pattern "in ioi_s the target's first mention (S1)
gets positive credit and its repeat (S2) negative", against the control abc_c
where the same slot holds the target once. Per model: mean credit per slot and
condition, the share of prompts with S2 < 0, the S1 - S2 gap with a percentile
bootstrap interval over prompts, and mean target probabilities. Models are
ordered by size (``models.n_params``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from app.db import open_db
from app.graphs import selection_sql

from . import NoData, markdown_table, write_outputs

CONDITIONS = ("ioi_io", "ioi_s", "abc_c", "abc_b")
TARGETS = {"ioi_io": "IO vs S", "ioi_s": "S vs IO", "abc_c": "C vs A", "abc_b": "B vs A"}
# role -> slot: the first-named person, the second-named one, the repeated slot
SLOTS = {"IO": "IO/A", "A": "IO/A", "S1": "S1/B", "B": "S1/B", "S2": "S2/C", "C": "S2/C"}


@dataclass
class SuppressionReport:
    markdown: str
    tables: dict = field(default_factory=dict)  # name -> DataFrame
    figure: object = None  # matplotlib Figure
    per_prompt: pd.DataFrame | None = None

    def write(self, out_dir) -> list[Path]:
        return write_outputs(out_dir, "suppression", self.markdown, self.tables, self.figure)


def ingest_command(db, model: str | None = None) -> str:
    return f"unpack ingest --model {model or 'MODEL'} --task ioi --n 100 --controls --db {db}"


def load_credits(con, models=None, preset: str = "kqv_aligned") -> pd.DataFrame:
    """One row per (model, prompt of the target root, slot): credit, credit_pct,
    target_prob, logit_diff, group, condition, n_params."""
    sel, params = selection_sql(model=models, task="ioi", preset=preset, root="target")
    return con.execute(
        f"""
        WITH sel AS ({sel})
        SELECT s.model, m.n_params, s.condition, s.prompt_group, s.prompt_id, r.role,
               c.credit, c.credit_pct, p.target_prob, p.logit_diff
        FROM sel s
        JOIN models m ON m.name = s.model
        JOIN prompts p ON p.prompt_id = s.prompt_id
        JOIN roles r ON r.prompt_id = s.prompt_id
        JOIN token_credits c ON c.trace_id = s.trace_id AND c.pos = r.pos
        WHERE s.condition IN ({', '.join('?' for _ in CONDITIONS)}) AND r.role <> 'END'
        """,
        params + list(CONDITIONS),
    ).df()


def bootstrap_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the mean of ``x``."""
    x = np.asarray(x, float)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def _size(n) -> str:
    if n is None or (isinstance(n, float) and np.isnan(n)):
        return ""
    n = float(n)
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def summarize(df: pd.DataFrame, n_boot: int = 2000, seed: int = 0):
    """``(per_prompt, by_condition, by_model)`` from :func:`load_credits` rows."""
    df = df.assign(slot=df["role"].map(SLOTS)).dropna(subset=["slot"])
    per = df.pivot_table(
        index=[
            "model",
            "n_params",
            "condition",
            "prompt_group",
            "prompt_id",
            "target_prob",
            "logit_diff",
        ],
        columns="slot",
        values="credit",
        aggfunc="first",
    ).reset_index()
    pct = df.pivot_table(
        index=["model", "prompt_id"], columns="slot", values="credit_pct", aggfunc="first"
    )
    pct.columns = [f"{c} %" for c in pct.columns]
    per = per.merge(pct.reset_index(), on=["model", "prompt_id"])
    per.columns.name = None

    rows = []
    for (model, cond), g in per.groupby(["model", "condition"], sort=False):
        rows.append(
            {
                "model": model,
                "condition": cond,
                "n": len(g),
                "IO/A": g["IO/A"].mean(),
                "S1/B": g["S1/B"].mean(),
                "S2/C": g["S2/C"].mean(),
                "share S2/C < 0": (g["S2/C"] < 0).mean(),
                "S1/B %": g["S1/B %"].mean(),
                "S2/C %": g["S2/C %"].mean(),
                "p(target)": g["target_prob"].mean(),
                "logit diff": g["logit_diff"].mean(),
                "n_params": g["n_params"].iloc[0],
            }
        )
    by_cond = pd.DataFrame(rows)
    by_cond["condition"] = pd.Categorical(by_cond["condition"], CONDITIONS, ordered=True)
    by_cond = by_cond.sort_values(["n_params", "model", "condition"]).drop(columns="n_params")
    by_cond["condition"] = by_cond["condition"].astype(str)

    rows = []
    for model, g in per.groupby("model", sort=False):
        c = {k: v for k, v in g.groupby("condition")}
        s = c.get("ioi_s")
        gap = (s["S1/B"] - s["S2/C"]).to_numpy() if s is not None else np.array([])
        lo, hi = bootstrap_ci(gap, n_boot, seed)

        def mean(cond, col):
            return c[cond][col].mean() if cond in c else float("nan")

        rows.append(
            {
                "model": model,
                "params": _size(g["n_params"].iloc[0]),
                "n_params": g["n_params"].iloc[0],
                "n prompts": g["prompt_group"].nunique(),
                "S1 (ioi_s)": mean("ioi_s", "S1/B"),
                "S2 (ioi_s)": mean("ioi_s", "S2/C"),
                "share S2 < 0 (ioi_s)": (s["S2/C"] < 0).mean() if s is not None else np.nan,
                "gap S1 - S2": gap.mean() if len(gap) else np.nan,
                "gap CI low": lo,
                "gap CI high": hi,
                "S2 (ioi_io)": mean("ioi_io", "S2/C"),
                "C (abc_c, copy)": mean("abc_c", "S2/C"),
                "C (abc_b, no copy)": mean("abc_b", "S2/C"),
                "p(IO) ioi_io": mean("ioi_io", "target_prob"),
                "p(S) ioi_s": mean("ioi_s", "target_prob"),
                "p(C) abc_c": mean("abc_c", "target_prob"),
                "p(B) abc_b": mean("abc_b", "target_prob"),
            }
        )
    by_model = pd.DataFrame(rows).sort_values(["n_params", "model"]).reset_index(drop=True)
    return per, by_cond, by_model


def figure(per: pd.DataFrame, by_model: pd.DataFrame):
    """Strip plot of the per-prompt credit per condition and slot, one panel per
    model (ordered by size), and the S1 - S2 gap (ioi_s) against model size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = list(by_model["model"])
    n = len(models) + 1
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    axes = axes.ravel()
    colors = {"IO/A": "tab:blue", "S1/B": "tab:green", "S2/C": "tab:red"}
    offsets = {"IO/A": -0.25, "S1/B": 0.0, "S2/C": 0.25}
    rng = np.random.default_rng(0)
    for ax, model in zip(axes, models):
        g = per[per["model"] == model]
        for i, cond in enumerate(CONDITIONS):
            d = g[g["condition"] == cond]
            for slot, col in colors.items():
                y = d[slot].to_numpy(float)
                x = i + offsets[slot] + rng.uniform(-0.08, 0.08, len(y))
                ax.scatter(
                    x, y, s=5, alpha=0.35, color=col, linewidths=0, label=slot if i == 0 else None
                )
                if len(y):
                    ax.plot(
                        [i + offsets[slot] - 0.1, i + offsets[slot] + 0.1],
                        [y.mean()] * 2,
                        color="black",
                        lw=1.5,
                    )
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(
            range(len(CONDITIONS)), [f"{c}\n{TARGETS[c]}" for c in CONDITIONS], fontsize=8
        )
        size = by_model.loc[by_model["model"] == model, "params"].iloc[0]
        ax.set_title(f"{model} ({size})" if size else model, fontsize=10)
        ax.set_ylabel("token credit")
        ax.legend(fontsize=7, loc="best", markerscale=2, title="slot", title_fontsize=7)
    ax = axes[len(models)]
    x = by_model["n_params"].astype(float).to_numpy()
    y = by_model["gap S1 - S2"].to_numpy(float)
    err = np.vstack(
        [y - by_model["gap CI low"].to_numpy(float), by_model["gap CI high"].to_numpy(float) - y]
    )
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, color="black")
    for xi, yi, m in zip(x, y, models):
        ax.annotate(m, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    # one labelled tick per model (its size), none between: log minor labels overlap
    ax.set_xticks(x, by_model["params"].astype(str).tolist(), fontsize=8)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.margins(x=0.15)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("parameters")
    ax.set_ylabel("S1 - S2 credit (ioi_s), 95% CI")
    ax.set_title("gap against model size", fontsize=10)
    for a in axes[n:]:
        a.axis("off")
    fig.tight_layout()
    return fig


def suppression_report(
    db,
    models=None,
    preset: str = "kqv_aligned",
    n_boot: int = 2000,
    seed: int = 0,
    make_figure: bool = True,
) -> SuppressionReport:
    """The report from the store at ``db`` (read-only). Raises :class:`NoData`
    with the ingest command when no model has IOI traces with the ioi_s condition."""
    con = open_db(db)
    try:
        df = load_credits(con, models, preset)
        present = sorted(set(df["model"]))
    finally:
        con.close()
    if df.empty:
        which = f"model(s) {', '.join(models)}" if models else "any model"
        raise NoData(
            f"database {db!s} has no IOI traces (root target, preset {preset}) for {which}",
            ingest_command(db, (models or [None])[0]),
        )
    have_s = set(df.loc[df["condition"] == "ioi_s", "model"])
    if not have_s:
        raise NoData(
            f"database {db!s} has IOI traces for {', '.join(present)} but none of the "
            "controls (conditions ioi_s, abc_c, abc_b)",
            ingest_command(db, present[0]),
        )
    skipped = [m for m in present if m not in have_s]
    df = df[df["model"].isin(have_s)]
    per, by_cond, by_model = summarize(df, n_boot, seed)

    head = by_model.drop(columns="n_params").copy()
    head["gap S1 - S2 [95% CI]"] = [
        f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        for g, lo, hi in zip(head["gap S1 - S2"], head["gap CI low"], head["gap CI high"])
    ]
    show = head[
        [
            "model",
            "params",
            "n prompts",
            "S1 (ioi_s)",
            "S2 (ioi_s)",
            "share S2 < 0 (ioi_s)",
            "gap S1 - S2 [95% CI]",
            "S2 (ioi_io)",
            "C (abc_c, copy)",
            "C (abc_b, no copy)",
        ]
    ]
    probs = head[["model", "p(IO) ioi_io", "p(S) ioi_s", "p(C) abc_c", "p(B) abc_b"]]
    md = [
        f"# Duplicate suppression (docs/METHOD.md §10), preset {preset}",
        "",
        "Token credit (raw, target-minus-mean logit units) at the name slots; "
        f"gap interval: percentile bootstrap over prompts ({n_boot} resamples).",
        "",
        markdown_table(show),
        "",
        "Mean target probability per condition:",
        "",
        markdown_table(probs),
        "",
        "Per condition (slots IO/A, S1/B, S2/C; % = share of the prompt's positive credit):",
        "",
        markdown_table(by_cond),
    ]
    if skipped:
        md += ["", f"Skipped (no ioi_s condition stored): {', '.join(skipped)}."]
    fig = figure(per, by_model) if make_figure else None
    return SuppressionReport(
        "\n".join(md), {"by_model": by_model, "by_condition": by_cond, "per_prompt": per}, fig, per
    )
