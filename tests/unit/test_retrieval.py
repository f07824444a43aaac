"""Retrieval (train.blend: knn): the prices of the nearest training items in the model's embedding space.

Hand-made embeddings where the answer is known: two clusters of training items, cheap and dear;
a query inside a cluster must get that cluster's prices back, k and tau come from the validation
grid, and the index survives a save/load with the same predictions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pricefit.blend import choose_weights, mix
from pricefit.retrieval import K_GRID, KNN_ARRAYS, KNN_CONFIG, TAU_GRID, fit_knn, load_knn, save_knn


def clusters(n_per: int, seed: int = 0):
    """Points around +e0 (price $10) and +e1 (price $500) in 8 dimensions, plus a shared offset
    (the common direction of decoder states) that centring must remove."""
    rng = np.random.default_rng(seed)
    offset = np.full(8, 5.0, dtype=np.float32)
    cheap = offset + np.eye(8, dtype=np.float32)[0] + 0.05 * rng.standard_normal((n_per, 8)).astype(np.float32)
    dear = offset + np.eye(8, dtype=np.float32)[1] + 0.05 * rng.standard_normal((n_per, 8)).astype(np.float32)
    return np.concatenate([cheap, dear]), np.array([10.0] * n_per + [500.0] * n_per)


def test_a_query_gets_the_prices_of_its_own_cluster_and_k_tau_come_from_the_grid():
    x, y = clusters(60)
    vx, vy = clusters(10, seed=1)
    index = fit_knn(x, y, vx, vy)
    assert index.k in K_GRID and index.tau in TAU_GRID
    assert len(index.validation["grid_mae"]) == len(K_GRID) * len(TAU_GRID)
    assert index.validation["knn_mae"] == min(index.validation["grid_mae"].values())
    assert index.validation["knn_mae"] == pytest.approx(0.0, abs=1e-6)  # every neighbour is in the right cluster
    assert index.predict(vx[:1])[0] == pytest.approx(10.0) and index.predict(vx[-1:])[0] == pytest.approx(500.0)
    # centred: without removing the shared offset both clusters would look alike (cosine ~0.98)
    assert np.abs(index.embeddings.mean(0)).max() < 0.2
    assert np.linalg.norm(index.embeddings, axis=1) == pytest.approx(np.ones(len(x)), abs=1e-5)


def test_the_knn_price_is_the_softmax_weighted_geometric_mean_of_the_neighbours():
    x = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    y = np.array([10.0, 40.0, 1000.0, 5.0])
    index = fit_knn(x, y, x[:2], y[:2])
    index.mean = np.zeros(2, dtype=np.float32)  # no centring: the similarities below are the cosines
    index.embeddings = x / np.linalg.norm(x, axis=1, keepdims=True)
    index.k, index.tau = 2, 0.1
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    sims = np.array([1.0, 0.8])  # the two nearest: [1, 0] and [0.8, 0.6]
    w = np.exp(sims / 0.1) / np.exp(sims / 0.1).sum()
    expected = np.expm1(w @ np.log1p([10.0, 40.0]))
    assert index.predict(q)[0] == pytest.approx(expected, rel=1e-6)  # float32 similarities


def test_the_index_is_saved_without_pickles_and_loads_to_the_same_predictions(tmp_path):
    x, y = clusters(30)
    index = fit_knn(x, y, x[:5], y[:5])
    save_knn(tmp_path, index)
    saved = json.loads((tmp_path / KNN_CONFIG).read_text())
    assert saved["k"] == index.k and saved["items"] == 60 and saved["hidden"] == 8
    from safetensors.numpy import load_file

    arrays = load_file(str(tmp_path / KNN_ARRAYS))
    assert arrays["embeddings"].dtype == np.float16 and arrays["log_price"].dtype == np.float64
    again = load_knn(tmp_path)
    q = clusters(4, seed=7)[0]
    assert again.predict(q) == pytest.approx(index.predict(q), rel=1e-3)  # float16 storage


def test_empty_validation_is_a_clear_error():
    from pricefit.errors import PricefitError

    x, y = clusters(5)
    with pytest.raises(PricefitError, match="chooses k on the validation split, and it is empty"):
        fit_knn(x, y, np.zeros((0, 8)), [])


def test_blend_weights_over_two_parts_take_the_validation_minimum_and_prefer_the_head():
    truth = np.array([10.0, 100.0, 1000.0])
    exact = truth.copy()
    off = truth * 3
    w, scores = choose_weights(off, {"tfidf": off, "knn": exact}, truth)
    assert w == {"tfidf": 0.0, "knn": 1.0} and scores["blend_mae"] == pytest.approx(0.0)
    w, _ = choose_weights(exact, {"tfidf": off, "knn": off}, truth)
    assert w == {"tfidf": 0.0, "knn": 0.0}  # the head alone wins: no part gets weight
    # one part too high, the other too low: both get weight, and the mix beats each part alone
    w, scores = choose_weights(truth * 3, {"tfidf": truth / 3, "knn": off}, truth)
    assert 0.4 <= w["tfidf"] <= 0.6 and scores["blend_mae"] < 0.02 * min(scores["head_mae"], scores["tfidf_mae"])
    got = mix({"head": truth * 3, "tfidf": truth / 3, "knn": off}, {"head": 0.5, "tfidf": 0.5, "knn": 0.0})
    assert got == pytest.approx(np.expm1((np.log1p(truth * 3) + np.log1p(truth / 3)) / 2))
