"""Views for the common questions: trace_info, credits, credit_by_role,
interactions, head_interactions, model_vs_model, path_info.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS = {
    # One row per trace (a prompt traced from the target, or from one root),
    # with its model, preset and task.
    "trace_info": """
        SELECT t.trace_id, t.prompt_id, p.run_id, m.name AS model, r.preset,
               p.task, p.condition, p.template, p.prompt_group,
               t.root, t.root_component, t.root_pos,
               p.text, p.target, p.distractor, p.n_tokens, p.target_pos,
               p.logit_diff, t.suppression
        FROM traces t
        JOIN prompts p ON p.prompt_id = t.prompt_id
        JOIN runs r ON r.run_id = p.run_id
        JOIN models m ON m.model_id = r.model_id""",
    # Token credit with its token and role(s), one row per trace and position.
    "credits": """
        SELECT ti.run_id, ti.model, ti.preset, ti.task, ti.condition, ti.prompt_id,
               ti.trace_id, ti.root, c.pos, k.token, rl.role, c.credit, c.credit_pct
        FROM token_credits c
        JOIN trace_info ti ON ti.trace_id = c.trace_id
        JOIN tokens k ON k.prompt_id = ti.prompt_id AND k.pos = c.pos
        LEFT JOIN (SELECT prompt_id, pos, string_agg(role, ',' ORDER BY role) AS role
                   FROM roles GROUP BY prompt_id, pos) rl
               ON rl.prompt_id = ti.prompt_id AND rl.pos = c.pos""",
    # Credit at each role position, averaged over the prompts of a task.
    "credit_by_role": """
        SELECT ti.run_id, ti.model, ti.preset, ti.task, ti.condition, ti.root, r.role,
               count(*) AS n_prompts,
               avg(c.credit) AS mean_credit,
               avg(c.credit_pct) AS mean_credit_pct,
               avg(CASE WHEN c.credit < 0 THEN 1.0 ELSE 0.0 END) AS share_negative
        FROM roles r
        JOIN trace_info ti ON ti.prompt_id = r.prompt_id
        JOIN token_credits c ON c.trace_id = ti.trace_id AND c.pos = r.pos
        GROUP BY ti.run_id, ti.model, ti.preset, ti.task, ti.condition, ti.root, r.role""",
    # Component-to-component interaction by mode: edges summed over positions
    # per trace, then over the traces of a task (mean over all its traces).
    "interactions": """
        WITH tr AS (
            SELECT trace_id, run_id, model, preset, task, condition, root, root_component,
                   count(*) OVER (PARTITION BY run_id, task, condition, root) AS n_traces
            FROM trace_info),
        per_trace AS (
            SELECT trace_id, parent, parent_layer, parent_head,
                   child, child_layer, child_head, mode, sum(weight) AS weight
            FROM edges
            GROUP BY trace_id, parent, parent_layer, parent_head,
                     child, child_layer, child_head, mode)
        SELECT tr.run_id, tr.model, tr.preset, tr.task, tr.condition, tr.root, tr.root_component,
               e.parent, e.parent_layer, e.parent_head,
               e.child, e.child_layer, e.child_head, e.mode,
               any_value(tr.n_traces) AS n_traces,
               count(*) AS n_traces_with_edge,
               sum(e.weight) AS total_weight,
               sum(e.weight) / any_value(tr.n_traces) AS mean_weight
        FROM per_trace e JOIN tr ON tr.trace_id = e.trace_id
        GROUP BY tr.run_id, tr.model, tr.preset, tr.task, tr.condition, tr.root, tr.root_component,
                 e.parent, e.parent_layer, e.parent_head,
                 e.child, e.child_layer, e.child_head, e.mode""",
    # Head-to-head interactions only.
    "head_interactions": """
        SELECT * FROM interactions
        WHERE parent_head IS NOT NULL AND child_head IS NOT NULL""",
    # One model against another: credit by role, same task, preset, root, role.
    "model_vs_model": """
        SELECT a.task, a.condition, a.preset, a.root, a.role,
               a.model AS model_a, b.model AS model_b,
               a.n_prompts AS n_prompts_a, b.n_prompts AS n_prompts_b,
               a.mean_credit AS mean_credit_a, b.mean_credit AS mean_credit_b,
               a.mean_credit_pct AS credit_pct_a, b.mean_credit_pct AS credit_pct_b,
               b.mean_credit_pct - a.mean_credit_pct AS credit_pct_diff,
               a.share_negative AS share_negative_a, b.share_negative AS share_negative_b
        FROM credit_by_role a
        JOIN credit_by_role b
          ON a.task = b.task AND a.condition IS NOT DISTINCT FROM b.condition
         AND a.preset = b.preset AND a.root = b.root AND a.role = b.role
         AND a.model <> b.model""",
    # Paths with their model, task and root.
    "path_info": """
        SELECT ti.run_id, ti.model, ti.preset, ti.task, ti.condition, ti.prompt_id,
               ti.trace_id, ti.root, p.path_id, p.rank, p.chain, p.score, p.score_pct,
               p.source_pos, p.source_token, p.modes, p.depth
        FROM paths p JOIN trace_info ti ON ti.trace_id = p.trace_id""",
}


def upgrade() -> None:
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
