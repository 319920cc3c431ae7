"""Does Unpack recover the induction circuit of a toy model?

For ``n`` fresh repeated sequences, at one position ``q`` of the second
occurrence whose word occurs exactly once before (so induction is unambiguous):

- **K recovery.** Reroot at each induction head at ``q`` (target: the correct
  next word) and take the layer-0 head with the largest K-mode interaction
  strength (``edges``: parent = the root head, child = ``attn_0_head_g``,
  mode K). Recovered when it is a previous-token head.
- **Mode split.** The K, Q and V weights of the edge from the induction head to
  the previous-token heads; is K the largest?
- **Token credit.** Trace the prediction at ``q`` (the text ends at ``q``) with
  the target logit as the seed; recovered when ``argmax(token_credit)`` is the
  position right after the first occurrence.

The ground truth comes from the model's own attention (:mod:`.groundtruth`).
The same report on a random-initialized model of the same shape is the control:
its rates should sit near chance (``|previous-token heads| / H`` for the head,
the mean of ``1 / (q + 1)`` for the position).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import InputError
from .data import sample, to_text, word
from .groundtruth import GroundTruth, format_ground_truth, identify
from .train import ToyConfig, build_model, evaluate, is_attn_only, load

MODES = ("K", "Q", "V")


@dataclass
class Probe:
    """One sequence cut at ``q``: text up to ``q``, the correct next word, and
    ``peak`` = the position right after the first occurrence of the word at ``q``."""

    text: str
    target: str
    q: int
    peak: int


def probes(cfg: ToyConfig, n: int, seed: int) -> list[Probe]:
    """``n`` probes from fresh sequences (deterministic in ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    out: list[Probe] = []
    while len(out) < n:
        b = sample(cfg, gen, 2 * n)
        ok = b.unique_mask()
        pick = torch.rand(ok.shape, generator=gen) * ok  # a random unambiguous q per sequence
        for i in range(b.ids.shape[0]):
            if len(out) == n or not ok[i].any():
                continue
            q = int(pick[i].argmax())
            ids = b.ids[i].tolist()
            gap = int(b.start2[i] - b.start1[i])
            out.append(Probe(to_text(ids[: q + 1]), " " + word(ids[q + 1]), q, q - gap + 1))
    return out


@dataclass
class Recovery:
    """Per-reroot and per-probe outcomes, and their summary."""

    label: str
    gt: GroundTruth
    n_heads: int
    evaluation: dict
    rows: list[dict] = field(default_factory=list)  # one per (probe, induction head)
    credit_rows: list[dict] = field(default_factory=list)  # one per probe

    def summary(self) -> dict:
        r, c = self.rows, self.credit_rows
        hit = np.array([x["top_k_is_prev"] for x in r], dtype=float)
        kq = np.array([[x[f"prev_{m}"] for m in MODES] for x in r])  # [n_reroots, 3]
        per_head = {
            h: float(np.mean([x["top_k_is_prev"] for x in r if x["head"] == h]))
            for h in self.gt.induction_heads
        }
        mean = kq.mean(0)
        total = np.abs(mean).sum()
        return dict(
            model=self.label,
            prev_heads=self.gt.prev_heads,
            induction_heads=self.gt.induction_heads,
            prev_found=self.gt.prev_found,
            induction_found=self.gt.induction_found,
            k_recovery=float(hit.mean()),
            k_recovery_seq=float(np.mean([x["top_k_all_is_prev"] for x in c])),
            k_recovery_min_head=min(per_head.values()),
            k_recovery_per_head=per_head,
            k_chance=len(self.gt.prev_heads) / self.n_heads,
            k_largest_rate=float(np.mean(kq.argmax(1) == 0)),
            mode_mean=dict(zip(MODES, map(float, mean))),
            mode_share=dict(zip(MODES, map(float, mean / total if total > 0 else mean * 0))),
            credit_peak=float(np.mean([x["peak_ok"] for x in c])),
            credit_chance=float(np.mean([1.0 / (x["q"] + 1) for x in c])),
            n_probes=len(c),
            n_reroots=len(r),
            **{f"eval_{k}": v for k, v in self.evaluation.items()},
        )


def random_like(model, cfg: ToyConfig, seed: int):
    """A random-initialized model of the same shape: the trainer's starting point,
    with GPT-2's random init for the MLP output projections (attention-only stays so)."""
    m = build_model(replace(cfg, attn_only=is_attn_only(model)), seed).eval()
    if not is_attn_only(model):
        std = m.config.initializer_range / math.sqrt(2 * m.config.n_layer)
        with torch.no_grad():
            for blk in m.transformer.h:
                blk.mlp.c_proj.weight.normal_(0.0, std)
    return m


def recover(
    model,
    tokenizer,
    cfg: ToyConfig,
    ps: list[Probe],
    label: str = "model",
    batch_size: int = 16,
    threshold: float = 0.4,
) -> Recovery:
    """Run the three checks on ``ps`` (see the module docstring)."""
    from .. import Tracer

    gt = identify(model, cfg, threshold=threshold)
    H = model.config.n_head
    rec = Recovery(label, gt, H, evaluate(model, cfg))
    tr = Tracer(model=model, tokenizer=tokenizer)
    prompts = []
    for p in ps:
        prompts.append(dict(text=p.text, target=p.target, root=None))
        prompts += [
            dict(text=p.text, target=p.target, root=f"attn_1_head_{h}@{p.q}")
            for h in gt.induction_heads
        ]
    results = tr.trace_batch(prompts, batch_size=batch_size)
    layer0 = [f"attn_0_head_{g}" for g in range(H)]
    prev = {f"attn_0_head_{g}" for g in gt.prev_heads}
    it = iter(results)
    for i, p in enumerate(ps):
        res = next(it)
        peak = int(np.argmax(res.token_credit))
        k_all = 0.0  # K strength into each layer-0 head, summed over the induction heads
        for h in gt.induction_heads:
            e = next(it).edges
            e = e[(e.parent == f"attn_1_head_{h}") & e.child.isin(layer0)]
            w = e.pivot_table(index="child", columns="mode", values="weight", aggfunc="sum")
            w = w.reindex(index=layer0, columns=list(MODES)).fillna(0.0)
            top = _top(w["K"])
            row = dict(probe=i, head=h, q=p.q, top_k=top, top_k_is_prev=top in prev)
            row.update({f"prev_{m}": float(w.loc[sorted(prev), m].sum()) for m in MODES})
            rec.rows.append(row)
            k_all = k_all + w["K"]
        top = _top(k_all)
        rec.credit_rows.append(
            dict(
                probe=i,
                q=p.q,
                expected=p.peak,
                argmax=peak,
                peak_ok=peak == p.peak,
                target_prob=res.target_prob,
                top_k_all_heads=top,
                top_k_all_is_prev=top in prev,
            )
        )
    return rec


def _top(k) -> str | None:
    """The head with the largest K strength (None when there is no K edge at all)."""
    return k.idxmax() if (k != 0).any() else None


def run(
    model_dir: str,
    n: int = 100,
    seed: int = 0,
    control: bool = True,
    control_seed: int = 1234,
    log=print,
) -> list[Recovery]:
    """The report for one toy model directory, and for its random twin if ``control``."""
    model, tok, cfg = load(model_dir)
    ps = probes(cfg, n, seed)
    label = os.path.basename(os.path.normpath(model_dir))
    out = [recover(model, tok, cfg, ps, label)]
    if control:
        out.append(
            recover(random_like(model, cfg, control_seed), tok, cfg, ps, label + " (random init)")
        )
    return out


def format_report(recs: list[Recovery]) -> str:
    """Markdown: the ground truth of every model, then one table of rates."""
    lines = ["# Toy induction: does Unpack recover previous-token -> induction via K?", ""]
    for r in recs:
        s = r.summary()
        lines += [
            f"## {r.label}",
            "",
            f"loss on the first occurrence {s['eval_loss_first']:.3f} (chance "
            f"{s['eval_chance_loss']:.3f}), on the repeated half {s['eval_loss_repeat']:.3f}; "
            f"in-context accuracy on the repeated half {100 * s['eval_acc_repeat']:.1f}%",
            "",
            "```",
            format_ground_truth(r.gt),
            "```",
            "",
        ]
    lines += [
        "| model | prev-token heads | induction heads | K recovery: sequences "
        "| reroots (worst head) | chance | K largest | K / Q / V share | credit peak | chance |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        s = r.summary()
        found = lambda heads, ok: ",".join(map(str, heads)) + ("" if ok else " (none found)")  # noqa: E731
        sh = s["mode_share"]
        lines.append(
            f"| {s['model']} | {found(s['prev_heads'], s['prev_found'])} "
            f"| {found(s['induction_heads'], s['induction_found'])} "
            f"| {100 * s['k_recovery_seq']:.0f}% "
            f"| {100 * s['k_recovery']:.0f}% ({100 * s['k_recovery_min_head']:.0f}%) "
            f"| {100 * s['k_chance']:.0f}% | {100 * s['k_largest_rate']:.0f}% "
            f"| {100 * sh['K']:.0f} / {100 * sh['Q']:.0f} / {100 * sh['V']:.0f}% "
            f"| {100 * s['credit_peak']:.0f}% | {100 * s['credit_chance']:.0f}% |"
        )
    n = recs[0].summary()["n_probes"] if recs else 0
    lines += [
        "",
        f"{n} sequences. K recovery: the top upstream head by K interaction is a "
        "previous-token head — per sequence with the K strengths summed over the induction "
        "heads, and per reroot (sequence x induction head; in brackets the worst induction "
        "head). Chance: previous-token heads / heads in layer 0. K largest: share of reroots "
        "where K carries more of the edge into the previous-token heads than Q and V; "
        "K / Q / V share: of the mean weight of that edge. Credit peak: share of sequences "
        "whose token credit peaks right after the first occurrence (chance: mean 1/(q+1)).",
    ]
    return "\n".join(lines)


def passes(rec: Recovery, min_rate: float = 0.9) -> bool:
    """The bar for a trained model: a circuit in the attention, accuracy, K recovery
    (per sequence and per reroot) and credit peak all >= ``min_rate``, and K the
    largest mode of the edge into the previous-token heads."""
    s = rec.summary()
    return bool(
        s["prev_found"]
        and s["induction_found"]
        and s["eval_acc_repeat"] >= min_rate
        and s["k_recovery_seq"] >= min_rate
        and s["k_recovery"] >= min_rate
        and s["credit_peak"] >= min_rate
        and s["mode_mean"]["K"] > max(s["mode_mean"]["Q"], s["mode_mean"]["V"])
    )


def write(recs: list[Recovery], out: str) -> list[str]:
    """``induction.md``, two CSVs and ``induction.png`` into ``out``."""
    import pandas as pd

    os.makedirs(out, exist_ok=True)
    paths = [
        os.path.join(out, f)
        for f in (
            "induction.md",
            "induction_summary.csv",
            "induction_reroots.csv",
            "induction_credit.csv",
        )
    ]
    with open(paths[0], "w") as f:
        f.write(format_report(recs) + "\n")
    flat = []
    for r in recs:
        s = r.summary()
        for k in ("mode_mean", "mode_share", "k_recovery_per_head"):
            for m, v in s.pop(k).items():
                s[f"{k}_{m}"] = v
        s["prev_heads"] = ",".join(map(str, s["prev_heads"]))
        s["induction_heads"] = ",".join(map(str, s["induction_heads"]))
        flat.append(s)
    pd.DataFrame(flat).to_csv(paths[1], index=False)
    for path, attr in ((paths[2], "rows"), (paths[3], "credit_rows")):
        rows = [dict(model=r.label, **x) for r in recs for x in getattr(r, attr)]
        pd.DataFrame(rows).to_csv(path, index=False)
    try:
        paths.append(_figure(recs, os.path.join(out, "induction.png")))
    except ImportError:
        pass
    return paths


def _figure(recs: list[Recovery], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["K recovery", "K largest", "credit peak"]
    fig, ax = plt.subplots(figsize=(2.6 + 1.4 * len(recs), 3.2))
    width = 0.8 / len(names)
    for j, (name, key) in enumerate(
        zip(names, ("k_recovery_seq", "k_largest_rate", "credit_peak"))
    ):
        vals = [100 * r.summary()[key] for r in recs]
        ax.bar(np.arange(len(recs)) + (j - 1) * width, vals, width, label=name)
    ax.set_xticks(
        np.arange(len(recs)),
        [r.label.replace(" (random init)", "\n(random)") for r in recs],
        fontsize=7,
    )
    ax.set_ylabel("% of sequences")
    ax.set_ylim(0, 100)
    ax.axhline(90, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(args) -> int:
    """Handler of ``unpack report induction`` and ``unpack toy-report``: prints the
    Markdown report, writes it with CSVs and a figure under ``--out`` when given.

    Exit codes: 0 done; 1 with ``--check`` when a trained model misses the bar
    (or a random control meets it); InputError (2) for bad input."""
    models = getattr(args, "model", None)
    if not models:
        raise InputError(
            "--model is required: a toy model directory, e.g. unpack/toy/checkpoints/attn-only-d64 "
            "(train one with `unpack toy-train --variant attn-only-d64 --out DIR`)"
        )
    models = [models] if isinstance(models, str) else list(models)
    n = getattr(args, "n", 100)
    if n < 1:
        raise InputError(f"--n {n}: give at least 1 sequence")
    if getattr(args, "db", None):
        print("note: the toy induction report traces the model directly; --db is not used")
    torch.set_num_threads(getattr(args, "threads", None) or torch.get_num_threads())
    recs = []
    for m in models:
        recs += run(
            m,
            n=n,
            seed=getattr(args, "seed", 0),
            control=not getattr(args, "no_control", False),
            control_seed=getattr(args, "control_seed", 1234),
        )
    print(format_report(recs))
    out = getattr(args, "out", None)
    if out:
        for p in write(recs, out):
            print(f"wrote {p}")
    if getattr(args, "check", False):
        bad = [r.label for r in recs if passes(r) == r.label.endswith("(random init)")]
        if bad:
            print("check failed: " + ", ".join(bad))
            return 1
        print("check passed")
    return 0
