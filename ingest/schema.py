"""The store's tables as SQLAlchemy Core objects.

The schema itself changes only through Alembic migrations (``migrations/``);
this module mirrors the head revision so the ingest can use Core statements,
and ``tests/test_migrations.py`` checks that the two agree.

Conventions: ids are INTEGER, JSON is stored as VARCHAR, component columns come
with ``layer`` (embeddings: -1; ``mlp_L``: L) and ``head`` (NULL unless a head),
positions are token positions from 0. Rows of one prompt are written in one
transaction, so a prompt with ``status = 'ok'`` always has all of its rows.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

Int, Big, Str, Dbl, Bool, Time = (
    sa.Integer,
    sa.BigInteger,
    sa.String,
    sa.Double,
    sa.Boolean,
    sa.DateTime,
)


def component(name: str = "component") -> tuple[sa.Column, sa.Column, sa.Column]:
    """A component column with its ``layer`` and ``head`` columns: ``component,
    layer, head``, or for a named end ``parent, parent_layer, parent_head``."""
    prefix = "" if name == "component" else f"{name}_"
    return (
        sa.Column(name, Str, nullable=False),
        sa.Column(f"{prefix}layer", Int),
        sa.Column(f"{prefix}head", Int),
    )


models = sa.Table(
    "models",
    metadata,
    sa.Column("model_id", Int, primary_key=True, autoincrement=False),
    sa.Column("name", Str, nullable=False, unique=True),
    sa.Column("model_type", Str),
    sa.Column("n_layers", Int),
    sa.Column("n_heads", Int),
    sa.Column("d_model", Int),
    sa.Column("n_params", Big),
    sa.Column("info", Str),  # JSON: everything model_info() reported
    sa.Column("created_at", Time),
    # 0004: size and training step (docs/METHOD.md §10, comparing models)
    sa.Column("n_kv_heads", Int),
    sa.Column("d_head", Int),
    sa.Column("family", Str),  # adapter family: gpt2, gpt_neox, llama
    sa.Column("parallel_residual", Bool),
    sa.Column("revision", Str),  # hub revision (e.g. step1000) or checkpoint directory name
    sa.Column("step", Big),  # training step, where known
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", Int, primary_key=True, autoincrement=False),
    sa.Column("model_id", Int, nullable=False),
    sa.Column("preset", Str, nullable=False),
    sa.Column("config", Str, nullable=False),  # JSON: every field of the trace config
    sa.Column("config_hash", Str, nullable=False),  # hash of config: with model and preset, the run
    sa.Column("edge_min_frac", Dbl),  # edges below this share of Σ|seeds| are not stored
    sa.Column("code_version", Str),
    sa.Column("status", Str, nullable=False),  # running (or killed: run again to resume) | done
    sa.Column("started_at", Time),
    sa.Column("updated_at", Time),
    sa.Column("finished_at", Time),
    sa.UniqueConstraint("model_id", "preset", "config_hash", name="uq_runs_key"),
    # 0005: the attribution method (unpack or a baseline, unpack/baselines) and its parameters
    sa.Column("method", Str, server_default="unpack"),
    sa.Column("method_params", Str),  # JSON; NULL for unpack (its config is `config`)
)

prompts = sa.Table(
    "prompts",
    metadata,
    sa.Column("prompt_id", Int, primary_key=True, autoincrement=False),
    sa.Column("run_id", Int, nullable=False),
    sa.Column("prompt_key", Str, nullable=False),  # hash of task, text, target, distractor
    sa.Column("seq", Int),  # order in the input
    sa.Column("task", Str),
    sa.Column("text", Str),
    sa.Column("target", Str),
    sa.Column("distractor", Str),
    sa.Column("roles", Str),  # JSON: role -> token position
    sa.Column("template", Str),
    sa.Column("prompt_group", Str),  # prompts built together (an IOI prompt and its controls)
    sa.Column("condition", Str),
    sa.Column("metadata", Str),  # JSON
    sa.Column("status", Str, nullable=False),  # ok | failed
    sa.Column("error", Str),
    sa.Column("n_tokens", Int),
    sa.Column("target_pos", Int),
    sa.Column("target_id", Int),
    sa.Column("distractor_id", Int),
    sa.Column("target_prob", Dbl),
    sa.Column("target_logit", Dbl),
    sa.Column("logit_diff", Dbl),
    sa.Column("warnings", Str),  # JSON list
    sa.Column("trace_s", Dbl),  # this prompt's share of its batch's tracing time
    sa.Column("created_at", Time),
    sa.UniqueConstraint("run_id", "prompt_key", name="uq_prompts_key"),
)

roles = sa.Table(
    "roles",
    metadata,
    sa.Column("prompt_id", Int, nullable=False),
    sa.Column("role", Str, nullable=False),
    sa.Column("pos", Int, nullable=False),
    sa.PrimaryKeyConstraint("prompt_id", "role", name="pk_roles"),
)

traces = sa.Table(
    "traces",
    metadata,
    sa.Column("trace_id", Int, primary_key=True, autoincrement=False),
    sa.Column("prompt_id", Int, nullable=False),
    sa.Column("root", Str, nullable=False),  # 'target' or a root spec, e.g. 'attn_9_head_9@END'
    sa.Column("root_component", Str),  # NULL for 'target'
    sa.Column("root_layer", Int),
    sa.Column("root_head", Int),
    sa.Column("root_pos", Int),  # the target position for 'target'
    sa.Column("seed_total", Dbl),  # Σ seeds
    sa.Column("suppression", Dbl),
    sa.Column("paths_truncated", Bool),
    sa.Column("timing", Str),  # JSON
    sa.UniqueConstraint("prompt_id", "root", name="uq_traces_root"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("prompt_id", Int, nullable=False),
    sa.Column("pos", Int, nullable=False),
    sa.Column("token_id", Int),
    sa.Column("token", Str),
)

token_credits = sa.Table(
    "token_credits",
    metadata,
    sa.Column("trace_id", Int, nullable=False),
    sa.Column("pos", Int, nullable=False),
    sa.Column("credit", Dbl),
    sa.Column("credit_pct", Dbl),
)

component_flows = sa.Table(  # nonzero entries only
    "component_flows",
    metadata,
    sa.Column("trace_id", Int, nullable=False),
    *component(),
    sa.Column("pos", Int, nullable=False),
    sa.Column("flow", Dbl),
)

edges = sa.Table(  # sparse: only |weight| >= runs.edge_min_frac * Σ|seeds| of the trace
    "edges",
    metadata,
    sa.Column("trace_id", Int, nullable=False),
    *component("parent"),
    sa.Column("parent_pos", Int),
    *component("child"),
    sa.Column("child_pos", Int),
    sa.Column("mode", Str, nullable=False),  # K | Q | V | MLP
    sa.Column("weight", Dbl),
)

paths = sa.Table(
    "paths",
    metadata,
    sa.Column("path_id", Int, primary_key=True, autoincrement=False),
    sa.Column("trace_id", Int, nullable=False),
    sa.Column("rank", Int, nullable=False),  # 1 = largest |score|
    sa.Column("chain", Str),
    sa.Column("score", Dbl),
    sa.Column("score_pct", Dbl),
    sa.Column("source_pos", Int),
    sa.Column("source_token", Str),
    sa.Column("modes", Str),  # e.g. 'V,MLP'
    sa.Column("depth", Int),
)

path_hops = sa.Table(
    "path_hops",
    metadata,
    sa.Column("path_id", Int, nullable=False),
    sa.Column("hop", Int, nullable=False),  # 0 = the seed end
    *component(),
    sa.Column("pos", Int),
    sa.Column("mode", Str),  # mode leaving this element; NULL at the embedding
)

# Circuits (migration 0003): found by `unpack discover`, checked by `unpack verify`.
circuits = sa.Table(
    "circuits",
    metadata,
    sa.Column("circuit_id", Int, primary_key=True, autoincrement=False),
    sa.Column("run_id", Int, nullable=False),
    sa.Column("model", Str, nullable=False),
    sa.Column("preset", Str),
    sa.Column("task", Str),
    sa.Column("condition", Str),
    sa.Column("params", Str, nullable=False),  # JSON: seeds, per_mode, depth, min_share, ...
    sa.Column("prompt_ids", Str, nullable=False),  # JSON list: the prompts it was found on
    sa.Column("n_prompts", Int),
    sa.Column("n_components", Int),
    sa.Column("n_edges", Int),
    sa.Column("code_version", Str),
    sa.Column("created_at", Time),
)

circuit_components = sa.Table(
    "circuit_components",
    metadata,
    sa.Column("circuit_id", Int, nullable=False),
    *component(),
    sa.Column("depth", Int),  # 0 = a seed; k = reached after k reroots
    sa.Column("root", Str),  # where it is rerooted, e.g. attn_1_head_0@END
    sa.Column("share", Dbl),  # share of prompts in which it is selected
    sa.Column("direct_effect", Dbl),  # mean direct effect on the metric
    sa.PrimaryKeyConstraint("circuit_id", "component", name="pk_circuit_components"),
)

circuit_edges = sa.Table(
    "circuit_edges",
    metadata,
    sa.Column("circuit_id", Int, nullable=False),
    *component("parent"),
    *component("child"),
    sa.Column("mode", Str, nullable=False),  # K | Q | V
    sa.Column("weight", Dbl),  # mean interaction over the prompts (0 where absent)
    sa.Column("share", Dbl),  # share of prompts in which it is among the parent's strongest
    sa.PrimaryKeyConstraint("circuit_id", "parent", "child", "mode", name="pk_circuit_edges"),
)

circuit_verifications = sa.Table(
    "circuit_verifications",
    metadata,
    sa.Column("verification_id", Int, primary_key=True, autoincrement=False),
    sa.Column("circuit_id", Int, nullable=False),
    sa.Column("ablation", Str, nullable=False),  # mean | zero | resample
    sa.Column("reference", Str),  # what the means or resamples come from
    sa.Column("n_prompts", Int),
    sa.Column("n_random", Int),
    sa.Column("seed", Int),
    sa.Column("clean_logit_diff", Dbl),
    sa.Column("knocked_logit_diff", Dbl),
    sa.Column("kept_logit_diff", Dbl),
    sa.Column("necessity", Dbl),
    sa.Column("faithfulness", Dbl),
    sa.Column("clean_accuracy", Dbl),
    sa.Column("knocked_accuracy", Dbl),
    sa.Column("kept_accuracy", Dbl),
    sa.Column("baseline_necessity_mean", Dbl),
    sa.Column("baseline_faithfulness_mean", Dbl),
    sa.Column("necessity_rank", Dbl),  # share of random circuits with necessity >= the circuit's
    sa.Column("faithfulness_rank", Dbl),  # share with faithfulness >= the circuit's
    sa.Column("baseline", Str, nullable=False),  # JSON: lists over the random circuits
    sa.Column("code_version", Str),
    sa.Column("created_at", Time),
)

circuit_prompt_results = sa.Table(
    "circuit_prompt_results",
    metadata,
    sa.Column("verification_id", Int, nullable=False),
    sa.Column("prompt_id", Int, nullable=False),
    sa.Column("clean", Dbl),  # logit differences: clean, circuit knocked out, only the circuit kept
    sa.Column("knocked", Dbl),
    sa.Column("kept", Dbl),
    sa.Column("faithfulness", Dbl),  # kept / clean
    sa.PrimaryKeyConstraint("verification_id", "prompt_id", name="pk_circuit_prompt_results"),
)

# Few indexes on purpose: children are written in trace_id order, so DuckDB's
# zone maps already find a trace's rows; ART indexes would slow the bulk writes.
sa.Index("ix_prompts_run", prompts.c.run_id)
sa.Index("ix_traces_prompt", traces.c.prompt_id)

# Tables holding a prompt's rows (written with it, in one transaction).
CHILD_TABLES = (
    "roles",
    "traces",
    "tokens",
    "token_credits",
    "component_flows",
    "edges",
    "paths",
    "path_hops",
)
CIRCUIT_TABLES = (
    "circuits",
    "circuit_components",
    "circuit_edges",
    "circuit_verifications",
    "circuit_prompt_results",
)
VIEWS = (
    "trace_info",
    "credits",
    "credit_by_role",
    "interactions",
    "head_interactions",
    "model_vs_model",
    "path_info",
)
