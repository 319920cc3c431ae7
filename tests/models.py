"""Tiny random models and a word-level tokenizer for the tests (no hub needed)."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          PreTrainedTokenizerFast)

WORDS = (["<bos>", "<pad>"] + [f"w{i}" for i in range(40)]
         + ["Mary", "John", "Anne", "store", "park", "went", "to", "the", "gave", "a", "drink",
            "and", "When", "Then", ",", "."])


def word_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    """Whitespace-split word-level tokenizer; ``" Mary"`` encodes to one token."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<bos>",
                                   pad_token="<pad>", unk_token="<pad>")


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
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_inner=4 * n_embd,
                     vocab_size=len(WORDS), n_positions=64, attn_implementation="eager",
                     bos_token_id=0, eos_token_id=0, **kw)
    torch.manual_seed(seed)
    return randomize(GPT2LMHeadModel(cfg), seed).to(dtype)


def tiny_neox(seed=0, parallel=True, n_layer=2, n_head=2, hidden=16, rotary_pct=0.5,
              dtype=torch.float64):
    cfg = GPTNeoXConfig(num_hidden_layers=n_layer, num_attention_heads=n_head, hidden_size=hidden,
                        intermediate_size=4 * hidden, vocab_size=len(WORDS),
                        max_position_embeddings=64, rotary_pct=rotary_pct,
                        use_parallel_residual=parallel, attn_implementation="eager",
                        bos_token_id=0, eos_token_id=0)
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
    cfg = cfg_cls(vocab_size=len(WORDS), hidden_size=48, intermediate_size=80,
                  num_hidden_layers=n_layer, num_attention_heads=6, num_key_value_heads=2,
                  max_position_embeddings=64, attn_implementation="eager",
                  bos_token_id=0, eos_token_id=0, **extra)
    torch.manual_seed(seed)
    return randomize(model_cls(cfg), seed, std=0.15).to(dtype)
