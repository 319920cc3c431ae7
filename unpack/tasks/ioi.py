"""Indirect object identification (after Wang et al. 2023) with matched ABC controls.

An IOI prompt names two people, then repeats one of them (the subject S) as the
giver; the model should complete with the other one (the indirect object IO):
"Then, Mary and John went to the park. John gave a ball to" -> " Mary".
Every base template comes in both orders: ABBA (IO named first) and BABA (S
named first); its id is ``ioi_{k:02d}_{ABBA|BABA}``.

Roles (token positions in the record's text, BOS prefix included):
IO, S1 (first mention of S), S2 (the giver), END (last token).
The ABC control of a prompt keeps template, names, place and object and puts a
third name C in the S2 slot; its roles are A (IO slot), B (S1 slot), C (S2 slot)
and END. With ``controls=True`` each prompt yields the four conditions of
docs/METHOD.md §10, sharing one ``group`` id:

===========  ======  ==========  ==========
condition    text    target      distractor
===========  ======  ==========  ==========
``ioi_io``   IOI     IO          S
``ioi_s``    IOI     S           IO
``abc_c``    ABC     C           A
``abc_b``    ABC     B           A
===========  ======  ==========  ==========
"""

from __future__ import annotations

import random
import re

from ..errors import InputError
from ..tokens import bos_text
from .records import PromptRecord, single_token, slot_positions

# {N1} and {N2} are the two names of the opening clause, {S2} the giver.
TEMPLATES = (
    "Then, {N1} and {N2} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "When {N1} and {N2} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "After {N1} and {N2} arrived at the {PLACE}, {S2} handed a {OBJECT} to",
    "Yesterday {N1} and {N2} met at the {PLACE}. {S2} passed a {OBJECT} to",
    "While {N1} and {N2} were at the {PLACE}, {S2} threw a {OBJECT} to",
    "After lunch, {N1} and {N2} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "On Friday, {N1} and {N2} walked to the {PLACE}, and {S2} brought a {OBJECT} to",
    "At the {PLACE}, {N1} and {N2} found a {OBJECT}. {S2} gave the {OBJECT} to",
    "Later that day, {N1} and {N2} stopped by the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {N1} and {N2} went back to the {PLACE}. {S2} handed a {OBJECT} to",
    "When {N1} and {N2} got to the {PLACE}, {S2} gave a {OBJECT} to",
    "Last week {N1} and {N2} visited the {PLACE}. {S2} lent a {OBJECT} to",
    "The {PLACE} was quiet when {N1} and {N2} arrived. {S2} gave a {OBJECT} to",
    "After a long day at the {PLACE}, {N1} and {N2} sat down. {S2} handed a {OBJECT} to",
    "In the evening, {N1} and {N2} were cleaning the {PLACE}. Then {S2} tossed a {OBJECT} to",
    "Early in the morning, {N1} and {N2} drove to the {PLACE}. {S2} gave a {OBJECT} to",
)

NAMES = (
    "Mary",
    "John",
    "Alice",
    "Bob",
    "James",
    "Michael",
    "Sarah",
    "David",
    "Emma",
    "Daniel",
    "Laura",
    "Kevin",
    "Anna",
    "Mark",
    "Lisa",
    "Paul",
    "Kate",
    "Tom",
    "Jessica",
    "Steven",
    "Rachel",
    "Eric",
    "Amy",
    "Brian",
    "Emily",
    "Jason",
    "Linda",
    "Ryan",
    "Susan",
    "Adam",
    "Julia",
    "Peter",
    "Grace",
    "Frank",
    "Helen",
    "George",
    "Rose",
    "Henry",
    "Ruth",
    "Jack",
    "Jane",
    "Scott",
    "Karen",
    "Andrew",
    "Nancy",
    "Chris",
    "Sophie",
    "Patrick",
    "Claire",
    "Maria",
    "Sam",
    "Diana",
    "Joseph",
    "Victoria",
    "Thomas",
    "Anne",
    "Richard",
    "Lucy",
    "Robert",
    "Charles",
    "William",
    "Edward",
    "Jennifer",
    "Elizabeth",
    "Carl",
    "Alan",
    "Ben",
    "Jim",
    "Max",
    "Luke",
    "Ian",
    "Carol",
    "Jeff",
    "Roger",
    "Oliver",
    "Harry",
    "Jacob",
    "Nick",
    "Sean",
    "Bill",
    "Tony",
    "Lily",
    "Amanda",
    "Michelle",
)

PLACES = (
    "store",
    "park",
    "school",
    "beach",
    "library",
    "station",
    "market",
    "garden",
    "restaurant",
    "museum",
    "office",
    "hospital",
    "lake",
    "zoo",
    "bank",
    "theater",
    "farm",
    "gym",
    "bakery",
    "house",
    "mall",
    "airport",
    "church",
    "kitchen",
)

# All start with a consonant, so "a {OBJECT}" reads right.
OBJECTS = (
    "drink",
    "book",
    "ball",
    "gift",
    "letter",
    "ring",
    "kite",
    "cake",
    "bottle",
    "basket",
    "necklace",
    "snack",
    "flower",
    "pen",
    "hat",
    "bag",
    "card",
    "sandwich",
    "camera",
    "key",
    "computer",
    "toy",
    "phone",
    "watch",
    "candle",
)

_SLOT = re.compile(r"\{(N1|N2|S2|PLACE|OBJECT)\}")


def usable_names(tokenizer, names=NAMES) -> list[str]:
    """The names that encode to one token with a leading space, in list order."""
    return [n for n in names if single_token(tokenizer, n) is not None]


def render(template: str, fill: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Fill a template; return the text and the character span of each name slot
    (N1, N2, S2), found while building the text, never by searching it."""
    text, spans, last = "", {}, 0
    for m in _SLOT.finditer(template):
        text += template[last : m.start()]
        word = fill[m.group(1)]
        if m.group(1) in ("N1", "N2", "S2"):
            spans[m.group(1)] = (len(text), len(text) + len(word))
        text += word
        last = m.end()
    return text + template[last:], spans


def _prompt(tokenizer, prefix, k, order, io, s, c, place, obj, seed, group):
    """The four records of one prompt (IOI and its ABC control), or None if a name
    is not a single token in this context."""
    first, second = (io, s) if order == "ABBA" else (s, io)
    slot_io, slot_s1 = ("N1", "N2") if order == "ABBA" else ("N2", "N1")
    tid = f"ioi_{k:02d}_{order}"
    meta = {
        "order": order,
        "io": io,
        "s": s,
        "place": place,
        "object": obj,
        "seed": seed,
        "bos": bool(prefix),
    }
    out = []
    for giver, kind in ((s, "ioi"), (c, "abc")):
        body, spans = render(
            TEMPLATES[k], {"N1": first, "N2": second, "S2": giver, "PLACE": place, "OBJECT": obj}
        )
        text = prefix + body
        shift = len(prefix)
        names = ("IO", "S1", "S2") if kind == "ioi" else ("A", "B", "C")
        slots = {
            r: (spans[sl][0] + shift, spans[sl][1] + shift)
            for r, sl in zip(names, (slot_io, slot_s1, "S2"))
        }
        ids, pos = slot_positions(tokenizer, text, slots)
        if pos is None:
            return None
        pos["END"] = len(ids) - 1
        if kind == "ioi":
            conds = (("ioi_io", io, s), ("ioi_s", s, io))
            m = meta
        else:
            conds = (("abc_c", c, io), ("abc_b", s, io))
            m = dict(meta, c=c)
        for cond, tgt, dis in conds:
            out.append(
                PromptRecord(
                    task="ioi",
                    text=text,
                    target=" " + tgt,
                    distractor=" " + dis,
                    roles=dict(pos),
                    template=tid,
                    group=group,
                    condition=cond,
                    metadata=dict(m),
                )
            )
    return out


def ioi(
    tokenizer,
    n: int,
    seed: int = 0,
    controls: bool = False,
    bos: bool = True,
    names=None,
    places=PLACES,
    objects=OBJECTS,
) -> list[PromptRecord]:
    """``n`` IOI prompts, deterministic in ``seed``.

    Without controls: ``n`` records, condition ``ioi_io`` (target IO, distractor S).
    With controls: ``4 n`` records, the four conditions of each prompt in the order
    ioi_io, ioi_s, abc_c, abc_b, sharing one group id. The ``ioi_io`` records are
    the same with or without controls. Orders alternate ABBA, BABA. ``bos``
    prefixes the text with the tokenizer's beginning-of-sequence token, as Wang
    et al. do; role positions include it. Only names that are one token with a
    leading space for this tokenizer are used."""
    if not isinstance(n, int) or n < 1:
        raise InputError(f"ioi: n={n!r} must be a positive integer")
    pool = usable_names(tokenizer, NAMES if names is None else names)
    if len(pool) < 3:
        raise InputError(
            f"ioi: only {len(pool)} of the names encode to one token with a "
            "leading space for this tokenizer; at least 3 are needed; pass "
            "names= with single-token names"
        )
    prefix = bos_text(tokenizer) if bos else ""
    rng = random.Random(f"ioi:{seed}")
    per = 4 if controls else 1
    records, tries = [], 0
    while len(records) < per * n:
        i = len(records) // per
        tries += 1
        if tries > 20 * n + 100:
            raise InputError(
                "ioi: could not place the names as single tokens in the "
                "templates for this tokenizer; check its pre-tokenizer"
            )
        k = rng.randrange(len(TEMPLATES))
        io, s, c = rng.sample(pool, 3)
        place, obj = rng.choice(places), rng.choice(objects)
        order = "ABBA" if i % 2 == 0 else "BABA"
        recs = _prompt(
            tokenizer, prefix, k, order, io, s, c, place, obj, seed, f"ioi-{seed}-{i:05d}"
        )
        if recs is not None:
            records.extend(recs if controls else recs[:1])
    return records
