"""Prompts with known roles: built-in tasks (IOI with ABC controls, induction)
and user corpora (JSONL/CSV). Every source yields :class:`PromptRecord` objects
(text, target, distractor, roles -> token positions, template, group,
condition, metadata) that tracing and ingest consume; ``unpack tasks ...``
writes the same records as JSONL.
"""

from .corpus import CorpusError, load_corpus
from .induction import induction, token_pool
from .ioi import ioi
from .records import PromptRecord, read_jsonl, write_jsonl

__all__ = [
    "PromptRecord",
    "CorpusError",
    "ioi",
    "induction",
    "token_pool",
    "load_corpus",
    "read_jsonl",
    "write_jsonl",
]
