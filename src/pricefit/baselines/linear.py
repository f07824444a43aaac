"""Linear regression on simple hand-made features (the reference's "feature engineering" baseline).

Features, computed the same way for train and held-out items (:func:`features`):

- ``text_chars``, ``text_words``: length of the item text in characters and in words;
- ``log_text_chars``: log1p of the length (price grows less than linearly with description length);
- ``title_chars``, ``title_words``: length of the title;
- ``digits``: number of digit characters in the text (specs, wattages, model numbers);
- ``numbers``: number of separate numbers in the text;
- ``max_number_log``: log1p of the largest number in the text, capped at 1e6 (sizes and capacities);
- ``cat=<name>``: one-hot category, one column per category seen in training; an unseen held-out
  category gets all zeros.

Target: the price in dollars (as the reference did). Ordinary least squares (scikit-learn
``LinearRegression``); predictions are clipped to the training price range, since a linear model can
go below zero.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

_NUM = re.compile(r"\d+(?:\.\d+)?")
NUMERIC_FEATURES = [
    "text_chars",
    "text_words",
    "log_text_chars",
    "title_chars",
    "title_words",
    "digits",
    "numbers",
    "max_number_log",
]


def _row(text: str, title: str) -> list[float]:
    text = text or ""
    title = title or ""
    nums = [float(m) for m in _NUM.findall(text)]
    biggest = min(max(nums), 1e6) if nums else 0.0
    return [
        float(len(text)),
        float(len(text.split())),
        math.log1p(len(text)),
        float(len(title)),
        float(len(title.split())),
        float(sum(ch.isdigit() for ch in text)),
        float(len(nums)),
        math.log1p(biggest),
    ]


def features(
    texts: Sequence[str], titles: Sequence[str], categories: Sequence[str | None], vocab: Sequence[str]
) -> np.ndarray:
    """Feature matrix: NUMERIC_FEATURES then one column per category in ``vocab``."""
    index = {c: i for i, c in enumerate(vocab)}
    out = np.zeros((len(texts), len(NUMERIC_FEATURES) + len(vocab)), dtype=np.float64)
    for r, (text, title, cat) in enumerate(zip(texts, titles, categories)):
        out[r, : len(NUMERIC_FEATURES)] = _row(text, title)
        j = index.get(cat or "")
        if j is not None:
            out[r, len(NUMERIC_FEATURES) + j] = 1.0
    return out


def fit_predict(
    train: dict[str, Sequence], test: dict[str, Sequence]
) -> tuple[list[float], dict]:
    """``train``/``test``: mappings with ``text``, ``title``, ``category`` (and ``price`` for train)."""
    from sklearn.linear_model import LinearRegression

    prices = np.asarray(train["price"], dtype=np.float64)
    if prices.size == 0:
        raise ValueError("the training split is empty: nothing to fit the linear baseline on")
    vocab = sorted({c or "" for c in train["category"]})
    x_train = features(train["text"], train["title"], train["category"], vocab)
    x_test = features(test["text"], test["title"], test["category"], vocab)
    model = LinearRegression().fit(x_train, prices)
    pred = np.clip(model.predict(x_test), prices.min(), prices.max())
    names = NUMERIC_FEATURES + [f"cat={c}" for c in vocab]
    info = {
        "features": names,
        "coefficients": {n: float(c) for n, c in zip(names, model.coef_)},
        "intercept": float(model.intercept_),
        "clip": [float(prices.min()), float(prices.max())],
        "train_rows": int(prices.size),
    }
    return [float(p) for p in pred], info


def baseline(train: Any, test: Any) -> tuple[list[float], dict]:
    """The classical-baseline entry point (pricefit.baselines): curated train and held-out frames."""
    return fit_predict(train.to_dict(as_series=False), test.to_dict(as_series=False))
