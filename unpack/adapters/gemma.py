"""Gemma family (Gemma, Gemma-2, Gemma-3 text): RMSNorm multiplying by ``1 + γ``,
the embedding scaled by ``√D``, GeGLU (tanh GELU), tied embeddings; Gemma-2 and
Gemma-3 add post-attention and post-feedforward norms (sandwich norms), local
sliding-window and global layers, ``query_pre_attn_scalar``; Gemma-2 soft-caps the
attention and final logits; Gemma-3 adds qk-norm (an RMSNorm inside each head)
and its own RoPE base for the local layers.
"""

from __future__ import annotations

import torch

from .base import LayerWeights, ModelSpec, QKNorm, offset_weight, rms_norm
from .llama import attention_weights, decoder_spec, gated_mlp, rotary_of

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")


def _norm(m):
    return rms_norm(m.weight, m.eps, offset=1.0)


def _layer(cfg, i: int, blk, rotary) -> LayerWeights:
    at = blk.self_attn
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    sandwich = hasattr(blk, "post_feedforward_layernorm")
    types = getattr(cfg, "layer_types", None)
    local = types is not None and types[i] == "sliding_attention"
    qk = hasattr(at, "q_norm")
    return LayerWeights(
        ln_attn=_norm(blk.input_layernorm),
        ln_mlp=_norm(blk.pre_feedforward_layernorm if sandwich else blk.post_attention_layernorm),
        mlp=gated_mlp(blk.mlp),
        **attention_weights(at, H, Hkv, D),
        ln_attn_post=_norm(blk.post_attention_layernorm) if sandwich else None,
        ln_mlp_post=_norm(blk.post_feedforward_layernorm) if sandwich else None,
        q_norm=QKNorm(offset_weight(at.q_norm.weight, 1.0), float(at.q_norm.eps)) if qk else None,
        k_norm=QKNorm(offset_weight(at.k_norm.weight, 1.0), float(at.k_norm.eps)) if qk else None,
        rotary=rotary(types[i] if types is not None else None),
        window=int(cfg.sliding_window) if local else None,
        softcap=getattr(cfg, "attn_logit_softcapping", None),
    )


def build_spec(model) -> ModelSpec:
    cfg, base = model.config, model.model
    if getattr(cfg, "use_bidirectional_attention", False):
        raise ValueError("bidirectional attention (use_bidirectional_attention) is not supported")
    d = int(base.layers[0].self_attn.head_dim)
    per_type = isinstance(
        getattr(base.rotary_emb, "rope_type", None), dict
    )  # one rope per layer type
    made = {}

    def rotary(layer_type):
        key = layer_type if per_type else None
        if key not in made:
            made[key] = rotary_of(base.rotary_emb, d, *([key] if per_type else []))
        return made[key]

    layers = [_layer(cfg, i, blk, rotary) for i, blk in enumerate(base.layers)]
    emb = base.embed_tokens
    # √D rounded to the weights' dtype, as the model multiplies (a plain float on the meta device)
    scale = float(torch.tensor(emb.scalar_embed_scale, dtype=emb.weight.dtype))
    return decoder_spec(
        model,
        "gemma",
        layers,
        ln_final=_norm(base.norm),
        rotary=layers[-1].rotary,
        embed_scale=scale,
        final_softcap=getattr(cfg, "final_logit_softcapping", None),
    )
