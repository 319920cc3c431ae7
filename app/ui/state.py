"""Streamlit glue: the store's read-only handle, cached queries, the working set
in the sidebar, and the model for tracing on demand.

Caches are keyed by the database file's version (``app.db.db_version``): after
an ingest commits, the next run of a page (a refresh) reads the new rows."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import streamlit as st

from app.db import db_version, shared_db
from unpack.errors import InputError

from . import data as D

ALL = "(all)"


def db_path() -> str:
    """The store the app shows: $UNPACK_DB (set by ``unpack app``), else ``--db PATH``
    after ``--`` on the streamlit command line, else ./unpack.duckdb."""
    if os.environ.get("UNPACK_DB"):
        return str(Path(os.environ["UNPACK_DB"]).resolve())
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--db" and i + 1 < len(argv):
            return str(Path(argv[i + 1]).resolve())
        if a.startswith("--db="):
            return str(Path(a[5:]).resolve())
    return str(Path("unpack.duckdb").resolve())


def sql_limits() -> tuple[float, int]:
    """The SQL box's time limit (s) and result size limit (bytes): $UNPACK_SQL_TIMEOUT
    and $UNPACK_SQL_MAX_MB, set by ``unpack app --sql-timeout/--sql-max-mb``."""
    from app.db import DEFAULT_MAX_MB, DEFAULT_TIMEOUT_S

    def num(name, default):
        try:
            v = float(os.environ.get(name, default))
        except ValueError:
            return default
        return v if v > 0 and v == v and v != float("inf") else default

    return num("UNPACK_SQL_TIMEOUT", DEFAULT_TIMEOUT_S), int(
        num("UNPACK_SQL_MAX_MB", DEFAULT_MAX_MB) * 2**20
    )


_SQL_CACHE: dict = {}


def sql_cache():
    """The SQL box's result cache for the whole process, bounded at four times the
    result size limit (a result past the limit is never kept)."""
    from app.db import ResultCache

    limit = 4 * sql_limits()[1]
    version = db_version(db_path())
    if (
        _SQL_CACHE.get("cache") is None
        or _SQL_CACHE["cache"].max_bytes != limit
        or _SQL_CACHE.get("version") != version
    ):  # the store changed: results are stale
        _SQL_CACHE["cache"], _SQL_CACHE["version"] = ResultCache(limit), version
    return _SQL_CACHE["cache"]


def connection():
    """The store's read-only handle (``app.db.shared_db``), or a clear message and a stop."""
    path = db_path()
    try:
        return shared_db(path)
    except InputError as e:
        st.error(f"Cannot open the database: {e}")
        st.stop()


P = ParamSpec("P")
R = TypeVar("R")


@st.cache_data(show_spinner=False, max_entries=2000)
def _query(_fn: Callable, name: str, path: str, version: tuple, *args, **kwargs):
    """``_fn(handle, *args, **kwargs)``, cached per function (its qualified ``name``:
    Streamlit cannot hash a function), database, its version and the arguments."""
    return _fn(shared_db(path), *args, **kwargs)


def query(fn: Callable[Concatenate[Any, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(connection, *args)`` on the app's store, cached until the next ingest
    commits: ``query(data.model_names)``, ``query(data.distinct, "task", models)``.
    ``fn`` is any reader that takes the store's handle first (app.ui.data,
    app.ui.circuit_stored)."""
    path = db_path()
    return _query(fn, f"{fn.__module__}.{fn.__qualname__}", path, db_version(path), *args, **kwargs)


# ------------------------------------------------------------------ the working set


def _pick(label: str, options: list, key: str, default=None, all_option: bool = False, **kw):
    """A sidebar selectbox whose remembered value survives option changes."""
    opts = ([ALL] if all_option else []) + list(options)
    if not opts:
        st.sidebar.selectbox(label, ["(none stored)"], key=key + "_empty", disabled=True)
        return None
    if st.session_state.get(key) not in opts:
        st.session_state[key] = default if default in opts else opts[0]
    v = st.sidebar.selectbox(label, opts, key=key, **kw)
    return None if v == ALL else v


def working_set() -> D.WorkingSet:
    """The sidebar pickers; every page reads the same working set."""
    st.sidebar.subheader("Working set")
    models = query(D.model_names)
    st.session_state["_ws_default_models"] = D.default_models(models)  # a link leaves it out
    if "ws_models" not in st.session_state:
        st.session_state["ws_models"] = D.default_models(models)
    st.session_state["ws_models"] = [m for m in st.session_state["ws_models"] if m in models]
    sel = st.sidebar.multiselect(
        "Models",
        models,
        key="ws_models",
        format_func=D.short_model,
        help="Compare uses every model picked here; Circuit and Prompt one at a time",
    )
    use = tuple(sel) or tuple(models)
    if models and not sel:
        st.sidebar.caption("No model picked: the pages use every model.")
    task = _pick("Task", query(D.distinct, "task", use), "ws_task")
    preset = _pick("Preset", query(D.distinct, "preset", use, task), "ws_preset")
    conds = query(D.distinct, "condition", use, task)
    cond = _pick("Condition", conds, "ws_condition", default="ioi_io", all_option=True)
    templates = sorted(query(D.distinct, "template", use, task))
    templ = _pick("Template", templates, "ws_template", all_option=True)
    ws = D.WorkingSet(models=use, task=task, preset=preset, condition=cond, template=templ)
    n = query(D.ws_summary, ws)["prompts"].sum() if models else 0
    st.sidebar.caption(f"{int(n)} prompts in the working set")
    st.sidebar.caption(f"Database: `{db_path()}` (read-only)")
    return ws


# ------------------------------------------------------------------ graphs


@st.cache_data(show_spinner=False, max_entries=64)
def _circuit(path, version, model, task, preset, condition, template, root, modes, agg, min_share):
    from app.graphs import circuit_graph

    cur = shared_db(path).cursor()  # its own connection: the temp table stays private
    try:
        return circuit_graph(
            cur,
            model=model,
            task=task,
            preset=preset,
            condition=condition,
            template=template,
            root=root,
            modes=tuple(modes),
            agg=agg,
            min_share=min_share,
        )
    finally:
        cur.close()


def circuit(
    model: str,
    ws: D.WorkingSet,
    root: str = "target",
    modes=("K", "Q", "V", "MLP"),
    agg: str = "mean",
    min_share: float = 0.0,
):
    """The working set's circuit for one model with every edge (app.graphs.circuit_graph);
    thresholds are applied afterwards with :func:`app.ui.views.threshold`."""
    path = db_path()
    return _circuit(
        path,
        db_version(path),
        model,
        ws.task,
        ws.preset,
        ws.condition,
        ws.template,
        root,
        tuple(modes),
        agg,
        float(min_share),
    )


@st.cache_data(show_spinner=False, max_entries=32)
def _suppression(path, version, models, preset):
    """``(by_model, by_condition)`` from app.reports.suppression on the app's connection."""
    try:
        from app.reports.suppression import load_credits, summarize
    except ModuleNotFoundError as e:
        if e.name != "app.reports.suppression":
            raise
        raise InputError(
            "the suppression report (app.reports.suppression) is not installed in this checkout"
        ) from None
    cur = shared_db(path).cursor()
    try:
        df = load_credits(cur, list(models), preset)
    finally:
        cur.close()
    if df.empty or not (df["condition"] == "ioi_s").any():
        raise InputError(
            "it needs IOI prompts with their controls (conditions ioi_s, abc_c, "
            "abc_b); ingest them with `unpack ingest --model MODEL --task ioi "
            "--controls`"
        )
    _, by_cond, by_model = summarize(df, n_boot=1000, seed=0)
    return by_model.drop(columns=["n_params"]), by_cond


def suppression(models: tuple, preset: str | None):
    """The duplicate-suppression tables (app.reports.suppression) for these models:
    ``(by_model, by_condition)``."""
    path = db_path()
    return _suppression(path, db_version(path), tuple(models), preset or "kqv_aligned")


# ------------------------------------------------------------------ tracing on demand


def model_availability(name: str) -> tuple[bool, str]:
    """Can this process load ``name`` to trace on demand? ``(ok, why)``
    (:func:`unpack.on_demand.model_availability`)."""
    from unpack.on_demand import model_availability

    return model_availability(name)


@st.cache_resource(show_spinner=False, max_entries=2)
def _tracer(name: str):
    """The tracer of a trace on demand (:func:`unpack.on_demand.load_tracer`), kept."""
    from unpack.on_demand import load_tracer

    return load_tracer(name)


@st.cache_data(show_spinner=False, max_entries=200)
def trace_on_demand(
    model: str, text: str, target: str, distractor, config_json: str, root: str
) -> dict:
    """Trace one prompt from ``root`` with the run's config; plain data for caching
    (:func:`unpack.on_demand.trace_root`: in memory, nothing is stored)."""
    from unpack.on_demand import trace_root

    return trace_root(_tracer(model), text, target, distractor, config_json, root)
