"""Retrieval: the prices of the nearest training items, in the fine-tuned model's own embedding space.

``train.blend: knn`` (or ``tfidf+knn``) embeds every training prompt, once training ends, with
the fine-tuned model itself: the pooled final hidden state that the price head reads. The
embeddings are centred on the training mean (a decoder's states share a large common direction,
which makes every cosine similarity look alike) and L2-normalised. An item's kNN price is the
weighted geometric mean of the prices of its ``k`` most similar training items, weights
``softmax(similarity / tau)``.

Why: the head is linear in the embedding, so it shrinks an item toward the prices of the whole
pool; the neighbours of a dear item in the model's own space are mostly dear items, so their
prices pull it back (a CPU proxy, TF-IDF neighbours against TF-IDF + ridge, cut the reference
slice's validation MAE from $110 to $106). ``k`` and ``tau`` are chosen on the VALIDATION split
(lowest MAE of the kNN price alone), and its weight against the head by :mod:`pricefit.blend`.

Saved beside the adapter, without pickles: ``knn_index.safetensors`` (``embeddings`` float16
[N, hidden], ``log_price`` float64 [N], ``mean`` float32 [hidden]) and ``knn_index.json``
(k, tau, counts, the validation scores of the grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .artifacts import atomic_path, write_json_atomic
from .errors import PricefitError

KNN_CONFIG = "knn_index.json"
KNN_ARRAYS = "knn_index.safetensors"
K_GRID = (5, 10, 20, 50)
TAU_GRID = (0.02, 0.05, 0.1, 0.2)
_CHUNK = 1024


@dataclass
class KnnIndex:
    embeddings: np.ndarray  # [N, H] float32, centred and unit length
    log_price: np.ndarray  # [N] float64, log1p of the training prices
    mean: np.ndarray  # [H] float32, the training embeddings' mean (subtracted before normalising)
    k: int
    tau: float
    validation: dict[str, Any] = field(default_factory=dict)

    def normalize(self, pooled: Any) -> np.ndarray:
        return _normalize(np.asarray(pooled, dtype=np.float32), self.mean)

    def neighbours(self, pooled: Any, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities [M, k] descending, training-row indices [M, k]) of each query."""
        k = min(k or self.k, len(self.log_price))
        q = self.normalize(pooled)
        sims = np.empty((len(q), k), dtype=np.float32)
        idx = np.empty((len(q), k), dtype=np.int64)
        for s in range(0, len(q), _CHUNK):
            block = q[s:s + _CHUNK] @ self.embeddings.T
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(block, top, 1)
            order = np.argsort(-vals, axis=1, kind="stable")
            idx[s:s + _CHUNK] = np.take_along_axis(top, order, 1)
            sims[s:s + _CHUNK] = np.take_along_axis(vals, order, 1)
        return sims, idx

    def predict(self, pooled: Any) -> np.ndarray:
        """kNN prices in dollars (float64), one per pooled state."""
        if len(np.asarray(pooled)) == 0:
            return np.zeros(0)
        sims, idx = self.neighbours(pooled)
        return np.expm1(_weighted_log(sims, self.log_price[idx], self.tau))


def _normalize(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def _weighted_log(sims: np.ndarray, logs: np.ndarray, tau: float) -> np.ndarray:
    z = (sims - sims[:, :1]) / tau  # the top similarity first: exp() stays in range
    w = np.exp(z.astype(np.float64))
    return (w * logs).sum(1) / w.sum(1)


def fit_knn(train_pooled: Any, train_prices: Sequence[float], val_pooled: Any, val_prices: Sequence[float]) -> KnnIndex:
    """The index of the training items, with ``k`` and ``tau`` of the grid that price validation best."""
    train = np.asarray(train_pooled, dtype=np.float32)
    if train.ndim != 2 or len(train) == 0:
        raise PricefitError("retrieval needs the embeddings of the training items, and there are none")
    if len(np.asarray(val_pooled)) == 0:
        raise PricefitError("train.blend with knn chooses k on the validation split, and it is empty",
                            hint="set curate.validation_fraction above 0, or leave knn out of train.blend")
    mean = train.mean(0)
    index = KnnIndex(_normalize(train, mean), np.log1p(np.clip(np.asarray(train_prices, dtype=np.float64), 0, None)),
                     mean, K_GRID[0], TAU_GRID[0])
    truth = np.asarray(val_prices, dtype=np.float64)
    kmax = min(max(K_GRID), len(train))
    sims, idx = index.neighbours(val_pooled, kmax)
    logs = index.log_price[idx]
    grid: dict[str, float] = {}
    for k in sorted({min(k, kmax) for k in K_GRID}):
        for tau in TAU_GRID:
            pred = np.expm1(_weighted_log(sims[:, :k], logs[:, :k], tau))
            grid[f"k={k},tau={tau}"] = float(np.abs(pred - truth).mean())
    best = min(grid, key=lambda key: (grid[key], key))
    k_s, tau_s = (part.split("=")[1] for part in best.split(","))
    index.k, index.tau = int(k_s), float(tau_s)
    index.validation = {"knn_mae": grid[best], "n": int(len(truth)), "grid_mae": grid}
    return index


def save_knn(directory: str | Path, index: KnnIndex) -> None:
    import torch
    from safetensors.torch import save_file

    d = Path(directory)
    tensors = {"embeddings": torch.from_numpy(index.embeddings.astype(np.float16)),
               "log_price": torch.from_numpy(index.log_price.astype(np.float64)),
               "mean": torch.from_numpy(index.mean.astype(np.float32))}
    with atomic_path(d / KNN_ARRAYS) as p:
        save_file(tensors, str(p), metadata={"format": "pt"})
    write_json_atomic(d / KNN_CONFIG, {
        "format": "pricefit knn index v1",
        "price": "expm1(sum_j softmax(sim_j / tau) * log_price_j) over the k most cosine-similar training items "
                 "(embeddings centred on mean, unit length)",
        "k": index.k, "tau": index.tau, "items": int(len(index.log_price)), "hidden": int(index.embeddings.shape[1]),
        "validation": index.validation,
    })


def load_knn(directory: str | Path) -> KnnIndex | None:
    """The index saved in an adapter directory (None when it has none)."""
    d = Path(directory)
    if not (d / KNN_CONFIG).is_file():
        return None
    from safetensors.numpy import load_file

    try:
        cfg = json.loads((d / KNN_CONFIG).read_text())
        arrays = load_file(str(d / KNN_ARRAYS))
        return KnnIndex(arrays["embeddings"].astype(np.float32), arrays["log_price"].astype(np.float64),
                        arrays["mean"].astype(np.float32), int(cfg["k"]), float(cfg["tau"]), cfg.get("validation", {}))
    except (OSError, KeyError, ValueError) as e:
        raise PricefitError(f"the retrieval index in {d} cannot be read: {e}", hint="re-run `pricefit train`") from None
