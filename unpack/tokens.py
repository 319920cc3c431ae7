"""The one way text becomes token ids, shared by tracing and by the tasks.

Text is encoded with ``add_special_tokens=False``: what the text says is what is
traced. A beginning-of-sequence prefix, when wanted, is part of the text
(:func:`bos_text`), so character offsets and token positions always agree.
"""

from __future__ import annotations


def encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` and each token's ``(start, end)`` character span."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def bos_text(tokenizer) -> str:
    """The string that encodes to the model's beginning-of-sequence token
    (``bos_token``, else ``eos_token`` as GPT-2 uses), or '' if it has neither."""
    tok = tokenizer.bos_token or tokenizer.eos_token
    return tok or ""


def token_at_char(offsets: list[tuple[int, int]], char: int) -> int:
    """Position of the token whose span holds character ``char``.

    Raises ValueError if no token covers it (e.g. the offset is past the text)."""
    for i, (a, b) in enumerate(offsets):
        if a <= char < b:
            return i
    raise ValueError(
        f"character offset {char} is not inside any token "
        f"(text spans characters 0..{offsets[-1][1] if offsets else 0})"
    )
