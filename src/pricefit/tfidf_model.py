"""TF-IDF of the item text + ridge regression on log price (the tfidf baseline and train.blend use it).

Word unigrams and bigrams, sublinear term frequency, accents stripped; ``min_df=2`` once the
training split has 1,000 rows or more (rarer n-grams are noise there), 1 below that. The target is
``log1p(price)`` (prices span three orders of magnitude; squared error on the raw price would be
dominated by the dearest items); predictions are ``expm1`` of the ridge output, clipped to the
training price range.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ALPHA = 1.0
MAX_FEATURES = 100_000


def fit(train_texts: Sequence[str], train_prices: Sequence[float], alpha: float = ALPHA):
    """(vectorizer, ridge, (low, high)): the fitted model and the training price range it clips to."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    prices = np.asarray(train_prices, dtype=np.float64)
    if prices.size == 0:
        raise ValueError("the training split is empty: nothing to fit the TF-IDF baseline on")
    vec = TfidfVectorizer(**vectorizer_params(prices.size))
    x_train = vec.fit_transform([t or "" for t in train_texts])
    model = Ridge(alpha=alpha).fit(x_train, np.log1p(prices))
    return vec, model, (float(prices.min()), float(prices.max()))


def vectorizer_params(n_rows: int) -> dict:
    return {
        "ngram_range": (1, 2),
        "sublinear_tf": True,
        "strip_accents": "unicode",
        "min_df": 2 if n_rows >= 1000 else 1,
        "max_features": MAX_FEATURES,
    }


def predict(vec, model, clip: tuple[float, float], texts: Sequence[str]) -> np.ndarray:
    pred = np.expm1(model.predict(vec.transform([t or "" for t in texts])))
    return np.clip(pred, clip[0], clip[1])


def fit_predict(
    train_texts: Sequence[str], train_prices: Sequence[float], test_texts: Sequence[str], alpha: float = ALPHA
) -> tuple[list[float], dict]:
    vec, model, clip = fit(train_texts, train_prices, alpha)
    pred = predict(vec, model, clip, test_texts)
    info = {
        "vocabulary": len(vec.vocabulary_),
        "alpha": alpha,
        "target": "log1p(price)",
        "clip": list(clip),
        "train_rows": len(train_prices),
    }
    return [float(p) for p in pred], info
