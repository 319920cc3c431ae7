"""Rich display of a trace in Jupyter: ``TraceResult._repr_html_`` (docs/METHOD.md
§6-7). The token strip is coloured by signed token credit (blue positive, red
negative, opacity by share of the largest |credit|); the top paths show the
K/Q/V mode of each attention hop. All text is escaped."""

from __future__ import annotations

from html import escape

MODE_COLORS = {"K": "#1f77b4", "Q": "#ff7f0e", "V": "#2ca02c", "MLP": "#7f7f7f"}
_POS, _NEG = "31,119,180", "214,39,40"


def token_strip(tokens, credit, credit_pct) -> str:
    """One ``<span>`` per token, its background the signed credit; hover for numbers."""
    top = max((abs(float(c)) for c in credit), default=0.0) or 1.0
    spans = []
    for i, (tok, c, p) in enumerate(zip(tokens, credit, credit_pct)):
        rgb = _POS if c >= 0 else _NEG
        alpha = 0.1 + 0.8 * abs(float(c)) / top
        tip = escape(f"position {i}: credit {float(c):+.4f} ({float(p):+.2f}%)", quote=True)
        spans.append(
            f'<span title="{tip}" style="background:rgba({rgb},{alpha:.2f});'
            f'padding:1px 2px;margin:1px;border-radius:3px;white-space:pre">'
            f'{escape(tok)}</span>'
        )
    return '<div style="line-height:2;font-family:monospace">' + "".join(spans) + "</div>"


def _hop(name: str, pos: int, mode) -> str:
    badge = ""
    if mode in MODE_COLORS:
        badge = (
            f'<span style="background:{MODE_COLORS[mode]};color:#fff;border-radius:3px;'
            f'padding:0 3px;margin-left:2px;font-size:85%">{escape(mode)}</span>'
        )
    return f"<code>{escape(name)}</code>{badge}@{int(pos)}"


def paths_table(paths, limit: int = 10) -> str:
    """The top ``limit`` paths: score, percent, and the chain with a badge per mode."""
    rows = []
    for p in paths[:limit]:
        chain = " → ".join(_hop(n, pos, m) for n, pos, m in p.hops)
        rows.append(
            f"<tr><td style='text-align:right'>{p.score:+.4f}</td>"
            f"<td style='text-align:right'>{p.score_pct:+.2f}%</td>"
            f"<td style='text-align:left'>{chain}</td></tr>"
        )
    head = "<tr><th>score</th><th>% of credit</th><th style='text-align:left'>path</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def trace_html(res, limit: int = 10) -> str:
    """The whole display of one ``TraceResult``: header, token strip, top paths."""
    vs = f" vs <code>{escape(repr(res.distractor))}</code>" if res.distractor else ""
    diff = f", logit diff {res.logit_diff:+.3f}" if res.logit_diff is not None else ""
    head = (
        f"<div><b>target</b> <code>{escape(repr(res.target))}</code>{vs}: "
        f"p(target) {res.target_prob:.4f}{diff}; <b>root</b> "
        f"<code>{escape(res.root or 'seeds (target logit)')}</code>; "
        f"suppression {res.suppression:.3f}</div>"
    )
    more = f" (of {len(res.paths)})" if len(res.paths) > limit else ""
    return (
        f"<div class='unpack-trace'>{head}"
        f"{token_strip(res.tokens, res.token_credit, res.token_credit_pct)}"
        f"<div><b>top paths</b>{more}</div>{paths_table(res.paths, limit)}</div>"
    )
