"""Constant baseline: every held-out item gets the mean training price.

The floor any model must clear (the reference product pricer's constant baseline: $145.51 MAE).
"""

from __future__ import annotations

from typing import Any, Sequence


def fit_predict(train_prices: Sequence[float], n_test: int) -> tuple[list[float], dict]:
    """(predictions, model info): the training mean, ``n_test`` times."""
    if len(train_prices) == 0:
        raise ValueError("the training split is empty: the constant baseline has no mean to predict")
    mean = float(sum(float(p) for p in train_prices) / len(train_prices))
    return [mean] * n_test, {"mean": mean, "train_rows": len(train_prices)}


def baseline(train: Any, test: Any) -> tuple[list[float], dict]:
    """The classical-baseline entry point (pricefit.baselines): curated train and held-out frames."""
    return fit_predict([float(p) for p in train["price"].to_list()], test.height)
