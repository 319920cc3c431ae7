"""GPT-2: sequential residual, learned absolute positions, Conv1D weights (``x @ W``)."""

from __future__ import annotations

from transformers.activations import ACT2FN

from .base import LayerWeights, MLPWeights, ModelSpec, layer_norm

MODEL_TYPES = ("gpt2",)


def _scale(cfg, i: int) -> float:
    """The attention score scale of block ``i``: ``d^-1/2`` and/or ``1/(i+1)`` as configured."""
    scale = (cfg.n_embd // cfg.n_head) ** -0.5 if cfg.scale_attn_weights else 1.0
    return scale / float(i + 1) if cfg.scale_attn_by_inverse_layer_idx else scale


def _layer(cfg, i: int, blk) -> LayerWeights:
    at = blk.attn
    if getattr(at, "is_cross_attention", False):
        raise ValueError("GPT-2 cross-attention blocks are not supported")
    H, D = cfg.n_head, cfg.n_embd
    d = D // H
    Wq, Wk, Wv = at.c_attn.weight.split(D, dim=1)  # [D, 3D]
    bq, bk, bv = at.c_attn.bias.split(D)
    heads = lambda w: w.reshape(D, H, d).permute(1, 0, 2)  # noqa: E731  [H, D, d]
    return LayerWeights(
        ln_attn=layer_norm(blk.ln_1),
        ln_mlp=layer_norm(blk.ln_2),
        W_Q=heads(Wq),
        W_K=heads(Wk),
        W_V=heads(Wv),
        W_O=at.c_proj.weight.reshape(H, d, D),
        b_Q=bq.reshape(H, d),
        b_K=bk.reshape(H, d),
        b_V=bv.reshape(H, d),
        b_O=at.c_proj.bias,
        mlp=MLPWeights(
            act=ACT2FN[cfg.activation_function],
            W_in=blk.mlp.c_fc.weight.T,
            b_in=blk.mlp.c_fc.bias,
            W_out=blk.mlp.c_proj.weight.T,
            b_out=blk.mlp.c_proj.bias,
        ),
        attn_scale=_scale(cfg, i),
    )


def build_spec(model) -> ModelSpec:
    cfg, tf = model.config, model.transformer
    return ModelSpec(
        family="gpt2",
        n_layers=cfg.n_layer,
        n_heads=cfg.n_head,
        n_kv_heads=cfg.n_head,
        d_model=cfg.n_embd,
        d_head=cfg.n_embd // cfg.n_head,
        parallel=False,
        W_E=tf.wte.weight,
        W_pos=tf.wpe.weight,
        layers=[_layer(cfg, i, blk) for i, blk in enumerate(tf.h)],
        ln_final=layer_norm(tf.ln_f),
        W_U=model.get_output_embeddings().weight,
        b_U=getattr(model.get_output_embeddings(), "bias", None),
        rotary=None,
        max_positions=cfg.n_positions,
    )
