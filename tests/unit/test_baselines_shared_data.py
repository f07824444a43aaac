"""Classical baselines on real Amazon listings (../shared/data): the learned ones must beat the mean."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from pricefit.baselines import constant, linear, tfidf


def _load(shared_data: Path, n: int) -> list[dict]:
    path = shared_data / "amazon_meta" / "listings.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            text = " ".join([d.get("title") or "", *(d.get("description") or []), *(d.get("features") or [])])
            rows.append({"title": d.get("title") or "", "text": text[:1500], "category": d.get("main_category"),
                         "price": float(d["price"])})
    random.Random(0).shuffle(rows)  # the file is grouped by source; mix before splitting
    return rows[:n]


@pytest.mark.shared_data
def test_learned_baselines_beat_the_mean_on_real_listings(shared_data: Path):
    rows = _load(shared_data, 3000)
    train, test = rows[:2500], rows[2500:]
    truth = [r["price"] for r in test]

    def mae(pred):
        return sum(abs(a - b) for a, b in zip(pred, truth)) / len(truth)

    const, _ = constant.fit_predict([r["price"] for r in train], len(test))
    cols = lambda rs: {k: [r[k] for r in rs] for k in ("title", "text", "category", "price")}  # noqa: E731
    lin, _ = linear.fit_predict(cols(train), cols(test))
    tf, info = tfidf.fit_predict([r["text"] for r in train], [r["price"] for r in train], [r["text"] for r in test])
    assert info["vocabulary"] > 1000
    # the reference pricer: constant $145.51, feature linear regression ~$139, bag of words ~$114
    assert mae(tf) < 0.85 * mae(const)
    assert mae(lin) < mae(const)
