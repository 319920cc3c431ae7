"""GPT-NeoX / Pythia: parallel residual (or sequential with
``use_parallel_residual=False``), fused per-head QKV, partial rotary embedding."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from .base import LayerWeights, MLPWeights, ModelSpec, Rotary, layer_norm

MODEL_TYPES = ("gpt_neox",)


def _layer(cfg, blk) -> LayerWeights:
    H, D = cfg.num_attention_heads, cfg.hidden_size
    d = D // H
    at = blk.attention
    # query_key_value rows are laid out per head as [q (d) | k (d) | v (d)].
    Wqkv = at.query_key_value.weight.reshape(H, 3, d, D).permute(1, 0, 3, 2)  # [3, H, D, d]
    b = at.query_key_value.bias.reshape(H, 3, d)
    return LayerWeights(
        ln_attn=layer_norm(blk.input_layernorm),
        ln_mlp=layer_norm(blk.post_attention_layernorm),
        W_Q=Wqkv[0],
        W_K=Wqkv[1],
        W_V=Wqkv[2],
        W_O=at.dense.weight.T.reshape(H, d, D),
        b_Q=b[:, 0],
        b_K=b[:, 1],
        b_V=b[:, 2],
        b_O=at.dense.bias,
        mlp=MLPWeights(
            act=ACT2FN[cfg.hidden_act],
            W_in=blk.mlp.dense_h_to_4h.weight,
            b_in=blk.mlp.dense_h_to_4h.bias,
            W_out=blk.mlp.dense_4h_to_h.weight,
            b_out=blk.mlp.dense_4h_to_h.bias,
        ),
        attn_scale=float(at.scaling),
    )


def build_spec(model) -> ModelSpec:
    cfg, base = model.config, model.gpt_neox
    rot = base.rotary_emb

    def cos_sin(positions: torch.Tensor):
        dummy = torch.zeros((), dtype=torch.float32, device=positions.device)
        cos, sin = rot(dummy, positions.unsqueeze(0))
        return cos[0], sin[0]

    H, D = cfg.num_attention_heads, cfg.hidden_size
    rot_dim = int(base.layers[0].attention.rotary_ndims)
    return ModelSpec(
        family="gpt_neox",
        n_layers=cfg.num_hidden_layers,
        n_heads=H,
        n_kv_heads=H,
        d_model=D,
        d_head=D // H,
        parallel=bool(cfg.use_parallel_residual),
        W_E=base.embed_in.weight,
        W_pos=None,
        layers=[_layer(cfg, blk) for blk in base.layers],
        ln_final=layer_norm(base.final_layer_norm),
        W_U=model.get_output_embeddings().weight,
        b_U=getattr(model.get_output_embeddings(), "bias", None),
        rotary=Rotary(rot_dim, cos_sin),
        max_positions=cfg.max_position_embeddings,
    )
