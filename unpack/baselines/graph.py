"""The edge list of the graph the baselines score and the evaluation patches
(see :mod:`unpack.baselines.forward`), in one fixed order: per layer every head's
Q, K, V edges from its writers, then the MLP's; last the logits' edges.

An edge is ``(parent, child, mode)`` as the store's ``edges`` table names it:
the parent reads, the child writes, the mode is Q, K, V or MLP. The logits
edges are ``("logits", child, "LOGITS")`` (stored as the child's flow at the
target position).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..components import Components
from .forward import MODES, Drop

LOGITS = "logits"


@lru_cache(maxsize=8)
def _edges(n_layers, n_heads, has_pos, parallel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    comps = Components(n_layers, n_heads, has_pos, [False] * n_layers, parallel)
    names = np.array(comps.names, dtype=object)
    parent, child, mode = [], [], []
    for L in range(n_layers):
        C = comps.n_writers_attn(L)
        for h in range(n_heads):
            for m in MODES:
                parent += [f"attn_{L}_head_{h}"] * C
                child += list(names[:C])
                mode += [m] * C
        C = comps.n_writers_mlp(L)
        parent += [f"mlp_{L}"] * C
        child += list(names[:C])
        mode += ["MLP"] * C
    parent += [LOGITS] * len(names)
    child += list(names)
    mode += ["LOGITS"] * len(names)
    return (
        np.array(parent, dtype=object),
        np.array(child, dtype=object),
        np.array(mode, dtype=object),
    )


def edges(spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(parent, child, mode)`` arrays of every edge of ``spec``'s graph."""
    return _edges(spec.n_layers, spec.n_heads, spec.W_pos is not None, spec.parallel)


def flatten(attn: list, mlp: list, logits: torch.Tensor) -> torch.Tensor:
    """Per-prompt scores ``[B, E]`` in :func:`edges` order from ``attn[L] [B, H, 3, C]``,
    ``mlp[L] [B, C]`` and ``logits [B, N]``."""
    B = logits.shape[0]
    parts = []
    for a, m in zip(attn, mlp):
        parts += [a.reshape(B, -1), m]
    return torch.cat(parts + [logits], 1)


def drop_outside(spec, keep: np.ndarray, dtype=torch.float64) -> Drop:
    """The :class:`Drop` that removes every edge whose ``keep`` entry (``[E]``
    boolean, :func:`edges` order) is False."""
    d = Drop.zeros(spec, dtype)
    gone = torch.from_numpy(~keep).to(dtype)
    i = 0
    for L in range(spec.n_layers):
        n = d.attn[L].numel()
        d.attn[L] = gone[i : i + n].reshape(d.attn[L].shape)
        i += n
        n = d.mlp[L].numel()
        d.mlp[L] = gone[i : i + n]
        i += n
    d.logits = gone[i:]
    assert i + len(d.logits) == len(keep)
    return d
