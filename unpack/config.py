"""Presets and the trace configuration (docs/METHOD.md §8)."""

from __future__ import annotations

import math
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

_CHOICES = {
    "mlp_rule": ("aligned", "weighted", "l2"),
    "value_shares": ("aligned", "raw"),
    "seed": ("importance", "metric"),
}
# Numeric fields: (kind, lowest, highest, meaning); checked on every config, the
# same rules for --set FIELD=VALUE, the dedicated flags and the Python API.
_NUMBERS = {
    "w_K": ("float", 0.0, None, "the K branch weight"),
    "w_Q": ("float", 0.0, None, "the Q branch weight"),
    "w_V": ("float", 0.0, None, "the V branch weight"),
    "beta": ("float", 0.0, 1.0, "beta"),
    "path_min_frac": ("float", 0.0, None, "the path pruning threshold"),
    "edge_min_frac": ("float", 0.0, None, "the edge threshold (--edge-min-frac)"),
    "top_paths_k": ("int", 0, None, "the number of paths (--top-paths)"),
    "max_path_nodes": ("int", 1, None, "the cap on expanded partial paths"),
}
_BOOLS = ("position_edges",)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def field_names() -> list[str]:
    return [f.name for f in fields(Config) if f.name != "preset"]


def _range(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    return f"in [{lo}, {hi}]"


def check_field(name: str, value):
    """``value`` if it is a valid value of config field ``name``; else an
    InputError that names the field, the value and what is allowed."""
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise InputError(f"{name}={value!r} is not one of {', '.join(_CHOICES[name])}")
        return value
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise InputError(f"{name}={value!r} must be true or false")
        return value
    if name in _NUMBERS:
        kind, lo, hi, what = _NUMBERS[name]
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(
                    f"{name}={value!r}: {what} must be a whole number {_range(lo, hi)}"
                )
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{name}={value!r}: {what} must be a number {_range(lo, hi)}")
            if not math.isfinite(value):
                raise InputError(
                    f"{name}={value!r}: {what} must be a finite number {_range(lo, hi)}"
                )
            value = float(value)
        if value < lo or (hi is not None and value > hi):
            raise InputError(f"{name}={value!r}: {what} must be {_range(lo, hi)}")
        return value
    return value


def parse_override(item: str) -> tuple[str, object]:
    """``FIELD=VALUE`` from the command line, typed by the field: numbers for the
    weights and thresholds (finite, in range), whole numbers for counts, true/false
    for flags, one of the choices for the rules. Errors name the field and the fix."""
    if not isinstance(item, str) or "=" not in item:
        raise InputError(f"--set {item!r} must look like FIELD=VALUE, e.g. --set beta=0.9")
    name, _, text = item.partition("=")
    name, text = name.strip(), text.strip()
    names = field_names()
    if name == "preset":
        raise InputError("the preset is not a --set field; use --preset NAME")
    if name not in names:
        raise InputError(
            f"--set {item!r}: unknown config field {name!r}; known: {', '.join(names)}"
        )
    if name in _NUMBERS:
        kind, lo, hi, what = _NUMBERS[name]
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            a = "a whole number" if kind == "int" else "a number"
            raise InputError(
                f"--set {item!r}: {what} must be {a} {_range(lo, hi)}, not {text!r}"
            ) from None
    elif name in _BOOLS:
        low = text.lower()
        if low not in _TRUE + _FALSE:
            raise InputError(f"--set {item!r}: {name} must be true or false")
        value = low in _TRUE
    else:
        value = text
    try:
        return name, check_field(name, value)
    except InputError as e:
        raise InputError(f"--set {item!r}: {e}") from None


def parse_overrides(items) -> dict:
    """Every ``--set FIELD=VALUE`` typed and checked (see :func:`parse_override`)."""
    return dict(parse_override(it) for it in items or ())


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
        raise InputError(
            f"unknown config field(s) {', '.join(bad)}; known: {', '.join(sorted(names))}"
        )
    cfg = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    checked = {
        f.name: check_field(f.name, getattr(cfg, f.name))
        for f in fields(Config)
        if f.name != "preset"
    }
    cfg = replace(cfg, **checked)
    if cfg.w_K + cfg.w_Q + cfg.w_V <= 0:
        raise InputError("w_K, w_Q and w_V are all 0: at least one branch needs a positive weight")
    return cfg
