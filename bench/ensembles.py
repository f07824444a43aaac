"""Ensembles of the price models from bench/quality_trials.py's predictions, chosen on validation.

For every (trial, seed) in the --predictions parquet(s), and for each trial's seed average (the
geometric mean of its seeds' prices), this reports MAE / RMSLE / hit rate overall and per slice of
the profile, on validation and on test, alone and blended with TF-IDF + ridge in log space
(pricefit.blend: the same TF-IDF fit on the training prompts and the same weight grid that
``train.blend: tfidf`` uses). Every blend weight is chosen on validation and then applied unchanged
to test, so the test columns are a held-out read of choices made on validation.

    python bench/ensembles.py --predictions p-final.parquet p-var.parquet \
        --tokenized runs/dev/tokenized-gpu --profile gpu-smollm2 --out ens.json

--tokenized: the tokenized artifact the trials trained on (its prompts feed TF-IDF); build it with
``pricefit tokenize`` from the same curated data, or take the trials' WORK/tokenized.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def score(truth, pred, masks) -> dict:
    from pricefit.metrics import compute_metrics

    m = compute_metrics(truth, pred, slices=masks)
    keep = ("n", "mae", "rmsle", "hit_rate")
    return {k: m[k] for k in keep} | {"slices": {n: {k: v.get(k) for k in keep} for n, v in m["slices"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", nargs="+", required=True, help="parquet files written by quality_trials.py --predictions")
    p.add_argument("--tokenized", required=True, help="the tokenized artifact the trials used (prompts for TF-IDF)")
    p.add_argument("--profile", default="gpu-smollm2", help="profile whose slices are reported")
    p.add_argument("--out", help="write every row as JSON here")
    a = p.parse_args()

    import polars as pl
    from datasets import load_from_disk

    from pricefit.blend import choose_weight
    from pricefit.config import load_run_config
    from pricefit.slices import slice_masks
    from pricefit.tfidf_model import fit, predict

    run = load_run_config(a.profile)
    preds = pl.concat([pl.read_parquet(f).select("trial", "seed", "split", "item_id", "price", "prediction") for f in a.predictions])
    dd = load_from_disk(str(Path(a.tokenized) / "dataset"))
    vec, ridge, clip = fit(dd["train"]["prompt"], dd["train"]["price"])
    splits = {}
    for split in ("validation", "test"):
        ds = dd[split]
        ids = [str(i) for i in ds["item_id"]]
        splits[split] = {"ids": ids, "price": np.asarray(ds["price"], dtype=np.float64),
                         "tfidf": predict(vec, ridge, clip, ds["prompt"]),
                         "masks": slice_masks(run.slices, {"item_id": ids, "price": list(ds["price"])})}

    def aligned(frame, split):
        """Predictions in the tokenized split's order (None where this model did not score the split)."""
        f = frame.filter(pl.col("split") == split)
        if f.is_empty():
            return None
        got = dict(zip(f["item_id"].cast(pl.Utf8).to_list(), f["prediction"].to_list()))
        missing = [i for i in splits[split]["ids"] if i not in got]
        if missing:
            raise SystemExit(f"{len(missing)} {split} items have no prediction (e.g. {missing[0]}): not the same tokenized data?")
        return np.asarray([got[i] for i in splits[split]["ids"]], dtype=np.float64)

    models: list[tuple[str, dict[str, np.ndarray | None]]] = []
    for (trial, seed), frame in sorted(preds.group_by(["trial", "seed"]), key=lambda kv: (kv[0][0], kv[0][1])):
        models.append((f"{trial} seed {seed}", {s: aligned(frame, s) for s in splits}))
    for trial in sorted(set(preds["trial"].to_list())):
        seeds = sorted(set(preds.filter(pl.col("trial") == trial)["seed"].to_list()))
        if len(seeds) < 2:
            continue
        members = [m for name, m in models if name.startswith(f"{trial} seed ")]
        avg = {}
        for s in splits:
            arrs = [m[s] for m in members]
            avg[s] = None if any(x is None for x in arrs) else np.expm1(np.mean([np.log1p(np.clip(x, 0, None)) for x in arrs], axis=0))
        models.append((f"{trial} mean of {len(seeds)} seeds", avg))

    rows = [{"model": "tfidf", **{s: score(d["price"], d["tfidf"], d["masks"]) for s, d in splits.items()}}]
    for name, m in models:
        rows.append({"model": name, **{s: score(splits[s]["price"], m[s], splits[s]["masks"]) for s in splits if m[s] is not None}})
        if m["validation"] is None:
            continue
        w, _ = choose_weight(m["validation"], splits["validation"]["tfidf"], splits["validation"]["price"])
        row = {"model": f"{name} + tfidf (w={w:.2f} on validation)", "weight": w}
        for s in splits:
            if m[s] is None:
                continue
            blended = np.expm1((1 - w) * np.log1p(np.clip(m[s], 0, None)) + w * np.log1p(splits[s]["tfidf"]))
            row[s] = score(splits[s]["price"], blended, splits[s]["masks"])
        rows.append(row)

    names = [sl.name for sl in run.slices]
    head = "| model | " + " | ".join(f"{s} MAE | {s} {n} MAE" for s in splits for n in names) + " |"  # one pair per slice
    print(head)
    print("|---" * (1 + len(splits) * len(names) * 2) + "|")
    for r in rows:
        cells = []
        for s in splits:
            for n in names:
                cells += [f"${r[s]['mae']:.2f}", f"${r[s]['slices'][n]['mae']:.2f}"] if s in r else ["", ""]
        print(f"| {r['model']} | " + " | ".join(cells) + " |")
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
