"""Circuits: discovered circuits, their components and edges, and their
verification by intervention (with the per-prompt results).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Int, Str, Dbl, Time = sa.Integer, sa.String, sa.Double, sa.DateTime
col = sa.Column

TABLES = (
    "circuits",
    "circuit_components",
    "circuit_edges",
    "circuit_verifications",
    "circuit_prompt_results",
)


def upgrade() -> None:
    op.create_table(
        "circuits",
        col("circuit_id", Int, primary_key=True, autoincrement=False),
        col("run_id", Int, nullable=False),
        col("model", Str, nullable=False),
        col("preset", Str),
        col("task", Str),
        col("condition", Str),
        col("params", Str, nullable=False),  # JSON: seeds, per_mode, depth, min_share, ...
        col("prompt_ids", Str, nullable=False),  # JSON list: the prompts it was found on
        col("n_prompts", Int),
        col("n_components", Int),
        col("n_edges", Int),
        col("code_version", Str),
        col("created_at", Time),
    )
    op.create_table(
        "circuit_components",
        col("circuit_id", Int, nullable=False),
        col("component", Str, nullable=False),
        col("layer", Int),
        col("head", Int),
        col("depth", Int),  # 0 = a seed; k = reached after k reroots
        col("root", Str),  # where it is rerooted, e.g. attn_1_head_0@END
        col("share", Dbl),  # share of prompts in which it is selected
        col("direct_effect", Dbl),  # mean direct effect on the metric (seeds' criterion)
        sa.PrimaryKeyConstraint("circuit_id", "component", name="pk_circuit_components"),
    )
    op.create_table(
        "circuit_edges",
        col("circuit_id", Int, nullable=False),
        col("parent", Str, nullable=False),
        col("parent_layer", Int),
        col("parent_head", Int),
        col("child", Str, nullable=False),
        col("child_layer", Int),
        col("child_head", Int),
        col("mode", Str, nullable=False),  # K | Q | V
        col("weight", Dbl),  # mean interaction over the prompts (0 where absent)
        col("share", Dbl),  # share of prompts in which it is among the parent's strongest
        sa.PrimaryKeyConstraint("circuit_id", "parent", "child", "mode", name="pk_circuit_edges"),
    )
    op.create_table(
        "circuit_verifications",
        col("verification_id", Int, primary_key=True, autoincrement=False),
        col("circuit_id", Int, nullable=False),
        col("ablation", Str, nullable=False),  # mean | zero | resample
        col("reference", Str),  # what the means or resamples come from
        col("n_prompts", Int),
        col("n_random", Int),
        col("seed", Int),
        col("clean_logit_diff", Dbl),
        col("knocked_logit_diff", Dbl),
        col("kept_logit_diff", Dbl),
        col("necessity", Dbl),
        col("faithfulness", Dbl),
        col("clean_accuracy", Dbl),
        col("knocked_accuracy", Dbl),
        col("kept_accuracy", Dbl),
        col("baseline_necessity_mean", Dbl),
        col("baseline_faithfulness_mean", Dbl),
        col("necessity_rank", Dbl),  # share of random circuits with necessity >= the circuit's
        col("faithfulness_rank", Dbl),  # share with faithfulness >= the circuit's
        col("baseline", Str, nullable=False),  # JSON: lists over the random circuits
        col("code_version", Str),
        col("created_at", Time),
    )
    op.create_table(
        "circuit_prompt_results",
        col("verification_id", Int, nullable=False),
        col("prompt_id", Int, nullable=False),
        col("clean", Dbl),
        col("knocked", Dbl),
        col("kept", Dbl),  # logit differences
        col("faithfulness", Dbl),  # kept / clean
        sa.PrimaryKeyConstraint("verification_id", "prompt_id", name="pk_circuit_prompt_results"),
    )


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
