"""Model facts: the size and the training step of every model, so models can be
ordered by parameters and one model's checkpoints by step.

Adds to ``models``: ``n_kv_heads``, ``d_head``, ``family`` (the adapter family:
gpt2, gpt_neox, llama), ``parallel_residual`` (docs/METHOD.md §1), ``revision``
(a hub revision such as ``step1000``, or the checkpoint directory of a local
model) and ``step`` (the training step, where known). ``n_params``,
``n_layers``, ``n_heads`` and ``d_model`` exist since 0001.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("n_kv_heads", sa.Integer),
    ("d_head", sa.Integer),
    ("family", sa.String),
    ("parallel_residual", sa.Boolean),
    ("revision", sa.String),
    ("step", sa.BigInteger),
)


def upgrade() -> None:
    for name, typ in COLUMNS:
        op.add_column("models", sa.Column(name, typ))


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column("models", name)
