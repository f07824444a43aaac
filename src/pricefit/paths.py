"""Where pricefit keeps what outlives a run: the model and reply caches, the shared data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """Where models and other caches live (PRICEFIT_HOME, default ~/.cache/pricefit)."""
    return Path(os.environ.get("PRICEFIT_HOME", Path.home() / ".cache" / "pricefit"))


def shared_data_dir() -> Path | None:
    """../shared/data, from PRICEFIT_SHARED_DATA (set by .ci/run and the Makefile)."""
    env = os.environ.get("PRICEFIT_SHARED_DATA")
    return Path(env) if env else None
