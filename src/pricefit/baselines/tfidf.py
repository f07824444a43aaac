"""The TF-IDF + ridge baseline: :mod:`pricefit.tfidf_model` (kept apart so train.blend needs no baselines code)."""

from ..tfidf_model import ALPHA, MAX_FEATURES, fit, fit_predict, predict, vectorizer_params

__all__ = ["ALPHA", "MAX_FEATURES", "fit", "fit_predict", "predict", "vectorizer_params"]
