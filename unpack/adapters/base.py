"""The architecture-neutral view of a model that the rest of the library reads.

An adapter turns a Hugging Face model into a :class:`ModelSpec`: weights laid out
per head in one convention, the norms, the rotary embedding and the residual
topology. Nothing outside ``unpack/adapters`` knows how a family stores them.

Conventions (docs/METHOD.md notation): ``L`` layers, ``H`` query heads, ``Hkv``
key/value heads, width ``D``, head dim ``d``, MLP width ``F``, vocabulary ``V``.
All projections act on row vectors: ``q = x @ W_Q[h] + b_Q[h]``.
Tensors are views of the model's parameters (no copies); the capture casts one
layer at a time to the compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.detach().to(dtype)


@dataclass
class Norm:
    """A LayerNorm (``kind="layer"``) or RMSNorm (``kind="rms"``).

    ``weight`` is the effective multiplier ``γ`` (``1 + γ`` already applied for
    models that store an offset); ``bias`` is ``β`` or None.
    """

    kind: str
    weight: Tensor
    bias: Optional[Tensor]
    eps: float

    def scale(self, x: Tensor) -> Tensor:
        """``σ(x)`` per position (docs/METHOD.md §2): the divisor of the whole residual."""
        if self.kind == "layer":
            return torch.sqrt(x.var(-1, unbiased=False) + self.eps)
        return torch.sqrt(x.pow(2).mean(-1) + self.eps)

    def center(self, c: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """``ĉ = c − mean(c)`` over ``D`` for LayerNorm, ``ĉ = c`` for RMSNorm
        (docs/METHOD.md §3); ``out=c`` centers in place."""
        if self.kind != "layer":
            return c
        return torch.sub(c, c.mean(-1, keepdim=True), out=out)

    def marginal_norm(self, c_hat: Tensor, sigma: Tensor) -> Tensor:
        """``m(c)[s] = γ ⊙ ĉ[s] / σ(x[s])`` (docs/METHOD.md §2): a writer's part of the
        normed input, for writers ``ĉ [B, C, S, D]`` (centered) and the scale
        ``σ [B, S]`` of the whole residual the reader reads."""
        return c_hat * self.weight / sigma[:, None, :, None]

    def __call__(self, x: Tensor) -> Tensor:
        y = self.center(x) / self.scale(x).unsqueeze(-1) * self.weight
        return y + self.bias if self.bias is not None else y

    def cast(self, dtype: torch.dtype) -> "Norm":
        return Norm(self.kind, _cast(self.weight, dtype), _cast(self.bias, dtype), self.eps)


def layer_norm(m) -> Norm:
    """The :class:`Norm` of a ``torch.nn.LayerNorm``-like module (``weight``, ``bias``, ``eps``)."""
    return Norm("layer", m.weight, m.bias, m.eps)


@dataclass
class MLPWeights:
    """A plain MLP (``W_in``) or a gated one (``W_gate`` and ``W_up``).

    ``W_in``/``W_gate``/``W_up``: ``[F, D]``; ``W_out``: ``[D, F]``.
    Plain: ``out = act(y W_in^T + b_in) W_out^T + b_out``.
    Gated: ``out = (act(y W_gate^T) * (y W_up^T)) W_out^T + b_out``.
    """

    act: Callable[[Tensor], Tensor]
    W_out: Tensor
    b_out: Optional[Tensor] = None
    W_in: Optional[Tensor] = None
    b_in: Optional[Tensor] = None
    W_gate: Optional[Tensor] = None
    W_up: Optional[Tensor] = None

    @property
    def gated(self) -> bool:
        return self.W_gate is not None

    def cast(self, dtype: torch.dtype) -> "MLPWeights":
        return MLPWeights(self.act, *(_cast(getattr(self, n), dtype) for n in
                                      ("W_out", "b_out", "W_in", "b_in", "W_gate", "W_up")))


@dataclass
class LayerWeights:
    """One block. ``W_Q: [H, D, d]``, ``W_K, W_V: [Hkv, D, d]``, ``W_O: [H, d, D]``."""

    ln_attn: Norm
    ln_mlp: Norm
    W_Q: Tensor  # [H, D, d]
    W_K: Tensor  # [Hkv, D, d]
    W_V: Tensor  # [Hkv, D, d]
    W_O: Tensor  # [H, d, D]
    b_Q: Optional[Tensor]  # [H, d]
    b_K: Optional[Tensor]  # [Hkv, d]
    b_V: Optional[Tensor]  # [Hkv, d]
    b_O: Optional[Tensor]  # [D]
    mlp: MLPWeights
    attn_scale: float

    def cast(self, dtype: torch.dtype) -> "LayerWeights":
        """This layer's weights in ``dtype`` (one layer alive at a time for big models)."""
        return LayerWeights(
            self.ln_attn.cast(dtype), self.ln_mlp.cast(dtype),
            *(_cast(getattr(self, n), dtype) for n in
              ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")),
            self.mlp.cast(dtype), self.attn_scale)


@dataclass
class Rotary:
    """Rotary embedding on the first ``dim`` features of each head (rotate-half
    pairing). ``cos_sin(positions)`` returns the model's own ``cos, sin`` of shape
    ``[S, dim]`` so scaled variants come out exactly as the model computes them."""

    dim: int
    cos_sin: Callable[[Tensor], tuple[Tensor, Tensor]]

    def apply(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate ``x[..., S, d]`` with ``cos, sin: [S, dim]`` (linear per position)."""
        r = self.dim
        xr, xp = x[..., :r], x[..., r:]
        half = r // 2
        rot = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
        return torch.cat((xr * cos + rot * sin, xp), dim=-1)


@dataclass
class ModelSpec:
    family: str  # the adapter: gpt2, gpt_neox or llama
    n_layers: int  # L
    n_heads: int  # H
    n_kv_heads: int  # Hkv (grouped-query attention when < H)
    d_model: int  # D
    d_head: int  # d
    parallel: bool  # attention and MLP read the same residual (docs/METHOD.md §1)
    W_E: Tensor  # [V, D]
    W_pos: Optional[Tensor]  # [P, D] learned absolute positions (GPT-2)
    layers: list[LayerWeights]
    ln_final: Norm
    W_U: Tensor  # [V, D]
    b_U: Optional[Tensor] = None
    rotary: Optional[Rotary] = None
    max_positions: Optional[int] = None
    extras: dict = field(default_factory=dict)

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_index(self) -> Tensor:
        """``g(h) = h // (H / Hkv)`` for every query head."""
        return torch.arange(self.n_heads) // self.group_size
