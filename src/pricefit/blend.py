"""A stacked price model: the fine-tuned price head blended with TF-IDF + ridge, weighted on validation.

``train.blend: tfidf`` (with ``train.head: regression``) fits, once training ends, a TF-IDF + ridge
model on the training prompts and one weight ``w`` in log space::

    price = expm1((1 - w) * log1p(head price) + w * log1p(tfidf price))

``w`` is the value of a grid 0, 0.05, ..., 1 with the lowest MAE on the VALIDATION split (the
held-out test split is never seen); ``w = 0`` is the head alone, so the blend can only be chosen
where it measured better on validation. Both parts are saved beside the adapter without pickles:
``tfidf_blend.json`` (vocabulary, vectorizer settings, clip range, the weight and the validation
MAE of the head, TF-IDF and the blend) and ``tfidf_blend.npz`` (idf, ridge coefficients, intercept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .artifacts import atomic_path, write_json_atomic
from .errors import PricefitError
from .tfidf_model import fit, predict

BLEND_CONFIG = "tfidf_blend.json"
BLEND_ARRAYS = "tfidf_blend.npz"
GRID = tuple(round(0.05 * i, 2) for i in range(21))


@dataclass
class TfidfBlend:
    vectorizer: Any
    ridge: Any
    clip: tuple[float, float]
    weight: float
    validation: dict[str, float]

    def tfidf(self, prompts: Sequence[str]) -> np.ndarray:
        return predict(self.vectorizer, self.ridge, self.clip, prompts)

    def combine(self, head: Sequence[float], prompts: Sequence[str]) -> np.ndarray:
        h = np.log1p(np.clip(np.asarray(head, dtype=np.float64), 0, None))
        if self.weight == 0:
            return np.expm1(h)
        t = np.log1p(self.tfidf(prompts))
        return np.expm1((1 - self.weight) * h + self.weight * t)


def choose_weight(head: Sequence[float], tfidf: Sequence[float], truth: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The grid weight with the lowest validation MAE (ties: the smaller weight, i.e. more head)."""
    h, t, y = (np.log1p(np.clip(np.asarray(v, dtype=np.float64), 0, None)) for v in (head, tfidf, truth))
    y = np.expm1(y)
    maes = {w: float(np.abs(np.expm1((1 - w) * h + w * t) - y).mean()) for w in GRID}
    best = min(GRID, key=lambda w: (maes[w], w))
    return best, {"head_mae": maes[0.0], "tfidf_mae": maes[1.0], "blend_mae": maes[best]}


def fit_blend(train_prompts: Sequence[str], train_prices: Sequence[float], val_prompts: Sequence[str],
              val_prices: Sequence[float], val_head: Sequence[float]) -> TfidfBlend:
    if not len(val_prompts):
        raise PricefitError("train.blend needs validation items to choose its weight on, and the validation split is empty",
                            hint="set curate.validation_fraction above 0, or train.blend: none")
    vec, ridge, clip = fit(train_prompts, train_prices)
    weight, scores = choose_weight(val_head, predict(vec, ridge, clip, val_prompts), val_prices)
    return TfidfBlend(vec, ridge, clip, weight, {**scores, "n": len(val_prompts)})


def save_blend(directory: str | Path, blend: TfidfBlend) -> None:
    d = Path(directory)
    vec = blend.vectorizer
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vec.get_params().items()
              if k in ("ngram_range", "sublinear_tf", "strip_accents", "min_df", "max_features", "lowercase")}
    write_json_atomic(d / BLEND_CONFIG, {
        "format": "pricefit tfidf blend v1",
        "price": "expm1((1 - weight) * log1p(head) + weight * log1p(clip(expm1(ridge(tfidf(prompt))), clip)))",
        "weight": blend.weight, "clip": list(blend.clip), "validation": blend.validation,
        "vectorizer": params, "vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()},
    })
    with atomic_path(d / BLEND_ARRAYS) as p:
        with open(p, "wb") as f:
            np.savez(f, idf=vec.idf_, coef=np.asarray(blend.ridge.coef_, dtype=np.float64),
                     intercept=np.asarray([blend.ridge.intercept_], dtype=np.float64))


def load_blend(adapter_dir: str | Path) -> TfidfBlend | None:
    """The blend saved beside an adapter (None when it has none)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    d = Path(adapter_dir)
    d = d if (d / BLEND_CONFIG).is_file() else d / "adapter"
    if not (d / BLEND_CONFIG).is_file():
        return None
    try:
        cfg = json.loads((d / BLEND_CONFIG).read_text())
        arrays = np.load(d / BLEND_ARRAYS)
        params = dict(cfg["vectorizer"])
        params["ngram_range"] = tuple(params["ngram_range"])
        vec = TfidfVectorizer(vocabulary=cfg["vocabulary"], **params)
        vec.idf_ = arrays["idf"]
        ridge = Ridge()
        ridge.coef_, ridge.intercept_ = arrays["coef"], float(arrays["intercept"][0])
        ridge.n_features_in_ = arrays["coef"].shape[0]
    except (OSError, KeyError, ValueError) as e:
        raise PricefitError(f"the TF-IDF blend in {d} cannot be read: {e}", hint="re-run `pricefit train`") from None
    return TfidfBlend(vec, ridge, tuple(cfg["clip"]), float(cfg["weight"]), cfg.get("validation", {}))
