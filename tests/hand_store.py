"""A store whose rows are written by hand (the schema from the migrations, the
rows with plain SQL), so that every weight, mode and share is known exactly;
row builders for its tables."""

from __future__ import annotations

import duckdb


def write_store(path, rows: dict[str, list[dict]]) -> None:
    """Create the schema (the migrations, through the ingest's store) and insert
    ``rows`` (table -> list of row dicts) with plain SQL."""
    from ingest import store

    store.connect(path).dispose()
    con = duckdb.connect(str(path))
    try:
        for table, items in rows.items():
            for r in items:
                cols = ", ".join(r)
                con.execute(
                    f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' for _ in r)})",
                    list(r.values()),
                )
    finally:
        con.close()


def layer_head(name):
    from unpack.components import parse_component

    _, L, h = parse_component(name)
    return (-1 if L is None else L), h


def edge(trace, parent, child, mode, weight, ppos=5, cpos=2):
    pl, ph = layer_head(parent)
    cl, ch = layer_head(child)
    return dict(
        trace_id=trace,
        parent=parent,
        parent_layer=pl,
        parent_head=ph,
        parent_pos=ppos,
        child=child,
        child_layer=cl,
        child_head=ch,
        child_pos=cpos,
        mode=mode,
        weight=weight,
    )


def flow(trace, comp, value, pos=5):
    L, h = layer_head(comp)
    return dict(trace_id=trace, component=comp, layer=L, head=h, pos=pos, flow=value)


def prompt(pid, run, text, condition, target=" Mary", distractor=" John", task="ioi"):
    return dict(
        prompt_id=pid,
        run_id=run,
        prompt_key=f"k{pid}",
        seq=pid,
        task=task,
        text=text,
        target=target,
        distractor=distractor,
        condition=condition,
        template="t0",
        prompt_group=f"g{pid}",
        status="ok",
        n_tokens=6,
        target_pos=5,
    )


def trace(tid, pid, root="target"):
    comp = None if root == "target" else root.split("@")[0]
    return dict(trace_id=tid, prompt_id=pid, root=root, root_component=comp, root_pos=5)
