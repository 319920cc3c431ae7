"""The app's read queries: plain functions of a read-only DuckDB connection that
return DataFrames (no Streamlit here, so they are easy to test and to time).

Every query runs on its own cursor, so one shared connection serves all the
app's sessions and threads."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from ingest.queries import FROM_PROMPTS, induction_strength, q  # noqa: F401 (app.ui.data's names)
from unpack.components import sort_key

ROLE_ORDER = ("IO", "S1", "S2", "A", "B", "C", "END")


def scalar(con, sql: str, params=None):
    df = q(con, sql, params)
    return None if df.empty else df.iat[0, 0]


@dataclass(frozen=True)
class WorkingSet:
    """What the pages look at: prompts of these models on one task and preset,
    optionally one condition and one template (None: all)."""

    models: tuple[str, ...] = ()
    task: str | None = None
    preset: str | None = None
    condition: str | None = None
    template: str | None = None

    def where(self, p: str = "p", m: str = "m", r: str = "r") -> tuple[str, list]:
        """A SQL condition over ``FROM_PROMPTS`` (aliases p, r, m) and its parameters."""
        conds, params = [f"{p}.status = 'ok'"], []
        if self.models:
            conds.append(f"{m}.name IN ({', '.join('?' * len(self.models))})")
            params += list(self.models)
        for col, alias, val in (
            ("task", p, self.task),
            ("preset", r, self.preset),
            ("condition", p, self.condition),
            ("template", p, self.template),
        ):
            if val is not None:
                conds.append(f"{alias}.{col} = ?")
                params.append(val)
        return " AND ".join(conds), params

    def describe(self) -> str:
        parts = [
            ", ".join(short_model(x) for x in self.models) or "all models",
            f"task {self.task or 'any'}",
            f"preset {self.preset or 'any'}",
        ]
        if self.condition:
            parts.append(f"condition {self.condition}")
        if self.template:
            parts.append(f"template {self.template}")
        return "; ".join(parts)


def short_model(name: str) -> str:
    """A model's display name: the last part of a path, the name otherwise."""
    s = str(name).rstrip("/")
    return s.rsplit("/", 1)[-1] if "/" in s and s.startswith(("/", ".", "~")) else s


# ------------------------------------------------------------------ overview


def counts(con) -> dict:
    row = q(
        con,
        """SELECT (SELECT count(*) FROM models) AS models,
                           (SELECT count(*) FROM runs) AS runs,
                           (SELECT count(DISTINCT task) FROM prompts) AS tasks,
                           (SELECT count(*) FROM prompts WHERE status = 'ok') AS prompts_ok,
                           (SELECT count(*) FROM prompts WHERE status <> 'ok') AS prompts_failed,
                           (SELECT count(*) FROM traces) AS traces""",
    )
    return {k: int(v) for k, v in row.iloc[0].items()}


def models_table(con) -> pd.DataFrame:
    """Every model with its size, training step, runs and prompts: smallest first, one
    model's checkpoints by step."""
    return q(
        con,
        """
        SELECT * FROM (
            SELECT m.name AS model, m.model_type, m.n_layers, m.n_heads, m.d_model, m.n_params,
                   m.step, count(DISTINCT r.run_id) AS runs,
                   count(p.prompt_id) FILTER (WHERE p.status = 'ok') AS prompts_ok,
                   count(p.prompt_id) FILTER (WHERE p.status <> 'ok') AS failed
            FROM models m LEFT JOIN runs r ON r.model_id = m.model_id
            LEFT JOIN prompts p ON p.run_id = r.run_id
            GROUP BY ALL)
        ORDER BY n_params NULLS LAST, split_part(model, '@', 1), step NULLS FIRST, model""",
    )


def runs_table(con) -> pd.DataFrame:
    return q(
        con,
        """
        SELECT r.run_id, m.name AS model, r.preset, r.status, r.code_version,
               count(p.prompt_id) FILTER (WHERE p.status = 'ok') AS prompts_ok,
               count(p.prompt_id) FILTER (WHERE p.status <> 'ok') AS failed,
               round(avg(p.trace_s), 4) AS mean_trace_s, r.started_at, r.finished_at
        FROM runs r JOIN models m ON m.model_id = r.model_id
        LEFT JOIN prompts p ON p.run_id = r.run_id
        GROUP BY ALL ORDER BY r.run_id""",
    )


def tasks_table(con) -> pd.DataFrame:
    """Prompts per task and condition (rows) and model (columns)."""
    df = q(
        con,
        f"""
        SELECT p.task, coalesce(p.condition, '') AS condition, m.name AS model, count(*) AS n
        FROM {FROM_PROMPTS} WHERE p.status = 'ok' GROUP BY ALL""",
    )
    if df.empty:
        return df
    df["model"] = df["model"].map(short_model)
    out = df.pivot_table(
        index=["task", "condition"], columns="model", values="n", aggfunc="sum", fill_value=0
    )
    order = [short_model(n) for n in model_names(con)]  # by size and step, not as text
    return out[[m for m in dict.fromkeys(order) if m in out.columns]].reset_index()


def failures(con, limit: int = 200) -> pd.DataFrame:
    return q(
        con,
        f"""
        SELECT p.prompt_id, m.name AS model, r.preset, p.task, p.condition, p.seq,
               left(p.text, 80) AS text, p.error
        FROM {FROM_PROMPTS} WHERE p.status <> 'ok' ORDER BY p.prompt_id LIMIT ?""",
        [limit],
    )


def failure_reasons(con, limit: int = 5) -> pd.DataFrame:
    """The most common errors of failed prompts, with counts."""
    return q(
        con,
        "SELECT error, count(*) AS n FROM prompts WHERE status <> 'ok' "
        "GROUP BY error ORDER BY n DESC, error LIMIT ?",
        [limit],
    )


def ws_summary(con, ws: WorkingSet) -> pd.DataFrame:
    """Per model: prompts in the working set, mean p(target), logit difference."""
    where, params = ws.where()
    return q(
        con,
        f"""
        SELECT m.name AS model, count(*) AS prompts, count(DISTINCT p.template) AS templates,
               avg(p.target_prob) AS mean_p_target, avg(p.logit_diff) AS mean_logit_diff,
               avg(CASE WHEN p.logit_diff > 0 THEN 1.0 WHEN p.logit_diff <= 0 THEN 0.0 END)
                   AS share_logit_diff_pos
        FROM {FROM_PROMPTS} WHERE {where} GROUP BY m.name, m.n_params, m.step
        ORDER BY m.n_params NULLS LAST, split_part(m.name, '@', 1), m.step NULLS FIRST, m.name""",
        params,
    )


# ------------------------------------------------------------------ working-set choices


def model_names(con) -> list[str]:
    """Every model, smallest first; one model's checkpoints by training step."""
    return q(
        con,
        "SELECT name FROM models ORDER BY n_params NULLS LAST, "
        "split_part(name, '@', 1), step NULLS FIRST, name",
    )["name"].tolist()


def default_models(names: list[str], k: int = 4) -> list[str]:
    """The working set a first visit opens on: the latest checkpoint of each of
    the ``k`` smallest models (``names`` as :func:`model_names` orders them), so
    a ladder's sizes and a larger model are side by side."""
    latest = {n.split("@")[0]: n for n in names}  # a model's checkpoints come by step
    return list(latest.values())[:k]


def distinct(con, column: str, models=(), task=None) -> list[str]:
    """The values of a prompt column (task, condition, template) or of ``preset``
    among the stored prompts of ``models`` (all if empty) and ``task``."""
    col = {
        "task": "p.task",
        "condition": "p.condition",
        "template": "p.template",
        "preset": "r.preset",
    }[column]
    ws = WorkingSet(models=tuple(models), task=task if column != "task" else None)
    where, params = ws.where()
    df = q(
        con,
        f"SELECT {col} AS v, count(*) AS n FROM {FROM_PROMPTS} WHERE {where} "
        f"AND {col} IS NOT NULL AND {col} <> '' GROUP BY 1 ORDER BY n DESC, v",
        params,
    )
    return df["v"].tolist()


# ------------------------------------------------------------------ one prompt


def prompt_list(con, ws: WorkingSet, search: str = "", limit: int = 1000) -> pd.DataFrame:
    where, params = ws.where()
    if search:
        where += " AND p.text ILIKE ?"
        params.append(f"%{search}%")
    return q(
        con,
        f"""
        SELECT p.prompt_id, m.name AS model, p.condition, p.template, p.text, p.target,
               p.distractor, p.logit_diff
        FROM {FROM_PROMPTS} WHERE {where}
        ORDER BY m.n_params NULLS LAST, m.name, p.prompt_id LIMIT ?""",
        params + [limit],
    )


def prompt_info(con, prompt_id: int) -> dict | None:
    df = q(
        con,
        f"""
        SELECT p.*, m.name AS model, m.model_type, m.n_layers, m.n_heads, r.preset, r.config
        FROM {FROM_PROMPTS} WHERE p.prompt_id = ?""",
        [prompt_id],
    )
    if df.empty:
        return None
    d = df.iloc[0].to_dict()
    d["roles"] = json.loads(d["roles"]) if d.get("roles") else {}
    d["config"] = json.loads(d["config"]) if d.get("config") else {}
    return d


def prompt_traces(con, prompt_id: int) -> pd.DataFrame:
    return q(
        con,
        """SELECT trace_id, root, root_component, root_pos, seed_total, suppression,
                            paths_truncated
                     FROM traces WHERE prompt_id = ?
                     ORDER BY root <> 'target', root_layer NULLS FIRST, root_head, root""",
        [prompt_id],
    )


def token_credit(con, trace_id: int) -> pd.DataFrame:
    """One row per position: token, credit, credit_pct, role(s)."""
    return q(
        con,
        """
        SELECT c.pos, k.token, c.credit, c.credit_pct, rl.role
        FROM token_credits c JOIN traces t ON t.trace_id = c.trace_id
        JOIN tokens k ON k.prompt_id = t.prompt_id AND k.pos = c.pos
        LEFT JOIN (SELECT prompt_id, pos, string_agg(role, ',' ORDER BY role) AS role
                   FROM roles GROUP BY ALL) rl ON rl.prompt_id = t.prompt_id AND rl.pos = c.pos
        WHERE c.trace_id = ? ORDER BY c.pos""",
        [trace_id],
    )


def tokens(con, prompt_id: int) -> pd.DataFrame:
    return q(con, "SELECT pos, token FROM tokens WHERE prompt_id = ? ORDER BY pos", [prompt_id])


def top_paths(con, trace_id: int, k: int = 20) -> pd.DataFrame:
    return q(
        con,
        """SELECT rank, score, score_pct, chain, source_pos, source_token, modes, depth
                     FROM paths WHERE trace_id = ? ORDER BY rank LIMIT ?""",
        [trace_id, k],
    )


def components(con, prompt_id: int) -> list[str]:
    """Every component with stored flow in any trace of a prompt, in layer order."""
    df = q(
        con,
        """SELECT DISTINCT f.component, f.layer, f.head FROM component_flows f
                   JOIN traces t ON t.trace_id = f.trace_id WHERE t.prompt_id = ?""",
        [prompt_id],
    )
    df["order"] = [sort_key(c) for c in df["component"]]
    return df.sort_values("order")["component"].tolist()


def flow_at(con, trace_id: int, component: str, pos: int) -> float:
    v = scalar(
        con,
        "SELECT sum(flow) FROM component_flows WHERE trace_id = ? AND component = ? AND pos = ?",
        [trace_id, component, pos],
    )
    return 0.0 if v is None or pd.isna(v) else float(v)


def feeders(con, trace_id: int, component: str, pos: int, limit: int = 25) -> pd.DataFrame:
    """What feeds ``component@pos`` within one stored trace: the stored edges whose
    reader (``parent``) is that component at that position, strongest first."""
    return q(
        con,
        """
        SELECT e.child AS writer, e.child_pos AS writer_pos, k.token AS writer_token, e.mode,
               e.weight
        FROM edges e JOIN traces t ON t.trace_id = e.trace_id
        LEFT JOIN tokens k ON k.prompt_id = t.prompt_id AND k.pos = e.child_pos
        WHERE e.trace_id = ? AND e.parent = ? AND e.parent_pos = ?
        ORDER BY abs(e.weight) DESC LIMIT ?""",
        [trace_id, component, pos, limit],
    )


# ------------------------------------------------------------------ circuit helpers


def roots(con, ws: WorkingSet) -> list[str]:
    """Roots stored for the working set ('target' first)."""
    where, params = ws.where()
    df = q(
        con,
        f"""SELECT t.root, count(*) AS n FROM traces t JOIN {FROM_PROMPTS}
                    ON p.prompt_id = t.prompt_id WHERE {where} GROUP BY 1
                    ORDER BY t.root <> 'target', n DESC, t.root""",
        params,
    )
    return df["root"].tolist()


def example_prompts(
    con, ws: WorkingSet, component: str, root: str = "target", limit: int = 5
) -> pd.DataFrame:
    """Prompts of the working set where ``component`` carries the most |flow|."""
    where, params = ws.where()
    return q(
        con,
        f"""
        SELECT p.prompt_id, m.name AS model, p.condition, p.text, sum(f.flow) AS flow
        FROM component_flows f JOIN traces t ON t.trace_id = f.trace_id
        JOIN {FROM_PROMPTS} ON p.prompt_id = t.prompt_id
        WHERE {where} AND t.root = ? AND f.component = ?
        GROUP BY ALL ORDER BY abs(sum(f.flow)) DESC LIMIT ?""",
        params + [root, component, limit],
    )


def model_shape(con, model: str) -> dict:
    df = q(
        con,
        "SELECT name, model_type, n_layers, n_heads, d_model, n_params FROM models WHERE name = ?",
        [model],
    )
    return {} if df.empty else df.iloc[0].to_dict()


# ------------------------------------------------------------------ compare


def credit_by_role(con, ws: WorkingSet) -> pd.DataFrame:
    """Mean credit at each role position per model and condition (root = target)."""
    where, params = ws.where()
    df = q(
        con,
        f"""
        SELECT m.name AS model, m.n_params, m.step, p.condition, rl.role, count(*) AS n_prompts,
               avg(c.credit) AS mean_credit, avg(c.credit_pct) AS mean_credit_pct,
               avg(CASE WHEN c.credit < 0 THEN 1.0 ELSE 0.0 END) AS share_negative
        FROM roles rl JOIN {FROM_PROMPTS} ON p.prompt_id = rl.prompt_id
        JOIN traces t ON t.prompt_id = p.prompt_id AND t.root = 'target'
        JOIN token_credits c ON c.trace_id = t.trace_id AND c.pos = rl.pos
        WHERE {where} GROUP BY ALL""",
        params,
    )
    if df.empty:
        return df
    df["role_order"] = [ROLE_ORDER.index(x) if x in ROLE_ORDER else 99 for x in df["role"]]
    df["base"] = df["model"].str.split("@").str[0]
    return (
        df.sort_values(
            ["n_params", "base", "step", "model", "condition", "role_order", "role"],
            na_position="first",
        )
        .drop(columns=["role_order", "base"])
        .reset_index(drop=True)
    )


def size_table(con, ws: WorkingSet) -> pd.DataFrame:
    """Per model, smallest first: shape, behaviour, suppression, and where the
    credit flows: ``edge_share_M``, the share of mode M in the |weight| of every
    stored edge of the target traces (all components, all positions), and the top
    heads at the target."""
    where, params = ws.where()
    base = q(
        con,
        f"""
        SELECT m.name AS model, any_value(m.n_params) AS n_params, any_value(m.step) AS step,
               any_value(m.n_layers) AS n_layers, any_value(m.n_heads) AS n_heads,
               count(DISTINCT p.prompt_id) AS prompts,
               avg(p.logit_diff) AS mean_logit_diff, avg(p.target_prob) AS mean_p_target,
               avg(t.suppression) AS mean_suppression
        FROM {FROM_PROMPTS} JOIN traces t ON t.prompt_id = p.prompt_id AND t.root = 'target'
        WHERE {where} GROUP BY m.name
        ORDER BY n_params NULLS LAST, split_part(m.name, '@', 1), step NULLS FIRST, m.name""",
        params,
    )
    if base.empty:
        return base
    modes = q(
        con,
        f"""
        SELECT m.name AS model, e.mode, sum(abs(e.weight)) AS w
        FROM edges e JOIN traces t ON t.trace_id = e.trace_id AND t.root = 'target'
        JOIN {FROM_PROMPTS} ON p.prompt_id = t.prompt_id
        WHERE {where} GROUP BY ALL""",
        params,
    )
    if not modes.empty:
        tot = modes.groupby("model")["w"].transform("sum")
        modes["share"] = modes["w"] / tot
        wide = modes.pivot_table(index="model", columns="mode", values="share", fill_value=0.0)
        wide.columns = [f"edge_share_{c}" for c in wide.columns]  # docs/APP.md: measures
        base = base.merge(wide.reset_index(), on="model", how="left")
    heads = q(
        con,
        f"""
        WITH hf AS (
            SELECT m.name AS model, any_value(m.n_layers) AS n_layers, f.component,
                   any_value(f.layer) AS layer, sum(f.flow) / count(DISTINCT t.trace_id) AS flow
            FROM component_flows f JOIN traces t ON t.trace_id = f.trace_id AND t.root = 'target'
            JOIN {FROM_PROMPTS} ON p.prompt_id = t.prompt_id
            WHERE {where} AND f.head IS NOT NULL AND f.pos = p.target_pos
            GROUP BY m.name, f.component)
        SELECT model, string_agg(component || ' (' || printf('%.2f', (layer + 1.0) / n_layers)
                                 || ')', ', ' ORDER BY abs(flow) DESC) AS top_heads_at_target
        FROM (SELECT *, row_number() OVER (PARTITION BY model ORDER BY abs(flow) DESC) AS k
              FROM hf) WHERE k <= 3 GROUP BY model""",
        params,
    )
    if not heads.empty:
        base = base.merge(heads, on="model", how="left")
    return base


# ------------------------------------------------------------------ SQL page


def schema(con) -> pd.DataFrame:
    """Tables and views of the store with their columns."""
    return q(
        con,
        """
        WITH objs AS (
            SELECT table_name AS name, 'table' AS kind FROM duckdb_tables()
            WHERE NOT internal AND schema_name = 'main' AND table_name <> 'alembic_version'
            UNION ALL
            SELECT view_name, 'view' FROM duckdb_views() WHERE NOT internal AND schema_name = 'main')
        SELECT o.name, o.kind,
               string_agg(c.column_name || ' ' || lower(c.data_type), ', '
                          ORDER BY c.column_index) AS columns
        FROM objs o JOIN duckdb_columns() c ON c.table_name = o.name AND c.schema_name = 'main'
        GROUP BY ALL ORDER BY o.kind, o.name""",
    )


def example_queries(models: list[str]) -> list[tuple[str, str]]:
    """``(title, sql)`` pairs that work on any store."""
    m = "'" + (models[0] if models else "MODEL").replace("'", "''") + "'"
    return [
        (
            "Prompts per model, task and condition",
            """SELECT model, task, condition, count(DISTINCT prompt_id) AS prompts
FROM trace_info
WHERE root = 'target'
GROUP BY ALL
ORDER BY ALL""",
        ),
        (
            "Credit at each role (IO, S1, S2, END / A, B, C)",
            """SELECT model, condition, role, n_prompts,
       round(mean_credit, 4) AS mean_credit, round(share_negative, 2) AS share_negative
FROM credit_by_role
WHERE root = 'target'
ORDER BY model, condition, role""",
        ),
        (
            "Strongest head-to-head interactions by mode",
            f"""SELECT parent AS reader, child AS writer, mode, condition,
       round(mean_weight, 5) AS mean_weight, n_traces_with_edge
FROM head_interactions
WHERE model = {m} AND root = 'target'
ORDER BY abs(mean_weight) DESC
LIMIT 20""",
        ),
        (
            "Heads with the most flow at the target position",
            f"""SELECT f.component, round(avg(f.flow), 4) AS mean_flow, count(*) AS n
FROM component_flows f JOIN trace_info t USING (trace_id)
WHERE t.model = {m} AND t.root = 'target' AND f.head IS NOT NULL
  AND f.pos = t.target_pos
GROUP BY f.component
ORDER BY abs(mean_flow) DESC
LIMIT 10""",
        ),  # noqa: E501 (the query as the app shows it)
        (
            "Most common top path shapes",
            """SELECT modes, depth, count(*) AS n, round(avg(score_pct), 2) AS mean_pct
FROM path_info
WHERE root = 'target' AND rank <= 5
GROUP BY ALL
ORDER BY n DESC
LIMIT 20""",
        ),
        (
            "Model against model, credit by role",
            """SELECT model_a, model_b, condition, role,
       round(credit_pct_a, 2) AS pct_a, round(credit_pct_b, 2) AS pct_b,
       round(credit_pct_diff, 2) AS diff
FROM model_vs_model
WHERE root = 'target'
ORDER BY condition, role, model_a, model_b""",
        ),
        (
            "Failed prompts and why",
            """SELECT prompt_id, task, condition, error
FROM prompts
WHERE status <> 'ok'
LIMIT 100""",
        ),
    ]


def other_methods(con, prompt_id: int) -> pd.DataFrame:
    """The target traces of the same prompt (same model, task, text, target and
    distractor) by the other methods' runs (``runs.method``, migration 0005): one
    row per run with ``method``, ``run_id``, ``trace_id``."""
    has = scalar(
        con,
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'runs' AND column_name = 'method'",
    )
    if not has:
        return pd.DataFrame(columns=["method", "run_id", "trace_id"])
    return q(
        con,
        """
        SELECT coalesce(r2.method, 'unpack') || CASE WHEN coalesce(r2.method, 'unpack') = 'unpack'
               THEN ' (' || r2.preset || ')' ELSE '' END AS method, r2.run_id, t.trace_id
        FROM prompts p JOIN runs r ON r.run_id = p.run_id
        JOIN runs r2 ON r2.model_id = r.model_id AND r2.run_id <> r.run_id
        JOIN prompts p2 ON p2.run_id = r2.run_id AND p2.prompt_key = p.prompt_key
        JOIN traces t ON t.prompt_id = p2.prompt_id AND t.root = 'target'
        WHERE p.prompt_id = ? AND p2.status = 'ok' ORDER BY r2.run_id""",
        [prompt_id],
    )
