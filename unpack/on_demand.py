"""Tracing one prompt on demand, for a reader of stored traces (the app's Prompt
page): can this process load a model, the tracer it loads, and one rerooted
trace as plain data. It runs the model in memory and stores nothing; the app
reaches models only through this module (docs/API.md, "Layers")."""

from __future__ import annotations

import json
import os

from .errors import InputError


def model_availability(name: str) -> tuple[bool, str]:
    """Can this process load ``name`` to trace on demand? ``(ok, why)``. Asks the
    resolver that ``unpack trace`` uses (:func:`unpack.loading.resolve_model`), so the
    aliases, fetched models and toy ladder checkpoints are known here exactly as there."""
    from .loading import SMOLLM2_ALIAS, resolve_model, split_revision

    try:
        kind, where, revision = resolve_model(name)
    except InputError as e:
        return False, f"the model {name!r} is not on this machine: {e}"
    if name.strip().lower() == SMOLLM2_ALIAS:
        return True, "offline SmolLM2 (loads in about 25 s the first time)"
    if kind == "gguf":
        return True, f"{name!r} from {where} (the first load converts it: a minute or more)"
    if kind == "dir":
        return True, f"local model at {where}"
    try:  # a hub name: only from the local Hugging Face cache, never over the network
        from huggingface_hub import try_to_load_from_cache

        cached_cfg = try_to_load_from_cache(
            split_revision(name)[0], "config.json", revision=revision
        )
    except Exception:  # not a valid repo id
        cached_cfg = None
    if isinstance(cached_cfg, str):
        return True, f"{name!r} from the local Hugging Face cache"
    return False, (
        f"{name!r} is a hub name that is not in the local Hugging Face cache; trace "
        f"it with `unpack trace --model {name} --root COMPONENT@POS` where the hub "
        "is reachable"
    )


def check_device(device: str) -> None:
    """A device that is not there is an InputError now (``unpack app --device``)."""
    from .loading import resolve_device

    resolve_device(device)


def load_tracer(name: str):
    """The tracer of a trace on demand, on ``unpack app --device/--dtype``
    (``$UNPACK_DEVICE``, ``$UNPACK_DTYPE``; default the CPU and float32) and
    ``--threads`` (``$UNPACK_THREADS``)."""
    from .loading import load_model
    from .tracer import Tracer

    if os.environ.get("UNPACK_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["UNPACK_THREADS"]))
    model, tok = load_model(
        name,
        dtype=os.environ.get("UNPACK_DTYPE") or None,
        device=os.environ.get("UNPACK_DEVICE") or "cpu",
    )
    return Tracer(model=model, tokenizer=tok)


def trace_root(tracer, text: str, target: str, distractor, config_json: str, root: str) -> dict:
    """Trace one prompt from ``root`` with a stored run's config (its JSON); plain
    data: tokens, credit, suppression, top paths, the root's feeders, seconds."""
    cfg = json.loads(config_json)
    preset = cfg.pop("preset", "kqv_aligned")
    cfg["position_edges"] = True
    res = tracer.trace(
        text, target=target, distractor=distractor or None, preset=preset, root=root, **cfg
    )
    comp, _, pos = root.rpartition("@")
    pe = res.position_edges
    feed = pe[(pe["parent"] == comp) & (pe["parent_pos"] == int(pos))] if pe is not None else None
    return {
        "tokens": list(res.tokens),
        "credit": [float(x) for x in res.token_credit],
        "credit_pct": [float(x) for x in res.token_credit_pct],
        "suppression": float(res.suppression),
        "paths": [
            {
                "rank": i + 1,
                "score": float(p.score),
                "score_pct": float(p.score_pct),
                "chain": p.chain,
                "source_pos": p.source_pos,
                "source_token": p.source_token,
                "modes": ",".join(p.modes),
                "depth": p.depth,
            }
            for i, p in enumerate(res.paths)
        ],
        "feeders": None
        if feed is None
        else feed.rename(columns={"child": "writer", "child_pos": "writer_pos"})[
            ["writer", "writer_pos", "mode", "weight"]
        ].reset_index(drop=True),
        "timing_s": float(res.timing.get("total_s", 0.0)),
    }
