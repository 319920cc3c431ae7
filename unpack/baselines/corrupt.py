"""The corrupted prompt of each record, for the patching baselines (EAP, EAP-IG)
and the evaluation's mean ablation: ``metadata["corrupt"]``.

- IOI (with its controls, unpack/tasks/ioi.py): the matched control, the other
  text of the record's group: the ABC prompt for ``ioi_io``/``ioi_s`` (a third
  name C in the S2 slot), the IOI prompt for ``abc_c``/``abc_b``.
- A corpus: its own ``corrupt`` column (kept in metadata by the corpus loader).
- Anything else (induction): the text of the next record of the same template
  (cyclic), i.e. another random sequence of the same shape.
"""

from __future__ import annotations

from dataclasses import replace


def with_corrupt(records: list, bos: str = "") -> list:
    """Copies of ``records`` with ``metadata["corrupt"]`` set where it can be; a
    corpus ``corrupt`` gets the ``bos`` prefix its text got."""
    by_group: dict = {}
    for r in records:
        by_group.setdefault((r.task, r.group), set()).add(r.text)
    by_template: dict = {}
    for r in records:
        by_template.setdefault((r.task, r.template), []).append(r.text)
    out = []
    for r in records:
        meta = dict(r.metadata or {})
        if meta.get("corrupt"):
            if bos and r.text.startswith(bos) and not meta["corrupt"].startswith(bos):
                meta["corrupt"] = bos + meta["corrupt"]
        elif r.task == "ioi" and len(by_group[(r.task, r.group)]) == 2:
            meta["corrupt"] = next(t for t in by_group[(r.task, r.group)] if t != r.text)
        else:
            texts = list(dict.fromkeys(by_template[(r.task, r.template)]))
            if len(texts) > 1:
                meta["corrupt"] = texts[(texts.index(r.text) + 1) % len(texts)]
        out.append(replace(r, metadata=meta))
    return out
