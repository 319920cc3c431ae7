"""The prompt record every task produces and tracing and ingest consume.

A record's ``text`` is exactly what the model sees: a beginning-of-sequence
prefix, when used, is part of it. ``roles`` maps role names (IO, S1, S2, END,
...) to token positions counted from 0 in ``unpack.tokens.encode(tokenizer,
text)``, so they are the positions the tracer reports.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import InputError
from ..tokens import encode, token_at_char

FIELDS = (
    "task",
    "text",
    "target",
    "distractor",
    "roles",
    "template",
    "group",
    "condition",
    "metadata",
    "root",
)


@dataclass
class PromptRecord:
    """One prompt: text, what to predict (and against what), named positions."""

    task: str
    text: str
    target: str
    distractor: str | None = None
    roles: dict[str, int] = field(default_factory=dict)
    template: str = ""
    group: str = ""
    condition: str = ""
    metadata: dict = field(default_factory=dict)
    root: str | None = None  # one more trace of this prompt, COMPONENT@ROLE or @POSITION

    def to_json(self) -> str:
        """One JSON object on one line, keys sorted, so equal records give equal bytes
        (``root`` only when set)."""
        d = asdict(self)
        if d["root"] is None:
            del d["root"]
        return json.dumps(d, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str | dict) -> "PromptRecord":
        """The record written by :meth:`to_json` (a JSON string or an already parsed dict)."""
        d = json.loads(line) if isinstance(line, str) else dict(line)
        if not isinstance(d, dict):
            raise InputError(
                "prompt record: expected a JSON object; write records with PromptRecord.to_json()"
            )
        unknown = sorted(set(d) - set(FIELDS))
        missing = [k for k in ("task", "text", "target") if k not in d]
        if unknown or missing:
            raise InputError(
                f"prompt record: unknown fields {unknown}, missing fields "
                f"{missing}; the fields are {list(FIELDS)}"
            )
        d["roles"] = {str(k): int(v) for k, v in (d.get("roles") or {}).items()}
        d["metadata"] = dict(d.get("metadata") or {})
        return cls(**d)


def write_jsonl(records, path_or_file) -> None:
    """Write records one JSON object per line (UTF-8, '\\n' line ends)."""
    if hasattr(path_or_file, "write"):
        for r in records:
            path_or_file.write(r.to_json() + "\n")
        return
    with open(path_or_file, "w", encoding="utf-8", newline="\n") as f:
        write_jsonl(records, f)


def read_jsonl(path) -> list[PromptRecord]:
    """Records written by :func:`write_jsonl` (for user files use ``load_corpus``)."""
    with open(path, encoding="utf-8") as f:
        return [PromptRecord.from_json(line) for line in f if line.strip()]


def single_token(tokenizer, word: str) -> int | None:
    """The id of ``' ' + word`` when that is exactly one token covering the word,
    else None. Names and induction tokens must pass this."""
    ids, offs = encode(tokenizer, " " + word)
    if len(ids) != 1 or offs[0][1] != len(word) + 1 or offs[0][0] > 1:
        return None
    if ids[0] == getattr(tokenizer, "unk_token_id", None):
        return None
    return ids[0]


def slot_positions(tokenizer, text: str, slots: dict[str, tuple[int, int]]):
    """Token ids of ``text`` and the token position of each named slot.

    ``slots`` maps a role to the character span ``(start, end)`` of a word in
    ``text``. The position comes from the tokenizer's character offsets; the
    slot must be exactly one token (its span may also take the one space
    before the word). Returns ``(ids, positions)`` or ``(ids, None)`` when a
    slot is not a single token in this context."""
    ids, offs = encode(tokenizer, text)
    pos = {}
    for role, (a, b) in slots.items():
        try:
            i = token_at_char(offs, a)
        except ValueError:
            return ids, None
        ta, tb = offs[i]
        if tb != b or not (ta == a or (ta == a - 1 and text[ta] == " ")):
            return ids, None
        pos[role] = i
    return ids, pos
