"""OLMo-2: no pre-norms (each sublayer reads the raw residual), post-attention and
post-feedforward RMSNorms on the sublayer outputs, and qk-norm over the whole
query and key projections (all heads' features in one RMSNorm)."""

from __future__ import annotations

from .base import LayerWeights, ModelSpec, QKNorm, no_norm
from .llama import _rms, attention_weights, decoder_spec, gated_mlp

MODEL_TYPES = ("olmo2",)


def _qk(m, G: int) -> QKNorm:
    """The whole projection's RMSNorm, its ``γ`` cut per head ``[G, d]``."""
    return QKNorm(m.weight.view(G, -1), float(m.variance_epsilon), whole=True)


def build_spec(model) -> ModelSpec:
    cfg, base = model.config, model.model
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    raw = no_norm(base.embed_tokens.weight)
    layers = [
        LayerWeights(
            ln_attn=raw,
            ln_mlp=raw,
            mlp=gated_mlp(blk.mlp),
            **attention_weights(blk.self_attn, H, Hkv, D),
            ln_attn_post=_rms(blk.post_attention_layernorm),
            ln_mlp_post=_rms(blk.post_feedforward_layernorm),
            q_norm=_qk(blk.self_attn.q_norm, H),
            k_norm=_qk(blk.self_attn.k_norm, Hkv),
        )
        for blk in base.layers
    ]
    return decoder_spec(model, "olmo2", layers)
