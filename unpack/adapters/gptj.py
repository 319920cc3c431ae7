"""GPT-J: parallel residual (one LayerNorm feeds the attention and the MLP),
rotary embedding on the first ``rotary_dim`` features of each head with
interleaved pairs (features ``2i, 2i+1``), no attention biases, a plain MLP
with biases, an unembedding bias.

Interleaved pairs: the adapter permutes each head's query and key features to
the rotate-half layout (pair ``i`` to features ``i`` and ``i + rotary_dim/2``).
The same permutation on queries and keys leaves every score unchanged."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from .base import LayerWeights, MLPWeights, ModelSpec, Rotary, layer_norm

MODEL_TYPES = ("gptj",)


def _pairs_to_halves(d: int, r: int) -> torch.Tensor:
    """Feature order that puts interleaved pair ``(2i, 2i+1)`` at ``(i, i + r/2)``."""
    return torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, d)])


def _layer(cfg, blk, perm) -> LayerWeights:
    at, mlp = blk.attn, blk.mlp
    H, D = cfg.n_head, cfg.n_embd
    d = D // H
    heads = lambda w: w.reshape(H, d, D).transpose(1, 2)  # noqa: E731  [H, D, d]
    ln = layer_norm(blk.ln_1)
    return LayerWeights(
        ln_attn=ln,
        ln_mlp=ln,
        W_Q=heads(at.q_proj.weight)[:, :, perm],
        W_K=heads(at.k_proj.weight)[:, :, perm],
        W_V=heads(at.v_proj.weight),
        W_O=at.out_proj.weight.T.reshape(H, d, D),
        b_Q=None,
        b_K=None,
        b_V=None,
        b_O=None,
        mlp=MLPWeights(
            act=ACT2FN[cfg.activation_function],
            W_in=mlp.fc_in.weight,
            b_in=mlp.fc_in.bias,
            W_out=mlp.fc_out.weight,
            b_out=mlp.fc_out.bias,
        ),
        attn_scale=float(d) ** -0.5,
    )


def build_spec(model) -> ModelSpec:
    cfg, tf = model.config, model.transformer
    H, D = cfg.n_head, cfg.n_embd
    d = D // H
    r = cfg.rotary_dim or d
    half = r // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.int64).float() / r))

    def cos_sin(positions: torch.Tensor):
        """GPT-J's sinusoids (float32, as its table), laid out for rotate-half ``[S, r]``."""
        ang = positions.float()[:, None] * inv_freq.to(positions.device)[None, :half]
        return torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    perm = _pairs_to_halves(d, r)
    return ModelSpec(
        family="gptj",
        n_layers=cfg.n_layer,
        n_heads=H,
        n_kv_heads=H,
        d_model=D,
        d_head=d,
        parallel=True,
        W_E=tf.wte.weight,
        W_pos=None,
        layers=[_layer(cfg, b, perm) for b in tf.h],
        ln_final=layer_norm(tf.ln_f),
        W_U=model.lm_head.weight,
        b_U=model.lm_head.bias,
        rotary=Rotary(r, cos_sin),
        max_positions=cfg.n_positions,
    )
