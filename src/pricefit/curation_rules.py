"""Which listings the curated artifact keeps, why each other one is dropped, and the split of each kept one.

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
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterable

import numpy as np
import polars as pl

from .listing_text import text_expr, truncate_to_tokens
from .prices import DROP_REASON
from .settings.curate import CurateConfig

# the curation stage's one logger: run logs and their tests look for its records under this name
log = logging.getLogger("pricefit.curation")

UNKNOWN_CATEGORY = "Unknown"
SPLITS = ("train", "validation", "test")
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
