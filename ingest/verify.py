"""Verifying a stored circuit by intervention (:mod:`unpack.intervene`).

On the prompts the circuit was found on, with the metric ``m`` (the logit
difference target − distractor; target − mean logit without a distractor):

- **necessity** = ``1 − mean m(circuit knocked out) / mean m(clean)``: the
  fraction of the clean logit difference lost when the circuit's heads are
  ablated;
- **faithfulness** = ``mean m(only the circuit) / mean m(clean)``: the fraction
  kept when every attention head outside the circuit is ablated.

Only attention heads are ablated; embeddings and MLPs always run (a circuit is
a set of heads). Both numbers are measured the same way for ``n`` random
circuits, giving a baseline distribution:

- ``outside`` (default): the circuit's size, drawn from the heads outside the
  circuit (its heads per layer where a layer has room), so that no random
  circuit shares the circuit's knock-out. Where fewer heads lie outside than the
  circuit has, each random circuit is all of them, and ``n`` random subsets of
  the circuit of that size are knocked out too (``equal_size``);
- ``profile``: the same number of heads in each layer, drawn from all heads;
- ``size``: the same number of heads anywhere.

Ablations (what replaces an ablated head's output at each position):

- ``mean``: the head's mean output over the run's **control prompts** (for IOI
  the ABC prompts, ``condition LIKE 'abc%'``: the same templates with three
  different names, so nothing in them points at IO or S), position by position,
  over the controls with the same template and token count as the prompt (or,
  when there are none, the same token count). A task without controls cannot
  be mean-ablated: that is an error naming the fix.
- ``zero``: zero output (the same as zeroing the head's rows of ``W_O``).
- ``resample``: the head's output on another prompt of the same token count,
  drawn at random: a control prompt where there are controls, else another of
  the circuit's prompts.

Default: ``mean`` where the run has controls, ``resample`` otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from unpack.errors import InputError

from .discover import encode_batch, split_head
from .queries import prompt_records
from .reroots import load_tracer
from .store import open_read_only as open_db

ABLATIONS = ("mean", "zero", "resample")
BASELINES = ("outside", "profile", "size")


@dataclass
class Verification:
    circuit_id: int | None
    ablation: str
    reference: str
    n_random: int
    seed: int
    clean: np.ndarray  # [P] metric per prompt
    knocked: np.ndarray
    kept: np.ndarray
    accuracy: dict  # clean / knocked / kept: share of prompts whose top token is the target
    baseline: dict  # necessity, faithfulness, knocked_accuracy, kept_accuracy: lists; circuits
    per_prompt: pd.DataFrame
    verification_id: int | None = None
    warnings: list = field(default_factory=list)
    label: str | None = None  # what was verified, where it is not a stored circuit

    @property
    def necessity(self) -> float:
        return float(1.0 - self.knocked.mean() / self.clean.mean())

    @property
    def faithfulness(self) -> float:
        return float(self.kept.mean() / self.clean.mean())

    def summary(self) -> dict:
        """The columns of ``circuit_verifications`` (ids and times aside)."""
        bn, bf = np.array(self.baseline["necessity"]), np.array(self.baseline["faithfulness"])
        return dict(
            circuit_id=self.circuit_id,
            ablation=self.ablation,
            reference=self.reference,
            n_prompts=len(self.clean),
            n_random=self.n_random,
            seed=self.seed,
            clean_logit_diff=float(self.clean.mean()),
            knocked_logit_diff=float(self.knocked.mean()),
            kept_logit_diff=float(self.kept.mean()),
            necessity=self.necessity,
            faithfulness=self.faithfulness,
            clean_accuracy=self.accuracy["clean"],
            knocked_accuracy=self.accuracy["knocked"],
            kept_accuracy=self.accuracy["kept"],
            baseline_necessity_mean=float(bn.mean()),
            baseline_faithfulness_mean=float(bf.mean()),
            necessity_rank=float((bn >= self.necessity).mean()),
            faithfulness_rank=float((bf >= self.faithfulness).mean()),
        )

    def to_dict(self) -> dict:
        return dict(
            self.summary(),
            verification_id=self.verification_id,
            baseline=self.baseline,
            knocked_accuracy_rank=self.knocked_accuracy_rank,
            warnings=self.warnings,
        )

    @property
    def knocked_accuracy_rank(self) -> float:
        """Share of random circuits whose knock-out leaves at most the circuit's accuracy."""
        return float(
            (np.array(self.baseline["knocked_accuracy"]) <= self.accuracy["knocked"]).mean()
        )

    def format(self) -> str:
        s, b = self.summary(), self.baseline
        bn, bf = np.array(b["necessity"]), np.array(b["faithfulness"])
        q = lambda a: (
            f"mean {a.mean():.3f}, 5-95% [{np.percentile(a, 5):.3f}, {np.percentile(a, 95):.3f}]"
        )  # noqa: E731
        lines = [
            f"{self.label or f'circuit {self.circuit_id}'}: {s['n_prompts']} prompts, "
            f"{self.ablation} ablation "
            f"({self.reference})",
            f"  baseline: {self.n_random} random circuits of {b['size']} head"
            f"{'s' if b['size'] != 1 else ''} "
            f"({b['kind']}: {b['described']})",
            f"  logit difference: clean {s['clean_logit_diff']:+.3f}, circuit knocked out "
            f"{s['knocked_logit_diff']:+.3f}, only the circuit {s['kept_logit_diff']:+.3f}",
            f"  necessity    {s['necessity']:.3f}   random circuits: {q(bn)}; share >= circuit "
            f"{s['necessity_rank']:.2f}",
            f"  faithfulness {s['faithfulness']:.3f}   random circuits: {q(bf)}; share >= "
            f"circuit {s['faithfulness_rank']:.2f}",
            f"  accuracy (top token = target): clean {s['clean_accuracy']:.3f}, knocked out "
            f"{s['knocked_accuracy']:.3f}, only the circuit {s['kept_accuracy']:.3f}",
            f"  random circuits knocked out: accuracy {q(np.array(b['knocked_accuracy']))}; "
            f"share <= circuit {self.knocked_accuracy_rank:.2f}",
        ]
        if b["size"] < b["circuit_size"]:
            e = b["equal_size"]
            lines.append(
                f"  heads outside the circuit: {b['size']} (it has {b['circuit_size']}); at equal "
                f"size, {len(e['necessity'])} random {e['size']}-head subsets of the circuit "
                f"knocked out: necessity {q(np.array(e['necessity']))}, accuracy "
                f"{q(np.array(e['knocked_accuracy']))}"
            )
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


# ------------------------------------------------------------------ reading the circuit


def load_circuit(con, db, circuit_id) -> dict:
    """The stored circuit's row, heads and prompts; a clear error when it is not there."""
    if isinstance(circuit_id, bool) or not isinstance(circuit_id, int):
        raise InputError(f"--circuit {circuit_id!r} must be a circuit id (a whole number)")
    row = con.execute(
        "SELECT run_id, model, task, prompt_ids FROM circuits WHERE circuit_id = ?", [circuit_id]
    ).fetchone()
    if row is None:
        have = [r[0] for r in con.execute("SELECT circuit_id FROM circuits ORDER BY 1").fetchall()]
        listing = (
            f"the stored circuits are {', '.join(map(str, have[:20]))}"
            if have
            else "it holds no circuit"
        )
        raise InputError(
            f"circuit {circuit_id} does not exist in {db!s} ({listing}); find one "
            f"with `unpack discover --db {db}`"
        )
    heads = [
        r[0]
        for r in con.execute(
            "SELECT component FROM circuit_components WHERE circuit_id = ? AND head IS NOT NULL "
            "ORDER BY layer, head",
            [circuit_id],
        ).fetchall()
    ]
    return dict(
        run_id=row[0], model=row[1], task=row[2], prompt_ids=json.loads(row[3]), heads=heads
    )


def circuit_prompts(con, db, c: dict, circuit_id: int):
    """``(records, prompt ids, templates, n_tokens)`` of the circuit's prompts, all of
    which must still be stored and ok."""
    ids = sorted(int(i) for i in c["prompt_ids"])
    ok = (
        {
            r[0]: r[1:]
            for r in con.execute(
                f"SELECT prompt_id, template, n_tokens FROM prompts WHERE status = 'ok' AND run_id = ? "
                f"AND prompt_id IN ({', '.join('?' for _ in ids)})",
                [c["run_id"]] + ids,
            ).fetchall()
        }
        if ids
        else {}
    )
    missing = [i for i in ids if i not in ok]
    if not ids or missing:
        raise InputError(
            f"circuit {circuit_id} needs prompts {missing[:5] or '(none listed)'}"
            f"{' ...' if len(missing) > 5 else ''} of run {c['run_id']}, which "
            f"{db!s} does not hold (deleted, or a copy of another store); run "
            f"`unpack discover --db {db} --model {c['model']}` again on this store"
        )
    return prompt_records(con, ids), ids, [ok[i][0] for i in ids], [int(ok[i][1]) for i in ids]


def control_prompts(con, run_id: int):
    """``(records, templates, n_tokens)`` of the run's control prompts (ABC)."""
    rows = con.execute(
        "SELECT min(prompt_id), template, n_tokens FROM prompts WHERE run_id = ? "
        "AND status = 'ok' AND condition LIKE 'abc%' GROUP BY text, template, "
        "n_tokens ORDER BY 1",
        [run_id],
    ).fetchall()
    return (
        prompt_records(con, [r[0] for r in rows]),
        [r[1] for r in rows],
        [int(r[2]) for r in rows],
    )


# ------------------------------------------------------------------ the interventions


def mixed_values(tracer, records, batch_size: int = 16) -> list[torch.Tensor]:
    """Every head's mixed values on each prompt, ``[L, H, n, d]`` (its own length n)."""
    from unpack.intervene import forward

    out = []
    for k in range(0, len(records), batch_size):
        ids, lengths, _, _ = encode_batch(tracer, records[k : k + batch_size])
        _, Z = forward(tracer.spec, ids, lengths, dtype=tracer.dtype, keep_z=True)
        out += [Z[b, :, :, : int(n)] for b, n in enumerate(lengths)]
    return out


def _same_shape(refs, key, n):
    """Reference indices with the same (template, length), else the same length."""
    exact = [i for i, k in enumerate(refs) if k == key]
    return exact or [i for i, k in enumerate(refs) if k[1] == n]


def sources(
    ablation, tracer, prompts, ref_records, ref_keys, rng
) -> tuple[torch.Tensor | None, str]:
    """``[P, L, H, S, d]`` replacement mixed values for each prompt (None for zero),
    and a description of where they come from. ``prompts``: (record, template, n)."""
    if ablation == "zero":
        return None, "zero output"
    Zr = mixed_values(tracer, ref_records)
    S = max(n for _, _, n in prompts)
    L, H, _, d = Zr[0].shape
    out = torch.zeros(len(prompts), L, H, S, d, dtype=Zr[0].dtype)
    for b, (rec, template, n) in enumerate(prompts):
        cand = _same_shape(ref_keys, (template, n), n)
        if ablation == "resample":
            cand = [i for i in cand if ref_records[i].text != rec.text]
        if not cand:
            raise InputError(
                f"{ablation} ablation: no reference prompt of {n} tokens for "
                f"prompt {rec.text[:60]!r} (positions must line up); use "
                "--ablation zero, or store more prompts of that template"
            )
        if ablation == "mean":
            out[b, :, :, :n] = torch.stack([Zr[i] for i in cand]).mean(0)
        else:
            out[b, :, :, :n] = Zr[int(rng.choice(cand))]
    return out, None


def random_masks(heads: list[str], L: int, H: int, n: int, kind: str, rng) -> list[np.ndarray]:
    """``n`` random circuits ``[L, H]`` boolean: the same heads per layer (profile), the
    same number of heads anywhere (size), or heads outside the circuit (outside, see
    :func:`outside_mask`)."""
    if kind == "outside":
        return [outside_mask(heads, L, H, rng) for _ in range(n)]
    out = []
    for _ in range(n):
        m = np.zeros((L, H), dtype=bool)
        if kind == "size":
            m.flat[rng.choice(L * H, size=len(heads), replace=False)] = True
        else:
            for layer, count in _profile(heads).items():
                m[layer, rng.choice(H, size=count, replace=False)] = True
        out.append(m)
    return out


def _profile(heads: list[str]) -> dict[int, int]:
    """Heads per layer."""
    return {
        int(k): int(v)
        for k, v in pd.Series([split_head(h)[0] for h in heads], dtype=int).value_counts().items()
    }


def outside_mask(heads: list[str], L: int, H: int, rng) -> np.ndarray:
    """A random circuit disjoint from ``heads``: in each layer as many heads as the
    circuit has there, drawn from that layer's heads outside the circuit; what a layer
    cannot supply is drawn from the other heads outside the circuit. Its size is the
    circuit's, or every head outside the circuit where fewer lie outside."""
    inside = np.zeros((L, H), dtype=bool)
    for h in heads:
        inside[split_head(h)] = True
    m = np.zeros((L, H), dtype=bool)
    short = 0
    for layer, count in _profile(heads).items():
        free = np.flatnonzero(~inside[layer])
        take = min(count, len(free))
        m[layer, rng.choice(free, size=take, replace=False)] = True
        short += count - take
    rest = np.flatnonzero(~(inside | m).ravel())
    m.flat[rng.choice(rest, size=min(short, len(rest)), replace=False)] = True
    return m


def equal_size_subsets(heads: list[str], L: int, H: int, k: int, n: int, rng) -> list[np.ndarray]:
    """``n`` random ``k``-head subsets of the circuit: its knock-out at the size of an
    ``outside`` baseline that could not match the circuit's size."""
    out = []
    for _ in range(n):
        m = np.zeros((L, H), dtype=bool)
        for h in rng.choice(heads, size=k, replace=False):
            m[split_head(str(h))] = True
        out.append(m)
    return out


def run_masks(tracer, batch, source, masks, batch_size: int = 32):
    """Metric and top-1 hit per prompt for each mask: ``[M, P]`` twice. ``masks``:
    ``[L, H]`` booleans (True = ablated), None for the clean pass; a mask equal to an
    earlier one is not run again."""
    from unpack.intervene import forward, logit_diff

    ids, lengths, tid, did = batch
    P = ids.shape[0]
    metric, hit = np.zeros((len(masks), P)), np.zeros((len(masks), P))
    seen = {}
    for j, m in enumerate(masks):
        key = None if m is None else np.asarray(m, dtype=bool).tobytes()
        if key in seen:
            metric[j], hit[j] = metric[seen[key]], hit[seen[key]]
            continue
        seen[key] = j
        for k in range(0, P, batch_size):
            sl = slice(k, k + batch_size)
            ab = None if m is None else torch.as_tensor(m)
            src = None if source is None else source[sl]
            logits = forward(
                tracer.spec, ids[sl], lengths[sl], dtype=tracer.dtype, ablate=ab, source=src
            )
            metric[j, sl] = logit_diff(logits, tid[sl], did[sl]).double().cpu().numpy()
            hit[j, sl] = (logits.argmax(-1).cpu() == tid[sl]).double().numpy()
    if not np.isfinite(metric).all():
        raise InputError(
            "the intervened forward pass gave a non-finite logit difference; "
            "run it in float64 (load the model with --dtype float64)"
        )
    return metric, hit


# ------------------------------------------------------------------ verification

BASELINE_TEXT = {
    "outside": "heads outside the circuit, its heads per layer where a layer has room",
    "profile": "the circuit's heads per layer, drawn from all heads of those layers",
    "size": "the circuit's number of heads, drawn from all heads",
}


def baseline_dict(kind: str, size: int, rand: list, metric, hit) -> dict:
    """The random circuits' measures (rows ``3 + 2i`` knocked out, ``4 + 2i`` kept) and,
    where they are smaller than the circuit, its own subsets of their size (the rows
    after them), as stored in ``circuit_verifications.baseline``."""
    n, clean = len(rand), metric[0].mean()
    k = int(rand[0].sum())
    base = dict(
        kind=kind,
        described=BASELINE_TEXT[kind],
        size=k,
        circuit_size=size,
        necessity=[float(1 - metric[3 + 2 * i].mean() / clean) for i in range(n)],
        faithfulness=[float(metric[4 + 2 * i].mean() / clean) for i in range(n)],
        knocked_accuracy=[float(hit[3 + 2 * i].mean()) for i in range(n)],
        kept_accuracy=[float(hit[4 + 2 * i].mean()) for i in range(n)],
        circuits=[[f"attn_{L}_head_{h}" for L, h in zip(*np.nonzero(r))] for r in rand],
    )
    if k < size:
        rows = range(3 + 2 * n, len(metric))
        base["equal_size"] = dict(
            size=k,
            necessity=[float(1 - metric[j].mean() / clean) for j in rows],
            knocked_accuracy=[float(hit[j].mean()) for j in rows],
        )
    return base


def check_args(ablation, n_random, baseline) -> None:
    if ablation is not None and ablation not in ABLATIONS:
        raise InputError(f"--ablation {ablation!r} must be one of {', '.join(ABLATIONS)}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise InputError(f"--n {n_random!r} must be a positive whole number of random circuits")
    if baseline not in BASELINES:
        raise InputError(f"--baseline {baseline!r} must be one of {', '.join(BASELINES)}")


def _reference(con, db, c, ablation, records, templates, n_tok):
    """``(ablation, reference records, their (template, n) keys, description)``."""
    refs, r_templates, r_ntok = control_prompts(con, c["run_id"])
    fix = (
        f"store the ABC controls with `unpack ingest --model {c['model']} --task ioi "
        f"--n N --controls --db {db}`, or use"
        if c["task"] == "ioi"
        else "use"
    )
    return choose_reference(
        ablation,
        records,
        list(zip(templates, n_tok)),
        refs,
        list(zip(r_templates, r_ntok)),
        f"run {c['run_id']}, and task {c['task']} has none stored: {fix}",
    )


def choose_reference(ablation, records, keys, refs, ref_keys, why_none: str):
    """The ablation (default: mean where there are controls, else resample) and the
    prompts its replacement values come from; mean ablation needs controls."""
    if ablation is None:
        ablation = "mean" if refs else "resample"
    if ablation == "mean" and not refs:
        raise InputError(
            f"mean ablation needs control prompts in {why_none} --ablation zero "
            "or --ablation resample"
        )
    if ablation == "zero":
        return ablation, [], [], "zero output"
    if refs:
        return (
            ablation,
            refs,
            ref_keys,
            f"{len(refs)} control prompts (condition abc*), same template and length",
        )
    return (
        ablation,
        records,
        keys,
        f"the circuit's {len(records)} prompts, another prompt of the same length",
    )


def verify(
    db,
    circuit_id,
    *,
    ablation: str | None = None,
    n_random: int = 20,
    seed: int = 0,
    baseline: str = "outside",
    tracer=None,
    store: bool = True,
) -> Verification:
    """Necessity and faithfulness of a stored circuit against ``n_random`` random
    circuits (see the module docstring); stored unless ``store=False``."""
    check_args(ablation, n_random, baseline)
    con = open_db(db)
    try:
        c = load_circuit(con, db, circuit_id)
        records, ids, templates, n_tok = circuit_prompts(con, db, c, circuit_id)
        ablation, refs, ref_keys, described = _reference(
            con, db, c, ablation, records, templates, n_tok
        )
    finally:
        con.close()
    if not c["heads"]:
        raise InputError(
            f"circuit {circuit_id} has no heads to knock out; discover it again "
            "with a lower --min-share"
        )
    tracer = tracer or load_tracer(c["model"], "verify needs it for the interventions")
    ver = measure(
        tracer,
        c["heads"],
        list(zip(records, templates, n_tok)),
        ids,
        refs,
        ref_keys,
        ablation=ablation,
        described=described,
        n_random=n_random,
        seed=seed,
        baseline=baseline,
        label=f"circuit {circuit_id}",
    )
    ver.circuit_id = circuit_id
    if store:
        from .circuits import save_verification

        ver.verification_id = save_verification(db, ver)
    return ver


def measure(
    tracer,
    heads,
    prompts,
    ids,
    refs,
    ref_keys,
    *,
    ablation,
    described,
    n_random,
    seed,
    baseline,
    label,
) -> Verification:
    """The interventions of a verification: ``prompts`` are ``(record, template,
    n_tokens)``, ``refs`` the reference records of the ablation with their keys."""
    rng = np.random.default_rng(seed)
    source, _ = sources(ablation, tracer, prompts, refs, ref_keys, rng)
    spec = tracer.spec
    mask = np.zeros((spec.n_layers, spec.n_heads), dtype=bool)
    for h in heads:
        mask[split_head(h)] = True
    if baseline == "outside" and mask.all():
        raise InputError(
            f"{label} holds every head of the model, so no random circuit lies "
            "outside it; use --baseline profile or --baseline size"
        )
    rand = random_masks(heads, spec.n_layers, spec.n_heads, n_random, baseline, rng)
    k = int(rand[0].sum())
    subsets = (
        equal_size_subsets(heads, spec.n_layers, spec.n_heads, k, n_random, rng)
        if k < len(heads)
        else []
    )
    masks = [None, mask, ~mask] + [m for r in rand for m in (r, ~r)] + subsets
    metric, hit = run_masks(tracer, encode_batch(tracer, [p[0] for p in prompts]), source, masks)
    clean = metric[0]
    if not abs(clean.mean()) > 1e-9:
        raise InputError(
            f"{label}: the clean logit difference is zero on average, so no "
            "fraction of it can be measured"
        )
    base = baseline_dict(baseline, len(heads), rand, metric, hit)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(clean) > 1e-9, metric[2] / clean, np.nan)
    per_prompt = pd.DataFrame(
        dict(prompt_id=ids, clean=clean, knocked=metric[1], kept=metric[2], faithfulness=ratio)
    )
    return Verification(
        None,
        ablation,
        described,
        n_random,
        seed,
        clean,
        metric[1],
        metric[2],
        dict(clean=float(hit[0].mean()), knocked=float(hit[1].mean()), kept=float(hit[2].mean())),
        base,
        per_prompt,
    )


# ------------------------------------------------------------------ heads on fresh prompts


def parse_heads(heads, n_layers: int, n_heads: int) -> list[str]:
    """``attn_L_head_H`` names (or ``L.H``), comma-separated or a list, checked against
    the model."""
    out = []
    text = heads if isinstance(heads, str) else ",".join(map(str, heads))
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        try:
            L, h = (
                split_head(part)
                if part.startswith("attn_")
                else tuple(int(x) for x in part.split("."))
            )
        except (ValueError, IndexError):
            L, h = -1, -1
        if not (0 <= L < n_layers and 0 <= h < n_heads):
            raise InputError(
                f"--heads: {part!r} is not a head of the model ({n_layers} layers x "
                f"{n_heads} heads); write attn_L_head_H or L.H, comma-separated"
            )
        out.append(f"attn_{L}_head_{h}")
    if not out:
        raise InputError("--heads is empty; name the circuit's heads, e.g. --heads 9.6,9.9,10.0")
    return sorted(set(out), key=split_head)


def _keys(tracer, records) -> list[tuple[str, int]]:
    """``(template, n_tokens)`` of each record, as the store keeps them."""
    lengths = encode_batch(tracer, records)[1].tolist() if records else []
    return [(r.template, int(n)) for r, n in zip(records, lengths)]


def verify_on_task(
    model: str,
    heads,
    *,
    task: str = "ioi",
    n: int = 100,
    prompt_seed: int = 0,
    ablation: str | None = None,
    n_random: int = 20,
    seed: int = 0,
    baseline: str = "outside",
    tracer=None,
) -> Verification:
    """Verify a set of heads on ``n`` fresh prompts of a built-in task, generated with
    ``prompt_seed`` (for IOI: the ``ioi_io`` prompts, with their ``abc_c`` controls as
    the mean-ablation reference), on the model alone: nothing is stored. A circuit
    found on a store's prompts is checked out of sample this way."""
    from unpack.tasks import induction, ioi

    check_args(ablation, n_random, baseline)
    if task not in ("ioi", "induction"):
        raise InputError(f"--task {task!r} must be ioi or induction")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--prompts {n!r} must be a positive whole number")
    tracer = tracer or load_tracer(model, "verify needs it for the interventions")
    heads = parse_heads(heads, tracer.spec.n_layers, tracer.spec.n_heads)
    if task == "ioi":
        recs = ioi(tracer.tokenizer, n, seed=prompt_seed, controls=True)
    else:
        recs = induction(tracer.tokenizer, n, seed=prompt_seed)
    prompts = [r for r in recs if r.condition == "ioi_io"] if task == "ioi" else recs
    refs = [r for r in recs if r.condition == "abc_c"]
    keys, ref_keys = _keys(tracer, prompts), _keys(tracer, refs)
    ablation, refs, ref_keys, described = choose_reference(
        ablation, prompts, keys, refs, ref_keys, f"task {task}: it has none; use"
    )
    ver = measure(
        tracer,
        heads,
        [(r, t, k) for r, (t, k) in zip(prompts, keys)],
        list(range(len(prompts))),
        refs,
        ref_keys,
        ablation=ablation,
        described=described,
        n_random=n_random,
        seed=seed,
        baseline=baseline,
        label=f"{len(heads)} heads on fresh {task} prompts (seed {prompt_seed})",
    )
    ver.label = f"heads {', '.join(heads)} on {n} fresh {task} prompts (seed {prompt_seed})"
    return ver
