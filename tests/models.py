"""Tiny random models and word-level tokenizers for the tests (no hub needed), and
the one builder of a tiny model saved on disk (:func:`build_model_dir`)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    ["<bos>", "<pad>"]
    + [f"w{i}" for i in range(40)]
    + [
        "Mary",
        "John",
        "Anne",
        "store",
        "park",
        "went",
        "to",
        "the",
        "gave",
        "a",
        "drink",
        "and",
        "When",
        "Then",
        ",",
        ".",
    ]
)


def word_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    """Whitespace-split word-level tokenizer; ``" Mary"`` encodes to one token."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<bos>",
        pad_token="<pad>",
        unk_token="<pad>",
    )


def randomize(model: torch.nn.Module, seed: int, std: float = 0.35) -> torch.nn.Module:
    """Give every parameter a non-trivial random value (norm weights around 1,
    biases nonzero) so that every term of the method is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            is_norm = any(k in name for k in ("ln", "norm", "layernorm"))
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(std * noise)
    return model.eval()


def tiny_gpt2(seed=0, n_layer=2, n_head=2, n_embd=16, dtype=torch.float64, **kw):
    cfg = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_inner=4 * n_embd,
        vocab_size=len(WORDS),
        n_positions=64,
        attn_implementation="eager",
        bos_token_id=0,
        eos_token_id=0,
        **kw,
    )
    torch.manual_seed(seed)
    return randomize(GPT2LMHeadModel(cfg), seed).to(dtype)


def tiny_neox(
    seed=0, parallel=True, n_layer=2, n_head=2, hidden=16, rotary_pct=0.5, dtype=torch.float64
):
    cfg = GPTNeoXConfig(
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        vocab_size=len(WORDS),
        max_position_embeddings=64,
        rotary_pct=rotary_pct,
        use_parallel_residual=parallel,
        attn_implementation="eager",
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return randomize(GPTNeoXForCausalLM(cfg), seed).to(dtype)


MODEL_KINDS = {
    "gpt2": lambda **kw: tiny_gpt2(**kw),
    "neox_parallel": lambda **kw: tiny_neox(parallel=True, **kw),
    "neox_sequential": lambda **kw: tiny_neox(parallel=False, **kw),
}

PROMPTS = [
    ("<bos> When Mary and John went to the store , John gave a drink to", " Mary", " John"),
    ("<bos> Then , Anne and Mary went to the park .", " Anne", None),
    ("<bos> w1 w2 w3 w1 w2", " w3", " w4"),
]


def tiny_llama_gqa(seed=0, n_layer=2, dtype=torch.float64, classes=None, **extra):
    """Llama with grouped-query attention (6 heads, 2 kv heads, d = 8), RMSNorm, SwiGLU.
    ``classes``: another ``(config class, model class)`` of the Llama family (Qwen2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg_cls, model_cls = classes or (LlamaConfig, LlamaForCausalLM)
    cfg = cfg_cls(
        vocab_size=len(WORDS),
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=n_layer,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="eager",
        bos_token_id=0,
        eos_token_id=0,
        **extra,
    )
    torch.manual_seed(seed)
    return randomize(model_cls(cfg), seed, std=0.15).to(dtype)


# the ingest tests' GPT-2, build_model_dir(path, **INGEST_GPT2): 40 positions, words t0 … t49 too
INGEST_GPT2 = {"n_positions": 40, "extra_words": tuple(f"t{i}" for i in range(50))}


def ioi_tokenizer(extra_words=()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that knows every word of the IOI templates, names,
    places and objects (so every name is one token with a leading space), and
    ``extra_words``."""
    from tokenizers import decoders

    ioi = importlib.import_module("unpack.tasks.ioi")  # the module, not the function
    text = " ".join(ioi.TEMPLATES + ioi.NAMES + ioi.PLACES + ioi.OBJECTS)
    words = set(re.findall(r"\w+|[^\w\s]+", re.sub(r"\{\w+\}", " ", text)))
    vocab = {"<|endoftext|>": 0, "[UNK]": 1}
    for w in sorted(words | set(extra_words)):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="[UNK]",
        pad_token="<|endoftext|>",
    )


def build_model_dir(
    path,
    family: str = "gpt2",
    n_layer: int = 2,
    seed: int = 0,
    *,
    n_positions: int = 48,
    extra_words=(),
    model=None,
    tokenizer=None,
) -> Path:
    """A tiny model and its tokenizer saved as a Hugging Face directory at ``path``.

    By default a GPT-2 (``family="neox"``: GPT-NeoX, rotary on half of each head) of
    width 32 with 2 heads, Hugging Face's own random initialisation under ``seed``,
    and :func:`ioi_tokenizer` with ``extra_words``; ``model`` and ``tokenizer``
    save those instead."""
    path = Path(path)
    tok = tokenizer if tokenizer is not None else ioi_tokenizer(extra_words)
    if model is None:
        torch.manual_seed(seed)
        if family == "gpt2":
            cfg = GPT2Config(
                n_layer=n_layer,
                n_head=2,
                n_embd=32,
                vocab_size=len(tok),
                n_positions=n_positions,
                bos_token_id=0,
                eos_token_id=0,
            )
            model = GPT2LMHeadModel(cfg)
        else:
            cfg = GPTNeoXConfig(
                num_hidden_layers=n_layer,
                num_attention_heads=2,
                hidden_size=32,
                intermediate_size=128,
                vocab_size=len(tok),
                max_position_embeddings=n_positions,
                rotary_pct=0.5,
                bos_token_id=0,
                eos_token_id=0,
            )
            model = GPTNeoXForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ------------------------------------------------------------------ the adapters' families
# Random tiny models of every family the adapters take beyond GPT-2, NeoX and Llama
# (tests/test_families.py, tests/test_baselines.py).

BASE = dict(
    vocab_size=len(WORDS),
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=1,
    attn_implementation="eager",
)
GEMMA3_TYPES = ["sliding_attention", "full_attention"]
GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
    "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
}

# name: (config class, model class, config beyond BASE). The first entry of each
# family also runs the path test.
FAMILIES = {
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            layer_types=GEMMA3_TYPES,
            sliding_window=4,
            rope_parameters=GEMMA3_ROPE,
            query_pre_attn_scalar=12,
        ),
    ),
    "gemma3_bias_mha_untied": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            layer_types=GEMMA3_TYPES,
            sliding_window=3,
            rope_parameters=GEMMA3_ROPE,
            attention_bias=True,
            num_key_value_heads=4,
            tie_word_embeddings=False,
        ),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            layer_types=GEMMA3_TYPES,
            sliding_window=4,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(num_key_value_heads=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3_bias_window": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=4,
            layer_types=["full_attention", "sliding_attention"],
        ),
    ),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict()),
    "olmo2_bias_mha_tied": (
        "Olmo2Config",
        "Olmo2ForCausalLM",
        dict(attention_bias=True, num_key_value_heads=4, tie_word_embeddings=True),
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 100.0,
                "partial_rotary_factor": 0.5,
            }
        ),
    ),
    "phi3_mha_tied": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(num_key_value_heads=4, tie_word_embeddings=True),
    ),
    "gptj": (
        "GPTJConfig",
        "GPTJForCausalLM",
        dict(n_embd=32, hidden_size=32, n_head=4, rotary_dim=4),
    ),
    "gptj_full_rotary": (
        "GPTJConfig",
        "GPTJForCausalLM",
        dict(n_embd=32, hidden_size=32, n_head=4, rotary_dim=8, tie_word_embeddings=True),
    ),
}


def make_config(name):
    cfg_cls, _, extra = FAMILIES[name]
    return getattr(tf, cfg_cls)(**{**BASE, **extra})


def make_family(name, dtype=torch.float64, seed=0):
    cfg = make_config(name)
    torch.manual_seed(seed)
    return randomize(getattr(tf, FAMILIES[name][1])(cfg), seed, std=0.3).to(dtype)
