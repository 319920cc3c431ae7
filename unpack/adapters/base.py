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

from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

Tensor = torch.Tensor


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.detach().to(dtype)


@dataclass
class Norm:
    """A LayerNorm (``kind="layer"``) or RMSNorm (``kind="rms"``), or no norm at all
    (``kind="none"``, ``σ = 1`` and ``γ = 1``: a sublayer that reads the raw residual).

    ``weight`` is the effective multiplier ``γ``: for models that store an offset
    (Gemma: ``1 + γ``) the adapter builds it with :func:`rms_norm`'s ``offset``;
    ``bias`` is ``β`` or None.
    """

    kind: str
    weight: Tensor
    bias: Optional[Tensor]
    eps: float

    def scale(self, x: Tensor) -> Tensor:
        """``σ(x)`` per position (docs/METHOD.md §2): the divisor of the whole residual."""
        if self.kind == "layer":
            return torch.sqrt(x.var(-1, unbiased=False) + self.eps)
        if self.kind == "none":
            return torch.ones_like(x[..., 0])
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


def no_norm(like: Tensor) -> Norm:
    """The identity as a :class:`Norm` of ``like``'s width (a block without a pre-norm)."""
    return Norm("none", torch.ones(like.shape[-1], dtype=like.dtype, device=like.device), None, 0.0)


def offset_weight(w: Tensor, offset: float) -> Tensor:
    """``offset + w``; low-precision weights are promoted to float32 first, as the
    models that store an offset compute it (a view of ``w`` when ``offset`` is 0)."""
    if not offset:
        return w
    return w.detach().to(torch.promote_types(w.dtype, torch.float32)) + offset


def rms_norm(weight: Tensor, eps: float, offset: float = 0.0) -> Norm:
    """An RMSNorm multiplying by ``offset + weight`` (``offset=1``: Gemma's ``1 + γ``)."""
    return Norm("rms", offset_weight(weight, offset), None, float(eps))


@dataclass
class QKNorm:
    """An RMS norm of the queries or the keys (qk-norm, docs/METHOD.md §4): per head
    over its ``d`` features, or (``whole``) over the whole projection, all heads'
    features together (OLMo-2). Linear given its scale ``σ_q`` / ``σ_k``.

    ``weight``: ``[d]`` shared by every head, or ``[G, d]`` per head (a whole
    projection's ``γ`` cut per head)."""

    weight: Tensor
    eps: float
    whole: bool = False

    def gamma(self, G: int) -> Tensor:
        """``[G, d]``: the multiplier of each head's features."""
        return self.weight.expand(G, -1) if self.weight.dim() == 1 else self.weight

    def scale(self, X: Tensor) -> Tensor:
        """``σ [B, G, S]`` of the projections ``X [B, G, S, d]`` (the same for every
        head when ``whole``)."""
        if self.whole:
            return torch.sqrt(X.pow(2).mean((1, 3)) + self.eps)[:, None].expand(-1, X.shape[1], -1)
        return torch.sqrt(X.pow(2).mean(-1) + self.eps)

    def apply(self, X: Tensor, sigma: Tensor) -> Tensor:
        """``γ ⊙ X / σ`` for ``X [B, G, S, d]`` and ``σ [B, G, S]``."""
        return X * self.gamma(X.shape[1])[:, None, :] / sigma[..., None]

    def cast(self, dtype: torch.dtype) -> "QKNorm":
        return QKNorm(_cast(self.weight, dtype), self.eps, self.whole)


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
        return MLPWeights(
            self.act,
            *(
                _cast(getattr(self, n), dtype)
                for n in ("W_out", "b_out", "W_in", "b_in", "W_gate", "W_up")
            ),
        )


@dataclass
class LayerWeights:
    """One block. ``W_Q: [H, D, d]``, ``W_K, W_V: [Hkv, D, d]``, ``W_O: [H, d, D]``.

    The optional fields say how a block differs from the plain pre-norm one
    (docs/ADAPTERS.md lists how each enters the formulas): ``ln_attn_post`` /
    ``ln_mlp_post`` normalize a sublayer's output before it joins the residual
    (sandwich norms); ``q_norm`` / ``k_norm`` normalize the queries / keys before
    the rotary; ``rotary`` is this layer's own rotary embedding (set from
    ``ModelSpec.rotary`` when None); ``window``: a query ``q`` sees the sources
    ``q − window < s <= q`` (sliding-window attention; None: all ``s <= q``);
    ``softcap``: attention logits become ``c · tanh(logits / c)``."""

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
    ln_attn_post: Optional[Norm] = None
    ln_mlp_post: Optional[Norm] = None
    q_norm: Optional[QKNorm] = None
    k_norm: Optional[QKNorm] = None
    rotary: Optional["Rotary"] = None
    window: Optional[int] = None
    softcap: Optional[float] = None

    def cast(self, dtype: torch.dtype) -> "LayerWeights":
        """This layer's weights in ``dtype`` (one layer alive at a time for big models)."""
        opt = lambda m: None if m is None else m.cast(dtype)  # noqa: E731
        return replace(
            self,
            ln_attn=self.ln_attn.cast(dtype),
            ln_mlp=self.ln_mlp.cast(dtype),
            mlp=self.mlp.cast(dtype),
            ln_attn_post=opt(self.ln_attn_post),
            ln_mlp_post=opt(self.ln_mlp_post),
            q_norm=opt(self.q_norm),
            k_norm=opt(self.k_norm),
            **{
                n: _cast(getattr(self, n), dtype)
                for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
            },
        )


@dataclass(eq=False)
class Rotary:
    """Rotary embedding on the first ``dim`` features of each head (rotate-half
    pairing). ``cos_sin(positions)`` returns the model's own ``cos, sin`` of shape
    ``[S, dim]`` so scaled variants come out exactly as the model computes them.
    A family with interleaved pairs (features ``2i, 2i+1``) permutes its query and
    key features to this layout in the adapter (the scores do not change)."""

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
    family: str  # the adapter module's name
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
    rotary: Optional[Rotary] = None  # every layer's unless its LayerWeights has its own
    max_positions: Optional[int] = None
    embed_scale: float = 1.0  # the embedding is W_E[token] · embed_scale (Gemma: √D)
    final_softcap: Optional[float] = None  # logits become c · tanh(logits / c)
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        for lw in self.layers:
            if lw.rotary is None:
                lw.rotary = self.rotary
            for post in (lw.ln_attn_post, lw.ln_mlp_post):
                if post is not None and (post.kind != "rms" or post.bias is not None):
                    raise ValueError("a post-sublayer norm must be an RMSNorm without a shift")

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_index(self) -> Tensor:
        """``g(h) = h // (H / Hkv)`` for every query head."""
        return torch.arange(self.n_heads) // self.group_size
