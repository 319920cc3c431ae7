"""A trace whose numbers are not all finite is an error, never a result.

NaN or infinity in the credit, flow, edges, paths, seeds or logits means the
method's sums no longer mean anything. :func:`non_finite` says which parts are
affected and why: non-finite weights in the model, a non-finite config value,
or an overflow in the dtype of the math (the usual fix: ``--dtype float64``).
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch

from .errors import InputError


class NonFiniteError(InputError):
    """A trace came out with NaN or infinity; the message names the cause and the fix."""


_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Module, list[str]]" = weakref.WeakKeyDictionary()


def _all_finite(x) -> bool:
    if x is None:
        return True
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    a = np.asarray(x, dtype=np.float64)
    return bool(np.isfinite(a).all())


def _parts(res) -> dict[str, bool]:
    """Each checked part of a trace result -> whether it is finite."""
    edges = getattr(res, "edges", None)
    pos_edges = getattr(res, "position_edges", None)
    flows = list(res.component_flow.values())
    return {
        "token credit": _all_finite(res.token_credit) and _all_finite(res.token_credit_pct),
        "component flow": _all_finite(
            np.concatenate([np.ravel(f) for f in flows]) if flows else None
        ),
        "seeds": _all_finite(list(res.seeds.values())),
        "edges": _all_finite(
            None if edges is None or len(edges) == 0 else edges["weight"].to_numpy()
        )
        and _all_finite(
            None if pos_edges is None or len(pos_edges) == 0 else pos_edges["weight"].to_numpy()
        ),
        "paths": _all_finite([p.score for p in res.paths]),
        "logits": _all_finite(
            [
                res.target_prob,
                res.target_logit,
                res.logit_diff if res.logit_diff is not None else 0.0,
            ]
        ),
        "suppression": _all_finite([res.suppression]),
    }


def non_finite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the model's parameters and buffers that hold NaN or infinity
    (computed once per model)."""
    if model not in _WEIGHTS:
        bad = [
            n for n, p in model.named_parameters() if p.is_floating_point() and not _all_finite(p)
        ]
        bad += [n for n, b in model.named_buffers() if b.is_floating_point() and not _all_finite(b)]
        _WEIGHTS[model] = bad
    return _WEIGHTS[model]


def cause(tracer, config: dict) -> str:
    """Why a trace of ``tracer`` with ``config`` is not finite, and the fix."""
    bad = non_finite_weights(tracer.model)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return (
            f"the model has non-finite weights ({', '.join(bad[:3])}{more}); "
            "fix or re-download the checkpoint"
        )
    odd = [f"{k}={v!r}" for k, v in config.items() if isinstance(v, float) and not math.isfinite(v)]
    if odd:
        return f"the override {', '.join(odd)} is not finite; give a finite number"
    dt = str(tracer.dtype).replace("torch.", "")
    if tracer.dtype != torch.float64:
        return (
            f"overflow in {dt}: the model's activations or scores pass what {dt} can hold; "
            "trace with --dtype float64"
        )
    return (
        "overflow in float64: the model's activations or scores pass what float64 can "
        "hold (weights far too large?)"
    )


def non_finite(tracer, res, config) -> str | None:
    """None when every number of the trace result ``res`` is finite, else the
    reason (which parts, and :func:`cause`)."""
    parts = _parts(res)
    bad = [name for name, ok in parts.items() if not ok]
    if not bad:
        return None
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return f"the trace is not finite (NaN or infinity in {', '.join(bad)}): {cause(tracer, cfg)}"
