"""One forward pass over a batch of prompts, from the adapter's weights, keeping
every tensor the method needs (METHOD.md §1-5).

The pass is computed here, not hooked out of the Hugging Face module, so every
captured tensor is exactly the one the model used; §9 invariant 9 checks that the
logits equal the model's own forward pass. Prompts of different lengths are
right-padded: with causal attention a pad never influences an earlier position,
so each prompt's numbers equal those of tracing it alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .adapters.base import ModelSpec
from .components import Components

Tensor = torch.Tensor


@dataclass
class LayerCapture:
    A: Tensor  # [B, H, S, S] attention probabilities (causal)
    Q: Tensor  # [B, H, S, d] actual queries (bias, rotary)
    K: Tensor  # [B, Hkv, S, d]
    V: Tensor  # [B, Hkv, S, d] (with bias)
    sigma_attn: Tensor  # [B, S] σ of the attention's input residual
    sigma_mlp: Tensor  # [B, S] σ of the MLP's input residual
    act: Tensor  # [B, S, F] a_j
    pre: Optional[Tensor]  # [B, S, F] plain MLP pre-activations
    gate: Optional[Tensor]  # [B, S, F] gated MLP
    up: Optional[Tensor]
    head_out: Tensor  # [B, H, S, D] z_h W_O[h], no bias
    mlp_out: Tensor  # [B, S, D] with its bias
    resid_pre: Optional[Tensor] = None  # kept for validation
    resid_mlp_in: Optional[Tensor] = None


@dataclass
class Capture:
    spec: ModelSpec
    comps: Components
    input_ids: Tensor  # [B, S]
    lengths: Tensor  # [B]
    embed: Tensor  # [B, S, D]
    pos: Optional[Tensor]  # [B, S, D]
    layers: list[LayerCapture]
    resid_final: Tensor  # [B, S, D]
    sigma_final: Tensor  # [B, S]
    logits_t: Tensor  # [B, V] logits at each prompt's last position
    cos: Optional[Tensor]  # [S, rot]
    sin: Optional[Tensor]
    logits: Optional[Tensor] = None  # [B, S, V] when asked for

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def t(self) -> Tensor:
        """Target position of each prompt: its last real token."""
        return self.lengths - 1

    def credited_writers(self) -> Tensor:
        """``[B, N, S, D]``: the outputs of the credited components, in ``comps.names`` order."""
        parts = [self.embed[:, None]] + ([self.pos[:, None]] if self.pos is not None else [])
        for lc in self.layers:
            parts += [lc.head_out, lc.mlp_out[:, None]]
        return torch.cat(parts, dim=1)

    def all_writers(self) -> Tensor:
        """``[B, N_all, S, D]`` in ``comps.all_names`` order (bias components included)."""
        B, S, _ = self.embed.shape
        parts = [self.embed[:, None]] + ([self.pos[:, None]] if self.pos is not None else [])
        for L, lc in enumerate(self.layers):
            parts.append(lc.head_out)
            b_O = self.spec.layers[L].b_O
            if b_O is not None:
                parts.append(b_O.to(self.dtype).expand(B, 1, S, -1))
            parts.append(lc.mlp_out[:, None])
        return torch.cat(parts, dim=1)


def causal_mask(S: int, device=None) -> Tensor:
    """``[S, S]`` boolean, True where key position s <= query position q."""
    return torch.ones(S, S, dtype=torch.bool, device=device).tril()


def expand_kv(x: Tensor, spec: ModelSpec, dim: int = 1) -> Tensor:
    """Repeat kv-head tensors along ``dim`` so head h sees kv head g(h)."""
    return x.repeat_interleave(spec.group_size, dim=dim) if spec.group_size > 1 else x


def run_mlp(mlp, y: Tensor):
    """``(out, act, pre, gate, up)`` of a plain or gated MLP on normed input ``y``."""
    if mlp.gated:
        gate, up = y @ mlp.W_gate.T, y @ mlp.W_up.T
        a, pre = mlp.act(gate) * up, None
    else:
        pre = y @ mlp.W_in.T
        if mlp.b_in is not None:
            pre = pre + mlp.b_in
        a, gate, up = mlp.act(pre), None, None
    out = a @ mlp.W_out.T
    if mlp.b_out is not None:
        out = out + mlp.b_out
    return out, a, pre, gate, up


@torch.no_grad()
def capture(spec: ModelSpec, input_ids: Tensor, lengths: Tensor, dtype=torch.float32,
            keep_resid: bool = False, full_logits: bool = False) -> Capture:
    """Run the model described by ``spec`` on right-padded ``input_ids [B, S]``."""
    B, S = input_ids.shape
    dev = spec.W_E.device
    input_ids, lengths = input_ids.to(dev), lengths.to(dev)
    embed = spec.W_E[input_ids].to(dtype)
    pos = None
    if spec.W_pos is not None:
        pos = spec.W_pos[:S].to(dtype).expand(B, S, -1)
    x = embed + pos if pos is not None else embed
    cos = sin = None
    if spec.rotary is not None:
        cos, sin = spec.rotary.cos_sin(torch.arange(S, device=dev))
        cos, sin = cos.to(dtype), sin.to(dtype)
    mask = causal_mask(S, dev)
    layers = []
    for lw in spec.layers:
        lw = lw.cast(dtype)
        resid_pre = x
        h = lw.ln_attn(x)
        Q = torch.einsum("bsD,hDd->bhsd", h, lw.W_Q)
        K = torch.einsum("bsD,gDd->bgsd", h, lw.W_K)
        V = torch.einsum("bsD,gDd->bgsd", h, lw.W_V)
        if lw.b_Q is not None:
            Q = Q + lw.b_Q[:, None]
        if lw.b_K is not None:
            K = K + lw.b_K[:, None]
        if lw.b_V is not None:
            V = V + lw.b_V[:, None]
        if spec.rotary is not None:
            Q, K = spec.rotary.apply(Q, cos, sin), spec.rotary.apply(K, cos, sin)
        logits = lw.attn_scale * Q @ expand_kv(K, spec).transpose(-1, -2)
        A = logits.masked_fill(~mask, float("-inf")).softmax(-1)
        z = A @ expand_kv(V, spec)
        head_out = torch.einsum("bhsd,hdD->bhsD", z, lw.W_O)
        attn_out = head_out.sum(1)
        if lw.b_O is not None:
            attn_out = attn_out + lw.b_O
        mlp_in = resid_pre if spec.parallel else resid_pre + attn_out
        out, act, pre, gate, up = run_mlp(lw.mlp, lw.ln_mlp(mlp_in))
        x = resid_pre + attn_out + out
        layers.append(LayerCapture(
            A=A, Q=Q, K=K, V=V, sigma_attn=lw.ln_attn.scale(resid_pre),
            sigma_mlp=lw.ln_mlp.scale(mlp_in), act=act, pre=pre, gate=gate, up=up,
            head_out=head_out, mlp_out=out,
            resid_pre=resid_pre if keep_resid else None,
            resid_mlp_in=mlp_in if keep_resid else None))
    ln_f = spec.ln_final.cast(dtype)
    W_U = spec.W_U.to(dtype)
    b_U = spec.b_U.to(dtype) if spec.b_U is not None else None
    t = lengths - 1
    final_t = ln_f(x[torch.arange(B, device=dev), t])
    logits_t = final_t @ W_U.T + (b_U if b_U is not None else 0)
    full = None
    if full_logits:
        full = ln_f(x) @ W_U.T + (b_U if b_U is not None else 0)
    return Capture(spec=spec, comps=Components.from_spec(spec), input_ids=input_ids,
                   lengths=lengths, embed=embed, pos=pos, layers=layers, resid_final=x,
                   sigma_final=ln_f.scale(x), logits_t=logits_t, cos=cos, sin=sin, logits=full)
