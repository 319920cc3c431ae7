"""Qwen3: the Llama block with qk-norm, an RMSNorm over each head's features of
the queries and of the keys (before the rotary), and optional sliding-window
layers (``layer_types``)."""

from __future__ import annotations

from .base import LayerWeights, ModelSpec, QKNorm
from .llama import _rms, attention_weights, decoder_spec, gated_mlp

MODEL_TYPES = ("qwen3",)


def _qk(m) -> QKNorm:
    return QKNorm(m.weight, float(m.variance_epsilon))


def build_spec(model) -> ModelSpec:
    cfg, base = model.config, model.model
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * len(base.layers)
    window = (
        getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", False) else None
    )
    layers = [
        LayerWeights(
            ln_attn=_rms(blk.input_layernorm),
            ln_mlp=_rms(blk.post_attention_layernorm),
            mlp=gated_mlp(blk.mlp),
            **attention_weights(blk.self_attn, H, Hkv, D),
            q_norm=_qk(blk.self_attn.q_norm),
            k_norm=_qk(blk.self_attn.k_norm),
            window=int(window) if window and t == "sliding_attention" else None,
        )
        for blk, t in zip(base.layers, types)
    ]
    return decoder_spec(model, "qwen3", layers)
