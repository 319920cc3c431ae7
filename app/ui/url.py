"""Shareable views: each page's state lives in the URL's query parameters.

Every widget that shapes a view has a key listed in :data:`KEYS` with its type.
When a browser session starts, the values in the URL are put into the session
state before the widgets are drawn, so the widgets open on them; after every run
the values of the widgets on the page are written back into the URL. A link
copied from the address bar therefore reopens the same view: the working set,
the page's filters, the selected prompt, component and thresholds.
"""
from __future__ import annotations

import streamlit as st

# widget key -> type: str, int, float, bool, list (of str) or pair ("a|b" <-> (a, b))
KEYS: dict[str, str] = {
    # the working set (sidebar, every page)
    "ws_models": "list", "ws_task": "str", "ws_preset": "str", "ws_condition": "str",
    "ws_template": "str",
    # Prompt
    "prompt_search": "str", "prompt_id": "int", "prompt_root": "str", "prompt_excl_last": "bool",
    "prompt_k": "int", "reroot_comp": "str", "reroot_pos": "int",
    # Circuit
    "circuit_model": "str", "circuit_root": "str", "circuit_agg": "str", "circuit_modes": "list",
    "circuit_topk": "int", "circuit_minw": "float", "circuit_minshare": "float",
    "circuit_node": "str", "stored_circuit": "int",
    # Compare
    "compare_value": "str", "compare_topk": "int", "compare_modes": "list", "compare_pair": "pair",
    # SQL
    "sql_text": "str", "sql_limit": "int",
}
_RESTORED = "_url_restored"


def decode(text: list[str], kind: str):
    """A widget value from the URL's strings; ValueError if it does not parse."""
    if kind == "list":
        return [t for t in text if t != ""]
    s = text[-1]
    if kind == "int":
        return int(s)
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
    """Once per browser session: the URL's values into the session state."""
    if st.session_state.get(_RESTORED):
        return
    st.session_state[_RESTORED] = True
    for key, kind in KEYS.items():
        if key in st.query_params:
            try:
                st.session_state[key] = decode(st.query_params.get_all(key), kind)
            except ValueError:
                pass  # a malformed value is ignored; the widget opens on its default


def sync() -> None:
    """The values of the widgets now on the page into the URL (others dropped)."""
    want = {k: encode(st.session_state[k], kind) for k, kind in KEYS.items()
            if k in st.session_state and st.session_state[k] is not None}
    have = {k: st.query_params.get_all(k) for k in st.query_params.keys()}
    norm = {k: v if isinstance(v, list) else [v] for k, v in want.items()}
    if norm != have:
        st.query_params.from_dict(want)
