"""Held-out evaluation: predictions, metrics, plots and a report in one "evaluation" artifact.

:func:`evaluate` scores the held-out split (``cfg.split``) of a curated or tokenized artifact;
:func:`evaluate_source` scores any listings source that ``pricefit curate`` reads, building each
item's text by the same curation rules but without dedupe or sampling (so a user can score a new
file of listings). Every input row is accounted for: scored, or listed in ``skipped.parquet``
with its curation drop reason.

Layout (docs/ARCHITECTURE.md): ``predictions.parquet`` (item_id, category, price, prediction,
raw, parsed), ``metrics.json``, ``report.md`` (+ ``report.json``), ``scatter.png``,
``errors.png``, ``manifest.json`` (written last).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from . import artifacts
from .settings.curate import CurateConfig
from .settings.evaluate import EvaluateConfig
from .errors import PricefitError

log = logging.getLogger("pricefit.evaluation")

SCHEMA_VERSION = 1
PREDICTION_COLUMNS = ["item_id", "category", "price", "prediction", "raw", "parsed"]
WORST_K = 10


# ----------------------------------------------------------------------------------------------
# inputs


def masks_for(slices: list[Any] | None, frame: pl.DataFrame) -> dict[str, list[bool]]:
    """Per-slice membership of each row of a predictions frame (item_id, category, price, ...)."""
    if not slices:
        return {}
    from .slices import slice_masks

    return slice_masks(slices, {c: frame[c].to_list() for c in frame.columns})


def load_heldout(data_dir: str | Path, split: str = "test", max_items: int | None = None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The held-out items of a curated or tokenized artifact: ``item_id, category, title, text, price``
    (+ ``prompt`` from a tokenized artifact: the exact prompt the model was trained on)."""
    d = Path(data_dir)
    manifest = artifacts.read_manifest(d)
    kind = manifest.get("kind")
    if kind == "curated":
        from .curation import read_split

        frame = read_split(d, split)
    elif kind == "tokenized":
        from datasets import load_from_disk

        ds = load_from_disk(str(d / "dataset"))
        if split not in ds:
            raise PricefitError(f"{d} has no {split!r} split (has {sorted(ds)})", hint="use --split test or validation")
        part = ds[split]
        cols = [c for c in ("item_id", "category", "title", "text", "price", "prompt") if c in part.column_names]
        frame = pl.DataFrame(part.select_columns(cols).to_dict())
    else:
        raise PricefitError(
            f"{d} is a {kind!r} artifact; evaluate reads a 'curated' or 'tokenized' one",
            hint="pass --data <curate or tokenize output>, or --source <listings> to score raw listings",
        )
    if "title" not in frame.columns:
        frame = frame.with_columns(pl.col("text").str.split("\n").list.first().alias("title"))
    if max_items is not None:
        frame = frame.head(max_items)
    return frame, {"path": str(d.resolve()), "kind": kind, "sha256": artifacts.sha256_file(d / artifacts.MANIFEST)}


def make_predictor(cfg: EvaluateConfig, base_model: str | None, adapter_dir: str | Path | None):
    from .inference import PricePredictor

    return PricePredictor(
        base_model,
        adapter_dir=adapter_dir,
        device=cfg.device,
        quantization=cfg.quantization,
        compute_dtype=cfg.compute_dtype,
        max_new_tokens=cfg.max_new_tokens,
        low=cfg.min_price,
        high=cfg.max_price,
        beam=cfg.beam,
        head_fast=cfg.head_fast,
        compile=cfg.compile,
        merge=cfg.merge_lora,
    )


# ----------------------------------------------------------------------------------------------
# scoring


def _score(
    items: pl.DataFrame,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    predictor: Any,
    inputs: dict[str, Any],
    skipped: pl.DataFrame | None = None,
    slices: list[Any] | None = None,
) -> artifacts.ArtifactRef:
    from .metrics import compute_metrics
    from .plots import error_histogram, scatter_plot
    from .report import worst_items, write_evaluation_report

    if items.height == 0:
        raise PricefitError(
            "no items to evaluate",
            hint="check the split/--max-items, or the skipped reasons of the source (every listing was dropped)",
        )
    if "prompt" in items.columns:  # a tokenized artifact: exactly the prompts training built
        texts = items["prompt"].to_list()
    else:
        texts = predictor.build_prompts(items["text"].to_list())
    mode = predictor.resolve_mode(cfg.mode)

    t0 = time.perf_counter()
    preds = predictor.predict(texts, batch_size=cfg.batch_size, mode=mode, prompts=True)
    runtime = time.perf_counter() - t0

    frame = pl.DataFrame(
        {
            "item_id": items["item_id"].cast(pl.String),
            "category": items["category"].cast(pl.String),
            "price": items["price"].cast(pl.Float64),
            "prediction": pl.Series([p.value for p in preds], dtype=pl.Float64),
            "raw": pl.Series([p.raw for p in preds], dtype=pl.String),
            "parsed": pl.Series([p.parsed for p in preds], dtype=pl.Boolean),
        }
    )
    truth, pred = frame["price"].to_list(), frame["prediction"].to_list()
    masks = masks_for(slices, frame)
    metrics = compute_metrics(truth, pred, frame["category"].to_list(), slices=masks)
    # what the model is: its components, their weights and each one alone on these items
    from .composition import component_rows, record_for, score_components

    record = record_for(mode, getattr(predictor, "blend", None), predictor.adapter_dir is not None)
    metrics["model"] = score_components(record, truth, [p.parts for p in preds], frame["category"].to_list(), masks)
    rows = frame.with_columns(items["title"].cast(pl.String).alias("title")).to_dicts()
    worst = worst_items(rows, WORST_K)

    meta = {
        "base_model": predictor.base_model,
        "adapter": predictor.adapter_dir,
        "data": inputs.get("path") or inputs.get("source"),
        "split": inputs.get("split"),
        "mode": mode,
        "model": metrics["model"]["label"],
        "device": predictor.device,
        "n_items": frame.height,
        "runtime_s": round(runtime, 3),
        "items_per_s": round(frame.height / runtime, 3) if runtime > 0 else None,
    }
    with artifacts.atomic_dir(out_dir) as tmp:
        with artifacts.atomic_path(tmp / "predictions.parquet") as p:
            frame.select(PREDICTION_COLUMNS).write_parquet(p)
        if skipped is not None:
            with artifacts.atomic_path(tmp / "skipped.parquet") as p:
                skipped.write_parquet(p)
        artifacts.write_json_atomic(tmp / "metrics.json", metrics)
        scatter_plot(truth, pred, tmp / "scatter.png", metrics)
        error_histogram(truth, pred, tmp / "errors.png", metrics)
        write_evaluation_report(tmp, metrics, meta, worst)
        headline = {k: metrics[k] for k in ("n", "n_unparsed", "mae", "rmsle", "hit_rate", "mdape")}
        artifacts.write_manifest(
            tmp,
            {
                "kind": "evaluation",
                "schema_version": SCHEMA_VERSION,
                "inputs": inputs,
                "adapter_sha256": artifacts.sha256_dir(predictor.adapter_dir) if predictor.adapter_dir else None,
                "config": cfg.model_dump(),
                "metrics": headline,
                **{k: meta[k] for k in ("base_model", "adapter", "mode", "device", "runtime_s", "items_per_s")},
                "model": metrics["model"],
                "rows": {"scored": frame.height, "skipped": 0 if skipped is None else skipped.height},
            },
        )
    log.info(
        "evaluate: %s: n=%d mae=%.2f rmsle=%.3f hit=%.1f%% unparsed=%d (%.1f items/s) -> %s",
        metrics["model"]["label"], metrics["n"], metrics["mae"], metrics["rmsle"], metrics["hit_rate"] * 100,
        metrics["n_unparsed"], meta["items_per_s"] or 0.0, out_dir,
    )
    for row in component_rows(metrics["model"]):
        log.info("evaluate: %s: mae=%.2f on the same items", row["model"], row["mae"])
    return artifacts.ref_for(out_dir, "evaluation", rows=frame.height, schema_version=SCHEMA_VERSION)


def evaluate(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    base_model: str | None = None,
    adapter_dir: str | Path | None = None,
    *,
    predictor: Any = None,
    slices: list[Any] | None = None,
) -> artifacts.ArtifactRef:
    """Score the held-out split of a curated or tokenized artifact with base model (+ adapter).

    ``base_model`` may be left out when the adapter records it. Pass ``predictor`` to reuse a
    loaded :class:`~pricefit.inference.PricePredictor`. ``slices``: named slices
    (pricefit.slices.SliceSpec) whose metrics are reported beside the overall ones.
    """
    items, ref = load_heldout(data_dir, cfg.split, cfg.max_items)
    predictor = predictor or make_predictor(cfg, base_model, adapter_dir)
    return _score(items, out_dir, cfg, predictor, {**ref, "split": cfg.split}, slices=slices)


def evaluate_source(
    source: str,
    out_dir: str | Path,
    cfg: EvaluateConfig,
    base_model: str | None = None,
    adapter_dir: str | Path | None = None,
    curate_cfg: CurateConfig | None = None,
    *,
    predictor: Any = None,
    slices: list[Any] | None = None,
) -> artifacts.ArtifactRef:
    """Score every usable listing of ``source`` (any spec ``pricefit curate`` reads).

    Texts follow the curation rules 1-4 (price, title, range, text length) with no dedupe or
    sampling; the text is cut to ``curate_cfg.max_text_tokens`` tokens of the model's own
    tokenizer. Listings that fail a rule land in ``skipped.parquet`` with the rule's reason.
    Without ``curate_cfg`` the rules the adapter's training data was curated with are used
    (recorded in its manifest), else the defaults.
    """
    from .curation import prepare_items

    predictor = predictor or make_predictor(cfg, base_model, adapter_dir)
    curate_cfg = curate_cfg or lineage_curate_config(predictor)
    frame = prepare_items(source, curate_cfg, sample=False, tokenizer=predictor.tokenizer)
    usable = frame.filter(pl.col("reason").is_null()).drop("reason")
    skipped = frame.filter(pl.col("reason").is_not_null()).select(
        "item_id", "source_file", "source_line", "reason", "title", "price"
    )
    over = 0
    if cfg.max_items is not None and usable.height > cfg.max_items:
        over = usable.height - cfg.max_items
        usable = usable.head(cfg.max_items)
    reasons = dict(skipped.group_by("reason").len().iter_rows()) if skipped.height else {}
    log.info("evaluate --source: %d usable listings, %d skipped %s", usable.height, skipped.height, reasons)
    # rows_read == scored + sum(skipped) + over_max_items (quarantined lines never reach the frame)
    inputs = {
        "source": source,
        "rows_read": frame.height,
        "skipped": reasons,
        "over_max_items": over,
        "curate_config": curate_cfg.model_dump(),
    }
    return _score(usable, out_dir, cfg, predictor, inputs, skipped=skipped, slices=slices)


def lineage_curate_config(predictor: Any) -> CurateConfig:
    """The curation rules of the adapter's training data (its manifest records them), else the defaults."""
    recorded = (getattr(predictor, "lineage", None) or {}).get("curate_config")
    if recorded:
        try:
            return CurateConfig.model_validate(recorded)
        except Exception as e:  # noqa: BLE001 - an older or edited manifest: say so, use the defaults
            log.warning("the adapter's recorded curate config does not validate (%s); using the defaults", e)
    return CurateConfig()


# ----------------------------------------------------------------------------------------------
# pricing new listings (no truth needed)


def listing_texts(raw: pl.DataFrame, curate_cfg: CurateConfig, tokenizer: Any) -> list[str | None]:
    """Curated text of each raw row (same expression and token budget as curation); None without a title."""
    from .curation import text_expr, truncate_to_tokens

    has_title = raw["title"].fill_null("").str.strip_chars().str.len_chars() > 0
    texts = raw.select(text_expr(curate_cfg).alias("text"))["text"].to_list()
    ok = [i for i, flag in enumerate(has_title.to_list()) if flag]
    cut, _ = truncate_to_tokens([texts[i] for i in ok], tokenizer, curate_cfg.max_text_tokens)
    out: list[str | None] = [None] * raw.height
    for i, t in zip(ok, cut):
        out[i] = t
    return out


def predict_listings(
    listings: list[dict[str, Any]] | str,
    predictor: Any,
    cfg: EvaluateConfig | None = None,
    curate_cfg: CurateConfig | None = None,
) -> list[dict[str, Any]]:
    """Price listings (item-metadata dicts, or a source spec that ``pricefit curate`` reads).

    Returns one dict per listing, in input order: ``item_id, title, text, prediction, raw,
    parsed, skipped`` (``skipped`` is ``"title_missing"`` for a listing with no title, else None).
    A price in the listing is ignored. Quarantined (unreadable) lines of a source are not listed.
    """
    from .curation import RAW_SCHEMA, normalize_record, read_source

    cfg = cfg or EvaluateConfig()
    curate_cfg = curate_cfg or lineage_curate_config(predictor)
    if isinstance(listings, str):
        raw, quarantine, _ = read_source(listings, curate_cfg)
        if quarantine:
            log.warning("predict: %d unreadable lines skipped (first: %s)", len(quarantine), quarantine[0]["reason"])
    else:
        rows = []
        for i, rec in enumerate(listings, 1):
            if not isinstance(rec, dict):
                raise PricefitError(f"listing {i} is a {type(rec).__name__}, not a JSON object", hint="give objects with title, description, features, details")
            rows.append(normalize_record(rec, "listing", i))
        raw = pl.DataFrame(rows, schema=RAW_SCHEMA)
    texts = listing_texts(raw, curate_cfg, predictor.tokenizer)
    todo = [i for i, t in enumerate(texts) if t is not None]
    prompts = predictor.build_prompts([texts[i] for i in todo])
    preds = predictor.predict(prompts, batch_size=cfg.batch_size, mode=cfg.mode, prompts=True) if todo else []
    by_row = dict(zip(todo, preds))
    out = []
    for i, row in enumerate(raw.select("item_id", "title").iter_rows(named=True)):
        p = by_row.get(i)
        out.append(
            {
                "item_id": row["item_id"],
                "title": row["title"],
                "text": texts[i],
                "prediction": None if p is None else p.value,
                "raw": None if p is None else p.raw,
                "parsed": False if p is None else p.parsed,
                "parts": None if p is None else p.parts,  # each component's price, for a blend
                "skipped": None if p is not None else "title_missing",
            }
        )
    return out
