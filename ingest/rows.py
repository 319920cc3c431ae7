"""Trace results -> Arrow tables, one per store table, for a batch of prompts.

Everything is built column-wise from the result arrays (no per-row Python work
for token credits, component flows or edges), so writing stays a small part of
an ingest.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from unpack import components

from . import schema


@dataclass
class Root:
    """Where a trace starts: ``spec`` 'target' (the logit seeds) or
    'COMPONENT@WHERE'; ``arg`` is what the tracer gets (None or 'COMPONENT@POS')."""

    spec: str
    component: str | None = None
    arg: str | None = None


@dataclass
class Item:
    """One prompt on its way into the store."""

    seq: int
    key: str
    record: object | None  # PromptRecord; None for a corpus line that did not parse
    roots: list[Root] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    results: list | None = None  # one TraceResult per root, in order
    trace_s: float = 0.0
    fields: dict = field(default_factory=dict)  # prompt columns for records that did not parse
    label: str = ""  # where it came from, for messages
    prompt_id: int | None = None  # a prompt already stored that gets more traces (roots)


# ``(layer, head)`` columns of a component (embeddings are layer -1), memoized
layer_head = lru_cache(maxsize=None)(components.layer_head)


def _lookup(names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Layer and head arrays for an array of component names (head: None if not a head)."""
    uniq, inv = np.unique(names.astype(str), return_inverse=True)
    lh = [layer_head(n) for n in uniq]
    layer = np.array([x[0] for x in lh], dtype=np.int32)[inv]
    head = np.array([x[1] for x in lh], dtype=object)[inv]
    return layer, head


def _json(x) -> str | None:
    return None if x is None else json.dumps(x, sort_keys=True, default=str)


class Columns:
    """Column-wise builder: append arrays or lists, get one Arrow table made with
    one conversion per column."""

    def __init__(self, types: dict[str, pa.DataType]):
        self.types = types
        self.parts: dict[str, list] = {c: [] for c in types}

    def add(self, **cols) -> None:
        for c, v in cols.items():
            self.parts[c].append(v)

    def table(self) -> pa.Table:
        arrays = {}
        for c, t in self.types.items():
            parts = self.parts[c]
            if parts and all(isinstance(p, np.ndarray) for p in parts):
                arrays[c] = pa.array(np.concatenate(parts), type=t)
            else:
                arrays[c] = pa.array(list(itertools.chain.from_iterable(parts)), type=t)
        return pa.table(arrays)


_ARROW = {
    sa.Integer: pa.int32(),
    sa.BigInteger: pa.int64(),
    sa.String: pa.string(),
    sa.Double: pa.float64(),
    sa.Boolean: pa.bool_(),
    sa.DateTime: pa.timestamp("us"),
}
# Arrow column types of every table a batch writes, from the table definitions.
SCHEMAS = {
    name: {c.name: _ARROW[type(c.type)] for c in schema.metadata.tables[name].columns}
    for name in ("prompts",) + schema.CHILD_TABLES
}


def _num(x):
    return None if x is None else float(x)


def _prompt_row(it: Item, prompt_id: int, run_id: int, now) -> dict:
    r = it.record
    row = dict(
        prompt_id=prompt_id,
        run_id=run_id,
        prompt_key=it.key,
        seq=it.seq,
        status="failed" if it.error else "ok",
        error=it.error,
        warnings=_json(it.warnings) if it.warnings else None,
        trace_s=it.trace_s,
        created_at=now,
    )
    if r is not None:
        row.update(
            task=r.task,
            text=r.text,
            target=r.target,
            distractor=r.distractor,
            roles=_json(r.roles),
            template=r.template or None,
            prompt_group=(str(r.group) if r.group not in (None, "") else None),
            condition=r.condition or None,
            metadata=_json(r.metadata or None),
        )
    row.update(it.fields)
    if it.results:
        res = it.results[0]
        row.update(
            n_tokens=len(res.tokens),
            target_pos=res.target_pos,
            target_id=res.target_id,
            distractor_id=res.distractor_id,
            target_prob=_num(res.target_prob),
            target_logit=_num(res.target_logit),
            logit_diff=_num(res.logit_diff),
        )
    return row


def _root_pos(res, root: Root) -> int:
    if root.arg is None:
        return int(res.target_pos)
    pos = int(root.arg.rsplit("@", 1)[1])
    return pos if pos >= 0 else len(res.tokens) + pos


def build(items: list[Item], run_id: int, first: dict[str, int], now) -> dict[str, pa.Table]:
    """Arrow tables for the prompts of one batch. ``first`` holds the next free
    ``prompt_id``, ``trace_id`` and ``path_id``."""
    cols = {t: Columns(types) for t, types in SCHEMAS.items()}
    prompt_id, trace_id, path_id = first["prompt_id"], first["trace_id"], first["path_id"]
    prompt_rows = []
    for it in items:
        if it.prompt_id is not None:  # stored already: only its new traces
            for root, res in zip(it.roots, it.results or ()):
                path_id = _add_trace(cols, res, root, it.prompt_id, trace_id, path_id)
                trace_id += 1
            continue
        prompt_rows.append(_prompt_row(it, prompt_id, run_id, now))
        if it.error is None and it.results:
            _add_prompt(cols, it, prompt_id)
            for root, res in zip(it.roots, it.results):
                path_id = _add_trace(cols, res, root, prompt_id, trace_id, path_id)
                trace_id += 1
        prompt_id += 1
    cols["prompts"].add(**{c: [row.get(c) for row in prompt_rows] for c in SCHEMAS["prompts"]})
    return {t: c.table() for t, c in cols.items()}


def _add_prompt(cols, it: Item, prompt_id: int) -> None:
    res = it.results[0]
    S = len(res.tokens)
    roles = it.record.roles or {}
    cols["roles"].add(
        prompt_id=[prompt_id] * len(roles), role=list(roles), pos=[int(p) for p in roles.values()]
    )
    cols["tokens"].add(
        prompt_id=np.full(S, prompt_id, np.int32),
        pos=np.arange(S, dtype=np.int32),
        token_id=np.asarray(res.token_ids, np.int32),
        token=list(res.tokens),
    )


def _add_trace(cols, res, root: Root, prompt_id: int, trace_id: int, path_id: int) -> int:
    S = len(res.tokens)
    layer, head = layer_head(root.component) if root.component else (None, None)
    cols["traces"].add(
        trace_id=[trace_id],
        prompt_id=[prompt_id],
        root=[root.spec],
        root_component=[root.component],
        root_layer=[layer],
        root_head=[head],
        root_pos=[_root_pos(res, root)],
        seed_total=[float(sum(res.seeds.values()))],
        suppression=[_num(res.suppression)],
        paths_truncated=[bool(getattr(res, "paths_truncated", False))],
        timing=[_json(getattr(res, "timing", None))],
    )
    cols["token_credits"].add(
        trace_id=np.full(S, trace_id, np.int32),
        pos=np.arange(S, dtype=np.int32),
        credit=np.asarray(res.token_credit, np.float64),
        credit_pct=np.asarray(res.token_credit_pct, np.float64),
    )
    # component flows: the nonzero entries of the [components, positions] matrix
    names = np.array(list(res.component_flow), dtype=object)
    if len(names):
        flow = np.stack([np.asarray(v, np.float64) for v in res.component_flow.values()])
        ci, pi = np.nonzero(flow)
        comp = names[ci]
        ly, hd = _lookup(comp)
        cols["component_flows"].add(
            trace_id=np.full(len(ci), trace_id, np.int32),
            component=comp,
            layer=ly,
            head=hd,
            pos=pi.astype(np.int32),
            flow=flow[ci, pi],
        )
    _add_edges(cols, res, trace_id)
    ps = res.paths
    if ps:
        n = len(ps)
        ids = np.arange(path_id, path_id + n, dtype=np.int32)
        cols["paths"].add(
            path_id=ids,
            trace_id=np.full(n, trace_id, np.int32),
            rank=np.arange(1, n + 1, dtype=np.int32),
            chain=[p.chain for p in ps],
            score=[float(p.score) for p in ps],
            score_pct=[_num(p.score_pct) for p in ps],
            source_pos=[p.source_pos for p in ps],
            source_token=[p.source_token for p in ps],
            modes=[",".join(p.modes) for p in ps],
            depth=[p.depth for p in ps],
        )
        hops = [(i, k, h) for i, p in zip(ids.tolist(), ps) for k, h in enumerate(p.hops)]
        lh = [layer_head(h[0]) for _, _, h in hops]
        cols["path_hops"].add(
            path_id=[i for i, _, _ in hops],
            hop=[k for _, k, _ in hops],
            component=[h[0] for _, _, h in hops],
            layer=[x[0] for x in lh],
            head=[x[1] for x in lh],
            pos=[h[1] for _, _, h in hops],
            mode=[h[2] for _, _, h in hops],
        )
    return path_id + len(ps)


def _add_edges(cols, res, trace_id: int) -> None:
    """Position-resolved edges when the trace has them, else the summed edges
    (positions NULL)."""
    pe = getattr(res, "position_edges", None)
    df = pe if pe is not None else res.edges
    n = 0 if df is None else len(df)
    if n == 0:
        return
    parent, child = df["parent"].to_numpy(object), df["child"].to_numpy(object)
    pl, ph = _lookup(parent)
    cl, ch = _lookup(child)
    if pe is not None:
        ppos, cpos = df["parent_pos"].to_numpy(np.int32), df["child_pos"].to_numpy(np.int32)
    else:
        ppos = cpos = np.full(n, None, dtype=object)
    cols["edges"].add(
        trace_id=np.full(n, trace_id, np.int32),
        parent=parent,
        parent_layer=pl,
        parent_head=ph,
        parent_pos=ppos,
        child=child,
        child_layer=cl,
        child_head=ch,
        child_pos=cpos,
        mode=df["mode"].to_numpy(object),
        weight=df["weight"].to_numpy(np.float64),
    )
