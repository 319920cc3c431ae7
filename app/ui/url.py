"""Shareable views: each page's state lives in the URL's query parameters.

Every widget that shapes a view has a key listed in :data:`KEYS` with its type.
When a browser session starts, the values in the URL are put into the session
state before the widgets are drawn, so the widgets open on them; after every run
the values of the widgets on the page are written back into the URL. A link
copied from the address bar therefore reopens the same view: the working set,
the page's filters, the selected prompt, component and thresholds.

A link is short: it carries the working set and the page's own widgets only
(:data:`PAGE_KEYS`), and leaves out every value equal to its default
(:data:`DEFAULTS`; the working set's models when they are the ones a first visit
opens on). A value out of its widget's range (:data:`RANGES`) is clamped, one that
is not a finite number is dropped, and the page says so (:func:`notices`).
"""

from __future__ import annotations

import math

import streamlit as st

# widget key -> type: str, int, float, bool, list (of str) or pair ("a|b" <-> (a, b))
KEYS: dict[str, str] = {
    # the working set (sidebar, every page)
    "ws_models": "list",
    "ws_task": "str",
    "ws_preset": "str",
    "ws_condition": "str",
    "ws_template": "str",
    # Prompt
    "prompt_search": "str",
    "prompt_id": "int",
    "prompt_root": "str",
    "prompt_excl_last": "bool",
    "prompt_k": "int",
    "reroot_comp": "str",
    "reroot_pos": "int",
    # Circuit
    "circuit_model": "str",
    "circuit_root": "str",
    "circuit_agg": "str",
    "circuit_modes": "list",
    "circuit_topk": "int",
    "circuit_minw": "float",
    "circuit_minshare": "float",
    "circuit_node": "str",
    "stored_circuit": "int",
    # Compare
    "compare_value": "str",
    "compare_topk": "int",
    "compare_modes": "list",
    "compare_pair": "pair",
    # SQL
    "sql_text": "str",
    "sql_limit": "int",
}
WS_KEYS = ("ws_models", "ws_task", "ws_preset", "ws_condition", "ws_template")
PAGE_KEYS: dict[str, tuple[str, ...]] = {  # page (its url path) -> the keys its link carries
    "overview": (),
    "prompt": (
        "prompt_search",
        "prompt_id",
        "prompt_root",
        "prompt_excl_last",
        "prompt_k",
        "reroot_comp",
        "reroot_pos",
    ),
    "circuit": (
        "circuit_model",
        "circuit_root",
        "circuit_agg",
        "circuit_modes",
        "circuit_topk",
        "circuit_minw",
        "circuit_minshare",
        "circuit_node",
        "stored_circuit",
    ),
    "compare": ("compare_value", "compare_topk", "compare_modes", "compare_pair"),
    "sql": ("sql_text", "sql_limit"),
}
# numeric widget key -> (lowest, highest, step): the widget's own range
RANGES: dict[str, tuple] = {
    "prompt_k": (1, 50, 1),
    "prompt_id": (0, 2**63 - 1, 1),
    "reroot_pos": (0, 2**31 - 1, 1),
    "circuit_topk": (5, 300, 5),
    "circuit_minw": (0.0, 50.0, 0.5),
    "circuit_minshare": (0.0, 1.0, 0.05),
    "stored_circuit": (0, 2**63 - 1, 1),
    "compare_topk": (5, 150, 5),
    "sql_limit": (1, 1_000_000, 1),
}
DEFAULTS: dict = {  # widget key -> the value a page opens on (left out of links)
    "prompt_excl_last": True,
    "prompt_k": 8,
    "prompt_search": "",
    "circuit_agg": "mean",
    "circuit_modes": ["K", "Q", "V", "MLP"],
    "circuit_topk": 40,
    "circuit_minw": 0.0,
    "circuit_minshare": 0.0,
    "compare_value": "mean_credit",
    "compare_topk": 25,
    "compare_modes": ["K", "Q", "V"],
    "sql_limit": 10_000,
}
WS_DEFAULT = "_ws_default_models"  # the working set's models on a first visit (state.py)
_RESTORED = "_url_restored"
_NOTICES = "_url_notices"


def decode(text: list[str], kind: str):
    """A widget value from the URL's strings; ValueError if it does not parse
    (an int may be written as a float with no fraction: ``1e3``)."""
    if kind == "list":
        return [t for t in text if t != ""]
    s = text[-1]
    if kind == "int":
        try:
            return int(s)
        except ValueError:
            v = float(s)
            if not v.is_integer():
                raise
            return int(v)
    if kind == "float":
        return float(s)
    if kind == "bool":
        if s not in ("true", "false"):
            raise ValueError(s)
        return s == "true"
    if kind == "pair":
        a, sep, b = s.partition("|")
        if not sep:
            raise ValueError(s)
        return (a, b)
    return s


def in_range(key: str, value):
    """``(value, notice)``: a number brought into the widget's range (clamped, on
    its step), or ``(None, notice)`` when it is not finite; ``notice`` is None when
    nothing changed."""
    if key not in RANGES:
        return value, None
    lo, hi, step = RANGES[key]
    if not math.isfinite(value):
        return None, f"`{key}={value}` is not a finite number: left out, the page's default is used"
    v = min(max(value, lo), hi)
    v = lo + round((v - lo) / step) * step
    v = int(v) if isinstance(lo, int) else round(float(v), 6)
    if v == value:
        return v, None
    return v, f"`{key}={value}` is outside {lo} … {hi}: {v} is used"


def encode(value, kind: str) -> list[str] | str:
    """The URL form of a widget value."""
    if kind == "list":
        return [str(v) for v in value] or [""]
    if kind == "bool":
        return "true" if value else "false"
    if kind == "pair":
        return "|".join(str(v) for v in value)
    return str(value)


def restore() -> None:
    """Once per browser session: the URL's values into the session state, each
    checked against its widget's range."""
    if st.session_state.get(_RESTORED):
        return
    st.session_state[_RESTORED] = True
    said = []
    for key, kind in KEYS.items():
        if key in st.query_params:
            try:
                value = decode(st.query_params.get_all(key), kind)
            except ValueError:
                said.append(f"`{key}` does not parse: left out, the page's default is used")
                continue
            value, notice = in_range(key, value)
            if notice:
                said.append(notice)
            if value is not None:
                st.session_state[key] = value
    st.session_state[_NOTICES] = said


def notices() -> list[str]:
    """What :func:`restore` changed in the link, once (then forgotten)."""
    return st.session_state.pop(_NOTICES, None) or []


def link_keys(page: str) -> tuple[str, ...]:
    """The keys a link to ``page`` carries: the working set's and the page's own."""
    return WS_KEYS + PAGE_KEYS.get(page, ())


def sync(page: str) -> None:
    """The values of ``page``'s widgets and the working set into the URL; other
    pages' values and values at their defaults are left out."""
    want = {}
    for k in link_keys(page):
        v = st.session_state.get(k)
        if v is None or (k in DEFAULTS and v == DEFAULTS[k]):
            continue
        if k == "ws_models" and list(v) == list(st.session_state.get(WS_DEFAULT) or []):
            continue
        want[k] = encode(v, KEYS[k])
    have = {k: st.query_params.get_all(k) for k in st.query_params.keys()}
    norm = {k: v if isinstance(v, list) else [v] for k, v in want.items()}
    if norm != have:
        st.query_params.from_dict(want)
