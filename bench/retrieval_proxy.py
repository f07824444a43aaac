"""A CPU proxy for retrieval and for a slice-aware correction, before any GPU time is spent.

TF-IDF vectors stand in for the fine-tuned model's embeddings: does a kNN price (cosine
neighbours among the training items, similarity-weighted geometric mean) add to TF-IDF + ridge,
overall and on the reference-distribution slice? And is the slice under-priced by the pool's
prior? All on the VALIDATION split of the hash-based splits (curate.seed 42, 80/10/10); the
slice-aware correction is fitted on one half of validation and scored on the other.

    PRICEFIT_SHARED_DATA=../shared/data .venv/bin/python bench/retrieval_proxy.py

Reads the raw listings (title, description, features; not the curated text), so its numbers are
close to, not equal to, the pipeline's TF-IDF baseline.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import roc_auc_score

    from pricefit.curation import split_point

    data = Path(os.environ.get("PRICEFIT_SHARED_DATA", "../shared/data")) / "amazon_meta"
    rows = [json.loads(line) for line in gzip.open(data / "listings.jsonl.gz", "rt")]
    prov = {r["parent_asin"]: r["source"] for r in csv.DictReader(open(data / "provenance.csv"))}

    def text(r):
        d, f = r.get("description") or [], r.get("features") or []
        return ((r.get("title") or "") + "\n" + " ".join(d if isinstance(d, list) else [str(d)]) + " " + " ".join(f))[:1200]

    ids = [r["parent_asin"] for r in rows]
    y = np.array([float(r["price"]) for r in rows])
    ly = np.log1p(y)
    pt = np.array([split_point(i, 42) for i in ids])
    tr, va = pt < 0.8, (pt >= 0.8) & (pt < 0.9)
    ref = np.array([prov.get(i, "").startswith("course full test set") for i in ids])
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200000, sublinear_tf=True)
    x = vec.fit_transform([text(r) for r in rows])
    ridge = Ridge(alpha=1.0).fit(x[tr], ly[tr]).predict(x)

    def mae(logp, m):
        return float(np.abs(np.expm1(logp[m]) - y[m]).mean())

    out = {"n_validation": int(va.sum()), "n_validation_slice": int((va & ref).sum()),
           "ridge": {"validation": mae(ridge, va), "slice": mae(ridge, va & ref)}, "knn": {}}
    sims = (x[va] @ x[tr].T).toarray()
    for k in (5, 10, 20, 50):
        idx = np.argsort(-sims, 1)[:, :k]
        w = np.maximum(np.take_along_axis(sims, idx, 1), 1e-6)
        knn = np.zeros(len(y))
        knn[va] = (w * ly[tr][idx]).sum(1) / w.sum(1)
        best = min((mae((1 - a) * ridge + a * knn, va), a) for a in np.round(np.arange(0, 1.01, 0.1), 1))
        out["knn"][k] = {"validation": mae(knn, va), "slice": mae(knn, va & ref), "blend_weight": best[1],
                         "blend_validation": best[0], "blend_slice": mae((1 - best[1]) * ridge + best[1] * knn, va & ref)}
    res = ly - ridge
    out["mean_log_residual"] = {"validation_slice": float(res[va & ref].mean()), "validation_rest": float(res[va & ~ref].mean()),
                                "train_slice": float(res[tr & ref].mean())}
    # a slice classifier times one offset, fitted on half of validation, scored on the other half
    p = LogisticRegression(C=4, max_iter=2000).fit(x[tr], ref[tr]).predict_proba(x)[:, 1]
    perm = np.random.default_rng(0).permutation(np.where(va)[0])
    a_half, b_half = np.zeros(len(y), bool), np.zeros(len(y), bool)
    a_half[perm[: len(perm) // 2]], b_half[perm[len(perm) // 2:]] = True, True
    delta = min((mae(ridge + d * p, a_half), d) for d in np.round(np.arange(0, 1.01, 0.05), 2))[1]
    out["slice_offset"] = {"auc_validation": float(roc_auc_score(ref[va], p[va])), "delta": delta,
                           "other_half_before": mae(ridge, b_half), "other_half_after": mae(ridge + delta * p, b_half),
                           "other_half_slice_before": mae(ridge, b_half & ref),
                           "other_half_slice_after": mae(ridge + delta * p, b_half & ref)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
