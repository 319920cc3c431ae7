"""``unpack plan``: peak memory and time per prompt of a trace, predicted from the
model's shapes before anything runs.

Memory is counted tensor by tensor, as the engine allocates them (weights in
their dtype, the writers buffer, the per-layer captures, the largest layer's
transient buffers and a query chunk's scores). Time is the arithmetic of
:mod:`unpack.cost` divided by rates measured on the device in a short
calibration (a GEMM and a memory-bound pass), plus the memory-bound passes
over every chunk of scores. ``unpack bench`` prints the prediction next to the
measurement for every case it runs.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass

import torch

from .cost import (
    CHUNK_ELEMENTS,
    Shape,
    batch_sizes,
    chunk_rows,
    choose_mode,
    kq_costs,
    proj_bytes,
    scored_pairs,
    virtual_bytes,
)
from .errors import InputError

GiB = float(1 << 30)
# Calibrated on a 2-core CPU against `unpack bench`: passes over each element of the
# K and Q chunks (write, centering, |.| and Σ over writers, the flow's contraction)
ELEMENTWISE_PASSES = 9
PATH_NODES_BYTES = 120 << 20  # the path search's node table at its default cap
PATH_MEMORY_SHARE = 8  # the path search may take 1/8 of the memory a trace has (path_bytes)
PYTHON_S = 4e-4  # seconds of interpreter and dispatch per tensor operation group


def shape_from_config(cfg, weight_bytes: int = 4) -> Shape:
    """A :class:`Shape` from a Hugging Face config: the adapter's own spec of the model
    built on the meta device (no memory, no weights), so every supported family
    plans with the shapes the engine will use."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from .adapters import build_spec, supported_model_types

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except ValueError as e:
        raise InputError(
            f"model type {getattr(cfg, 'model_type', None)!r} is not a causal language "
            f"model transformers knows ({e}); supported model types: "
            f"{', '.join(supported_model_types())} (docs/ADAPTERS.md)"
        ) from None
    return replace(Shape.from_spec(build_spec(model)), weight_bytes=weight_bytes)


def resolve_shape(model: str, weight_bytes: int) -> Shape:
    """A bench shape name, or any model that ``--model`` names elsewhere (resolved as
    :func:`unpack.loading.resolve_model` does): a directory's config.json, the
    SmolLM2 alias's known shape, another GGUF file's config (its converted copy's
    when there is one, else read from the file's header; no weights are loaded)."""
    from pathlib import Path

    from transformers import AutoConfig

    from .shapes import SHAPES, config_for
    from .loading import ALIAS_CONFIGS, SMOLLM2_ALIAS, _cache_dir, resolve_model

    if model in SHAPES:
        return shape_from_config(config_for(model), weight_bytes)
    if model.strip().lower() in ALIAS_CONFIGS:  # a known alias's shape, nothing read from disk
        return shape_from_config(
            AutoConfig.for_model(**ALIAS_CONFIGS[model.strip().lower()]), weight_bytes
        )
    try:
        kind, where, _ = resolve_model(model)
    except InputError as e:
        raise InputError(f"{e}; or a bench shape ({', '.join(SHAPES)})") from None
    if kind == "dir":
        return shape_from_config(AutoConfig.from_pretrained(where), weight_bytes)
    if kind == "gguf":
        converted = _cache_dir(where, model, None)
        if (converted / "config.json").is_file():
            return shape_from_config(AutoConfig.from_pretrained(str(converted)), weight_bytes)
        p = Path(where)
        return shape_from_config(
            AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name), weight_bytes
        )
    raise InputError(
        f"model {model!r}: give a bench shape ({', '.join(SHAPES)}), "
        f"a model alias ({SMOLLM2_ALIAS}, `unpack models list`), a toy ladder "
        "checkpoint or a local model directory with a config.json"
    )


@dataclass
class Rates:
    gemm_flops: float  # fp32 multiply-adds per second ×2, large GEMM
    stream_bytes: float  # bytes per second of a memory-bound elementwise pass
    device: str
    fold_flops: float = 0.0  # the same for the fold's own kernels at a model's shape (0: unknown)

    @classmethod
    def calibrate(cls, device: torch.device, shape: Shape | None = None) -> "Rates":
        """About half a second: a 1024² GEMM and a 64 MB multiply, each timed at its
        best of a few; with ``shape``, also a small K-side fold chunk of that model
        (its width and heads; the rotary fold's per-pair vectors where it has rotary),
        whose GEMMs are thin and run well below the square GEMM's rate."""
        a = torch.randn(1024, 1024, device=device)
        x = torch.randn(1 << 24, device=device)
        g = _best(lambda: a @ a, 5, device)
        s = _best(lambda: x * 1.0001, 5, device)
        a = x = None  # free both (the lambdas above keep them) before the fold's tensors
        fold = fold_rate(shape, device) if shape is not None else 0.0
        return cls(2 * 1024**3 / g, 2 * (1 << 24) * 4 / s, str(device), fold)


def _best(fn, n: int, device: torch.device) -> float:
    """The shortest of ``n`` timed calls of ``fn`` (after one untimed)."""
    fn()
    out = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return min(out)


def fold_rate(
    shape: Shape, device: torch.device, C: int = 64, S: int = 16, tokens: int = 64
) -> float:
    """FLOP/s of the engine's own fold on a chunk of ``shape``'s width and heads:
    ``C`` writers, ``S`` sources, and (rotary) the query rows per chunk the engine
    uses at ``tokens`` tokens."""
    from .kernels import fold, fold_per_source

    H, D, d = shape.n_heads, shape.d_model, shape.d_head
    ch = torch.randn(1, C, S, D, device=device)
    inv = torch.ones(1, 1, 1, S, 1, device=device)
    if not shape.rotary:
        u = torch.randn(1, H, S, D, device=device)
        t = _best(lambda: fold(u, ch, inv, 0, True), 3, device)
        return 2 * C * H * D * scored_pairs(S, S, "fold") / t
    rows = min(S, chunk_rows(shape, shape.n_layers - 1, 1, tokens, "fold", CHUNK_ELEMENTS))
    Qr = torch.randn(1, H, rows, S, d, device=device)
    W = torch.randn(H, D, d, device=device)

    def step():
        u = torch.einsum("bhqse,hDe->bhqsD", Qr, W)
        return fold_per_source(u, ch, inv)

    t = _best(step, 3, device)
    return 2 * H * rows * S * D * (C + d) / t


@dataclass
class Plan:
    model: str
    tokens: int
    batch: int
    device: str
    weights_dtype: str
    modes: dict  # K/Q contraction per reader layer (counted)
    peak_bytes: int
    parts: dict  # bytes by part
    seconds_per_prompt: float
    seconds_parts: dict
    fits: bool
    available_bytes: int
    advice: str

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"plan: {self.model}, {self.tokens} tokens, batch {self.batch}, weights "
            f"{self.weights_dtype} on {self.device}",
            "  K/Q contraction by reader layer: "
            + ", ".join(f"{m} x{n}" for m, n in self.modes.items()),
            f"  peak memory  {self.peak_bytes / GiB:7.2f} GiB   ("
            + ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
            + ")",
            f"  time/prompt  {self.seconds_per_prompt:7.2f} s     ("
            + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds_parts.items())
            + ")",
            f"  available    {self.available_bytes / GiB:7.2f} GiB   -> "
            + ("fits" if self.fits else "DOES NOT FIT"),
        ]
        if self.advice:
            lines.append(f"  {self.advice}")
        return "\n".join(lines)


def proc_bytes(path: str, key: str) -> int | None:
    """The field ``key`` (a size in kB) of a ``/proc`` file such as ``/proc/meminfo``,
    in bytes; None where the file or the field is missing."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes(device: torch.device) -> int:
    """Memory a trace may use on ``device``: free GPU memory, or the machine's
    available memory (cgroup limit where there is one) plus what this process holds."""
    limit = memory_limit()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(free, limit))
    avail = proc_bytes("/proc/meminfo", "MemAvailable:")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                v = f.read().strip()
            if v.isdigit() and int(v) < (1 << 60):
                avail = min(avail or int(v), int(v))
        except OSError:
            pass
    return int(min((avail or 0) + current_rss_bytes(), limit))


def path_bytes(device: torch.device) -> int:
    """The path search's memory budget on ``device``: an eighth of what a trace
    may use there (:func:`available_bytes`), and at least the plan's own figure
    for it. ``unpack.paths.PathSearch`` holds no more nodes than this allows,
    whatever ``max_path_nodes`` says, and reports ``truncated`` when it stops."""
    return int(max(available_bytes(device) // PATH_MEMORY_SHARE, PATH_NODES_BYTES))


def memory_limit() -> float:
    """``$UNPACK_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix: ``12G``): the most a
    trace may plan to use, for a machine shared with other work; unset: no limit."""
    import os

    v = (
        os.environ.get("UNPACK_MEMORY_LIMIT", "")
        .strip()
        .upper()
        .removesuffix("B")
        .removesuffix("I")
    )
    if not v:
        return float("inf")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(v[-1], 1)
    try:
        return float(v[:-1] if mult > 1 else v) * mult
    except ValueError:
        raise InputError(
            f"UNPACK_MEMORY_LIMIT={os.environ['UNPACK_MEMORY_LIMIT']!r} is not a "
            "size; give bytes or a size like 12G or 512M"
        ) from None


def base_bytes(model, device: torch.device) -> int:
    """What this process holds besides the model's weights (on a CPU; 0 on a GPU):
    the planner's ``base`` part."""
    if device.type != "cpu":
        return 0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(current_rss_bytes() - weights, 0)


def fixes(
    weight_bytes: int, device: torch.device, batch: int = 1, tokens: str = "fewer tokens"
) -> str:
    """What to change when a case does not fit, as one phrase."""
    tips = []
    if weight_bytes == 4:
        tips.append("--dtype bfloat16 (halves the weights)")
    if device.type == "cpu":
        tips.append("a GPU (--device cuda)")
    tips.append(tokens)
    if batch > 1:
        tips.append("a smaller --batch-size")
    return ", or ".join(tips)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def predict(
    shape: Shape,
    S: int,
    B: int = 1,
    R: int = 1,
    rates: Rates | None = None,
    base_bytes: int = 0,
    chunk_elements: int = CHUNK_ELEMENTS,
    max_proj_bytes: int = 1 << 30,
    vw_budget: int = 1 << 30,
    max_path_nodes: int = 200_000,
    elem: int = 4,
    layers: int | None = None,
) -> dict:
    """Peak bytes (by part) and seconds per prompt (by phase) of tracing ``B``
    prompts of ``S`` tokens, cut into batches as the tracer cuts them
    (:func:`unpack.cost.batch_sizes`): the peak is the largest batch's, the time
    is summed over the batches. ``layers``: how many layers from the bottom the
    sweep visits (a root at layer ``L``: ``L + 1``; default all)."""
    sizes = batch_sizes(shape, [S] * B, B)
    cached = virtual_bytes(shape, elem) <= vw_budget
    kw = dict(
        cached=cached, chunk_elements=chunk_elements, max_proj_bytes=max_proj_bytes, elem=elem
    )
    parts, modes = _memory(shape, S, sizes[0], R, base_bytes, **kw)
    secs: dict = {}
    if rates is not None:
        for b in sizes:
            for k, v in _seconds(shape, S, b, rates, layers=layers, **kw).items():
                secs[k] = secs.get(k, 0.0) + v * b / B
    return {
        "peak": sum(parts.values()),
        "parts": parts,
        "seconds": secs,
        "modes": modes,
        "batches": sizes,
    }


def _memory(
    shape: Shape,
    S: int,
    B: int,
    R: int,
    base_bytes: int,
    cached: bool,
    chunk_elements: int,
    max_proj_bytes: int,
    elem: int,
) -> tuple[dict, dict]:
    """Bytes by part of one batch, tensor by tensor as the engine allocates them,
    and the K/Q contraction of each reader layer."""
    L, H, Hkv, D, d, F = (
        shape.n_layers,
        shape.n_heads,
        shape.n_kv_heads,
        shape.d_model,
        shape.d_head,
        shape.d_mlp,
    )
    N, V, P = shape.n_components, shape.vocab, shape.proj_width
    writers = B * N * S * D * elem
    Z = B * L * H * S * d * elem
    per_layer = B * S * ((H + 2 * Hkv) * d + 4 * D + 2) * elem
    keep_cells = B * S * F * L * 3 * elem <= (256 << 20)
    cells = B * S * F * L * 3 * elem if keep_cells else 0
    layer_w = (shape.n_params - V * D * (1 if shape.has_pos else 2)) // L
    cast = layer_w * elem if shape.weight_bytes != elem else 0
    transient = 0
    modes: dict = {}
    for Lr in range(L):
        C = shape.n_writers_attn(Lr)
        mode = choose_mode(shape, Lr, B, S, cached, max_proj_bytes, elem, chunk_elements)
        modes[mode] = modes.get(mode, 0) + 1
        rows = chunk_rows(shape, Lr, B, S, mode, chunk_elements)
        attn = B * H * S * S * elem * (4 + R)  # A, the source splits, x_s
        attn += B * H * S * D * elem + B * C * H * S * elem  # pv, value factors
        if mode == "fold":
            proj = 2 * B * H * S * D * elem
        else:  # the [B, S, C, P] result (each writer's GEMM writes into it in place)
            proj = proj_bytes(shape, Lr, B, S, elem)
            if mode == "virtual" and not cached:
                proj += Lr * H * d * P * elem
        chunk = 3 * 2 * rows * B * H * S * C * elem
        if mode == "fold" and shape.rotary:
            chunk += 2 * rows * B * H * S * D * elem  # the folded vectors and their copy
        mlp = B * S * F * elem * (5 if keep_cells else 8)
        transient = max(transient, attn + proj + chunk, mlp + B * C * S * elem * 4)
    vw = virtual_bytes(shape, elem) if cached and "virtual" in modes else 0
    flow = B * R * N * S * elem * 3 + B * R * N * N * 4 * elem + PATH_NODES_BYTES
    parts = {
        "base": base_bytes,
        "weights": shape.n_params * shape.weight_bytes,
        "capture": writers + Z + L * per_layer + cells,
        "layer": transient + cast,
        "virtual_weights": vw,
        "flow": flow,
    }
    return parts, modes


def _seconds(
    shape: Shape,
    S: int,
    B: int,
    rates: Rates,
    cached: bool,
    chunk_elements: int,
    max_proj_bytes: int,
    elem: int,
    layers: int | None = None,
) -> dict:
    """Seconds per prompt of one batch of ``B``: arithmetic over the calibrated
    rates (the fold at its own measured rate), memory-bound passes over the
    streamed rate, and a fixed cost per group of tensor operations; the sweep's
    part over the ``layers`` lowest layers (default all) that a root leaves it."""
    D, F, V, H = shape.d_model, shape.d_mlp, shape.vocab, shape.n_heads
    L = shape.n_layers if layers is None else layers
    g, bw = rates.gemm_flops, rates.stream_bytes
    fold_g = rates.fold_flops or g
    fwd = (
        2 * B * S * (shape.n_params - V * D)
        + 2 * B * shape.n_layers * H * S * S * shape.d_head * 2
        + 2 * B * V * D
    )
    casts = (
        (shape.n_params * (shape.weight_bytes + elem) * 2 / bw) if shape.weight_bytes != elem else 0
    )
    secs = {"forward": fwd / g + shape.n_params * shape.weight_bytes / bw + casts / 2}
    dec = 0.0
    n_chunks = 0
    for Lr in range(L):
        C = shape.n_writers_attn(Lr)
        mode = choose_mode(shape, Lr, B, S, cached, max_proj_bytes, elem, chunk_elements)
        rows = chunk_rows(shape, Lr, B, S, mode, chunk_elements)
        n_chunks += -(-S // rows)
        macs = kq_costs(shape, Lr, B, S, cached, chunk_elements)[mode]
        elems = 2 * B * C * H * scored_pairs(S, rows, mode)
        mlp_macs = 8 * B * S * D * F + B * C * S * D * 3
        attn_macs = B * H * S * S * D * 2 + B * C * H * S * D
        dec += 2 * macs / (fold_g if mode == "fold" else g) + 2 * (mlp_macs + attn_macs) / g
        dec += ELEMENTWISE_PASSES * elems * elem / bw
        if mode != "fold":
            dec += 2 * proj_bytes(shape, Lr, B, S, elem) * 2 / bw  # the transposing copy
    weights_read = L * (4 * D * F + 4 * D * D) * elem  # MLP rules, γ-folded W_Q/W_K/W_V, W_O
    secs["decompose"] = (
        dec + weights_read / bw + PYTHON_S * L * (12 + n_chunks) + casts / 2 * L / shape.n_layers
    )
    secs["paths"] = PYTHON_S * L * 8 + 1e-7 * B * shape.n_components * S
    return {k: v / B for k, v in secs.items()}


def make_plan(
    model: str, tokens: int, device="cpu", dtype=None, batch: int = 1, calibrate: bool = True
) -> Plan:
    from .loading import _dtype, resolve_device

    if tokens < 1:
        raise InputError(f"--tokens {tokens}: give a prompt length of at least 1 token")
    if batch < 1:
        raise InputError(f"--batch-size {batch}: give at least 1")
    dev = resolve_device(device)
    wdt = _dtype(dtype)
    elem = 8 if wdt == torch.float64 else 4
    shape = resolve_shape(model, torch.empty((), dtype=wdt).element_size())
    rates = Rates.calibrate(dev, shape) if calibrate else None
    base = current_rss_bytes() if dev.type == "cpu" else 0
    pr = predict(shape, tokens, batch, rates=rates, base_bytes=base, elem=elem)
    avail = available_bytes(dev)
    fits = pr["peak"] <= avail
    advice = "" if fits else "does not fit: try " + fixes(shape.weight_bytes, dev, batch)
    return Plan(
        model,
        tokens,
        batch,
        str(dev),
        str(wdt).replace("torch.", ""),
        pr["modes"],
        int(pr["peak"]),
        {k: int(v) for k, v in pr["parts"].items()},
        float(sum(pr["seconds"].values())) if pr["seconds"] else float("nan"),
        pr["seconds"],
        fits,
        int(avail),
        advice,
    )


def run_plan(args) -> int:
    plan = make_plan(args.model, args.tokens, args.device, args.dtype, args.batch_size)
    if args.json:
        d = plan.to_dict()
        d["total_seconds"] = plan.seconds_per_prompt * args.prompts
        print(json.dumps(d))
    else:
        print(plan.format())
        if args.prompts > 1:
            print(
                f"  {args.prompts} prompts: about {plan.seconds_per_prompt * args.prompts / 60:.1f} min"
            )
    return 0 if plan.fits else 1


def check_fits(tracer, n_tokens: int, n_roots: int = 1, what: str = "the longest prompt") -> None:
    """Refuse early (an InputError with the figures and the fix) when tracing a
    prompt of ``n_tokens`` would not fit in the memory of the tracer's device."""
    from .cost import shape_of

    dev = tracer.device
    pr = predict(
        shape_of(tracer.spec),
        n_tokens,
        1,
        R=n_roots,
        base_bytes=base_bytes(tracer.model, dev),
        chunk_elements=tracer.engine.chunk_elements,
        max_proj_bytes=tracer.engine.max_proj_bytes,
    )
    avail = available_bytes(dev)
    if pr["peak"] > avail:
        raise InputError(
            f"{what} has {n_tokens} tokens: tracing it needs about "
            f"{pr['peak'] / GiB:.1f} GiB (unpack plan), more than the "
            f"{avail / GiB:.1f} GiB available on {dev}; use "
            + fixes(
                tracer.spec.W_E.element_size(),
                dev,
                tokens="fewer tokens (shorten or drop the longest prompts)",
            )
        )
