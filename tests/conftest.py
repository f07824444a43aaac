"""Shared test fixtures (keep small; stage-specific fixtures live beside their tests)."""

from __future__ import annotations

import os
from pathlib import Path

# the orchestration commands (run, sweep, serve) join `pricefit` through the "pricefit.commands"
# entry point; a shared venv installed before pyproject.toml declared it names them here instead
os.environ.setdefault("PRICEFIT_COMMANDS", "flows.commands")

import pytest


@pytest.fixture(scope="session")
def word_tokenizer():
    """A fast tokenizer with exact, predictable counts: one token per word or run of punctuation.

    Built locally (no download): WordLevel with only [UNK] and [PAD], Whitespace pre-tokenizer
    (``\\w+|[^\\w\\s]+``), so ``len(tok(text).input_ids) == len(re.findall(r"\\w+|[^\\w\\s]+", text))``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data from PRICEFIT_SHARED_DATA; skips the test when unset."""
    from pricefit.config import shared_data_dir

    d = shared_data_dir()
    if d is None:
        pytest.skip("PRICEFIT_SHARED_DATA is not set (make test and .ci/run set it to ../shared/data)")
    if not d.is_dir():
        pytest.skip(f"PRICEFIT_SHARED_DATA={d} is not a directory")
    return d
