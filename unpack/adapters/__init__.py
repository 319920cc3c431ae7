"""Architecture adapters: one module per family, each exposing ``MODEL_TYPES`` and
``build_spec(model) -> ModelSpec``. Adding a family is one new module listed here."""

from __future__ import annotations

from ..errors import InputError
from . import gemma, gpt2, gpt_neox, gptj, llama, olmo2, phi3, qwen3
from .base import LayerWeights, MLPWeights, ModelSpec, Norm, QKNorm, Rotary

_FAMILIES = (gpt2, gpt_neox, llama, gemma, qwen3, olmo2, phi3, gptj)


def supported_model_types() -> list[str]:
    return sorted(t for m in _FAMILIES for t in m.MODEL_TYPES)


def build_spec(model) -> ModelSpec:
    """The :class:`ModelSpec` of a loaded Hugging Face causal LM."""
    mtype = getattr(model.config, "model_type", None)
    for m in _FAMILIES:
        if mtype in m.MODEL_TYPES:
            return m.build_spec(model)
    raise InputError(
        f"unsupported architecture {mtype!r} ({type(model).__name__}); "
        f"supported model types: {', '.join(supported_model_types())}. "
        "See docs/ADAPTERS.md (the support matrix; adding a family is one module in "
        "unpack/adapters/)."
    )


__all__ = [
    "LayerWeights",
    "MLPWeights",
    "ModelSpec",
    "Norm",
    "QKNorm",
    "Rotary",
    "build_spec",
    "supported_model_types",
]
