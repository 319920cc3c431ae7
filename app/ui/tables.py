"""Tables that fit the page: every column gets a width so that the table is read
without scrolling sideways. Numbers keep their natural width (header or value,
whichever is longer); when the columns do not fit, long text columns are cut
to fit (the full text shows on hover), never the numbers and never the names
that tell rows apart (:data:`WHOLE`). Times show as times, parameter counts
with thousands separators, and a measure that does not apply to a row (None)
reads "not applicable" (:func:`not_applicable`)."""

from __future__ import annotations

import numbers

import pandas as pd

CHAR_PX = 8  # one character of the table font, generously
PAD_PX = 26  # a cell's padding and the header's sort arrow
MIN_TEXT_PX = 90  # a cut text column keeps at least this
MAX_PX = 420
MAIN_PX = 900  # the main area of the wide layout at 1400 pixels, less a margin
LABELS = {  # short headers for long column names (the name itself shows on hover)
    "mean_logit_diff": "logit diff",
    "mean_p_target": "p(target)",
    "mean_suppression": "suppression",
    "n_layers": "layers",
    "n_heads": "heads",
    "acc_repeat": "accuracy",
    "K_prev_to_ind": "K prev→ind",
    "mean_credit": "credit",
    "mean_credit_pct": "credit %",
    "share_negative": "share < 0",
    "top_heads_at_target": "top heads at the target",
    "K_share": "K share",
    "run_id": "run",
    "prompts_ok": "prompts",
    "mean_trace_s": "s / prompt",
}
WHOLE = ("model", "family", "name")  # names that tell rows apart: never cut
NA = "not applicable"


def shown(v) -> str:
    """A value as the table shows it (floats with at most 4 decimals)."""
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if v == v else "None"
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return f"{v:,}"  # as wide as a "localized" format
    return str(v)


def natural_px(df: pd.DataFrame, col: str, label: str) -> int:
    """The width that shows ``col``'s header ``label`` and its longest value whole."""
    chars = max([len(label)] + [len(shown(v)) for v in df[col].head(500)])
    return max(50, min(MAX_PX, chars * CHAR_PX + PAD_PX))


def fit_widths(df: pd.DataFrame, budget: int = MAIN_PX, labels: dict | None = None) -> dict:
    """``column -> pixels`` summing to at most ``budget`` where the numbers allow:
    the widest text columns are cut to one common width, not below ``MIN_TEXT_PX``."""
    labels = labels or {}
    want = {c: natural_px(df, c, labels.get(c, str(c))) for c in df.columns}
    text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c]) and c not in WHOLE]
    fixed = sum(w for c, w in want.items() if c not in text)
    if not text or sum(want.values()) <= budget:
        return want
    lo, hi = MIN_TEXT_PX, max(want[c] for c in text)  # the cut: largest that fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fixed + sum(min(want[c], mid) for c in text) <= budget else (lo, mid)
    return {c: min(w, lo) if c in text else w for c, w in want.items()}


def column_config(
    df: pd.DataFrame, budget: int = MAIN_PX, labels: dict | None = None, config: dict | None = None
) -> dict:
    """Streamlit ``column_config`` with :func:`fit_widths`; ``config`` entries (a
    format, a help text) keep theirs and get the width."""
    labels = {
        c: labels.get(c) if labels and c in labels else LABELS.get(str(c), str(c))
        for c in df.columns
    }
    out = dict(config or {})
    for c, label in labels.items():  # a config's own label is what shows
        if isinstance(out.get(c), dict) and out[c].get("label"):
            labels[c] = out[c]["label"]
    for c, px in fit_widths(df, budget, labels).items():
        base = out.get(c)
        if isinstance(base, str):
            base = {"label": base}
        if base is None:
            base = _default_column(df[c], labels[c], None if labels[c] == str(c) else f"`{c}`")
        out[c] = dict(base, width=int(px))
    return out


def _default_column(col: pd.Series, label: str, help: str | None):
    """A column's kind: times as times (a text column would show epoch
    milliseconds), ``n_params`` with thousands separators, numbers, text."""
    import streamlit as st

    if pd.api.types.is_datetime64_any_dtype(col):
        return st.column_config.DatetimeColumn(label, help=help, format="YYYY-MM-DD HH:mm:ss")
    if col.name == "n_params" and pd.api.types.is_numeric_dtype(col):
        return st.column_config.NumberColumn(label, help=help, format="localized")
    if pd.api.types.is_numeric_dtype(col):
        return st.column_config.NumberColumn(label, help=help)
    return st.column_config.TextColumn(label, help=help)


def not_applicable(df: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """``df`` with each of ``columns`` (name -> format, e.g. ``"{:+.3f}"``) as text:
    the value formatted, or "not applicable" where it is None (a logit difference
    on a task without a distractor). Columns with no None stay numbers."""
    out = df.copy()
    for c, fmt in columns.items():
        if c in out and out[c].isna().any():
            out[c] = [NA if pd.isna(v) else fmt.format(v) for v in out[c]]
    return out


def table(
    df: pd.DataFrame,
    budget: int = MAIN_PX,
    labels: dict | None = None,
    config: dict | None = None,
    **kw,
):
    """``st.dataframe`` of ``df`` (no index) whose columns fit ``budget`` pixels."""
    import streamlit as st

    return st.dataframe(
        df, hide_index=True, column_config=column_config(df, budget, labels, config), **kw
    )
