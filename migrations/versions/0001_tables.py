"""Tables: models, runs, prompts, roles, traces, tokens, token_credits,
component_flows, edges, paths, path_hops.

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Int, Big, Str, Dbl, Bool, Time = (
    sa.Integer,
    sa.BigInteger,
    sa.String,
    sa.Double,
    sa.Boolean,
    sa.DateTime,
)
col = sa.Column


def upgrade() -> None:
    op.create_table(
        "models",
        col("model_id", Int, primary_key=True, autoincrement=False),
        col("name", Str, nullable=False, unique=True),
        col("model_type", Str),
        col("n_layers", Int),
        col("n_heads", Int),
        col("d_model", Int),
        col("n_params", Big),
        col("info", Str),
        col("created_at", Time),
    )
    op.create_table(
        "runs",
        col("run_id", Int, primary_key=True, autoincrement=False),
        col("model_id", Int, nullable=False),
        col("preset", Str, nullable=False),
        col("config", Str, nullable=False),
        col("config_hash", Str, nullable=False),
        col("edge_min_frac", Dbl),
        col("code_version", Str),
        col("status", Str, nullable=False),
        col("started_at", Time),
        col("updated_at", Time),
        col("finished_at", Time),
        sa.UniqueConstraint("model_id", "preset", "config_hash", name="uq_runs_key"),
    )
    op.create_table(
        "prompts",
        col("prompt_id", Int, primary_key=True, autoincrement=False),
        col("run_id", Int, nullable=False),
        col("prompt_key", Str, nullable=False),
        col("seq", Int),
        col("task", Str),
        col("text", Str),
        col("target", Str),
        col("distractor", Str),
        col("roles", Str),
        col("template", Str),
        col("prompt_group", Str),
        col("condition", Str),
        col("metadata", Str),
        col("status", Str, nullable=False),
        col("error", Str),
        col("n_tokens", Int),
        col("target_pos", Int),
        col("target_id", Int),
        col("distractor_id", Int),
        col("target_prob", Dbl),
        col("target_logit", Dbl),
        col("logit_diff", Dbl),
        col("warnings", Str),
        col("trace_s", Dbl),
        col("created_at", Time),
        sa.UniqueConstraint("run_id", "prompt_key", name="uq_prompts_key"),
    )
    op.create_index("ix_prompts_run", "prompts", ["run_id"])
    op.create_table(
        "roles",
        col("prompt_id", Int, nullable=False),
        col("role", Str, nullable=False),
        col("pos", Int, nullable=False),
        sa.PrimaryKeyConstraint("prompt_id", "role", name="pk_roles"),
    )
    op.create_table(
        "traces",
        col("trace_id", Int, primary_key=True, autoincrement=False),
        col("prompt_id", Int, nullable=False),
        col("root", Str, nullable=False),
        col("root_component", Str),
        col("root_layer", Int),
        col("root_head", Int),
        col("root_pos", Int),
        col("seed_total", Dbl),
        col("suppression", Dbl),
        col("paths_truncated", Bool),
        col("timing", Str),
        sa.UniqueConstraint("prompt_id", "root", name="uq_traces_root"),
    )
    op.create_index("ix_traces_prompt", "traces", ["prompt_id"])
    op.create_table(
        "tokens",
        col("prompt_id", Int, nullable=False),
        col("pos", Int, nullable=False),
        col("token_id", Int),
        col("token", Str),
    )
    op.create_table(
        "token_credits",
        col("trace_id", Int, nullable=False),
        col("pos", Int, nullable=False),
        col("credit", Dbl),
        col("credit_pct", Dbl),
    )
    op.create_table(
        "component_flows",
        col("trace_id", Int, nullable=False),
        col("component", Str, nullable=False),
        col("layer", Int),
        col("head", Int),
        col("pos", Int, nullable=False),
        col("flow", Dbl),
    )
    op.create_table(
        "edges",
        col("trace_id", Int, nullable=False),
        col("parent", Str, nullable=False),
        col("parent_layer", Int),
        col("parent_head", Int),
        col("parent_pos", Int),
        col("child", Str, nullable=False),
        col("child_layer", Int),
        col("child_head", Int),
        col("child_pos", Int),
        col("mode", Str, nullable=False),
        col("weight", Dbl),
    )
    op.create_table(
        "paths",
        col("path_id", Int, primary_key=True, autoincrement=False),
        col("trace_id", Int, nullable=False),
        col("rank", Int, nullable=False),
        col("chain", Str),
        col("score", Dbl),
        col("score_pct", Dbl),
        col("source_pos", Int),
        col("source_token", Str),
        col("modes", Str),
        col("depth", Int),
    )
    op.create_table(
        "path_hops",
        col("path_id", Int, nullable=False),
        col("hop", Int, nullable=False),
        col("component", Str, nullable=False),
        col("layer", Int),
        col("head", Int),
        col("pos", Int),
        col("mode", Str),
    )


def downgrade() -> None:
    for name in (
        "path_hops",
        "paths",
        "edges",
        "component_flows",
        "token_credits",
        "tokens",
        "traces",
        "roles",
        "prompts",
        "runs",
        "models",
    ):
        op.drop_table(name)
