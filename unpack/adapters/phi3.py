"""Phi-3: the Llama block with fused weights, ``qkv_proj`` (rows: every query head,
then the key heads, then the value heads) and ``gate_up_proj`` (rows: gate, then
up), and a partial rotary embedding (``partial_rotary_factor``)."""

from __future__ import annotations

from .base import LayerWeights, MLPWeights, ModelSpec
from .llama import _rms, decoder_spec

MODEL_TYPES = ("phi3",)


def _layer(cfg, blk, window) -> LayerWeights:
    at, mlp = blk.self_attn, blk.mlp
    H, Hkv, D, d = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.hidden_size,
        int(at.head_dim),
    )
    if at.qkv_proj.bias is not None or at.o_proj.bias is not None:
        raise ValueError("Phi-3 attention biases are not supported")
    # nn.Linear stores [out, in]: views of the fused matrices, one per head
    Wq, Wk, Wv = at.qkv_proj.weight.split([H * d, Hkv * d, Hkv * d])
    heads = lambda w, n: w.view(n, d, D).transpose(1, 2)  # noqa: E731  [n, D, d]
    F = mlp.gate_up_proj.weight.shape[0] // 2
    W_gate, W_up = mlp.gate_up_proj.weight.split(F)
    return LayerWeights(
        ln_attn=_rms(blk.input_layernorm),
        ln_mlp=_rms(blk.post_attention_layernorm),
        W_Q=heads(Wq, H),
        W_K=heads(Wk, Hkv),
        W_V=heads(Wv, Hkv),
        W_O=at.o_proj.weight.T.reshape(H, d, D),
        b_Q=None,
        b_K=None,
        b_V=None,
        b_O=None,
        mlp=MLPWeights(act=mlp.activation_fn, W_out=mlp.down_proj.weight, W_gate=W_gate, W_up=W_up),
        attn_scale=float(at.scaling),
        window=window,
    )


def build_spec(model) -> ModelSpec:
    cfg, base = model.config, model.model
    window = getattr(cfg, "sliding_window", None)
    layers = [_layer(cfg, blk, int(window) if window else None) for blk in base.layers]
    d = int(base.layers[0].self_attn.head_dim)
    rot = int(d * (getattr(cfg, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0))
    return decoder_spec(model, "phi3", layers, rotary_dim=rot)
