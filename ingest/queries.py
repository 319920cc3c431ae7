"""Reading a store: the questions both the writing side (discovery, the composition
report, the toy ladder) and the app ask of it, as plain functions of a read-only
DuckDB connection (``ingest.store.open_read_only``), and the Markdown/CSV writers
of the reports. Nothing here writes to a store or loads a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from unpack.errors import InputError

FROM_PROMPTS = (
    "prompts p JOIN runs r ON r.run_id = p.run_id JOIN models m ON m.model_id = r.model_id"
)


def q(con, sql: str, params=None) -> pd.DataFrame:
    """Run one query on a fresh cursor and return all of its rows."""
    cur = con.cursor()
    try:
        return cur.execute(sql, list(params or [])).df()
    finally:
        cur.close()


def as_list(x) -> list | None:
    """``x`` as a list: None stays None, one value becomes a list of one."""
    if x is None:
        return None
    if isinstance(x, (str, int)):
        return [x]
    return list(x)


def selection_sql(
    *,
    model=None,
    run_id=None,
    task=None,
    preset=None,
    condition=None,
    template=None,
    root="target",
    prompt_ids=None,
) -> tuple[str, list]:
    """SQL (and its parameters) selecting one row per trace from ``trace_info``.

    Each filter takes one value or a list. ``root``: ``'target'``, a stored root
    spec (``'attn_9_head_9@END'``), a component name (every root at that
    component) or None (every trace). The same prompt stored twice in a run (an
    ingest with other roots) counts once: the first trace per run, text, target,
    distractor and root is kept."""
    where, params = [], []

    def add(column, values):
        values = as_list(values)
        if values is None:
            return
        if not values:
            raise InputError(f"filter {column}: empty list; give at least one value or None")
        where.append(f"ti.{column} IN ({', '.join('?' for _ in values)})")
        params.extend(values)

    add("model", model)
    add("run_id", run_id)
    add("task", task)
    add("preset", preset)
    add("condition", condition)
    add("template", template)
    add("prompt_id", prompt_ids)
    if root is not None:
        roots = as_list(root)
        specs = [r for r in roots if r == "target" or "@" in str(r)]
        comps = [r for r in roots if r not in specs]
        parts = []
        if specs:
            parts.append(f"ti.root IN ({', '.join('?' for _ in specs)})")
            params.extend(specs)
        if comps:
            parts.append(f"ti.root_component IN ({', '.join('?' for _ in comps)})")
            params.extend(comps)
        where.append("(" + " OR ".join(parts) + ")")
    sql = (
        "SELECT ti.* FROM trace_info ti"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " QUALIFY row_number() OVER (PARTITION BY ti.run_id, ti.text, ti.target, "
        "ti.distractor, ti.root ORDER BY ti.trace_id) = 1"
    )
    return sql, params


def induction_strength(con, preset: str | None = None) -> pd.DataFrame:
    """docs/METHOD.md §10, per toy model and training step: the K, Q and V
    interaction from the induction heads (rerooted at END) into the previous-token
    heads of the trained model, the mean over traces summed over those heads; the
    K share of the three; the accuracy on the repeated half (the model's toy.json)
    and the mean p(target) of the stored prompts. Models by size, then step."""
    models = q(
        con,
        """SELECT name AS model, n_params, n_layers, n_heads, d_model, step, info
                       FROM models WHERE json_extract(info, '$.toy.circuit') IS NOT NULL""",
    )
    if models.empty:
        return models
    prm = [] if preset is None else [preset]
    pre = "" if preset is None else "AND r.preset = ?"
    e = q(
        con,
        f"""
        SELECT m.name AS model, t.trace_id, e.child_head AS prev_head, e.mode, sum(e.weight) AS w
        FROM edges e JOIN traces t ON t.trace_id = e.trace_id
        JOIN {FROM_PROMPTS} ON p.prompt_id = t.prompt_id
        WHERE p.status = 'ok' AND p.task = 'induction' AND t.root_layer = 1 {pre}
          AND e.parent = t.root_component AND e.child_layer = 0 AND e.child_head IS NOT NULL
          AND e.mode IN ('K', 'Q', 'V')
        GROUP BY ALL""",
        prm,
    )
    n = q(
        con,
        f"""
        SELECT m.name AS model, count(*) FILTER (WHERE t.root_layer = 1) AS n_traces,
               count(DISTINCT p.prompt_id) AS prompts,
               avg(p.target_prob) FILTER (WHERE t.root = 'target') AS mean_p_target
        FROM traces t JOIN {FROM_PROMPTS} ON p.prompt_id = t.prompt_id
        WHERE p.status = 'ok' AND p.task = 'induction' {pre} GROUP BY ALL""",
        prm,
    )
    rows = []
    for m in models.itertuples():
        info = json.loads(m.info)["toy"]
        prev = set(info["circuit"]["prev_heads"])
        mine = e[(e["model"] == m.model) & e["prev_head"].isin(prev)]
        cnt = n[n["model"] == m.model]
        n_tr = int(cnt["n_traces"].iloc[0]) if len(cnt) else 0
        by = {md: float(mine.loc[mine["mode"] == md, "w"].sum()) / max(n_tr, 1) for md in "KQV"}
        tot = sum(abs(v) for v in by.values())
        rows.append(
            dict(
                model=m.model,
                family=m.model.split("@")[0],
                n_params=m.n_params,
                d_model=m.d_model,
                n_heads=m.n_heads,
                step=m.step,
                acc_repeat=(info.get("eval") or {}).get("acc_repeat"),
                K_prev_to_ind=by["K"],
                Q=by["Q"],
                V=by["V"],
                K_share=by["K"] / tot if tot else None,
                mean_p_target=float(cnt["mean_p_target"].iloc[0]) if len(cnt) else None,
                prompts=int(cnt["prompts"].iloc[0]) if len(cnt) else 0,
                traces=n_tr,
            )
        )
    out = pd.DataFrame(rows)
    return out.sort_values(["n_params", "family", "step"]).reset_index(drop=True)


# ------------------------------------------------------------------ stored prompts


def stored_prompts(con, model, task, preset, condition) -> pd.DataFrame:
    """One row per stored prompt identity (run, text, target, distractor; no
    distractor is '') with its roots and its first prompt id."""
    sel, params = selection_sql(
        model=model, task=task, preset=preset, condition=condition, root=None
    )
    return con.execute(
        f"""
        WITH sel AS ({sel})
        SELECT s.run_id, s.text, s.target, coalesce(s.distractor, '') AS distractor,
               min(s.prompt_id) AS prompt_id,
               list(DISTINCT s.root) AS roots
        FROM sel s GROUP BY ALL ORDER BY prompt_id""",
        params,
    ).df()


def prompt_records(con, prompt_ids) -> list:
    """The stored prompts ``prompt_ids`` as :class:`unpack.tasks.PromptRecord` (in id order)."""
    from unpack.tasks import PromptRecord

    ids = [int(i) for i in prompt_ids]
    rows = con.execute(
        f"SELECT task, text, target, distractor, roles, template, prompt_group, condition, metadata "
        f"FROM prompts WHERE prompt_id IN ({', '.join('?' for _ in ids)}) ORDER BY prompt_id",
        ids,
    ).fetchall()
    return [
        PromptRecord(
            task=r[0],
            text=r[1],
            target=r[2],
            distractor=r[3],
            roles=json.loads(r[4]) if r[4] else {},
            template=r[5] or "",
            group=r[6] or "",
            condition=r[7] or "",
            metadata=json.loads(r[8]) if r[8] else {},
        )
        for r in rows
    ]


def pick_model_task(con, db, model, task, preset):
    """``(model, task, shape info)`` of the traces of ``preset`` in the store: the
    given ones, or the only ones stored (several: an InputError asking to choose)."""
    sel, params = selection_sql(model=model, task=task, preset=preset, root="target")
    found = con.execute(f"SELECT DISTINCT model, task FROM ({sel}) ORDER BY ALL", params).fetchall()
    if not found:
        what = " ".join(f"--{k} {v}" for k, v in (("model", model), ("task", task)) if v)
        raise NoData(
            f"database {db!s} has no traces for {what or 'any model'} with preset {preset}",
            f"unpack ingest --model {model or 'MODEL'} --task {task or 'ioi'} --n 100 --db {db}",
        )
    models = sorted({m for m, _ in found})
    if len(models) > 1:
        raise InputError(f"the database holds several models ({', '.join(models)}): pass --model")
    tasks = sorted({t for _, t in found})
    if len(tasks) > 1:
        raise InputError(f"model {models[0]!r} has several tasks ({', '.join(tasks)}): pass --task")
    model, task = models[0], tasks[0]
    row = con.execute(
        "SELECT model_type, n_layers, n_heads, d_model FROM models WHERE name = ?", [model]
    ).fetchone()
    info = dict(zip(("model_type", "n_layers", "n_heads", "d_model"), row))
    return model, task, info


class NoData(InputError):
    """The database has no rows the report needs. ``command`` is what would
    ingest them; the CLI prints both and exits 1."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message)
        self.command = command


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.3f}"
    return str(v).replace("|", "\\|")


def markdown_table(df, floatfmt=None) -> str:
    """A GitHub Markdown table of a DataFrame (no extra dependency).
    ``floatfmt``: optional function float -> str."""
    fmt = floatfmt or _cell
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = [fmt(v) if isinstance(v, float) else _cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out_dir, name: str, markdown: str, tables: dict, figure=None) -> list[Path]:
    """Write ``{name}.md``, one ``{name}_{key}.csv`` per table and, if given, the
    matplotlib ``figure`` as ``{name}.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.md"]
    written[0].write_text(markdown + "\n", encoding="utf-8")
    for key, df in tables.items():
        p = out / f"{name}_{key}.csv"
        df.to_csv(p, index=False)
        written.append(p)
    if figure is not None:
        p = out / f"{name}.png"
        figure.savefig(p, dpi=100)
        written.append(p)
    return written
