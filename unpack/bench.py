"""``unpack bench``: engine timings on random models of real shapes.

Every figure is measured in this run on this machine: per-prompt phase times
(median of repeats), process peak memory, scaling with prompt length and batch
size, and the plain-loop reference (``unpack.reference``) on the same prompt,
as a ratio.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time

import torch

SHAPES = {
    "tiny": ("gpt2", dict(n_layer=2, n_head=4, n_embd=64, vocab_size=2000)),
    "gpt2-small": ("gpt2", dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)),
    "pythia-410m": ("gpt_neox", dict(num_hidden_layers=24, num_attention_heads=16, hidden_size=1024,
                                     intermediate_size=4096, vocab_size=50304, rotary_pct=0.25,
                                     use_parallel_residual=True)),
    "pythia-1.4b": ("gpt_neox", dict(num_hidden_layers=24, num_attention_heads=16, hidden_size=2048,
                                     intermediate_size=8192, vocab_size=50304, rotary_pct=0.25,
                                     use_parallel_residual=True)),
}
PHASES = ("forward_s", "decompose_s", "sweep_s", "paths_s", "total_s")


def numbered_tokenizer(vocab_size: int):
    """Word-level tokenizer over ``w0 .. w{V-1}``: prompts of any length, no hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="w0", eos_token="w0",
                                   pad_token="w0", unk_token="w0")


def random_model(shape: str):
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM
    family, kw = SHAPES[shape]
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_positions=1024, attn_implementation="eager", **kw))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(max_position_embeddings=2048,
                                                 attn_implementation="eager", **kw))
    return model.eval(), numbered_tokenizer(kw["vocab_size"])


def prompt(n_tokens: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 2000, (n_tokens,), generator=g).tolist()
    return " ".join(f"w{i}" for i in ids)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_trace(tracer, n_tokens: int, batch: int, repeats: int) -> dict:
    """Median per-prompt phase times of ``repeats`` batches (after one warm-up)."""
    prompts = [{"text": prompt(n_tokens, seed=i), "target": " w5", "distractor": " w9"}
               for i in range(batch)]
    tracer.trace_batch(prompts, batch_size=batch)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = tracer.trace_batch(prompts, batch_size=batch)
        wall = (time.perf_counter() - t0) / batch
        runs.append(dict(res[0].timing, wall_s=wall))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def time_reference(tracer, n_tokens: int) -> float:
    """The plain-loop reference on one prompt: capture + §4-7 (paths pruned as the default)."""
    from .capture import capture
    from .config import make_config
    from .reference import Reference
    prep = tracer.prepare(prompt(n_tokens), " w5", " w9")
    t0 = time.perf_counter()
    cap = capture(tracer.spec, torch.tensor([prep.ids]), torch.tensor([len(prep.ids)]))
    ref = Reference(cap, 0, make_config("kqv_aligned"), dtype=torch.float32)
    ref.trace(prep.target_id, prep.distractor_id, with_paths=True, path_min_frac=1e-4,
              max_nodes=2_000_000)
    return time.perf_counter() - t0


def fmt_row(name: str, t: dict) -> str:
    return f"| {name} | " + " | ".join(f"{t[k]:.3f}" for k in PHASES) + " |"


def run_bench(args) -> int:
    torch.set_grad_enabled(False)
    out: dict = {"threads": torch.get_num_threads(), "shapes": {}}
    lengths = [int(x) for x in args.lengths.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    print(f"unpack bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"preset kqv_aligned, top-20 paths, fp32")
    from .tracer import Tracer
    for shape in [s for s in args.shapes.split(",") if s]:
        if shape not in SHAPES:
            print(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
            return 2
        model, tok = random_model(shape)
        tracer = Tracer(model=model, tokenizer=tok)
        n_params = sum(p.numel() for p in model.parameters())
        rec: dict = {"params": n_params}
        print(f"\n## {shape} (random weights, {n_params / 1e6:.0f}M parameters)\n")
        print("| prompt | " + " | ".join(PHASES) + " |")
        print("|---" * (len(PHASES) + 1) + "|")
        head = time_trace(tracer, 16, 1, args.repeats)
        rec["16 tokens, batch 1"] = head
        print(fmt_row("16 tokens, batch 1", head))
        for n in lengths:
            if n == 16:
                continue
            t = time_trace(tracer, n, 1, max(1, args.repeats // 2 if n >= 64 else args.repeats))
            rec[f"{n} tokens, batch 1"] = t
            print(fmt_row(f"{n} tokens, batch 1", t))
        for bsz in batches:
            if bsz == 1:
                continue
            t = time_trace(tracer, 16, bsz, max(1, args.repeats // 2))
            rec[f"16 tokens, batch {bsz} (per prompt)"] = t
            print(fmt_row(f"16 tokens, batch {bsz} (per prompt)", t))
        rec["peak_rss_mib"] = peak_mib()
        print(f"\npeak memory (process RSS so far): {rec['peak_rss_mib']:.0f} MiB; "
              f"weights {n_params * 4 / 2**20:.0f} MiB")
        if args.reference_tokens and shape in args.reference_on.split(","):
            ref_s = time_reference(tracer, args.reference_tokens)
            ours = head["total_s"] if args.reference_tokens == 16 else \
                time_trace(tracer, args.reference_tokens, 1, 1)["total_s"]
            rec["reference_s"] = ref_s
            rec["speedup_vs_reference"] = ref_s / ours
            print(f"plain-loop reference, {args.reference_tokens} tokens: {ref_s:.2f} s per prompt; "
                  f"vectorized {ours:.3f} s: {ref_s / ours:.1f}x faster")
        out["shapes"][shape] = rec
        del tracer, model
    if args.model:
        out["model"] = bench_real_model(args.model, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def bench_real_model(name: str, repeats: int) -> dict:
    """Load times (cold: empty conversion cache; cached: second load) and a 16-token trace."""
    from .loading import load_model
    from .tracer import Tracer
    rec = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("UNPACK_CACHE")
        os.environ["UNPACK_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            load_model(name)
            rec["load_cold_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            model, tok = load_model(name)
            rec["load_cached_s"] = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("UNPACK_CACHE")
            else:
                os.environ["UNPACK_CACHE"] = old
    tracer = Tracer(model=model, tokenizer=tok)
    text = "When Mary and John went to the store, John gave a drink to"
    tracer.trace(text, " Mary", " John")
    runs = [tracer.trace(text, " Mary", " John").timing for _ in range(repeats)]
    rec["tokens"] = len(tracer.prepare(text, " Mary").ids)
    rec["trace"] = {k: statistics.median(r[k] for r in runs) for k in PHASES}
    print(f"\n## {name}\n\nload: cold {rec['load_cold_s']:.1f} s, cached {rec['load_cached_s']:.1f} s\n")
    print("| prompt | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 1) + "|")
    print(fmt_row(f"{rec['tokens']} tokens, batch 1", rec["trace"]))
    return rec
