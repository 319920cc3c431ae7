"""OLMo-2: no pre-norms (each sublayer reads the raw residual), post-attention and
post-feedforward RMSNorms on the sublayer outputs, and qk-norm over the whole
query and key projections (all heads' features in one RMSNorm)."""

from __future__ import annotations

from .base import LayerWeights, ModelSpec, QKNorm, no_norm
from .llama import _rms, attention_weights, gated_mlp, rotary_of

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
    d = int(base.layers[0].self_attn.head_dim)
    return ModelSpec(
        family="olmo2",
        n_layers=len(layers),
        n_heads=H,
        n_kv_heads=Hkv,
        d_model=D,
        d_head=d,
        parallel=False,
        W_E=base.embed_tokens.weight,
        W_pos=None,
        layers=layers,
        ln_final=_rms(base.norm),
        W_U=model.lm_head.weight,
        b_U=getattr(model.lm_head, "bias", None),
        rotary=rotary_of(base.rotary_emb, d),
        max_positions=getattr(cfg, "max_position_embeddings", None),
    )
