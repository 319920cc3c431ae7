"""Loading models and tokenizers: local directories, GGUF files, the offline
alias ``smollm2-135m``, the models fetched by ``unpack models`` (docs/MODELS.md),
the shipped toy ladder (``ladder-d64`` ...) and hub names, all resolved by
:func:`resolve_model`.

``NAME@REVISION`` picks a checkpoint: a hub revision (Pythia's ``step1000``) or,
for a local directory of checkpoints (one sub-directory per revision, as the
toy ladder ships), that sub-directory.

Every model comes back in eval mode with eager attention (the method needs the
attention probabilities). GGUF weights are de-quantized once and the result is
cached as safetensors under ``$UNPACK_CACHE/models/<name>`` (default
``~/.cache/unpack/models/<name>``), so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .errors import InputError
from .models import (
    MODELS,
    SMOLLM2_ALIAS,
    SMOLLM2_FILE as SMOLLM2_FILE,  # re-exported: unpack.loading's names before unpack.models
    SMOLLM2_INSTALL as SMOLLM2_INSTALL,
    SMOLLM2_PACKAGE as SMOLLM2_PACKAGE,
    cache_base,
    fetched_gguf,
    smollm2_path,
)

ALIASES = (SMOLLM2_ALIAS,)
# Each alias's Hugging Face config, for planning before the model is loaded (`unpack plan`).
ALIAS_CONFIGS = {
    SMOLLM2_ALIAS: dict(
        model_type="llama",
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        hidden_size=576,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
}
LADDER_DIR = Path(__file__).resolve().parent / "toy" / "ladder"  # the shipped toy ladder
_STEP = re.compile(r"^step[-_]?(\d+)$")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_HUB_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- public API


def load_model(name_or_path, dtype=None, device="cpu", *, cache_dir=None):
    """``(model, tokenizer)`` for a local directory, a ``.gguf`` file, an alias
    (``smollm2-135m``) or a hub name.

    ``dtype``: None (float32), a ``torch.dtype`` or its name ("bfloat16", ...).
    ``cache_dir``: where converted GGUF models are kept (default: :func:`cache_root`).
    """
    dtype = _dtype(dtype)
    device = resolve_device(device)
    kind, where, revision = resolve_model(name_or_path)
    if kind == "gguf":
        model, tok = _load_gguf(where, str(name_or_path), dtype, cache_dir)
    elif kind == "dir":
        model = _from_pretrained_model(where, str(name_or_path), dtype)
        tok = _from_pretrained_tokenizer(where, str(name_or_path))
    else:
        model, tok = _load_hub(where, dtype, revision)
    model.config.unpack_revision = revision  # read back by model_info
    model = model.to(device).eval()
    return model, tok


def with_revision(name, revision=None) -> str:
    """``NAME@REVISION`` (the name the store keeps) for ``--model NAME --revision R``."""
    if not revision:
        return str(name)
    base, rev = split_revision(name)
    if rev is not None and rev != revision:
        raise InputError(
            f"--model {name!r} already names revision {rev!r}; drop --revision "
            f"{revision!r} or the @{rev}"
        )
    return f"{base}@{revision}"


def split_revision(name) -> tuple[str, str | None]:
    """``("NAME", "REVISION")`` of ``NAME@REVISION``; ``(name, None)`` without one, or
    when the whole name is an existing path."""
    s = str(name).strip()
    base, at, rev = s.rpartition("@")
    if (
        not at
        or not base
        or not rev
        or Path(s).expanduser().exists()
        or any(c.isspace() for c in rev)
    ):
        return s, None
    return base, rev


def training_step(cfg, revision=None):
    """The training step of a checkpoint: ``training_step`` in its config (the toy
    trainer writes it), else the number in a revision named ``stepN``; None if unknown."""
    step = getattr(cfg, "training_step", None)
    if step is not None:
        return int(step)
    m = _STEP.match(revision or "")
    return int(m[1]) if m else None


def resolve_device(name) -> "torch.device":
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first GPU if there is one, else
    the CPU) as a device that exists here; a clear error otherwise."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(
            f"device {name!r} is not a device name; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise InputError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise InputError(
            f"device {name!r} is not available: this machine has no CUDA GPU that "
            "torch can use (torch.cuda.is_available() is False); use --device cpu, "
            "or install a CUDA build of torch on a machine with a GPU"
        )
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise InputError(
            f"device {name!r} is not available: this machine has {n} CUDA "
            f"device(s), cuda:0 .. cuda:{n - 1}; choose one with --device"
        )
    return dev


def load_tokenizer(name_or_path, *, cache_dir=None):
    """The tokenizer alone (fast, with a pad token), from the same sources as :func:`load_model`."""
    kind, where, revision = resolve_model(name_or_path)
    if kind == "gguf":
        cached = _cache_dir(where, str(name_or_path), cache_dir)
        if (cached / "tokenizer.json").exists():
            return _from_pretrained_tokenizer(str(cached), str(name_or_path))
        return _gguf_tokenizer(where, str(name_or_path))
    if kind == "hub":
        try:
            return _from_pretrained_tokenizer(
                where, where, local_files_only=True, **_rev_kw(revision)
            )
        except InputError:
            _check_hub(where)
        return _from_pretrained_tokenizer(where, where, **_rev_kw(revision))
    return _from_pretrained_tokenizer(where, str(name_or_path))


def model_info(model, spec=None) -> dict:
    """Facts about a loaded model for the database's ``models`` table: its shapes,
    family and residual layout from the adapter's ``ModelSpec`` (docs/METHOD.md
    §1; built here when ``spec`` is None), its size, revision and training step."""
    from .adapters import build_spec

    spec = spec if spec is not None else build_spec(model)
    cfg = model.config
    params = {id(p): p.numel() for p in model.parameters()}  # tied weights count once
    revision = getattr(cfg, "unpack_revision", None)
    info = {
        "name": getattr(cfg, "_name_or_path", None) or None,
        "model_type": cfg.model_type,
        "family": spec.family,
        "parallel_residual": bool(spec.parallel),
        "n_layers": spec.n_layers,
        "n_heads": spec.n_heads,
        "n_kv_heads": spec.n_kv_heads,
        "d_model": spec.d_model,
        "d_head": spec.d_head,
        "vocab_size": getattr(cfg, "vocab_size", None),
        "n_params": int(sum(params.values())),
        "revision": revision,
        "step": training_step(cfg, revision),
    }
    toy = toy_facts(info["name"])
    if toy:
        info["toy"] = toy
    return info


def toy_facts(directory) -> dict | None:
    """A toy model's evaluation and heads (its ``toy.json``; :mod:`unpack.toy`), or None."""
    import json

    path = Path(str(directory or "")) / "toy.json"
    if not directory or not path.is_file():
        return None
    with open(path) as f:
        meta = json.load(f)
    gt = meta.get("ground_truth") or {}
    return {
        "variant": meta.get("variant"),
        "step": meta.get("step"),
        "eval": meta.get("eval"),
        "prev_heads": gt.get("prev_heads"),
        "induction_heads": gt.get("induction_heads"),
        "circuit": meta.get("circuit"),
    }


def cache_root(cache_dir=None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$UNPACK_CACHE/models``,
    else ``~/.cache/unpack/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_base() / "models"


# ---------------------------------------------------------------- resolving


def resolve_model(name_or_path) -> tuple[str, str, str | None]:
    """``(kind, where, revision)``: ``("gguf", file) | ("dir", directory) | ("hub", repo id)``
    and the revision of ``NAME@REVISION`` (None without one). The project's own names
    come first: ``smollm2-135m``, the fetched models (:mod:`unpack.models`; one not
    fetched yet is an error naming the fetch), the toy ladder; then local paths; only
    what is left is a hub name. Nothing is loaded and the network is not asked."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise InputError(
            f"model {name_or_path!r}: give a local directory, a .gguf file, "
            f"a hub name or a model alias ({SMOLLM2_ALIAS!r}, `unpack models list`)"
        )
    base, revision = split_revision(name_or_path)
    if revision is None:
        kind, where = _resolve_base(base)
        return kind, where, None
    ladder = LADDER_DIR / base
    p = ladder if ladder.is_dir() else Path(base).expanduser()
    if p.is_dir():
        return "dir", str(_checkpoint_dir(p, base, revision)), revision
    kind, where = _resolve_base(base)
    if kind != "hub":
        raise InputError(
            f"model {str(name_or_path)!r}: a revision (@{revision}) applies to a "
            "hub name or a local directory of checkpoints, not to a .gguf file"
        )
    return kind, where, revision


def _checkpoint_dir(p: Path, name: str, revision: str) -> Path:
    """The sub-directory ``revision`` of a local directory of checkpoints."""
    sub = p / revision
    if (sub / "config.json").is_file():
        return sub.resolve()
    have = _revisions(p)
    raise InputError(
        f"model {name!r} has no checkpoint {revision!r}"
        + (
            f"; it has {', '.join(have)}"
            if have
            else "; a local revision is a sub-directory with config.json and the weights"
        )
    )


def _revisions(p: Path) -> list[str]:
    """The checkpoint sub-directories of ``p``, by training step where named ``stepN``."""
    subs = [d.name for d in p.iterdir() if (d / "config.json").is_file()]
    return sorted(subs, key=lambda n: (int(_STEP.match(n)[1]) if _STEP.match(n) else -1, n))


def _resolve_base(name: str) -> tuple[str, str]:
    """``("gguf", file) | ("dir", directory) | ("hub", repo id)`` of a name without revision."""
    if name.lower() in ALIASES:
        return "gguf", str(smollm2_path())
    fetched = fetched_gguf(name)  # a fetched model's alias (unpack models); not fetched: error
    if fetched is not None:
        return "gguf", str(fetched)
    p = Path(name).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise InputError(
                f"model {name!r} is a file but not a .gguf file; give a .gguf "
                "file or the directory that holds config.json and the weights"
            )
        return "gguf", str(p.resolve())
    if not p.is_dir() and (LADDER_DIR / name).is_dir():
        p = LADDER_DIR / name
    if p.is_dir():
        if not (p / "config.json").is_file() and _revisions(p):
            raise InputError(
                f"model {name!r} is a directory of checkpoints; name one as "
                f"{name}@REVISION (or --revision REVISION): {', '.join(_revisions(p))}"
            )
        if not (p / "config.json").is_file():
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return "gguf", str(ggufs[0].resolve())
            raise InputError(
                f"model directory {name!r} has no config.json; give a Hugging Face "
                "model directory (config, weights, tokenizer files) or a .gguf file"
            )
        return "dir", str(p.resolve())
    looks_like_path = (
        name.startswith(("/", ".", "~"))
        or name.lower().endswith(".gguf")
        or not _HUB_ID.match(name)
    )
    if looks_like_path:
        raise InputError(
            f"model {name!r}: no such file or directory; give an existing local "
            f"model directory, a .gguf file, or a model alias ({SMOLLM2_ALIAS!r}, "
            "`unpack models list`)"
        )
    return "hub", name


def _dtype(dtype):
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": "float32",
        "float": "float32",
        "fp16": "float16",
        "half": "float16",
        "bf16": "bfloat16",
    }
    d = getattr(torch, names.get(str(dtype), str(dtype)), None)
    if not isinstance(d, torch.dtype) or not d.is_floating_point:
        raise InputError(
            f"dtype {dtype!r} is not a floating-point torch dtype; use float32, bfloat16 or float16"
        )
    return d


# ---------------------------------------------------------------- HF loading


def _from_pretrained_model(where, label, dtype, **kw):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, attn_implementation="eager", **kw
        )
    except (OSError, ValueError, KeyError) as e:
        raise InputError(
            f"model {label!r} could not be loaded as a causal language model "
            f"({_first_line(e)}); check that the directory holds config.json "
            "and its weights"
        ) from None
    return model.eval()


def _from_pretrained_tokenizer(where, label, **kw):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(where, **kw)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"model {label!r}: no tokenizer could be loaded ({_first_line(e)}); "
            "add the tokenizer files (tokenizer.json) to the model "
            "directory"
        ) from None
    return _fix_tokenizer(tok, label)


def _fix_tokenizer(tok, label):
    if not getattr(tok, "is_fast", False):
        raise InputError(
            f"model {label!r}: the tokenizer is not a fast tokenizer, so it cannot "
            "give character offsets; add a tokenizer.json to the model directory"
        )
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


# ---------------------------------------------------------------- the hub


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_error(name, why):
    return InputError(
        f"model {name!r} could not be downloaded from the Hugging Face hub ({why}); "
        "give a local model directory or a .gguf file, or use the offline alias "
        f"{SMOLLM2_ALIAS!r}"
    )


def _check_hub(name):
    """Fail fast and clearly when the hub cannot serve ``name`` (no retries, short timeout)."""
    if _offline():
        raise _hub_error(
            name,
            "offline mode is set (HF_HUB_OFFLINE) and it is not in the local Hugging Face cache",
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(name, timeout=_HUB_TIMEOUT_S)
    except GatedRepoError:
        raise _hub_error(
            name, "the repository is gated; accept its terms and run `huggingface-cli login`"
        ) from None
    except RepositoryNotFoundError:
        raise _hub_error(name, "no such model repository") from None
    except Exception as e:  # network down, DNS, timeout, proxy
        raise _hub_error(name, f"no connection: {_first_line(e)}") from None


def _rev_kw(revision) -> dict:
    return {"revision": revision} if revision else {}


def _load_hub(name, dtype, revision=None):
    kw = _rev_kw(revision)
    try:  # already in the local Hugging Face cache: no network needed
        model = _from_pretrained_model(name, name, dtype, local_files_only=True, **kw)
        tok = _from_pretrained_tokenizer(name, name, local_files_only=True, **kw)
        return model, tok
    except InputError:
        pass
    _check_hub(name)
    return (
        _from_pretrained_model(name, name, dtype, **kw),
        _from_pretrained_tokenizer(name, name, **kw),
    )


# ---------------------------------------------------------------- GGUF


def _cache_dir(gguf_file, label, cache_dir) -> Path:
    if label.strip().lower() in ALIASES or label.strip().lower() in MODELS:
        key = label.strip().lower()  # `unpack models remove` deletes it by this name
    else:
        st = os.stat(gguf_file)
        h = hashlib.sha1(f"{gguf_file}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
        key = f"{Path(gguf_file).stem}-{h}"
    return cache_root(cache_dir) / key


def _gguf_tokenizer(gguf_file, label):
    p = Path(gguf_file)
    return _from_pretrained_tokenizer(str(p.parent), label, gguf_file=p.name)


def _gguf_model(gguf_file, label):
    """De-quantize a GGUF file into a dense float32 model (needs gguf and accelerate)."""
    for pkg in ("gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            raise InputError(
                f"model {label!r}: loading a .gguf file needs the package {pkg!r}; "
                f"install it with `pip install {pkg}`"
            )
    kw = {}
    try:  # transformers >= 5 can keep GGUF blocks packed; we need plain dense weights
        from transformers import GgufConfig

        kw["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    p = Path(gguf_file)
    model = _from_pretrained_model(str(p.parent), label, torch.float32, gguf_file=p.name, **kw)
    q = getattr(model, "hf_quantizer", None)
    if q is not None:  # the weights are dense now: drop the GGUF marker so it can be saved
        q.remove_quantization_config(model)
    return model


def _load_gguf(gguf_file, label, dtype, cache_dir):
    cached = _cache_dir(gguf_file, label, cache_dir)
    if (cached / "config.json").exists():
        try:
            model = _from_pretrained_model(str(cached), label, dtype)
            tok = _from_pretrained_tokenizer(str(cached), label)
            model.config._name_or_path = label
            return model, tok
        except InputError:  # unreadable cache: rebuild it below
            shutil.rmtree(cached, ignore_errors=True)
    model = _gguf_model(gguf_file, label)
    tok = _gguf_tokenizer(gguf_file, label)
    model.config._name_or_path = label
    _write_cache(model, tok, cached)
    return model.to(dtype), tok


def _write_cache(model, tok, cached: Path):
    """Save into a temp directory beside ``cached``, then rename it into place, so a
    killed process never leaves a half-written cache. Failing to cache is not an error."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        for old in cached.parent.glob(f".{cached.name}.tmp-*"):  # left by killed processes
            if time.time() - old.stat().st_mtime > 24 * 3600:
                shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.tmp-", dir=cached.parent))
    except OSError:
        return
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)
        os.rename(tmp, cached)  # atomic; fails if another process got there first
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
