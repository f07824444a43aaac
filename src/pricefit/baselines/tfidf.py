"""The TF-IDF + ridge baseline: :mod:`pricefit.tfidf_model` (kept apart so train.blend needs no baselines code)."""

from __future__ import annotations

from typing import Any

from ..tfidf_model import ALPHA, MAX_FEATURES, fit, fit_predict, predict, vectorizer_params

__all__ = ["ALPHA", "MAX_FEATURES", "baseline", "fit", "fit_predict", "predict", "vectorizer_params"]


def baseline(train: Any, test: Any) -> tuple[list[float], dict]:
    """The classical-baseline entry point (pricefit.baselines): curated train and held-out frames."""
    return fit_predict(train["text"].to_list(), [float(p) for p in train["price"].to_list()], test["text"].to_list())
