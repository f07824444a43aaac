"""Which parts of the price model earn their place: head, TF-IDF, retrieval, seed averages, calibration.

Reads the predictions of bench/quality_trials.py (trained with ``train.blend: tfidf+knn``: every
prediction's ``raw`` text carries the head's, TF-IDF's and retrieval's own prices) and, for each
(trial, seed) and for the seed average of each trial, re-chooses the blend weights on the
VALIDATION split for every subset of the parts, then applies them unchanged to test. Choices are
made on validation only; the test columns are the one held-out read of those choices.

    python bench/blend_parts.py --predictions final.parquet --profile gpu-qwen1.5b            # choose
    python bench/blend_parts.py --predictions final.parquet --profile gpu-qwen1.5b --test --out parts.jsonl

Variants per model:
- ``head``, ``head+tfidf``, ``head+knn``, ``head+tfidf+knn``: weights chosen on all validation items;
- ``... (slice weights)``: the same weights chosen on the validation items of the promotion slice
  only; its validation numbers are 2-fold cross-fitted (weights from one half, scored on the other);
- ``... + isotonic``: a monotone map of log price fitted on validation (cross-fitted the same way).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PART_RE = re.compile(r"(head|tfidf|knn) ([0-9.]+)")


def parse_parts(raw: str) -> dict[str, float]:
    body = raw.split("(", 1)[1].split(";")[0] if "(" in raw else raw
    return {k: float(v) for k, v in PART_RE.findall(body)}


def score(truth, pred, mask) -> dict:
    err = np.abs(pred - truth)
    return {"mae": float(err.mean()), "slice_mae": float(err[mask].mean()) if mask.any() else float("nan"),
            "n": int(len(truth)), "slice_n": int(mask.sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--profile", default="gpu-qwen1.5b")
    p.add_argument("--slice", default="reference")
    p.add_argument("--out")
    p.add_argument("--test", action="store_true", help="also score test (do this once, after choosing on validation)")
    a = p.parse_args()

    import polars as pl
    from sklearn.isotonic import IsotonicRegression

    from pricefit.blend import choose_weights, mix
    from pricefit.config import load_run_config
    from pricefit.slices import slice_masks

    run = load_run_config(a.profile)
    preds = pl.concat([pl.read_parquet(f) for f in a.predictions])
    data: dict[tuple[str, int], dict[str, dict[str, np.ndarray]]] = {}
    truth: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    order: dict[str, list[str]] = {}
    for (trial, seed, split), f in preds.group_by(["trial", "seed", "split"]):
        f = f.sort("item_id")
        ids = f["item_id"].cast(pl.Utf8).to_list()
        if split not in order:
            order[split] = ids
            truth[split] = f["price"].to_numpy().astype(np.float64)
            sl = slice_masks(run.slices, {"item_id": ids, "price": truth[split].tolist()})
            if a.slice not in sl:
                raise SystemExit(f"profile {a.profile} has no slice {a.slice!r} (it has: {', '.join(sl) or 'none'})")
            masks[split] = np.asarray(sl[a.slice])
        elif ids != order[split]:
            raise SystemExit(f"{trial} seed {seed} scored other {split} items than the first model")
        parts = [parse_parts(r) for r in f["raw"].to_list()]
        data.setdefault((trial, seed), {})[split] = {k: np.array([d[k] for d in parts]) for k in parts[0]}

    models = {f"{t} seed {s}": v for (t, s), v in sorted(data.items())}
    for trial in sorted({t for t, _ in data}):
        seeds = sorted(s for t, s in data if t == trial)
        if len(seeds) > 1:  # geometric mean of each part over the seeds
            models[f"{trial} mean of {len(seeds)} seeds"] = {
                split: {k: np.expm1(np.mean([np.log1p(data[(trial, s)][split][k]) for s in seeds], axis=0))
                        for k in data[(trial, seeds[0])][split]}
                for split in data[(trial, seeds[0])]}

    rng = np.random.default_rng(0)
    v_n = len(truth["validation"])
    half = np.zeros(v_n, dtype=bool)
    half[rng.permutation(v_n)[: v_n // 2]] = True
    rows = []
    for name, m in models.items():
        extras = [k for k in ("tfidf", "knn") if k in m["validation"]]
        for r in range(len(extras) + 1):
            for subset in itertools.combinations(extras, r):
                label = "+".join(("head",) + subset)
                val, tst = m["validation"], (m.get("test") if a.test else None)
                for scope in ("all", "slice"):
                    if scope == "slice" and not subset:
                        continue
                    sel = masks["validation"] if scope == "slice" else np.ones(v_n, dtype=bool)

                    def fit(rows_mask):
                        w, _ = choose_weights(val["head"][rows_mask], {k: val[k][rows_mask] for k in subset}, truth["validation"][rows_mask])
                        return {"head": round(1 - sum(w.values()), 2), **w}

                    w = fit(sel)
                    if scope == "all":
                        v_pred = mix(val, w)
                    else:  # cross-fitted: each half scored with the weights of the other half's slice items
                        v_pred = np.empty(v_n)
                        for h in (half, ~half):
                            v_pred[h] = mix({k: x[h] for k, x in val.items()}, fit(sel & ~h))
                    row = {"model": name, "parts": label, "weights_on": scope, "weights": w,
                           "validation": score(truth["validation"], v_pred, masks["validation"])}
                    if tst is not None:
                        row["test"] = score(truth["test"], mix(tst, w), masks["test"])
                    rows.append(row)
                    # isotonic calibration of log price on top (fit on validation; cross-fitted there)
                    if scope == "all" and subset == tuple(extras):
                        lv = np.log1p(mix(val, w))
                        cal = np.empty(v_n)
                        for h in (half, ~half):
                            iso = IsotonicRegression(out_of_bounds="clip").fit(lv[~h], np.log1p(truth["validation"][~h]))
                            cal[h] = np.expm1(iso.predict(lv[h]))
                        row2 = {"model": name, "parts": label + "+isotonic", "weights_on": scope, "weights": w,
                                "validation": score(truth["validation"], cal, masks["validation"])}
                        if tst is not None:
                            iso = IsotonicRegression(out_of_bounds="clip").fit(lv, np.log1p(truth["validation"]))
                            row2["test"] = score(truth["test"], np.expm1(iso.predict(np.log1p(mix(tst, w)))), masks["test"])
                        rows.append(row2)

    print(f"| model | parts | weights on | weights | val MAE | val {a.slice} MAE | test MAE | test {a.slice} MAE |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        t = r.get("test", {})
        wt = ", ".join(f"{k} {v:.2f}" for k, v in r["weights"].items())
        print(f"| {r['model']} | {r['parts']} | {r['weights_on']} | {wt} | ${r['validation']['mae']:.2f} | "
              f"${r['validation']['slice_mae']:.2f} | {'$%.2f' % t['mae'] if t else ''} | {'$%.2f' % t['slice_mae'] if t else ''} |")
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
