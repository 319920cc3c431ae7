"""Run methods: which attribution method made a run, so Unpack and the baselines
(edge attribution patching, EAP-IG, integrated gradients, gradient × input,
attention rollout; unpack/baselines) sit side by side in the same tables.

Adds to ``runs``: ``method`` (``unpack``, ``eap``, ``eap_ig``, ``ig``,
``grad_x_input`` or ``rollout``; every run stored before this revision is an
Unpack run, so the column defaults to ``unpack``) and ``method_params`` (JSON:
the method's parameters, e.g. ``{"steps": 16}``; NULL for Unpack, whose full
config is ``runs.config``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("method", sa.String, server_default="unpack"))
    op.add_column("runs", sa.Column("method_params", sa.String))


def downgrade() -> None:
    op.drop_column("runs", "method_params")
    op.drop_column("runs", "method")
