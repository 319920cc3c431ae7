"""``unpack bench``: engine timings on random models of real shapes.

Every figure is measured in this run on this machine: per-prompt phase times
(median of repeats), the peak memory of each case (the process's resident-set
high-water mark, reset before the case; on a GPU the peak allocated memory),
the planner's prediction for the same case (``unpack plan``), scaling with
prompt length and batch size, the plain-loop reference (``unpack.reference``)
on one prompt, and with ``--against COMMIT`` the engine of an earlier commit on
the same cases, checked out in a temporary git worktree and run in a
subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .profile import PHASES
from .shapes import SHAPES, config_for


def numbered_tokenizer(vocab_size: int):
    """Word-level tokenizer over ``w0 .. w{V-1}``: prompts of any length, no hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="w0", eos_token="w0", pad_token="w0", unk_token="w0"
    )


def random_model(shape: str, dtype=None, device="cpu"):
    """A randomly initialized model of a real shape, built directly in ``dtype``
    (no float32 copy of a 7B model), and a tokenizer for it."""
    from transformers import AutoModelForCausalLM
    from .loading import _dtype, resolve_device

    dtype = _dtype(dtype)
    torch.manual_seed(0)
    with torch.device(resolve_device(device)):  # initialized where it runs (no host copy)
        model = AutoModelForCausalLM.from_config(config_for(shape), dtype=dtype)
    model = model.eval()
    return model, numbered_tokenizer(SHAPES[shape][1]["vocab_size"])


def prompt(n_tokens: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 2000, (n_tokens,), generator=g).tolist()
    return " ".join(f"w{i}" for i in ids)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_freed_memory() -> None:
    """Hand memory this process freed back to the system (glibc ``malloc_trim``), so
    that the resident set, and its high-water mark from here, count only what is in
    use; a no-op where the C library has no such call."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """The peak memory of what runs inside ``with``: on a CPU the process's RSS
    high-water mark (reset first through /proc/self/clear_refs), on a GPU the peak
    allocated memory plus what was resident before."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            release_freed_memory()  # what earlier cases freed is not this case's peak
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.resettable = True
            except OSError:
                self.resettable = False
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return False
        from .plan import proc_bytes

        hwm = proc_bytes("/proc/self/status", "VmHWM:")
        self.peak = hwm if hwm is not None and self.resettable else int(peak_mib() * 2**20)
        return False


def bench_prompts(n_tokens: int, batch: int, root: str | None = None) -> list[dict]:
    """The ``batch`` prompts of a case: ``n_tokens`` random words each, traced from
    the target's seeds or, with ``root``, rerooted there."""
    return [
        {"text": prompt(n_tokens, seed=i), "target": " w5", "distractor": " w9", "root": root}
        for i in range(batch)
    ]


def bench_cases(lengths: list[int], batches: list[int], repeats: int, big: bool) -> list[tuple]:
    """``(tokens, batch, repeats, name)`` of every case: each length at batch 1
    (16 tokens first), then the batches at 16 tokens; fewer repeats where a case is slow."""
    cases = [(n, 1) for n in ([16] + [n for n in lengths if n != 16])]
    cases += [(16, b) for b in batches if b != 1]
    out = []
    for n, b in cases:
        reps = 1 if big or n >= 256 else max(1, repeats // 2 if n >= 64 or b > 1 else repeats)
        out.append((n, b, reps, f"{n} tokens, batch {b}" + (" (per prompt)" if b > 1 else "")))
    return out


def time_trace(
    tracer, n_tokens: int, batch: int, repeats: int, warm: bool = True, root: str | None = None
) -> dict:
    """Median per-prompt phase times of ``repeats`` batches (after one warm-up),
    and the peak memory of the whole case."""
    prompts = bench_prompts(n_tokens, batch, root)
    with PeakMemory(tracer.device) as mem:
        if warm:
            tracer.trace_batch(prompts, batch_size=batch)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = tracer.trace_batch(prompts, batch_size=batch)
            wall = (time.perf_counter() - t0) / batch
            runs.append(dict(res[0].timing, wall_s=wall))
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["peak_mib"] = mem.peak / 2**20
    return out


def time_reference(tracer, n_tokens: int) -> float:
    """The plain-loop reference on one prompt: capture + §4-7 (paths pruned as the default)."""
    from .capture import capture
    from .config import make_config
    from .reference import Reference

    prep = tracer.prepare(prompt(n_tokens), " w5", " w9")
    t0 = time.perf_counter()
    cap = capture(tracer.spec, torch.tensor([prep.ids]), torch.tensor([len(prep.ids)]))
    ref = Reference(cap, 0, make_config("kqv_aligned"), dtype=torch.float32)
    ref.trace(
        prep.target_id, prep.distractor_id, with_paths=True, path_min_frac=1e-3, max_nodes=2_000_000
    )
    return time.perf_counter() - t0


def fmt_row(name: str, t: dict, pred: dict | None = None) -> str:
    row = f"| {name} | " + " | ".join(f"{t[k]:.3f}" for k in PHASES)
    if pred is not None:
        row += (
            f" | {pred['seconds']:.3f} | {t['peak_mib'] / 1024:.2f} | {pred['peak'] / 2**30:.2f}"
            f" | {t['total_s'] / pred['seconds']:.2f} | {t['peak_mib'] * 2**20 / pred['peak']:.2f}"
        )
    return row + " |"


HEADER = (
    "| prompt | " + " | ".join(PHASES) + " | predicted s | peak GiB | predicted GiB "
    "| time measured/predicted | memory measured/predicted |"
)


def predicted(tracer, n_tokens: int, batch: int, rates, base: int, root: str | None = None) -> dict:
    """The planner's seconds and peak for a case (with ``root``: over the layers
    up to the root's, the ones the sweep visits)."""
    from .components import parse_component
    from .cost import shape_of
    from .plan import predict

    layers = None
    if root is not None:
        layer = parse_component(root.rpartition("@")[0])[1]
        layers = 0 if layer is None else layer + 1
    p = predict(
        shape_of(tracer.spec),
        n_tokens,
        batch,
        rates=rates,
        base_bytes=base,
        chunk_elements=tracer.engine.chunk_elements,
        max_proj_bytes=tracer.engine.max_proj_bytes,
        layers=layers,
    )
    return {"seconds": sum(p["seconds"].values()), "peak": p["peak"]}


def run_bench(args) -> int:
    from .loading import resolve_device
    from .plan import Rates

    torch.set_grad_enabled(False)
    device = resolve_device(getattr(args, "device", "cpu"))
    dtype = getattr(args, "dtype", None)
    out: dict = {"threads": torch.get_num_threads(), "device": str(device), "shapes": {}}
    lengths = [int(x) for x in args.lengths.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    shapes = [s for s in args.shapes.split(",") if s]
    for shape in shapes:
        if shape not in SHAPES:
            print(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
            return 2
    if getattr(args, "corpus", 0):
        out["corpus"] = bench_corpus(args)
        return write_json(args, out)
    rates = Rates.calibrate(device)  # the fold's own rate: per shape, in bench_shape
    out["rates"] = {"gemm_gflops": rates.gemm_flops / 1e9, "stream_gbs": rates.stream_bytes / 1e9}
    print(
        f"unpack bench: torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, "
        f"weights {dtype or 'float32'}, math float32, preset kqv_aligned, top-20 paths, "
        f"{'rerooted at ' + args.root if getattr(args, 'root', None) else 'from the seeds'}; "
        f"calibration {rates.gemm_flops / 1e9:.0f} GFLOP/s GEMM, "
        f"{rates.stream_bytes / 1e9:.1f} GB/s stream"
    )
    for shape in shapes:
        out["shapes"][shape] = bench_shape(args, shape, rates, dtype, device, lengths, batches)
    if getattr(args, "against", None):
        out["against"] = against(args, shapes, lengths, out)
    if args.model:
        out["model"] = bench_real_model(args.model, args.repeats)
    return write_json(args, out)


def write_json(args, out: dict) -> int:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def bench_shape(
    args, shape: str, rates, dtype, device, lengths: list[int], batches: list[int]
) -> dict:
    """One shape's table: every (length, batch) case measured beside the planner's
    prediction, the planner alone for ``--plan-only`` lengths, and the reference."""
    from .cost import shape_of
    from .plan import Rates, base_bytes, fold_rate
    from .tracer import Tracer

    t0 = time.perf_counter()
    model, tok = random_model(shape, dtype=dtype, device=device)
    build_s = time.perf_counter() - t0
    tracer = Tracer(model=model, tokenizer=tok)
    rates = Rates(
        rates.gemm_flops, rates.stream_bytes, rates.device, fold_rate(shape_of(tracer.spec), device)
    )
    base = base_bytes(model, device)
    n_params = sum(p.numel() for p in model.parameters())
    rec: dict = {"params": n_params, "build_s": build_s, "fold_gflops": rates.fold_flops / 1e9}
    big = n_params > 3e9
    print(
        f"\n## {shape} (random weights, {n_params / 1e6:.0f}M parameters, "
        f"{next(model.parameters()).dtype}; built in {build_s:.0f} s; the fold's kernels "
        f"calibrated at {rates.fold_flops / 1e9:.0f} GFLOP/s)\n"
    )
    print(HEADER)
    print("|---" * 11 + "|")
    for n, bsz, reps, name in bench_cases(lengths, batches, args.repeats, big):
        t = time_trace(tracer, n, bsz, reps, warm=not big, root=getattr(args, "root", None))
        pr = predicted(tracer, n, bsz, rates, base, getattr(args, "root", None))
        rec[name] = dict(t, predicted_s=pr["seconds"], predicted_peak_mib=pr["peak"] / 2**20)
        print(fmt_row(name, t, pr), flush=True)
    rec["peak_rss_mib"] = peak_mib()
    print(
        f"\npeak memory (process RSS so far): {rec['peak_rss_mib']:.0f} MiB; weights "
        f"{sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20:.0f} MiB"
    )
    for n in [int(x) for x in getattr(args, "plan_only", "").split(",") if x]:
        pr = predicted(tracer, n, 1, rates, base)
        rec[f"plan {n} tokens"] = {
            "predicted_s": pr["seconds"],
            "predicted_peak_mib": pr["peak"] / 2**20,
        }
        print(
            f"planner only, {n} tokens: {pr['seconds']:.1f} s per prompt, peak "
            f"{pr['peak'] / 2**30:.2f} GiB"
        )
    if args.reference_tokens and shape in args.reference_on.split(","):
        rec.update(vs_reference(tracer, args.reference_tokens, rec))
    return rec


def vs_reference(tracer, n_tokens: int, rec: dict) -> dict:
    """The plain-loop reference against the engine on one ``n_tokens`` prompt
    (the engine's time from ``rec`` where that case was measured already)."""
    ref_s = time_reference(tracer, n_tokens)
    ours = (
        rec["16 tokens, batch 1"]["total_s"]
        if n_tokens == 16
        else time_trace(tracer, n_tokens, 1, 1)["total_s"]
    )
    print(
        f"plain-loop reference, {n_tokens} tokens: {ref_s:.2f} s per prompt; "
        f"vectorized {ours:.3f} s: {ref_s / ours:.1f}x faster"
    )
    return {"reference_s": ref_s, "speedup_vs_reference": ref_s / ours}


# Run in the other commit's worktree: only what every engine since 342669b has
# (bench.numbered_tokenizer, bench.prompt, Tracer.trace_batch with roots, timing["total_s"]).
AGAINST_DRIVER = """
import json, statistics, sys
import torch
from unpack import bench
from unpack.tracer import Tracer
job = json.loads(sys.argv[1])
torch.set_grad_enabled(False)
torch.set_num_threads(job["threads"])  # as many as this run's engine (bench --threads)
out = {"_threads": torch.get_num_threads()}
def build(shape):  # from the config (a shape this commit's catalogue may lack), seed 0
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = dict(job["configs"][shape])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    return model.eval(), bench.numbered_tokenizer(cfg["vocab_size"])
for shape in job["shapes"]:
    model, tok = build(shape)
    tracer = Tracer(model=model, tokenizer=tok)
    out[shape] = {}
    for n, b, reps, name in job["cases"]:
        prompts = [{"text": bench.prompt(n, seed=i), "target": " w5", "distractor": " w9",
                    "root": job["root"]} for i in range(b)]
        tracer.trace_batch(prompts, batch_size=b)
        res = [tracer.trace_batch(prompts, batch_size=b)[0] for _ in range(reps)]
        out[shape][name] = {"total_s": statistics.median(r.timing["total_s"] for r in res),
                            "root": res[0].root}
print(json.dumps(out))
"""


@contextlib.contextmanager
def old_worktree(root: Path, commit: str):
    """A temporary detached git worktree of ``commit`` (removed on exit)."""
    from .errors import InputError

    if subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--git-dir"], capture_output=True
    ).returncode:
        raise InputError(f"--against needs a git checkout of unpack; {root} is not one")
    with tempfile.TemporaryDirectory(prefix="unpack-against-") as tmp:
        wt = Path(tmp) / "tree"
        r = subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(wt), commit],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            raise InputError(f"--against {commit}: git worktree failed: {r.stderr.strip()}")
        try:
            yield wt
        finally:
            subprocess.run(
                ["git", "-C", str(root), "worktree", "remove", "--force", str(wt)],
                capture_output=True,
            )


def against(args, shapes, lengths, out) -> dict:
    """The same cases (each length at batch 1, the batches at 16 tokens, the same
    root) on the engine of ``args.against``, from a temporary worktree, in a
    subprocess; prints old/new per case."""
    from .errors import InputError

    root = Path(__file__).resolve().parent.parent
    old_shapes = [s for s in shapes if s != "pythia-6.9b"]  # not twice in memory
    # 342669b needs C·H·S² buffers: 13 GiB at 512 tokens on GPT-2 small, 50 at 1024
    lengths = [n for n in lengths if n <= args.against_max_tokens]
    batches = [int(x) for x in args.batches.split(",") if x]
    job = {
        "shapes": old_shapes,
        "root": getattr(args, "root", None),
        "configs": {s: config_for(s).to_dict() for s in old_shapes},
        "cases": bench_cases(lengths, batches, args.repeats, False),
        "threads": torch.get_num_threads(),
    }
    with old_worktree(root, args.against) as wt:
        env = dict(os.environ, PYTHONPATH=str(wt))
        print(
            f"\n## against {args.against} (engine of that commit, same cases, this run)\n",
            flush=True,
        )
        p = subprocess.run(
            [sys.executable, "-c", AGAINST_DRIVER, json.dumps(job)],
            cwd=str(wt),
            env=env,
            capture_output=True,
            text=True,
        )
        if p.returncode:
            raise InputError(
                f"--against {args.against}: its engine failed: {p.stderr.strip()[-400:]}"
            )
        old = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"| shape | prompt | {args.against[:10]} total_s | now total_s | speed-up |")
    print("|---|---|---|---|---|")
    res: dict = {}
    for shape in old_shapes:
        for key, o in old[shape].items():
            new = out["shapes"].get(shape, {}).get(key)
            if not new:
                continue
            if o["root"] != job["root"]:
                raise InputError(
                    f"--against {args.against}: its engine traced {key} from "
                    f"{o['root'] or 'the seeds'}, not {job['root'] or 'the seeds'}"
                )
            ratio = o["total_s"] / new["total_s"]
            res[f"{shape}: {key}"] = {
                "old_s": o["total_s"],
                "new_s": new["total_s"],
                "speedup": ratio,
                "root": o["root"],
                "threads": old["_threads"],
            }
            print(f"| {shape} | {key} | {o['total_s']:.3f} | {new['total_s']:.3f} | {ratio:.1f}x |")
    return res


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
    print(
        f"\n## {name}\n\nload: cold {rec['load_cold_s']:.1f} s, cached {rec['load_cached_s']:.1f} s\n"
    )
    print("| prompt | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 1) + "|")
    row = (
        f"| {rec['tokens']} tokens, batch 1 | "
        + " | ".join(f"{rec['trace'][k]:.3f}" for k in PHASES)
        + " |"
    )
    print(row)
    return rec


# ------------------------------------------------------------------ a corpus end to end


def ioi_tokenizer(vocab_size: int):
    """Word-level tokenizer whose words are the IOI task's (names, places, objects,
    template words, punctuation) and then ``w0, w1, ...`` up to ``vocab_size``: the
    demo's corpus tokenizes to real lengths on a random model of any shape."""
    import re

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import importlib

    ioi_mod = importlib.import_module("unpack.tasks.ioi")  # the module, not the function
    text = " ".join(ioi_mod.TEMPLATES + ioi_mod.NAMES + ioi_mod.PLACES + ioi_mod.OBJECTS)
    vocab = {"<|endoftext|>": 0, "[UNK]": 1}
    for w in sorted(set(re.findall(r"\w+|[^\w\s]+", re.sub(r"\{\w+\}", " ", text)))):
        vocab.setdefault(w, len(vocab))
    for i in range(vocab_size):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(f"w{i}", len(vocab))
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


def corpus_job(shape: str, n: int, n_layers: int) -> dict:
    """The demo's corpus for a shape: ``n`` IOI prompts with their ABC controls
    (``4 n`` records) rerooted at three heads of the last layer at END (the demo
    picks three heads; fixed here, so that every engine traces the same)."""
    from .tasks import ioi

    tok = ioi_tokenizer(SHAPES[shape][1]["vocab_size"])
    records = ioi(tok, n, seed=0, controls=True)
    roots = [",".join(f"attn_{n_layers - 1}_head_{h}" for h in range(3)) + "@END"]
    return {
        "records": [r.to_json() for r in records],
        "roots": roots,
        "config": config_for(shape).to_dict(),
    }, tok


# Runs in this commit's process and in --against's worktree: only APIs every engine
# since 342669b has (Tracer, ingest.run.ingest, PromptRecord.from_json).
CORPUS_DRIVER = """
import json, sys, tempfile, time
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from unpack.tracer import Tracer
from unpack.tasks.records import PromptRecord
from ingest.run import ingest
job = json.loads(open(sys.argv[1]).read())
torch.set_grad_enabled(False)
torch.set_num_threads(job["threads"])  # both engines with bench --threads (default: torch's)
cfg = dict(job["config"])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()
tracer = Tracer(model=model, tokenizer=AutoTokenizer.from_pretrained(job["tokenizer"]))
records = [PromptRecord.from_json(r) for r in job["records"]]
r0 = records[0]
tracer.trace(r0.text, r0.target, r0.distractor)  # one-off costs (virtual weights) before timing
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    s = ingest(records, tracer=tracer, model_name="bench", db=tmp + "/c.duckdb", roots=job["roots"],
               batch_size=job["batch_size"], progress=True)  # as the CLI: its bar cuts pieces
    dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "n_ok": s.n_ok, "n_failed": s.n_failed,
                  "threads": torch.get_num_threads()}))
"""


def run_corpus_driver(job: dict, cwd: Path, what: str) -> dict:
    """CORPUS_DRIVER in a subprocess with ``cwd`` first on the path."""
    from .errors import InputError

    with tempfile.TemporaryDirectory(prefix="unpack-corpus-") as tmp:
        job["tokenizer"] = str(Path(tmp) / "tok")
        job["_tok"].save_pretrained(job["tokenizer"])
        with open(Path(tmp) / "job.json", "w") as f:
            json.dump({k: v for k, v in job.items() if k != "_tok"}, f)
        env = dict(os.environ, PYTHONPATH=str(cwd))
        p = subprocess.run(
            [sys.executable, "-c", CORPUS_DRIVER, str(Path(tmp) / "job.json")],
            cwd=str(cwd),
            env=env,
            capture_output=True,
            text=True,
        )
    if p.returncode:
        raise InputError(f"bench --corpus: the engine of {what} failed: {p.stderr.strip()[-600:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_corpus(args) -> dict:
    """``bench --corpus N``: the demo's corpus (N IOI prompts, ABC controls, three
    reroots) ingested end to end into a fresh DuckDB file on a random model of each
    shape, in prompts per second; with ``--against`` the same on that commit."""
    root = Path(__file__).resolve().parent.parent
    out = {}
    for shape in [s for s in args.shapes.split(",") if s]:
        if shape not in SHAPES:
            from .errors import InputError

            raise InputError(f"--shapes: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        job, tok = corpus_job(shape, args.corpus, config_for(shape).num_hidden_layers)
        job.update(_tok=tok, batch_size=args.corpus_batch, threads=torch.get_num_threads())
        n = len(job["records"])
        print(
            f"\n## corpus on {shape} (random weights): {n} IOI records ({args.corpus} prompts x 4 "
            f"conditions), each traced from the target and rerooted at {job['roots'][0]}; "
            f"ingest batch {args.corpus_batch}\n",
            flush=True,
        )
        rec = {"records": n, "now": run_corpus_driver(job, root, "this checkout")}
        rec["now"]["prompts_per_s"] = n / rec["now"]["seconds"]
        if getattr(args, "against", None):
            with old_worktree(root, args.against) as wt:
                rec["old"] = run_corpus_driver(job, wt, args.against)
            rec["old"]["prompts_per_s"] = n / rec["old"]["seconds"]
            rec["speedup"] = rec["now"]["prompts_per_s"] / rec["old"]["prompts_per_s"]
        print("| engine | prompts | seconds | prompts/s |\n|---|---|---|---|")
        for who in ("old", "now"):
            if who in rec:
                name = args.against[:10] if who == "old" else "this checkout"
                print(
                    f"| {name} | {rec[who]['n_ok']} | {rec[who]['seconds']:.1f} | "
                    f"{rec[who]['prompts_per_s']:.3f} |"
                )
        if "speedup" in rec:
            print(f"\nprompts/s: {rec['speedup']:.2f}x of {args.against}")
        out[shape] = rec
    return out
