"""Fixtures shared by the test files: the word-level tokenizer, and the tiny
models saved on disk (all built by :func:`tests.models.build_model_dir`)."""

from __future__ import annotations

import pytest

from tests.models import INGEST_GPT2, build_model_dir, tiny_gpt2, word_tokenizer


@pytest.fixture(scope="module")
def tok():
    """The word-level tokenizer of the tiny random models (tests/models.py)."""
    return word_tokenizer()


@pytest.fixture(scope="module")
def word_gpt2_dir(tmp_path_factory) -> str:
    """A tiny random GPT-2 (float32, every parameter randomised) with the word
    tokenizer, saved in a fresh folder."""
    import torch

    d = tmp_path_factory.mktemp("tiny_gpt2")
    return str(build_model_dir(d, model=tiny_gpt2(dtype=torch.float32), tokenizer=word_tokenizer()))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The ingest tests' 2-layer GPT-2 (Hugging Face's random init, seed 0) with the
    IOI word tokenizer, saved in a fresh folder."""
    return build_model_dir(tmp_path_factory.mktemp("tiny-gpt2"), **INGEST_GPT2)
