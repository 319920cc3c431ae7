"""Presets and the trace configuration (METHOD.md §8)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import InputError


@dataclass(frozen=True)
class Config:
    """Every knob of one trace; stored with every trace.

    ``mlp_rule``: rule for MLPs at depth >= 1 (``aligned``, ``weighted``, ``l2``).
    ``value_shares``: source split of heads at depth >= 1 (``aligned`` or ``raw``).
    ``seed``: ``importance`` (target minus mean logit, the paper's) or ``metric``
    (target minus distractor direction, seeds add up to the logit difference).
    ``max_path_nodes``: cap on partial paths expanded; beyond it the weakest are
    dropped and the result says ``paths_truncated``.
    ``position_edges``: also keep position-resolved edges with
    ``|weight| >= edge_min_frac * Σ|seeds|``.
    """

    preset: str = "kqv_aligned"
    w_K: float = 0.333
    w_Q: float = 0.333
    w_V: float = 0.333
    mlp_rule: str = "aligned"
    value_shares: str = "aligned"
    beta: float = 0.8
    seed: str = "importance"
    top_paths_k: int = 20
    path_min_frac: float = 1e-4
    max_path_nodes: int = 200_000
    position_edges: bool = False
    edge_min_frac: float = 1e-3

    def to_dict(self) -> dict:
        return asdict(self)


_KQV = dict(w_K=0.333, w_Q=0.333, w_V=0.333)
_K = dict(w_K=1.0, w_Q=0.0, w_V=0.0)  # (deviation) the release's sweep uses 0.3
PRESETS: dict[str, dict] = {
    "kqv_aligned": dict(_KQV, mlp_rule="aligned", value_shares="aligned"),
    "kqv_weighted": dict(_KQV, mlp_rule="weighted", value_shares="raw"),
    "kqv_l2": dict(_KQV, mlp_rule="l2", value_shares="raw"),
    "k_only_aligned": dict(_K, mlp_rule="aligned", value_shares="aligned"),
    "k_only_weighted": dict(_K, mlp_rule="weighted", value_shares="raw"),
    "k_only_l2": dict(_K, mlp_rule="l2", value_shares="raw"),
}

_CHOICES = {"mlp_rule": ("aligned", "weighted", "l2"), "value_shares": ("aligned", "raw"),
            "seed": ("importance", "metric")}


def make_config(preset: str | Config = "kqv_aligned", **overrides) -> Config:
    """A preset with any field overridden; unknown names and values are errors."""
    if isinstance(preset, Config):
        base = preset
    else:
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        base = Config(preset=preset, **PRESETS[preset])
    names = {f.name for f in fields(Config)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise InputError(f"unknown config field(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
    cfg = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    for k, allowed in _CHOICES.items():
        if getattr(cfg, k) not in allowed:
            raise InputError(f"{k}={getattr(cfg, k)!r} is not one of {', '.join(allowed)}")
    if not 0 <= cfg.beta <= 1:
        raise InputError(f"beta={cfg.beta} must lie in [0, 1]")
    if cfg.top_paths_k < 0 or cfg.max_path_nodes < 1 or cfg.path_min_frac < 0:
        raise InputError("top_paths_k >= 0, max_path_nodes >= 1 and path_min_frac >= 0 are required")
    return cfg
