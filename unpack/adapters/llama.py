"""Llama family (Llama, Mistral, Qwen2): sequential residual, RMSNorm, grouped
key/value heads, gated MLP, full rotary embedding, no position embedding.

Only families whose Hugging Face code is exactly this are listed: RMSNorm that
multiplies by ``weight``, unscaled embeddings and logits, ``q/k/v/o`` as
separate linear maps (biases optional), ``down(act(gate(x)) * up(x))``. Sliding
window attention is exact as long as the prompt fits in the window, so the
window caps ``max_positions``.
"""

from __future__ import annotations

import torch

from .base import LayerWeights, MLPWeights, ModelSpec, Norm, Rotary

MODEL_TYPES = ("llama", "mistral", "qwen2")

_ATTN = {"LlamaAttention", "MistralAttention", "Qwen2Attention"}
_MLP = {"LlamaMLP", "MistralMLP", "Qwen2MLP"}
_NORM = {
    "LlamaRMSNorm",
    "MistralRMSNorm",
    "Qwen2RMSNorm",
    "Qwen3RMSNorm",
    "Olmo2RMSNorm",
    "Phi3RMSNorm",
}


def _rms(m) -> Norm:
    if type(m).__name__ not in _NORM:
        raise ValueError(
            f"unexpected norm module {type(m).__name__}; the llama adapter "
            "expects an RMSNorm that multiplies by its weight"
        )
    return Norm("rms", m.weight, None, float(m.variance_epsilon))


def _bias(lin, shape):
    return None if lin.bias is None else lin.bias.reshape(shape)


def _sliding_window(cfg) -> int | None:
    """The smallest attention window any layer uses, or None for full causal attention."""
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        return None
    return int(window)


def attention_weights(at, H: int, Hkv: int, D: int) -> dict:
    """The ``LayerWeights`` fields of a block with separate ``q/k/v/o_proj`` linear
    maps (biases optional) and a ``scaling`` attribute."""
    d = int(at.head_dim)
    # nn.Linear stores [out, in]; out rows are laid out per head as [h, d].
    heads = lambda w, n: w.reshape(n, d, D).transpose(1, 2)  # noqa: E731  [n, D, d]
    return dict(
        W_Q=heads(at.q_proj.weight, H),
        W_K=heads(at.k_proj.weight, Hkv),
        W_V=heads(at.v_proj.weight, Hkv),
        W_O=at.o_proj.weight.T.reshape(H, d, D),
        b_Q=_bias(at.q_proj, (H, d)),
        b_K=_bias(at.k_proj, (Hkv, d)),
        b_V=_bias(at.v_proj, (Hkv, d)),
        b_O=at.o_proj.bias,
        attn_scale=float(at.scaling),
    )


def gated_mlp(mlp) -> MLPWeights:
    """``down(act(gate(x)) * up(x))`` with ``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``."""
    if mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None:
        raise ValueError("gate/up projection biases (mlp_bias=True) are not supported")
    return MLPWeights(
        act=mlp.act_fn,
        W_out=mlp.down_proj.weight,
        b_out=mlp.down_proj.bias,
        W_gate=mlp.gate_proj.weight,
        W_up=mlp.up_proj.weight,
    )


def rotary_of(rot, dim: int, *args) -> Rotary:
    """A :class:`Rotary` of ``dim`` features whose tables come from the model's own
    rotary module ``rot`` (called with ``args`` after the positions: a layer type)."""

    def cos_sin(positions: torch.Tensor):
        """The model's own ``cos, sin`` (scaled rope variants included), float32 ``[S, d]``."""
        dummy = torch.zeros((), dtype=torch.float32, device=positions.device)
        cos, sin = rot(dummy, positions.reshape(1, -1), *args)
        return cos[0].float(), sin[0].float()

    return Rotary(dim, cos_sin)


def decoder_spec(
    model,
    family: str,
    layers: list,
    rotary_dim: int | None = None,
    max_positions: int | None = None,
    ln_final: Norm | None = None,
    rotary: Rotary | None = None,
    **extra,
) -> ModelSpec:
    """The spec of a Llama-shaped decoder (``model.model`` with ``embed_tokens``,
    ``layers``, ``norm`` and ``rotary_emb``; ``model.lm_head``) around its family's
    own ``layers``: rotary over ``rotary_dim`` (default the head dim) unless the
    family gives its ``rotary``, the final norm as RMSNorm unless it gives its
    ``ln_final``, the config's ``max_position_embeddings`` unless ``max_positions``
    is given."""
    cfg, base = model.config, model.model
    d = int(base.layers[0].self_attn.head_dim)
    if max_positions is None:
        max_positions = getattr(cfg, "max_position_embeddings", None)
    if rotary is None:
        rotary = rotary_of(base.rotary_emb, d if rotary_dim is None else rotary_dim)
    return ModelSpec(
        family=family,
        n_layers=len(layers),
        n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads,
        d_model=cfg.hidden_size,
        d_head=d,
        parallel=False,
        W_E=base.embed_tokens.weight,
        W_pos=None,
        layers=layers,
        ln_final=_rms(base.norm) if ln_final is None else ln_final,
        W_U=model.lm_head.weight,
        b_U=getattr(model.lm_head, "bias", None),
        rotary=rotary,
        max_positions=max_positions,
        **extra,
    )


def build_spec(model) -> ModelSpec:
    cfg = model.config
    base = model.model
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    layers = []
    for blk in base.layers:
        at, mlp = blk.self_attn, blk.mlp
        if type(at).__name__ not in _ATTN or type(mlp).__name__ not in _MLP:
            raise ValueError(
                f"unexpected block ({type(at).__name__}, {type(mlp).__name__}); "
                "the llama adapter only knows the Llama, Mistral and Qwen2 blocks"
            )
        layers.append(
            LayerWeights(
                ln_attn=_rms(blk.input_layernorm),
                ln_mlp=_rms(blk.post_attention_layernorm),
                mlp=gated_mlp(mlp),
                **attention_weights(at, H, Hkv, D),
            )
        )
    window = _sliding_window(cfg)
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if window is not None:
        max_pos = min(max_pos, window) if max_pos else window
    return decoder_spec(
        model,
        "llama",
        layers,
        max_positions=max_pos,
        extras={"model_type": cfg.model_type, "sliding_window": window},
    )
