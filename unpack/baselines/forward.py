"""The project's forward pass (``unpack.capture``) with every reader's input kept
apart, so that baselines can take gradients at, and patch, each edge of the graph
the store uses.

The graph: writers are the credited components in ``Components.names`` order
(``embedding``, ``pos_embedding``, ``attn_L_head_h``, ``mlp_L``; docs/METHOD.md §1);
readers are each head's Q, K and V inputs, each MLP's input and the logits at the
target position. An edge ``c -> (r, m)`` exists where ``c`` is an eligible writer
of ``r`` (a prefix of ``names``). In the store a reader is the ``parent`` and a
writer the ``child`` with mode K, Q, V or MLP (the logits edges are stored as the
writer's flow at the target position).

Every reader normally reads the same residual ``x``. With a patch, reader ``r``
in mode ``m`` reads ``x − Σ_c drop[r, m, c] · (out_c − ref_c)``: ``drop = 1``
removes the edge (the writer's output is replaced by its reference value for that
reader only, as edge patching does), a fraction moves it part of the way
(finite differences). Attention biases and other constants are never patched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..adapters.base import ModelSpec
from ..capture import causal_mask, embed, last_logits, rotary_tables, run_mlp, with_bias  # noqa: F401 (embed: used by the methods through this module)
from ..components import Components
from ..errors import InputError
from ..intervene import logit_diff

Tensor = torch.Tensor
MODES = ("Q", "K", "V")


@dataclass
class Drop:
    """How much of each edge is replaced by the reference (0 keeps, 1 removes).

    ``attn[L]``: ``[H, 3, C_L]`` (modes Q, K, V; ``C_L`` = writers of layer L's
    attention); ``mlp[L]``: ``[C_mlp]``; ``logits``: ``[N]``."""

    attn: list
    mlp: list
    logits: Tensor

    @classmethod
    def zeros(cls, spec: ModelSpec, dtype=torch.float64) -> "Drop":
        comps = Components.from_spec(spec)
        H = spec.n_heads
        return cls(
            [torch.zeros(H, 3, comps.n_writers_attn(L), dtype=dtype) for L in range(spec.n_layers)],
            [torch.zeros(comps.n_writers_mlp(L), dtype=dtype) for L in range(spec.n_layers)],
            torch.zeros(len(comps), dtype=dtype),
        )


@dataclass
class Pass:
    """What one pass leaves: the metric per prompt, the final logits, every writer's
    output ``[B, N, S, D]`` (when kept) and the reader inputs (for gradients)."""

    metric: Tensor
    logits: Tensor
    writers: Optional[Tensor]
    inputs: dict


def _cut(drop: Tensor, diff: Tensor) -> Tensor:
    """The dropped part of a reader's writers: ``Σ_c drop[..., c] · diff_c`` for
    ``drop [..., C]`` and ``diff [B, ≥C, S, D]`` -> ``[B, ..., S, D]``."""
    B, _, S, D = diff.shape
    C, lead = drop.shape[-1], drop.shape[:-1]
    cut = torch.matmul(drop.reshape(-1, C).to(diff.dtype), diff[:, :C].reshape(B, C, S * D))
    return cut.reshape(B, *lead, S, D)


def _heads_attention(spec: ModelSpec, lw, xq: Tensor, xk: Tensor, xv: Tensor, cos, sin) -> Tensor:
    """Mixed values ``z [B, H, S, d]`` when head h's Q, K and V read their own
    residuals ``x* [B, H, S, D]`` (the same operations as ``capture.attention``)."""
    g = spec.kv_index()
    Q = torch.einsum("bhsD,hDd->bhsd", lw.ln_attn(xq), lw.W_Q)
    K = torch.einsum("bhsD,hDd->bhsd", lw.ln_attn(xk), lw.W_K[g])
    V = torch.einsum("bhsD,hDd->bhsd", lw.ln_attn(xv), lw.W_V[g])
    if lw.b_Q is not None:
        Q = Q + lw.b_Q[:, None]
    if lw.b_K is not None:
        K = K + lw.b_K[g][:, None]
    if lw.b_V is not None:
        V = V + lw.b_V[g][:, None]
    if spec.rotary is not None:
        Q, K = spec.rotary.apply(Q, cos, sin), spec.rotary.apply(K, cos, sin)
    S = Q.shape[-2]
    logits = lw.attn_scale * Q @ K.transpose(-1, -2)
    A = logits.masked_fill(~causal_mask(S, Q.device), float("-inf")).softmax(-1)
    return A @ V


def check_supported(spec: ModelSpec, model: str = "") -> None:
    """This pass implements pre-norm blocks with causal attention: a model whose spec
    has post-sublayer norms, qk-norm, a sliding window or soft-caps
    (docs/ADAPTERS.md) is refused rather than run wrongly; the error names
    ``model`` (when given), its family and each missing feature."""
    extra = sorted(
        {
            name
            for lw in spec.layers
            for name in ("ln_attn_post", "ln_mlp_post", "q_norm", "k_norm", "window", "softcap")
            if getattr(lw, name) is not None
        }
        | ({"final_softcap"} if spec.final_softcap is not None else set())
    )
    if extra:
        who = (
            f"model {model!r}, family {spec.family!r}" if model else f"model family {spec.family!r}"
        )
        raise InputError(
            f"the baselines' forward pass does not implement {', '.join(extra)} "
            f"({who}); run the baselines on a GPT-2, "
            "GPT-NeoX or Llama-family model, or use --method unpack"
        )


def run(
    spec: ModelSpec,
    emb: Tensor,
    lengths: Tensor,
    tid: Tensor,
    did: Tensor,
    drop: Optional[Drop] = None,
    ref: Optional[Tensor] = None,
    keep: bool = False,
    split: bool = False,
) -> Pass:
    """One pass from token embeddings ``emb [B, S, D]`` (differentiable in them).

    ``drop``/``ref [B, N, S, D]``: the patch (module docstring). ``keep``: keep every
    writer's output. ``split``: give every reader its own input tensor, even
    unpatched, so ``torch.autograd.grad`` can be taken at each (``Pass.inputs``:
    ``attn[L] [B, H, 3, S, D]``, ``mlp[L] [B, S, D]``, ``final [B, S, D]``)."""
    check_supported(spec)
    B, S, _ = emb.shape
    dtype, dev = emb.dtype, emb.device
    comps = Components.from_spec(spec)
    H, N = spec.n_heads, len(comps)
    diff = torch.empty(B, N, S, spec.d_model, dtype=dtype, device=dev) if drop is not None else None
    outs = []

    def write(c: Tensor) -> None:  # one more writer
        if diff is not None:
            diff[:, len(outs)] = c - ref[:, len(outs)].to(dtype)
        outs.append(c)

    write(emb)
    x = emb
    if spec.W_pos is not None:
        pos = spec.W_pos[:S].to(dtype).expand(B, S, -1)
        write(pos)
        x = x + pos
    cos, sin = rotary_tables(spec, S, dtype)
    inputs = {"attn": [], "mlp": []}
    for L, lw in enumerate(spec.layers):
        lw = lw.cast(dtype)
        xa = x[:, None, None].expand(B, H, 3, S, -1)
        if diff is not None:
            xa = xa - _cut(drop.attn[L], diff)
        elif split:
            xa = xa.clone()
        inputs["attn"].append(xa)
        z = _heads_attention(spec, lw, xa[:, :, 0], xa[:, :, 1], xa[:, :, 2], cos, sin)
        heads = torch.einsum("bhsd,hdD->bhsD", z, lw.W_O)
        attn_b = with_bias(heads.sum(1), lw.b_O)
        for h in range(H):
            write(heads[:, h])
        mlp_x = x if spec.parallel else x + attn_b
        if diff is not None:
            mlp_x = mlp_x - _cut(drop.mlp[L], diff)
        elif split:
            mlp_x = mlp_x.clone()
        inputs["mlp"].append(mlp_x)
        out = with_bias(run_mlp(lw.mlp, lw.ln_mlp(mlp_x))[0], lw.mlp.b_out)
        write(out)
        x = x + attn_b + out
    if diff is not None:
        x = x - _cut(drop.logits, diff)
    elif split:
        x = x.clone()
    inputs["final"] = x
    logits = last_logits(spec, x, lengths.to(dev), dtype)
    metric = logit_diff(logits, tid.to(dev), did.to(dev))
    return Pass(metric, logits, torch.stack(outs, 1) if keep else None, inputs)
