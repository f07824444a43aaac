"""A stacked price model: the fine-tuned price head blended with TF-IDF + ridge and/or retrieval.

``train.blend`` (with ``train.head: regression``) adds, once training ends, one or two parts to
the head: ``tfidf`` (a TF-IDF + ridge model on the training prompts) and ``knn`` (the prices of
the nearest training items in the fine-tuned model's embedding space, :mod:`pricefit.retrieval`).
They are mixed in log space::

    price = expm1((1 - w_tfidf - w_knn) * log1p(head) + w_tfidf * log1p(tfidf) + w_knn * log1p(knn))

with the weights from a grid (steps of 0.05, summing to at most 1) that has the lowest MAE on the
VALIDATION split (the held-out test split is never seen); all weights 0 is the head alone, so a
part only gets weight where it measured better on validation. Saved beside the adapter without
pickles: ``tfidf_blend.json`` (its weights, the vectorizer's vocabulary and settings, the clip
range and the validation MAE of each part and of the blend) with ``tfidf_blend.npz`` (idf, ridge
coefficients, intercept) for the TF-IDF part, and ``knn_index.*`` for the retrieval part.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .artifacts import atomic_path, write_json_atomic
from .errors import PricefitError
from .retrieval import KnnIndex, fit_knn, load_knn, save_knn
from .tfidf_model import fit, predict

BLEND_CONFIG = "tfidf_blend.json"
BLEND_ARRAYS = "tfidf_blend.npz"
GRID = tuple(round(0.05 * i, 2) for i in range(21))
PARTS = ("tfidf", "knn")


@dataclass
class TfidfBlend:
    """The head's blend partners and their weights (``weight`` is TF-IDF's, ``knn_weight`` retrieval's)."""

    vectorizer: Any
    ridge: Any
    clip: tuple[float, float]
    weight: float
    validation: dict[str, Any]
    knn: KnnIndex | None = None
    knn_weight: float = 0.0
    parts: tuple[str, ...] = field(default=("tfidf",))

    def tfidf(self, prompts: Sequence[str]) -> np.ndarray:
        if self.vectorizer is None:
            return np.full(len(prompts), np.nan)
        return predict(self.vectorizer, self.ridge, self.clip, prompts)

    def components(self, head: Sequence[float], prompts: Sequence[str], pooled: Any = None) -> dict[str, np.ndarray]:
        """Each part's price in dollars (float64), ``head`` included."""
        out = {"head": np.clip(np.asarray(head, dtype=np.float64), 0, None)}
        if "tfidf" in self.parts:
            out["tfidf"] = self.tfidf(prompts)
        if "knn" in self.parts:
            if pooled is None:
                raise PricefitError("this model's blend has a retrieval part, which needs the pooled states of the prompts")
            out["knn"] = self.knn.predict(pooled)
        return out

    def weights(self) -> dict[str, float]:
        w = {"tfidf": self.weight if "tfidf" in self.parts else 0.0, "knn": self.knn_weight if "knn" in self.parts else 0.0}
        return {"head": round(1.0 - w["tfidf"] - w["knn"], 2), **{k: v for k, v in w.items() if k in self.parts}}

    def explain(self, head: Sequence[float], prompts: Sequence[str], pooled: Any, low: float, high: float):
        """Per item: (blended price clipped to [low, high], a readable line, each part's price)."""
        parts = self.components(head, prompts, pooled)
        weights = self.weights()
        mixed = mix(parts, weights).clip(low, high).tolist()
        shown = [k for k in parts if k != "head"]
        tail = f"weight {weights['tfidf']:.2f}" if shown == ["tfidf"] else "weights " + ", ".join(f"{k} {weights[k]:.2f}" for k in shown)
        return [(float(m), f"blend {m:.2f} (head {parts['head'][i]:.2f}, " + ", ".join(f"{k} {parts[k][i]:.2f}" for k in shown)
                 + (", " if shown == ["tfidf"] else "; ") + tail + ")", {k: float(parts[k][i]) for k in parts})
                for i, m in enumerate(mixed)]


def mix(components: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """expm1 of the weighted sum of log1p prices (parts of weight 0 are left out)."""
    total = 0.0
    for name, w in weights.items():
        if w:
            total = total + w * np.log1p(np.clip(np.asarray(components[name], dtype=np.float64), 0, None))
    return np.expm1(total)


def choose_weights(head: Sequence[float], parts: dict[str, Sequence[float]], truth: Sequence[float]) -> tuple[dict[str, float], dict[str, float]]:
    """Grid weights of ``parts`` against the head with the lowest validation MAE.

    Ties go to the smaller total weight (more head), then in the order of ``parts``. Returns
    (weights of the parts, {"head_mae", "<part>_mae", "blend_mae"}).
    """
    y = np.asarray(truth, dtype=np.float64)
    comps = {"head": np.asarray(head, dtype=np.float64), **{k: np.asarray(v, dtype=np.float64) for k, v in parts.items()}}
    names = list(parts)
    best_key, best = None, None
    for combo in itertools.product(GRID, repeat=len(names)):
        if sum(combo) > 1.0 + 1e-9:
            continue
        w = {"head": 1.0 - sum(combo), **dict(zip(names, combo))}
        mae = float(np.abs(mix(comps, w) - y).mean())
        key = (mae, round(sum(combo), 2), combo)
        if best_key is None or key < best_key:
            best_key, best = key, dict(zip(names, combo))
    scores = {"head_mae": float(np.abs(comps["head"] - y).mean()),
              **{f"{k}_mae": float(np.abs(comps[k] - y).mean()) for k in names}, "blend_mae": best_key[0]}
    return best, scores


def choose_weight(head: Sequence[float], tfidf: Sequence[float], truth: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The grid weight of TF-IDF alone against the head (ties: the smaller weight, i.e. more head)."""
    w, scores = choose_weights(head, {"tfidf": tfidf}, truth)
    return w["tfidf"], scores


def fit_blend(train_prompts: Sequence[str], train_prices: Sequence[float], val_prompts: Sequence[str],
              val_prices: Sequence[float], val_head: Sequence[float], parts: Sequence[str] = ("tfidf",),
              train_pooled: Any = None, val_pooled: Any = None, min_items: int = 1) -> TfidfBlend:
    parts = tuple(p for p in PARTS if p in parts)
    if not len(val_prompts):
        raise PricefitError("train.blend needs validation items to choose its weight on, and the validation split is empty",
                            hint="set curate.validation_fraction above 0, or train.blend: none")
    vec = ridge = clip = None
    val_parts: dict[str, Any] = {}
    if "tfidf" in parts:
        vec, ridge, clip = fit(train_prompts, train_prices)
        val_parts["tfidf"] = predict(vec, ridge, clip, val_prompts)
    knn = None
    if "knn" in parts:
        knn = fit_knn(train_pooled, train_prices, val_pooled, val_prices)
        val_parts["knn"] = knn.predict(val_pooled)
    weights, scores = choose_weights(val_head, val_parts, val_prices)
    note = None
    if len(val_prompts) < min_items:  # too few to choose on: the head alone, the parts still reported
        weights = {k: 0.0 for k in weights}
        scores["blend_mae"] = scores["head_mae"]
        note = f"{len(val_prompts)} validation items are fewer than train.blend_min_items ({min_items}): the head alone"
    validation = {**scores, "n": len(val_prompts), "weights": {"head": round(1.0 - sum(weights.values()), 2), **weights},
                  **({"note": note} if note else {})}
    return TfidfBlend(vec, ridge, clip, weights.get("tfidf", 0.0), validation, knn, weights.get("knn", 0.0), parts)


def save_blend(directory: str | Path, blend: TfidfBlend) -> None:
    d = Path(directory)
    record: dict[str, Any] = {
        "format": "pricefit tfidf blend v2",
        "price": "expm1(sum over parts of weight * log1p(part price)); parts: head, tfidf = clip(expm1(ridge(tfidf(prompt))), "
                 "clip), knn = knn_index.json",
        "parts": list(blend.parts), "weights": blend.weights(), "weight": blend.weight, "validation": blend.validation,
    }
    if "tfidf" in blend.parts:
        vec = blend.vectorizer
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vec.get_params().items()
                  if k in ("ngram_range", "sublinear_tf", "strip_accents", "min_df", "max_features", "lowercase")}
        record |= {"clip": list(blend.clip), "vectorizer": params, "vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()}}
        with atomic_path(d / BLEND_ARRAYS) as p:
            with open(p, "wb") as f:
                np.savez(f, idf=vec.idf_, coef=np.asarray(blend.ridge.coef_, dtype=np.float64),
                         intercept=np.asarray([blend.ridge.intercept_], dtype=np.float64))
    if "knn" in blend.parts:
        save_knn(d, blend.knn)
    write_json_atomic(d / BLEND_CONFIG, record)


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
        parts = tuple(cfg.get("parts", ["tfidf"]))  # v1 files: TF-IDF only
        vec = ridge = clip = None
        if "tfidf" in parts:
            arrays = np.load(d / BLEND_ARRAYS)
            params = dict(cfg["vectorizer"])
            params["ngram_range"] = tuple(params["ngram_range"])
            vec = TfidfVectorizer(vocabulary=cfg["vocabulary"], **params)
            vec.idf_ = arrays["idf"]
            ridge = Ridge()
            ridge.coef_, ridge.intercept_ = arrays["coef"], float(arrays["intercept"][0])
            ridge.n_features_in_ = arrays["coef"].shape[0]
            clip = tuple(cfg["clip"])
        knn = load_knn(d) if "knn" in parts else None
        if "knn" in parts and knn is None:
            raise OSError(f"{d} lacks the retrieval index its blend names")
        weights = cfg.get("weights", {})
    except (OSError, KeyError, ValueError) as e:
        raise PricefitError(f"the blend in {d} cannot be read: {e}", hint="re-run `pricefit train`") from None
    return TfidfBlend(vec, ridge, clip, float(cfg["weight"]), cfg.get("validation", {}), knn,
                      float(weights.get("knn", 0.0)), parts)
