"""GPT-2: sequential residual, learned absolute positions, Conv1D weights (``x @ W``)."""
from __future__ import annotations

from transformers.activations import ACT2FN

from .base import LayerWeights, MLPWeights, ModelSpec, Norm

MODEL_TYPES = ("gpt2",)


def _ln(m) -> Norm:
    return Norm("layer", m.weight, m.bias, m.eps)


def build_spec(model) -> ModelSpec:
    cfg = model.config
    tf = model.transformer
    H, D = cfg.n_head, cfg.n_embd
    d = D // H
    act = ACT2FN[cfg.activation_function]
    layers = []
    for i, blk in enumerate(tf.h):
        at = blk.attn
        if getattr(at, "is_cross_attention", False):
            raise ValueError("GPT-2 cross-attention blocks are not supported")
        W = at.c_attn.weight  # [D, 3D]
        b = at.c_attn.bias  # [3D]
        Wq, Wk, Wv = W.split(D, dim=1)
        bq, bk, bv = b.split(D)
        scale = 1.0
        if cfg.scale_attn_weights:
            scale = d ** -0.5
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)
        heads = lambda w: w.reshape(D, H, d).permute(1, 0, 2)  # noqa: E731  [H, D, d]
        layers.append(LayerWeights(
            ln_attn=_ln(blk.ln_1), ln_mlp=_ln(blk.ln_2),
            W_Q=heads(Wq), W_K=heads(Wk), W_V=heads(Wv),
            W_O=at.c_proj.weight.reshape(H, d, D),
            b_Q=bq.reshape(H, d), b_K=bk.reshape(H, d), b_V=bv.reshape(H, d),
            b_O=at.c_proj.bias,
            mlp=MLPWeights(act=act, W_in=blk.mlp.c_fc.weight.T, b_in=blk.mlp.c_fc.bias,
                           W_out=blk.mlp.c_proj.weight.T, b_out=blk.mlp.c_proj.bias),
            attn_scale=scale,
        ))
    return ModelSpec(
        family="gpt2", n_layers=cfg.n_layer, n_heads=H, n_kv_heads=H, d_model=D, d_head=d,
        parallel=False, W_E=tf.wte.weight, W_pos=tf.wpe.weight, layers=layers,
        ln_final=_ln(tf.ln_f), W_U=model.get_output_embeddings().weight,
        b_U=getattr(model.get_output_embeddings(), "bias", None), rotary=None, max_positions=cfg.n_positions,
    )
