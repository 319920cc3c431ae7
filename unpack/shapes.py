"""The catalogue of model shapes that ``unpack bench``, ``unpack plan --model`` and
``.ci/gpu-bench`` know by name: real models' configurations, built with random
weights (nothing is downloaded)."""

from __future__ import annotations

SHAPES = {
    "tiny": ("gpt2", dict(n_layer=2, n_head=4, n_embd=64, vocab_size=2000)),
    "gpt2-small": ("gpt2", dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)),
    "pythia-410m": (
        "gpt_neox",
        dict(
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_size=1024,
            intermediate_size=4096,
            vocab_size=50304,
            rotary_pct=0.25,
            use_parallel_residual=True,
        ),
    ),
    "pythia-1.4b": (
        "gpt_neox",
        dict(
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_size=2048,
            intermediate_size=8192,
            vocab_size=50304,
            rotary_pct=0.25,
            use_parallel_residual=True,
        ),
    ),
    "pythia-6.9b": (
        "gpt_neox",
        dict(
            num_hidden_layers=32,
            num_attention_heads=32,
            hidden_size=4096,
            intermediate_size=16384,
            vocab_size=50432,
            rotary_pct=0.25,
            use_parallel_residual=True,
        ),
    ),
    # real models' shapes beside GPT-2 and Pythia (random weights: nothing to download)
    "qwen2.5-0.5b": (
        "qwen2",
        dict(
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            hidden_size=896,
            intermediate_size=4864,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1e6,
        ),
    ),
    "qwen2.5-1.5b": (
        "qwen2",
        dict(
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            hidden_size=1536,
            intermediate_size=8960,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1e6,
        ),
    ),
    "smollm2-135m": (
        "llama",
        dict(
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            hidden_size=576,
            intermediate_size=1536,
            vocab_size=49152,
            tie_word_embeddings=True,
            rope_theta=1e5,
        ),
    ),
}
CONFIGS = {
    "gpt2": ("GPT2Config", dict(n_positions=1024)),  # family -> transformers config
    "gpt_neox": ("GPTNeoXConfig", dict(max_position_embeddings=2048)),
    "llama": ("LlamaConfig", dict(max_position_embeddings=2048)),
    "qwen2": ("Qwen2Config", dict(max_position_embeddings=2048)),
    "gemma3_text": ("Gemma3TextConfig", dict(max_position_embeddings=2048)),
}
try:  # Gemma 3 needs a transformers that has it (and the engine's Gemma-3 adapter)
    from transformers import Gemma3TextConfig  # noqa: F401

    SHAPES["gemma-3-270m"] = (
        "gemma3_text",
        dict(
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            hidden_size=640,
            intermediate_size=2048,
            vocab_size=262144,
            tie_word_embeddings=True,
        ),
    )
except ImportError:
    pass


def config_for(shape: str):
    """The transformers config of a catalogued shape (eager attention)."""
    import transformers

    family, kw = SHAPES[shape]
    cls, extra = CONFIGS[family]
    return getattr(transformers, cls)(attn_implementation="eager", **extra, **kw)
