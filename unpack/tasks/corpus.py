"""User corpora: JSONL or CSV files of prompts, validated row by row.

Columns (JSONL keys or CSV header):

- ``text`` (required): the prompt, traced exactly as written.
- ``target`` (required): the string to predict, e.g. " Paris" (its first token is used).
- ``distractor`` (optional): the string to compare against.
- ``roles`` (optional): an object naming positions. A plain integer is a
  character offset into ``text`` (the role is the token covering that
  character); ``{"char": c}`` says the same; ``{"token": k}`` is a token
  position (0-based, in the encoding of ``text``). In CSV the cell holds the
  JSON object. ``END`` (the last token) is added unless given.
- ``metadata`` (optional): a free JSON object (a JSON string in CSV). Any other
  column or key is kept in ``metadata`` too.
- ``task``, ``template``, ``group``, ``condition`` (optional): copied to the
  record (defaults: "corpus", "", "<file name>:<line>", "").
- ``root`` (optional): one more trace of the prompt, ``COMPONENT@ROLE`` or
  ``COMPONENT@POSITION`` (as ``unpack ingest --roots``, for this row only); the
  role must be one of the row's roles and the position inside its text.

A bad row (not UTF-8, not JSON, missing text or target, a target or distractor
that encodes to no token or to the unknown token, a role outside the text) is
reported as a :class:`CorpusError` with file, line and reason; the other rows
still load. UTF-8 is expected; UTF-16 and UTF-32 files with a byte-order mark
are read too. With ``bos=True`` the tokenizer's beginning-of-sequence text is put
in front of each text (positions given by the user are shifted to match).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

from ..errors import InputError
from ..tokens import bos_text, encode, token_at_char
from .records import PromptRecord

_KNOWN = (
    "text",
    "target",
    "distractor",
    "roles",
    "metadata",
    "task",
    "template",
    "group",
    "condition",
    "root",
)


@dataclass(frozen=True)
class CorpusError:
    """One rejected row: where it is and why."""

    file: str
    line: int
    reason: str
    text: str | None = None  # the row's text, or the line itself when it has none

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class _Bad(Exception):
    """A row is invalid; the message is the reason."""


def _check_string(tokenizer, row: dict, key: str, required: bool) -> str | None:
    """The row's ``key`` as a string that encodes to a real first token."""
    v = row.get(key)
    if v is None or v == "":
        if required:
            raise _Bad(f"missing {key}")
        return None
    if not isinstance(v, str):
        raise _Bad(f"{key} must be a string, got {type(v).__name__}")
    ids, _ = encode(tokenizer, v)
    if not ids:
        raise _Bad(f"{key} {v!r} encodes to no token")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk:
        raise _Bad(f"{key} {v!r} encodes to the unknown token")
    return v


def _json_object(value, what: str, not_object: str) -> dict:
    """``value`` as a dict: parsed from JSON text (CSV cells) or taken as it is."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise _Bad(f"{what} is not a JSON object ({e.msg})")
    if not isinstance(value, dict):
        raise _Bad(not_object)
    return value


def _roles(spec, text: str, offsets, shift_chars: int, shift_tokens: int) -> dict[str, int]:
    """Resolve user roles (character offsets or token positions) to token positions."""
    if spec is None or spec == "":
        return {}
    spec = _json_object(
        spec, "roles", "roles must be an object of name -> character offset or {\"token\": k}"
    )
    out = {}
    for name, v in spec.items():
        kind = "char"
        if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in ("char", "token"):
            kind, v = next(iter(v.items()))
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(
                f"role {name!r}: {v!r} is not an integer (use an int character "
                "offset, {\"char\": c} or {\"token\": k})"
            )
        if kind == "char":
            if not 0 <= v < len(text) - shift_chars:
                raise _Bad(
                    f"role {name!r}: character offset {v} is outside the text "
                    f"(0..{len(text) - shift_chars - 1})"
                )
            try:
                out[str(name)] = token_at_char(offsets, v + shift_chars)
            except ValueError:
                raise _Bad(
                    f"role {name!r}: character offset {v} is not inside a token (whitespace?)"
                ) from None
        else:
            n = len(offsets) - shift_tokens
            if not 0 <= v < n:
                raise _Bad(f"role {name!r}: token position {v} is outside the text (0..{n - 1})")
            out[str(name)] = v + shift_tokens
    return out


def _root(spec, roles: dict[str, int], n: int) -> str | None:
    """A row's ``root``: COMPONENTS@ROLE with a role of this row, or
    COMPONENTS@POSITION inside the text. The components are checked against the
    model when the row is traced."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        raise _Bad(f"root must be a string like attn_1_head_0@END, got {type(spec).__name__}")
    comps, at, where = spec.strip().rpartition("@")
    if not at or not comps or not where or " " in spec.strip():
        raise _Bad(
            f"root {spec!r} must look like COMPONENT@ROLE or COMPONENT@POSITION, "
            "e.g. attn_1_head_0@END or mlp_0@-1"
        )
    try:
        pos = int(where)
    except ValueError:
        if where not in roles:
            raise _Bad(
                f"root {spec!r}: the row has no role {where!r} (its roles: "
                f"{', '.join(sorted(roles))})"
            ) from None
        return spec.strip()
    if not -n <= pos < n:
        raise _Bad(
            f"root {spec!r}: position {pos} is outside the text of {n} tokens "
            f"(0..{n - 1}, or negative from the end)"
        )
    return spec.strip()


def _record(tokenizer, row: dict, where: str, bos: str) -> PromptRecord:
    """Validate one parsed row and build its record; raises _Bad."""
    text = row.get("text")
    if text is None or text == "":
        raise _Bad("missing text")
    if not isinstance(text, str):
        raise _Bad(f"text must be a string, got {type(text).__name__}")
    target = _check_string(tokenizer, row, "target", True)
    distractor = _check_string(tokenizer, row, "distractor", False)
    shift_chars = shift_tokens = 0
    if bos and not text.startswith(bos):
        shift_chars, shift_tokens = len(bos), len(encode(tokenizer, bos)[0])
        text = bos + text
    ids, offsets = encode(tokenizer, text)
    if not ids:
        raise _Bad("text encodes to no token")
    roles = _roles(row.get("roles"), text, offsets, shift_chars, shift_tokens)
    roles.setdefault("END", len(ids) - 1)
    root = _root(row.get("root"), roles, len(ids))
    meta = _json_object(row.get("metadata") or {}, "metadata", "metadata must be an object")
    meta = dict(meta, **{k: v for k, v in row.items() if k not in _KNOWN and k is not None})
    fields = {k: row.get(k) for k in ("task", "template", "group", "condition")}
    for k, v in fields.items():
        if v is not None and not isinstance(v, str):
            raise _Bad(f"{k} must be a string")
    return PromptRecord(
        task=fields["task"] or "corpus",
        text=text,
        target=target,
        distractor=distractor,
        roles=roles,
        template=fields["template"] or "",
        group=fields["group"] or where,
        condition=fields["condition"] or "",
        metadata=meta,
        root=root,
    )


def _jsonl_rows(data: bytes):
    """(line, row dict or _Bad) for each non-blank line."""
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, _Bad(f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})")
            continue
        if n == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, _Bad(f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        yield n, row if isinstance(row, dict) else _Bad("not a JSON object")


def _csv_rows(data: bytes, path: str):
    """(line, row dict or _Bad) for each CSV record; line is where the record starts."""
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: the CSV file is empty; it needs a header with text,target")
    missing = [c for c in ("text", "target") if c not in header]
    if missing:
        raise InputError(
            f"{path}: the CSV header lacks column(s) {missing}; the header "
            "must name text,target (and optionally distractor,roles,metadata)"
        )
    start = reader.line_num + 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        try:
            for c in cells:
                c.encode("utf-8")
        except UnicodeEncodeError:
            yield line, _Bad("not valid UTF-8")
            continue
        if len(cells) != len(header):
            yield line, _Bad(f"{len(cells)} fields, the header has {len(header)}")
            continue
        yield line, {k: v for k, v in zip(header, cells)}


_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _as_utf8(data: bytes, path: str) -> bytes:
    """The file's bytes in UTF-8: a UTF-16 or UTF-32 file with its byte-order mark
    (as spreadsheet programs save "Unicode text") is converted; one without the
    mark (NUL bytes between the characters) is refused with the fix."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec).encode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{path}: starts with a {codec.upper()} byte-order mark but is "
                    f"not valid {codec.upper()} (byte {e.start}); save it as UTF-8 "
                    "and load it again"
                ) from None
    head = data[:4096]
    if head and head.count(0) >= len(head) // 4:
        raise InputError(
            f"{path}: the file looks like UTF-16 or UTF-32 without a byte-order "
            "mark (it has NUL bytes between its characters), not UTF-8; save it "
            "as UTF-8 (e.g. iconv -f UTF-16LE -t UTF-8 FILE > NEW) and load it again"
        )
    return data


def check_corpus_path(path, fmt: str | None = None) -> str:
    """The corpus format (``jsonl`` or ``csv``) of an existing, readable file;
    an InputError naming the file and the fix otherwise. Needs no tokenizer, so
    the CLI checks this before loading a model."""
    path = str(path)
    if fmt is None:
        ext = os.path.splitext(path)[1].lower()
        fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(ext)
    if fmt not in ("jsonl", "csv"):
        raise InputError(
            f"{path}: unknown corpus format; use a .jsonl or .csv file (or pass fmt='jsonl'/'csv')"
        )
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such corpus file; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: the corpus file cannot be read (permissions); check them")
    return fmt


def load_corpus(path, tokenizer, bos: bool = False, fmt: str | None = None):
    """Read a JSONL or CSV corpus; return ``(records, errors)``.

    ``errors`` is a list of :class:`CorpusError` (file, line, reason), one per
    rejected row; the good rows load regardless. ``fmt`` ("jsonl" or "csv")
    overrides the guess from the file extension. A missing file, an unknown
    format or a CSV header without text and target raise InputError."""
    path = str(path)
    fmt = check_corpus_path(path, fmt)
    with open(path, "rb") as f:
        data = _as_utf8(f.read(), path)
    bos_str = bos_text(tokenizer) if bos else ""
    name = os.path.basename(path)
    rows = _jsonl_rows(data) if fmt == "jsonl" else _csv_rows(data, path)
    records, errors = [], []
    raw_lines = data.split(b"\n")
    for line, row in rows:
        try:
            if isinstance(row, _Bad):
                raise row
            records.append(_record(tokenizer, row, f"{name}:{line}", bos_str))
            records[-1].where = f"{path}:{line}"  # for messages (not a field: not stored)
        except _Bad as e:
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text:
                raw = raw_lines[line - 1] if 0 < line <= len(raw_lines) else b""
                text = raw.decode("utf-8", errors="replace").strip()[:2000] or None
            errors.append(CorpusError(path, line, str(e), text))
    return records, errors
