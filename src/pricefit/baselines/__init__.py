"""Baselines on the same held-out items as the fine-tuned model.

``run_baselines(curated_dir, out_dir, cfg)`` fits/queries each baseline named in
``cfg.include`` and writes, per baseline, ``<out_dir>/<name>/predictions.parquet`` (item_id,
category, price, prediction, raw, parsed: the evaluation stage's layout) and
``<out_dir>/<name>/metrics.json`` (:func:`pricefit.metrics.compute_metrics`), plus ``summary.json``
and ``manifest.json``. A baseline that cannot run (the frontier model without an API key) is listed
in the summary with a ``skipped: ...`` status and gets no directory.

The held-out items are the first ``cfg.max_items`` rows of the curated ``cfg.split`` split, which
is what the evaluation stage scores with the same split and max_items; :mod:`pricefit.compare`
refuses to put side by side models scored on different items.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..artifacts import (
    ArtifactRef,
    atomic_dir,
    read_manifest,
    ref_for,
    sha256_file,
    write_json_atomic,
    write_manifest,
)
from ..curation import read_split
from ..errors import PricefitError
from ..evaluation import load_heldout, masks_for
from ..items import item_set_sha256
from ..metrics import compute_metrics
from ..parsing import DEFAULT_MAX_PRICE, DEFAULT_MIN_PRICE
from ..settings.baselines import CLASSICAL_BASELINES, BaselinesConfig
from . import base_model, frontier

log = logging.getLogger("pricefit.baselines")

ALL_BASELINES = (*CLASSICAL_BASELINES, "base_model", "frontier")


def classical(name: str) -> Callable[[Any, Any], tuple[list[float], dict]]:
    """The classical baseline ``name`` (one of settings.baselines.CLASSICAL_BASELINES): the
    ``baseline(train, test) -> (predictions, info)`` of module ``pricefit.baselines.<name>``, which
    fits on the curated train frame and predicts the held-out frame. Adding one is that module, its
    name in CLASSICAL_BASELINES and its test."""
    return importlib.import_module(f"{__name__}.{name}").baseline


def _write_one(out: Path, name: str, test, preds: list[float | None], raws: list[str], info: dict[str, Any],
               slices: list[Any] | None = None) -> dict:
    import polars as pl

    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {
            "item_id": test["item_id"].cast(pl.Utf8),
            "category": test["category"],
            "price": test["price"].cast(pl.Float64),
            "prediction": pl.Series("prediction", preds, dtype=pl.Float64),
            "raw": pl.Series("raw", raws, dtype=pl.Utf8),
            "parsed": pl.Series("parsed", [p is not None for p in preds], dtype=pl.Boolean),
        }
    )
    frame.write_parquet(d / "predictions.parquet")
    metrics = compute_metrics(test["price"].to_list(), preds, test["category"].to_list(), slices=masks_for(slices, test))
    metrics["model"] = name
    metrics["info"] = info
    write_json_atomic(d / "metrics.json", metrics)
    return metrics


def run_baselines(
    curated_dir: str | Path,
    out_dir: str | Path,
    cfg: BaselinesConfig | None = None,
    *,
    progress: bool = True,
    slices: list[Any] | None = None,
    price_frontier: Callable[..., Any] | None = None,
) -> ArtifactRef:
    """Run every baseline in ``cfg.include`` on the held-out items; returns the ``baselines`` ref.

    ``slices``: named slices (pricefit.slices.SliceSpec) whose metrics each baseline reports too.
    ``price_frontier``: what sends the frontier requests (default :func:`frontier.price_texts`,
    same arguments); the baselines task passes one with retries of its own around just those
    requests, so an outage repeats no other baseline.
    """
    cfg = cfg or BaselinesConfig()
    curated = Path(curated_dir)
    train = read_split(curated, "train")
    test, _ = load_heldout(curated, cfg.split, cfg.max_items)  # the items evaluate scores, read the same way
    if test.height == 0:
        raise PricefitError(f"the {cfg.split} split of {curated} is empty", hint="curate more items")
    prices = [float(p) for p in train["price"].to_list()]
    if not prices:
        raise PricefitError(f"the train split of {curated} is empty", hint="curate more items")
    # language-model replies are clipped like the fine-tuned model's by default (the parser's range,
    # EvaluateConfig's default min_price/max_price), so the comparison is fair; the classical models
    # clip to the training price range themselves
    llm_range = (DEFAULT_MIN_PRICE, DEFAULT_MAX_PRICE)
    n = test.height
    summary: dict[str, Any] = {}

    with atomic_dir(out_dir) as tmp:
        for name in dict.fromkeys(cfg.include):  # keep order, drop repeats
            t0 = time.perf_counter()
            log.info("baseline %s on %d %s items", name, n, cfg.split)
            raws: list[str]
            extra: dict[str, Any] = {}
            if name in CLASSICAL_BASELINES:
                preds, info = classical(name)(train, test)
                raws = [f"{p:.2f}" for p in preds]
            elif name == "base_model":
                preds, raws, info = base_model.predict(
                    cfg.base_model, test["text"].to_list(), price_range=llm_range, progress=progress
                )
            elif name == "frontier":
                reason = frontier.skip_reason(cfg.frontier)
                if reason:
                    log.warning("frontier baseline %s", reason)
                    summary[name] = {"status": reason}
                    continue
                texts = test["text"].to_list()
                if cfg.frontier.max_items is not None and cfg.frontier.max_items < n:
                    # frontier.max_items caps what a paid API may be sent; scoring only a prefix would
                    # put the frontier model on other items than the rest, so refuse instead
                    raise PricefitError(
                        f"the frontier model would be sent {n} held-out items, above its cap "
                        f"baselines.frontier.max_items={cfg.frontier.max_items}",
                        hint="raise baselines.frontier.max_items, or lower baselines.max_items and evaluate.max_items "
                        "together so every model sees the same items",
                    )
                run = (price_frontier or frontier.price_texts)(texts, cfg.frontier, price_range=llm_range, progress=progress)
                preds = [r.prediction for r in run.items]
                raws = [r.raw for r in run.items]
                info = {"model": cfg.frontier.model, "host": run.usage["host"], "prompt": frontier.messages_for("{text}")}
                extra = {k: run.usage[k] for k in ("requests", "retries", "cached_items", "estimated_cost_usd")}
                write_json_atomic(tmp / name / "usage.json", run.usage)
            else:  # pragma: no cover - BaselinesConfig validates the names
                raise PricefitError(f"unknown baseline {name!r}", hint=f"choose from {', '.join(ALL_BASELINES)}")
            m = _write_one(tmp, name, test, preds, raws, info, slices)
            summary[name] = {
                "status": "ok",
                "n": m["n"],
                "n_unparsed": m["n_unparsed"],
                "mae": m["mae"],
                "rmsle": m["rmsle"],
                "hit_rate": m["hit_rate"],
                "seconds": round(time.perf_counter() - t0, 3),
                **extra,
            }
            log.info("baseline %s: MAE $%.2f", name, m["mae"])

        items_sha = item_set_sha256(test["item_id"].cast(str).to_list())
        write_json_atomic(tmp / "summary.json", {"split": cfg.split, "n": n, "items_sha256": items_sha, "baselines": summary})
        curated_manifest = curated / "manifest.json"
        write_manifest(
            tmp,
            {
                "kind": "baselines",
                "schema_version": 1,
                "curated": str(curated.resolve()),
                "curated_sha256": sha256_file(curated_manifest) if curated_manifest.exists() else None,
                "split": cfg.split,
                "max_items": cfg.max_items,
                "n": n,
                "items_sha256": items_sha,
                "config": cfg.model_dump(),
                "status": {k: v["status"] for k, v in summary.items()},
            },
        )
    return ref_for(out_dir, "baselines", rows=n)


def read_summary(baselines_dir: str | Path) -> dict[str, Any]:
    read_manifest(baselines_dir)  # a clear error when the directory is not a finished artifact
    import json

    return json.loads((Path(baselines_dir) / "summary.json").read_text())
