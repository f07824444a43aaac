"""Integration: the real Amazon listings in ../shared/data, every row read and accounted for.

Uses the word-level test tokenizer (tests/conftest.py) so that no model download is needed; the
token budget then cuts at 160 words instead of 160 SmolLM2 tokens, which changes no count asserted here.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from pricefit.config import CurateConfig
from pricefit.curation import curate, ingest

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]

LISTINGS_ROWS = 16_132  # shared/data/README.md
PRODUCTS_ROWS = 4_960


def _check_accounting(m: dict, out) -> None:
    assert m["rows_read"] == sum(m["kept"].values()) + sum(m["dropped"].values()) + m["quarantined"]
    splits = {s: pl.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")}
    assert {s: f.height for s, f in splits.items()} == m["kept"]
    ids = [set(f["item_id"]) for f in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    dropped = pl.read_parquet(out / "dropped.parquet")
    assert dict(dropped["reason"].value_counts().iter_rows()) == m["dropped"]


def test_amazon_meta_listings_all_rows_accounted_for(shared_data, tmp_path, word_tokenizer):
    src = shared_data / "amazon_meta" / "listings.jsonl.gz"
    if not src.exists():
        pytest.skip(f"{src} is missing")
    cfg = CurateConfig()
    raw = ingest(str(src), tmp_path / "raw", cfg)
    rm = raw.manifest()
    assert rm["rows_read"] == LISTINGS_ROWS and rm["parsed"] == LISTINGS_ROWS and rm["quarantined"] == 0
    ref = curate(raw.dir, tmp_path / "cur", cfg, tokenizer=word_tokenizer)
    m = ref.manifest()
    assert m["rows_read"] == LISTINGS_ROWS and m["synthetic"] is False
    _check_accounting(m, ref.dir)
    # every price is a number in $0.87-$999.00 and no dollar value holds more than 1,200 items:
    # nothing may be dropped for its price or sampled out
    assert not {"price_missing", "price_unparseable", "price_out_of_range", "sampled_out"} & set(m["dropped"])
    # items were curated once already by the same recipe: the large majority passes again
    assert sum(m["kept"].values()) > 0.9 * LISTINGS_ROWS
    train = pl.read_parquet(ref.dir / "train.parquet")
    assert train["price"].min() >= 0.5 and train["price"].max() <= 999.49
    assert train["text"].str.len_chars().min() >= cfg.min_chars
    assert (train["category"] == "Unknown").sum() > 0  # the 3,523 items without main_category keep a category


def test_amazon_products_csv_all_rows_accounted_for(shared_data, tmp_path, word_tokenizer):
    src = shared_data / "amazon_products_2023" / "products.csv.gz"
    if not src.exists():
        pytest.skip(f"{src} is missing")
    cfg = CurateConfig(min_chars=20)  # titles only: the default 300 characters would drop every row
    raw = ingest(f"csv:{src}", tmp_path / "raw", cfg)
    assert raw.manifest()["rows_read"] == PRODUCTS_ROWS
    ref = curate(raw.dir, tmp_path / "cur", cfg, tokenizer=word_tokenizer)
    m = ref.manifest()
    _check_accounting(m, ref.dir)
    assert m["dropped"]["price_missing"] == 99  # README: 99 products with price 0
    q = [json.loads(x) for x in (ref.dir / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == m["quarantined"]
    cats = pl.read_parquet(ref.dir / "train.parquet")["category"]
    assert cats.n_unique() > 100 and (cats != "Unknown").all()
