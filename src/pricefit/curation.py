"""Curate the raw artifact (:mod:`pricefit.ingestion`) into train/validation/test splits (polars).

Rules (reference product-pricer recipe; every threshold is a :class:`~pricefit.config.CurateConfig` field),
applied in this order; the first rule an item fails is its one drop reason:

1. ``price_missing`` / ``price_unparseable``: see :mod:`pricefit.prices` (a range counts as unparseable,
   a negative price as ``price_out_of_range``; raw ``price_issue`` keeps the precise parse reason);
2. ``title_missing``: no title, or only whitespace;
3. ``price_out_of_range``: price outside [min_price, max_price] ($0.50-$999.49);
4. ``text_too_short``: the cleaned text (title + description + features + details) has fewer than
   ``min_chars`` characters, before or after the token truncation (the reference measured before; the
   curated contract requires it of the final text);
5. ``duplicate``: same (title, text) as an earlier item, or same item_id (first one kept, input order);
6. ``sampled_out``: balanced sampling over whole-dollar prices (see :func:`balance_mask`);
7. ``over_max_items``: beyond ``max_items`` (the ``max_items`` items with the lowest hash points
   ``sha256(f"{seed}:max_items:{item_id}")`` are kept).

Splits: an item's split is a pure function of its ``item_id`` and the seed, so an item keeps its split
for life however the catalog grows or shrinks (:func:`split_of`). Its point
``u = (first 8 bytes of sha256(f"{seed}:{item_id}") as a big-endian integer >> 11) / 2**53`` lies in
[0, 1); ``u < test_fraction`` is test, ``u < test_fraction + validation_fraction`` validation, the rest
train. Split sizes are therefore binomial around ``n x fraction`` (e.g. 60 +- 7 test items of 600),
not exact. Sampling (rules 6-7) decides only whether an item is kept, never its split, and it too
draws from per-item hashes (salted ``balance`` / ``max_items``, independent of the split's), never
from input order: in a crowded dollar or under ``max_items`` a growing catalog can push an item out,
but it can never move it to another split. Changing the seed or a fraction reassigns splits.

The text rule 4 measures: :mod:`pricefit.listing_text`.

Public: :func:`ingest` (imported from :mod:`pricefit.ingestion`), :func:`curate`, :func:`prepare_items` (same
rules, no dedupe/sampling: for scoring new listings), :func:`build_text` (one listing; imported from
:mod:`pricefit.listing_text`), :func:`split_of` (the split of an item id), :func:`read_splits`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl

from . import artifacts
from .settings.curate import CurateConfig
from .contract_hook import ContractHook, check_before_commit
from .errors import ContractError, PricefitError
# not INGEST_CHUNK: ingestion reads it, so a test patching curation.INGEST_CHUNK would silently change nothing
from .ingestion import (  # noqa: F401 (re-exported; tasks.ingest uses _csv_options)
    RAW_SCHEMA,
    SCHEMA_VERSION,
    _csv_options,
    ingest,
    read_source,
)
from .listing_text import (  # noqa: F401 (re-exported)
    CEILING_CHARS_PER_TOKEN,
    build_text,
    resolve_tokenizer,
    text_expr,
    tokenizer_name,
    truncate_to_tokens,
)
from .prices import DROP_REASON
from .records import normalize_record  # noqa: F401 (re-exported)

log = logging.getLogger("pricefit.curation")

UNKNOWN_CATEGORY = "Unknown"
SPLITS = ("train", "validation", "test")
# the columns every curated split carries (and the stages after curate rely on)
CURATED_COLUMNS = ("item_id", "category", "title", "text", "price")
DROP_REASONS = (
    "price_missing",
    "price_unparseable",
    "title_missing",
    "price_out_of_range",
    "text_too_short",
    "duplicate",
    "sampled_out",
    "over_max_items",
)
SPLIT_COLUMNS = ["item_id", "category", "title", "text", "price", "source_file", "source_line"]
DROPPED_COLUMNS = ["item_id", "source_file", "source_line", "reason", "title", "price"]


def _write_parquet(path: Path, frame: pl.DataFrame) -> None:
    with artifacts.atomic_path(path) as tmp:  # one chunk: the bytes do not depend on how the frame was built
        frame.rechunk().write_parquet(tmp, compression="zstd", statistics=True)


# ----------------------------------------------------------------------------------------------
# rules


def apply_filters(raw: pl.DataFrame, cfg: CurateConfig, tokenizer: Any) -> pl.DataFrame:
    """Rules 1-4 on a raw frame: adds ``text`` (truncated; null when dropped) and ``reason`` (null = kept)."""
    title_ok = pl.col("title").is_not_null() & (pl.col("title").str.strip_chars().str.len_chars() > 0)
    in_range = (pl.col("price") >= cfg.min_price) & (pl.col("price") <= cfg.max_price)
    df = raw.with_columns(
        pl.when(pl.col("price_issue").is_not_null())
        .then(pl.col("price_issue").replace(DROP_REASON))
        .when(pl.col("price").is_null())
        .then(pl.lit("price_missing"))
        .when(~title_ok)
        .then(pl.lit("title_missing"))
        .when(~in_range)
        .then(pl.lit("price_out_of_range"))
        .otherwise(None)
        .alias("reason"),
        pl.col("category").fill_null(UNKNOWN_CATEGORY),
    )
    # build text only for rows still in, so a dropped 5 MB row costs nothing
    ok = df.filter(pl.col("reason").is_null()).select("_row", text_expr(cfg).alias("text"))
    ok = ok.with_columns(
        pl.when(pl.col("text").str.len_chars() < cfg.min_chars).then(pl.lit("text_too_short")).otherwise(None).alias("_short")
    )
    long_rows = ok.filter(pl.col("_short").is_null())
    cut, n_cut = truncate_to_tokens(long_rows["text"].to_list(), tokenizer, cfg.max_text_tokens)
    # measured again after the cut: a tokenizer with short tokens can bring a text under min_chars
    long_rows = long_rows.with_columns(pl.Series("text", cut, dtype=pl.String)).with_columns(
        pl.when(pl.col("text").str.len_chars() < cfg.min_chars).then(pl.lit("text_too_short")).otherwise(None).alias("_short")
    )
    long_rows = long_rows.with_columns(pl.when(pl.col("_short").is_null()).then(pl.col("text")).alias("text"))
    short_rows = ok.filter(pl.col("_short").is_not_null()).with_columns(pl.lit(None, dtype=pl.String).alias("text"))
    texts = pl.concat([long_rows, short_rows]).select("_row", "text", "_short")
    df = df.join(texts, on="_row", how="left").with_columns(pl.coalesce("reason", "_short").alias("reason")).drop("_short")
    df = df.sort("_row")
    log.info("text: %d items cut to %d tokens", n_cut, cfg.max_text_tokens)
    return df


def _hash_points(ids: Iterable[str], salt: str) -> np.ndarray:
    """One point in [0, 1) per id: the top 53 bits of ``sha256(f"{salt}:{item_id}")`` (UTF-8) / 2**53.

    A pure function of (salt, item_id): the same item gets the same point whatever else is in the
    catalog (53 bits: exact in a float64, never 1.0).
    """
    out = [int.from_bytes(hashlib.sha256(f"{salt}:{i}".encode("utf-8")).digest()[:8], "big") >> 11 for i in ids]
    return np.array(out, dtype=np.int64).astype(np.float64) * 2.0**-53


def split_point(item_id: str, seed: int) -> float:
    """Where an item falls in [0, 1): the first 8 bytes of ``sha256(f"{seed}:{item_id}")`` as a big-endian
    integer, shifted right by 11 bits (53 bits left), divided by 2**53."""
    return float(_hash_points([item_id], str(seed))[0])


def split_of(item_id: str, cfg: CurateConfig) -> str:
    """The split of one item: test below ``test_fraction``, then validation up to ``test + validation``, else train."""
    u = split_point(item_id, cfg.seed)
    return "test" if u < cfg.test_fraction else "validation" if u < cfg.test_fraction + cfg.validation_fraction else "train"


def balance_mask(df: pl.DataFrame, cfg: CurateConfig) -> pl.Series:
    """Which rows balanced sampling keeps (bool Series, aligned with ``df``).

    Items are grouped by whole-dollar price (round half up). A group is kept whole when its dollar is at
    least ``balance_keep_all_above`` (the reference: ``i >= 240``) or it holds at most
    ``balance_cap_per_dollar`` items; otherwise ``cap`` items are drawn without replacement with
    probability proportional to the category weight: Efraimidis-Spirakis keys ``log(u)/w`` where ``u``
    is the item's own hash point ``sha256(f"{seed}:balance:{item_id}")`` (not a draw in input order),
    so an item's key never depends on the other items and a growing catalog only pushes out the
    lowest keys of a crowded dollar.
    """
    if df.height == 0:
        return pl.Series("keep", [], dtype=pl.Boolean)
    u = _hash_points(df["item_id"].to_list(), f"{cfg.seed}:balance")
    weights = df["category"].replace_strict(
        cfg.category_weights, default=cfg.default_category_weight, return_dtype=pl.Float64
    ).to_numpy()
    keys = np.log(np.maximum(u, 1e-300)) / np.maximum(weights, 1e-12)
    cap = cfg.balance_cap_per_dollar
    scored = df.select(
        (pl.col("price") + 0.5).floor().cast(pl.Int64).alias("dollar"),
    ).with_columns(
        pl.Series("key", keys),
        pl.len().over("dollar").alias("n"),
    )
    keep = scored.select(
        (
            (pl.col("dollar") >= cfg.balance_keep_all_above)
            | (pl.col("n") <= cap)
            | (pl.col("key").rank("ordinal", descending=True).over("dollar") <= cap)
        ).alias("keep")
    )["keep"]
    return keep


def _set_reason(df: pl.DataFrame, mask: pl.Series, reason: str) -> pl.DataFrame:
    """Give ``reason`` to still-kept rows where ``mask`` is True."""
    return df.with_columns(
        pl.when(pl.col("reason").is_null() & mask).then(pl.lit(reason)).otherwise(pl.col("reason")).alias("reason")
    )


def select_items(df: pl.DataFrame, cfg: CurateConfig) -> pl.DataFrame:
    """Rules 5-7 (duplicate, sampled_out, over_max_items) on the output of :func:`apply_filters`."""
    kept = df.filter(pl.col("reason").is_null())
    dup = ~(pl.struct("title", "text").is_first_distinct() & pl.col("item_id").is_first_distinct())
    dup_rows = kept.filter(dup)["_row"]
    df = _set_reason(df, df["_row"].is_in(dup_rows.implode()), "duplicate")

    if cfg.balance:
        kept = df.filter(pl.col("reason").is_null())
        out_rows = kept.filter(~balance_mask(kept, cfg))["_row"]
        df = _set_reason(df, df["_row"].is_in(out_rows.implode()), "sampled_out")

    if cfg.max_items is not None:
        kept = df.filter(pl.col("reason").is_null())
        if kept.height > cfg.max_items:
            # the max_items lowest points sha256(f"{seed}:max_items:{item_id}") stay (ties: item_id)
            points = _hash_points(kept["item_id"].to_list(), f"{cfg.seed}:max_items")
            ranked = kept.select("_row", "item_id").with_columns(pl.Series("_p", points)).sort("_p", "item_id")
            over = ranked["_row"].slice(cfg.max_items)
            df = _set_reason(df, df["_row"].is_in(over.implode()), "over_max_items")
    return df


def split_items(kept: pl.DataFrame, cfg: CurateConfig) -> dict[str, pl.DataFrame]:
    """test / validation / train by each item's :func:`split_point` (see :func:`split_of`); input order kept.

    Membership is a pure function of (seed, item_id) and the two fractions: an item keeps its split
    however the catalog grows or shrinks. Sizes are binomial around ``n x fraction``, not exact.
    """
    u = pl.Series("_u", _hash_points(kept["item_id"].to_list(), str(cfg.seed)), dtype=pl.Float64)
    test_end = cfg.test_fraction
    val_end = cfg.test_fraction + cfg.validation_fraction
    return {
        "test": kept.filter(u < test_end),
        "validation": kept.filter((u >= test_end) & (u < val_end)),
        "train": kept.filter(u >= val_end),
    }


# ----------------------------------------------------------------------------------------------
# stage functions


def _raw_manifest(raw_dir: str | Path) -> dict[str, Any]:
    raw_dir = Path(raw_dir)
    manifest = artifacts.read_manifest(raw_dir)
    if manifest.get("kind") != "raw":
        raise PricefitError(f"{raw_dir} is a {manifest.get('kind')!r} artifact, not 'raw'", hint="point at the output of ingest")
    return manifest


def _read_raw(raw_dir: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    manifest = _raw_manifest(raw_dir)
    return pl.read_parquet(Path(raw_dir) / "raw.parquet"), manifest


#: what rules 5-7 and the outputs need of apply_filters' frame: the wide raw columns (description,
#: features, details) are gone once the text is built
FILTERED_COLUMNS = ["_row", "item_id", "category", "title", "text", "price", "source_file", "source_line", "reason"]
#: raw rows above which curate reads raw.parquet in chunks (PRICEFIT_CURATE_STREAM_ROWS overrides)
STREAM_ROWS = 100_000
CURATE_CHUNK = 50_000  # rows per chunk on that path


def curate_chunk_rows(n_rows: int) -> int | None:
    """Rows per chunk for a raw artifact of ``n_rows`` rows (None: all at once, in memory)."""
    limit = int(os.environ.get("PRICEFIT_CURATE_STREAM_ROWS", STREAM_ROWS))
    return CURATE_CHUNK if n_rows > limit else None


def filtered_rows(raw_path: Path, cfg: CurateConfig, tokenizer: Any, chunk_rows: int | None) -> pl.DataFrame:
    """Rules 1-4 over raw.parquet (:func:`apply_filters`), narrowed to FILTERED_COLUMNS.

    ``chunk_rows`` None: the whole file at once. Else it is scanned lazily ``chunk_rows`` rows at a time
    (slice pushdown reads only those row groups); only the narrow columns of every chunk stay. Every
    rule 1-4 is a function of its own row (the token cut too: batching does not change a text's
    tokens), and ``_row`` is the global row number, so the frame is the same either way.
    """
    if chunk_rows is None:
        return apply_filters(pl.read_parquet(raw_path).with_row_index("_row"), cfg, tokenizer).select(FILTERED_COLUMNS)
    lf = pl.scan_parquet(raw_path).with_row_index("_row")
    total = lf.select(pl.len()).collect().item()
    parts = [
        apply_filters(lf.slice(start, chunk_rows).collect(), cfg, tokenizer).select(FILTERED_COLUMNS)
        for start in range(0, total, chunk_rows)
    ]
    return pl.concat(parts, rechunk=True) if parts else apply_filters(lf.collect(), cfg, tokenizer).select(FILTERED_COLUMNS)


def curate(
    raw_dir: str | Path,
    out_dir: str | Path,
    cfg: CurateConfig,
    tokenizer: Any = None,
    embed_raw: bool = False,
    contract: ContractHook | None = None,
    chunk_rows: int | None | str = "auto",
) -> artifacts.ArtifactRef:
    """Raw artifact -> curated artifact (train/validation/test parquet, dropped.parquet, quarantine.jsonl, manifest).

    ``tokenizer``: a fast tokenizer object (default: ``models.load_tokenizer(cfg.tokenizer)``).
    ``embed_raw``: copy the raw artifact into ``out_dir/raw`` (the ``pricefit curate`` layout).
    ``contract``: the curated data contract, run before the rename (see
    :func:`~pricefit.contract_hook.check_before_commit`).
    ``chunk_rows``: "auto" (in memory up to STREAM_ROWS raw rows, else in chunks of CURATE_CHUNK),
    None (in memory) or a number of rows a chunk (see :func:`filtered_rows`); the artifact's bytes
    are the same whichever is used.
    """
    raw_dir = Path(raw_dir)
    raw_manifest = _raw_manifest(raw_dir)
    tok = resolve_tokenizer(cfg, tokenizer)
    if chunk_rows == "auto":
        chunk_rows = curate_chunk_rows(int(raw_manifest.get("parsed", 0)))
    df = filtered_rows(raw_dir / "raw.parquet", cfg, tok, chunk_rows)
    df = select_items(df, cfg)

    kept = df.filter(pl.col("reason").is_null())
    splits = split_items(kept.select(SPLIT_COLUMNS), cfg)
    dropped = df.filter(pl.col("reason").is_not_null()).select(DROPPED_COLUMNS)
    dropped_counts = {r: n for r, n in sorted(dropped["reason"].value_counts().iter_rows())}
    quarantined = int(raw_manifest.get("quarantined", 0))
    rows_read = int(raw_manifest["rows_read"])
    kept_counts = {s: splits[s].height for s in SPLITS}
    total = sum(kept_counts.values()) + sum(dropped_counts.values()) + quarantined
    if total != rows_read:  # an internal bug, never the user's input: refuse to write a lying artifact
        raise RuntimeError(f"row accounting broken: {total} accounted for, {rows_read} read")
    if kept.height == 0:
        raise PricefitError(
            f"no usable rows: all {rows_read} rows of {raw_manifest.get('source')} were dropped or quarantined "
            f"(dropped: {dropped_counts}, quarantined: {quarantined})",
            hint="check the source (prices and text present?) or relax the rules, e.g. --set min_chars=100",
        )

    with artifacts.atomic_dir(out_dir, commit_on=(ContractError,)) as tmp:
        for name in SPLITS:
            _write_parquet(tmp / f"{name}.parquet", splits[name])
        _write_parquet(tmp / "dropped.parquet", dropped)
        shutil.copyfile(raw_dir / "quarantine.jsonl", tmp / "quarantine.jsonl")
        if embed_raw:
            shutil.copytree(raw_dir, tmp / "raw")
        artifacts.write_manifest(
            tmp,
            {
                "kind": "curated",
                "schema_version": SCHEMA_VERSION,
                "source": raw_manifest.get("source"),
                "raw_sha256": artifacts.sha256_file(raw_dir / artifacts.MANIFEST),
                "config": cfg.model_dump(mode="json"),
                "rows_read": rows_read,
                "kept": kept_counts,
                "dropped": dropped_counts,
                "quarantined": quarantined,
                "synthetic": bool(raw_manifest.get("synthetic", False)),
                "tokenizer": tokenizer_name(cfg, tok),
            },
        )
        manifest = check_before_commit(tmp, out_dir, contract)
    kept_counts, dropped_counts = manifest["kept"], manifest["dropped"]
    log.info("curate: kept %s; dropped %s; quarantined %d -> %s", ", ".join(f"{v} {k}" for k, v in kept_counts.items()),
             ", ".join(f"{v} {k}" for k, v in dropped_counts.items()) or "0", quarantined, out_dir)
    return artifacts.ref_for(out_dir, "curated", rows=sum(kept_counts.values()))


def prepare_items(
    source_or_raw_dir: str | Path | pl.DataFrame, cfg: CurateConfig, sample: bool = False, tokenizer: Any = None
) -> pl.DataFrame:
    """Listings -> frame with ``item_id, category, title, text, price, source_file, source_line, reason``.

    Same rules as :func:`curate` (``reason`` null = usable). With ``sample=False`` (scoring new listings)
    no dedupe, balancing or max_items applies: only rules 1-4. The input is a raw artifact directory,
    a source spec, or a frame in the raw.parquet schema. Quarantined lines are not in the frame.
    """
    if isinstance(source_or_raw_dir, pl.DataFrame):
        raw = source_or_raw_dir
    elif Path(str(source_or_raw_dir), artifacts.MANIFEST).exists():
        raw, _ = _read_raw(source_or_raw_dir)
    else:
        raw, _, _ = read_source(str(source_or_raw_dir), cfg)
    tok = resolve_tokenizer(cfg, tokenizer)
    df = apply_filters(raw.with_row_index("_row"), cfg, tok)
    if sample:
        df = select_items(df, cfg)
    return df.select(SPLIT_COLUMNS + ["reason"])


def read_split(curated_dir: str | Path, split: str, columns: Iterable[str] = CURATED_COLUMNS) -> pl.DataFrame:
    """One split of a finished curated artifact, checked before anyone uses it.

    The one reader for every stage that consumes curated data (tokenize, baselines, evaluate): the
    directory must hold a ``curated`` manifest and ``<split>.parquet``, the frame must have
    ``columns``, and item_id, text and price (where asked for) must have no nulls.
    """
    d = Path(curated_dir)
    manifest = artifacts.read_manifest(d)
    kind = manifest.get("kind")
    if kind != "curated":
        raise PricefitError(f"{d} holds a {kind!r} artifact, not a curated one",
                            hint="point at the output directory of `pricefit curate`")
    # the contract verdict recorded before the artifact was moved into place; absent: built without a
    # contract hook (library use, hand-made test data); {"skipped": ...}: `curate --no-contracts`
    verdict = manifest.get("contract")
    if isinstance(verdict, dict) and verdict.get("success") is not True and not verdict.get("skipped"):
        raise PricefitError(f"{d}: its curated data contract did not pass ({verdict.get('failed', '?')} check(s) "
                            f"failed; report: {d / 'contracts' / 'curated.json'})",
                            hint="fix the data or the curate settings the report names, then re-run `pricefit curate`")
    path = d / f"{split}.parquet"
    if not path.exists():
        raise PricefitError(f"{path} does not exist",
                            hint="point at the output directory of a finished `pricefit curate` "
                                 "(it holds train.parquet, validation.parquet and test.parquet)")
    df = pl.read_parquet(path)
    columns = tuple(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PricefitError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(df.columns)})",
                            hint=f"rerun `pricefit curate`: curated splits carry {', '.join(CURATED_COLUMNS)}")
    for col in ("item_id", "text", "price"):
        nulls = df[col].null_count() if col in columns else 0
        if nulls:
            raise PricefitError(f"{path}: {nulls} row(s) with a null {col}",
                                hint="the curated contract should have caught this; rerun `pricefit curate`")
    return df


def read_splits(curated_dir: str | Path) -> dict[str, pl.DataFrame]:
    """The three split frames of a curated artifact, each checked by :func:`read_split`."""
    return {s: read_split(curated_dir, s) for s in SPLITS}
