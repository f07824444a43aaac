"""Curation rules, one test each, on hand-made rows with exact expectations (word-level tokenizer)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pricefit import artifacts
from pricefit.config import CurateConfig
from pricefit.curation import (
    RAW_SCHEMA,
    apply_filters,
    balance_mask,
    build_text,
    curate,
    ingest,
    normalize_record,
    prepare_items,
    read_split,
    read_splits,
    select_items,
    split_items,
)
from pricefit.errors import PricefitError

WORDS = "sturdy handle quiet motor easy clean compact design bright finish".split()
LONG = " ".join(WORDS[i % len(WORDS)] for i in range(60))  # 60 words, ~400 chars, no digits


def listing(i: int, **kw) -> dict:
    base = {"parent_asin": f"ID{i}", "title": f"Item number {chr(65 + i % 26)}{i}", "price": 20.0,
            "description": [LONG], "features": [], "details": {}, "main_category": "Appliances"}
    base.update(kw)
    return base


def raw_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([normalize_record(r, "t.jsonl", n + 1) for n, r in enumerate(rows)], schema=RAW_SCHEMA)


def filtered(rows, tok, **cfg) -> pl.DataFrame:
    return apply_filters(raw_frame(rows).with_row_index("_row"), CurateConfig(**cfg), tok)


def reasons(df: pl.DataFrame) -> list[str | None]:
    return df.sort("_row")["reason"].to_list()


# ---------------------------------------------------------------------------------------------- rules 1-4


def test_price_rule_names_each_problem(word_tokenizer):
    rows = [listing(0, price="$1,299.99"), listing(1, price=None), listing(2, price="None"), listing(3, price="n/a yet"),
            listing(4, price="10.99 - 15.99"), listing(5, price=-3), listing(6, price="from 12.99")]
    df = filtered(rows, word_tokenizer, max_price=2000)
    assert reasons(df) == [None, "price_missing", "price_missing", "price_unparseable", "price_unparseable",
                           "price_out_of_range", None]
    assert df.sort("_row")["price"].to_list()[6] == 12.99


def test_price_range_bounds_are_inclusive(word_tokenizer):
    rows = [listing(i, price=p) for i, p in enumerate([0.49, 0.50, 999.49, 999.50])]
    assert reasons(filtered(rows, word_tokenizer)) == ["price_out_of_range", None, None, "price_out_of_range"]


def test_missing_or_blank_title_is_dropped(word_tokenizer):
    rows = [listing(0, title=None), listing(1, title="   "), listing(2, title=["A", "list", "title"]), listing(3)]
    df = filtered(rows, word_tokenizer)
    assert reasons(df) == ["title_missing", "title_missing", None, None]
    assert df.sort("_row")["title"][2] == "A\nlist\ntitle"


def test_text_shorter_than_min_chars_is_dropped_at_the_exact_threshold(word_tokenizer):
    rows = [listing(0, title="x" * 300, description=[]), listing(1, title="x" * 299, description=[])]
    df = filtered(rows, word_tokenizer, min_chars=300)
    assert reasons(df) == [None, "text_too_short"]
    assert df.sort("_row")["text"].to_list() == ["x" * 300, None]


def test_text_that_truncation_brings_under_min_chars_is_dropped(word_tokenizer):
    # 400 chars of one-letter words: 200 tokens, cut to 100 tokens = 199 chars < 300
    rows = [listing(0, title="t", description=[" ".join(["a"] * 200)])]
    assert reasons(filtered(rows, word_tokenizer, max_text_tokens=100)) == ["text_too_short"]


def test_text_is_cut_to_the_token_budget_keeping_its_characters(word_tokenizer):
    words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(200)]  # 200 digit-free words
    rows = [listing(0, title="Title", description=[" ".join(words)])]
    text = filtered(rows, word_tokenizer, max_text_tokens=50, min_chars=10)["text"][0]
    assert text == "Title\n" + " ".join(words[:49])  # 1 title token + 49 words
    assert len(word_tokenizer(text, add_special_tokens=False)["input_ids"]) == 50


def test_text_within_budget_is_not_changed(word_tokenizer):
    rows = [listing(0)]
    assert filtered(rows, word_tokenizer)["text"][0] == build_text(**{k: rows[0][k] for k in ("title", "description", "features", "details")})


# ---------------------------------------------------------------------------------------------- text


def test_noisy_detail_keys_are_dropped():
    text = build_text("Kettle", details={"Brand": "Acme", "Item Weight": "5 pounds", "Color": "Red", "UPC": "0123"})
    assert text == "Kettle\nBrand Acme, Color Red"
    assert build_text("K", details={"Brand": "Acme", "Item Weight": "5"}) == "K\nBrand Acme"
    kept = build_text("K", details={"Item Weight": "5"}, cfg=CurateConfig(drop_detail_keys=[]))
    assert kept == "K\nItem Weight 5"


def test_nested_details_become_plain_text():
    text = build_text("K", details={"Best Sellers Rank": {"Tools": 95657}, "Sizes": ["S", "M"], "Note": 'a "quoted" inch'})
    assert text == "K\nSizes S, M, Note a quoted inch"


def test_part_number_like_words_are_removed():
    # 7+ chars with a digit go (XJ-2000B, Model12, B07XSCCZYG); shorter or digit-free words stay
    text = build_text("Acme Drill XJ-2000B cordless 18V Model12 Model1", description=["Fits B07XSCCZYG and 2-pack"])
    assert text == "Acme Drill cordless 18V Model1\nFits and 2-pack"


def test_scrub_collapses_separators_like_the_reference():
    assert build_text('Size: [Large] {x} 【y】 "z"', features=["a , b", "c,,d"]) == "Size Large x y z\na, b c,d"


def test_description_and_features_join_in_order():
    assert build_text("T", description=["d1", "d2"], features=["f1"]) == "T\nd1 d2 f1"


def test_five_megabyte_description_is_capped_before_cleaning(tmp_path, word_tokenizer):
    huge = ("lorem ipsum dolor " * 300_000)[: 5 * 1024 * 1024]
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(listing(0, description=[huge])) + "\n" + json.dumps(listing(1)) + "\n")
    cfg = CurateConfig(validation_fraction=0.0, test_fraction=0.0)
    ingest(str(path), tmp_path / "raw", cfg)
    ref = curate(tmp_path / "raw", tmp_path / "cur", cfg, tokenizer=word_tokenizer)
    train = pl.read_parquet(ref.dir / "train.parquet")
    assert train.height == 2
    assert max(train["text"].str.len_chars()) <= 160 * 7 + 100


# ---------------------------------------------------------------------------------------------- rules 5-7


def test_duplicates_by_title_and_text_or_by_item_id(word_tokenizer):
    rows = [listing(0), listing(1, title=listing(0)["title"]), listing(2), listing(2, title="Other title here")]
    df = select_items(filtered(rows, word_tokenizer), CurateConfig(balance=False))
    assert reasons(df) == [None, "duplicate", None, "duplicate"]


def _slot_frame(cats_prices: list[tuple[str, float]]) -> pl.DataFrame:
    return pl.DataFrame({"item_id": [f"i{n}" for n in range(len(cats_prices))],
                         "category": [c for c, _ in cats_prices], "price": [p for _, p in cats_prices]})


def test_balancing_caps_crowded_dollars_and_keeps_the_rest():
    cfg = CurateConfig(balance_cap_per_dollar=2, balance_keep_all_above=240)
    # $10 slot: 5 items (10.49 rounds to 10) -> 2 kept; $11: 2 items -> all; $300: 5 items -> all (above 240)
    frame = _slot_frame([("A", 10.0)] * 3 + [("A", 10.49)] * 2 + [("A", 10.5)] * 2 + [("A", 300.0)] * 5)
    keep = balance_mask(frame, cfg).to_list()
    assert sum(keep[:5]) == 2 and keep[5:] == [True] * 7
    assert keep == balance_mask(frame, cfg).to_list()  # seeded: same draw every time


def test_balancing_draws_from_item_hashes_not_input_order():
    # a crowded $20: an item the larger catalog keeps is kept by the smaller one too, in any order
    cfg = CurateConfig(balance_cap_per_dollar=30)
    big = _slot_frame([("Books", 20.0)] * 100)
    small = big.slice(20, 60).reverse()
    kept_big = set(big.filter(balance_mask(big, cfg))["item_id"])
    kept_small = set(small.filter(balance_mask(small, cfg))["item_id"])
    assert len(kept_big) == len(kept_small) == 30
    assert kept_big & set(small["item_id"]) <= kept_small


def test_balancing_weights_categories():
    cfg = CurateConfig(balance_cap_per_dollar=10, category_weights={"Automotive": 1e-9}, default_category_weight=5.0)
    frame = _slot_frame([("Automotive", 20.0)] * 20 + [("Books", 20.0)] * 20)
    keep = balance_mask(frame, cfg)
    assert frame.filter(keep)["category"].to_list() == ["Books"] * 10


def test_balancing_marks_sampled_out_and_can_be_turned_off(word_tokenizer):
    rows = [listing(i, price=15.0) for i in range(6)]
    on = select_items(filtered(rows, word_tokenizer), CurateConfig(balance_cap_per_dollar=4))
    assert sorted(reasons(on), key=str) == [None] * 4 + ["sampled_out"] * 2
    off = select_items(filtered(rows, word_tokenizer), CurateConfig(balance=False, balance_cap_per_dollar=4))
    assert reasons(off) == [None] * 6


def test_max_items_keeps_a_seeded_subset(word_tokenizer):
    rows = [listing(i, price=10.0 + i) for i in range(10)]
    a = select_items(filtered(rows, word_tokenizer), CurateConfig(max_items=4))
    b = select_items(filtered(rows, word_tokenizer), CurateConfig(max_items=4))
    assert reasons(a).count(None) == 4 and reasons(a).count("over_max_items") == 6
    assert reasons(a) == reasons(b)


def test_max_items_keeps_the_same_items_in_any_input_order(word_tokenizer):
    rows = [listing(i, price=10.0 + i) for i in range(30)]
    cfg = CurateConfig(max_items=10)

    def kept(rs):
        df = select_items(filtered(rs, word_tokenizer), cfg)
        return set(df.filter(pl.col("reason").is_null())["item_id"])

    assert len(kept(rows)) == 10 and kept(rows) == kept(rows[::-1]) == kept(rows[10:] + rows[:10])


def test_split_is_seeded_disjoint_and_sized():
    kept = pl.DataFrame({"item_id": [f"i{n}" for n in range(2000)]})
    cfg = CurateConfig(validation_fraction=0.1, test_fraction=0.2)
    s1, s2 = split_items(kept, cfg), split_items(kept, cfg)
    ids = {k: set(v["item_id"]) for k, v in s1.items()}
    # hash-based membership: sizes are binomial around 1400 / 200 / 400 (sd 20 / 13 / 18), not exact
    assert {k: len(v) for k, v in ids.items()} == {"train": 1387, "validation": 203, "test": 410}
    assert ids["train"] | ids["validation"] | ids["test"] == set(kept["item_id"])
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"]) and not (ids["validation"] & ids["test"])
    assert all(s1[k]["item_id"].to_list() == s2[k]["item_id"].to_list() for k in s1)
    other = split_items(kept, CurateConfig(validation_fraction=0.1, test_fraction=0.2, seed=7))
    assert set(other["test"]["item_id"]) != ids["test"]


# ---------------------------------------------------------------------------------------------- stage functions


def test_prepare_items_scores_new_listings_without_sampling(word_tokenizer):
    frame = raw_frame([listing(0), listing(1, title=listing(0)["title"]), listing(2, price=None)])
    out = prepare_items(frame, CurateConfig(), tokenizer=word_tokenizer)
    assert out.columns == ["item_id", "category", "title", "text", "price", "source_file", "source_line", "reason"]
    assert out["reason"].to_list() == [None, None, "price_missing"]  # no dedupe when scoring


def test_curate_manifest_and_files(tmp_path, word_tokenizer):
    cfg = CurateConfig()
    raw = ingest("demo:200", tmp_path / "raw", cfg)
    ref = curate(raw.dir, tmp_path / "cur", cfg, tokenizer=word_tokenizer)
    m = ref.manifest()
    assert ref.kind == "curated" and artifacts.verify(ref)
    assert m["kind"] == "curated" and m["schema_version"] == 1 and m["synthetic"] is True
    assert m["raw_sha256"] == raw.sha256 and m["config"] == cfg.model_dump(mode="json")
    assert set(m["files"]) == {"train.parquet", "validation.parquet", "test.parquet", "dropped.parquet", "quarantine.jsonl"}
    train = pl.read_parquet(ref.dir / "train.parquet")
    assert train.columns == ["item_id", "category", "title", "text", "price", "source_file", "source_line"]
    assert dict(train.schema)["price"] == pl.Float64 and dict(train.schema)["source_line"] == pl.Int64
    dropped = pl.read_parquet(ref.dir / "dropped.parquet")
    assert dropped.columns == ["item_id", "source_file", "source_line", "reason", "title", "price"]
    # demo items pass the default rules (the demo is the main fixture: it must be usable)
    assert sum(m["kept"].values()) >= 0.95 * 200
    # hash-based splits of the 200 demo items (binomial around 160 / 20 / 20)
    assert m["kept"] == {"train": 162, "validation": 15, "test": 23}


def test_read_split_is_the_checked_reader_of_curated_output(tmp_path, word_tokenizer):
    raw = ingest("demo:60", tmp_path / "raw", CurateConfig())
    ref = curate(raw.dir, tmp_path / "cur", CurateConfig(), tokenizer=word_tokenizer)
    splits = read_splits(ref.dir)
    assert {k: v.height for k, v in splits.items()} == ref.manifest()["kept"]
    assert splits["test"].equals(pl.read_parquet(ref.dir / "test.parquet"))

    with pytest.raises(PricefitError, match="holds a 'raw' artifact, not a curated one"):
        read_split(raw.dir, "test")
    bad = tmp_path / "bad"
    bad.mkdir()
    artifacts.write_manifest(bad, {"kind": "curated"})
    with pytest.raises(PricefitError, match=r"test\.parquet does not exist"):
        read_split(bad, "test")
    splits["test"].drop("category").write_parquet(bad / "test.parquet")
    with pytest.raises(PricefitError, match=r"lacks column\(s\) category \(has item_id, title, text"):
        read_split(bad, "test")
    assert read_split(bad, "test", columns=("item_id", "text", "price")).height == splits["test"].height
    splits["test"].with_columns(pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("price"))
                                .alias("price")).write_parquet(bad / "test.parquet")
    with pytest.raises(PricefitError, match=r"1 row\(s\) with a null price"):
        read_split(bad, "test")


def test_curate_is_deterministic(tmp_path, word_tokenizer):
    cfg = CurateConfig()
    ingest("demo:120", tmp_path / "raw", cfg)
    a = curate(tmp_path / "raw", tmp_path / "a", cfg, tokenizer=word_tokenizer)
    b = curate(tmp_path / "raw", tmp_path / "b", cfg, tokenizer=word_tokenizer)
    assert a.manifest()["files"] == b.manifest()["files"]


def test_source_with_no_usable_rows_stops_with_the_counts(tmp_path, word_tokenizer):
    path = tmp_path / "cheap.jsonl"
    path.write_text("".join(json.dumps(listing(i, price=0.1)) + "\n" for i in range(3)))
    ingest(str(path), tmp_path / "raw", CurateConfig())
    with pytest.raises(PricefitError) as err:
        curate(tmp_path / "raw", tmp_path / "cur", CurateConfig(), tokenizer=word_tokenizer)
    assert "no usable rows" in err.value.message and "price_out_of_range" in err.value.message
    assert not (tmp_path / "cur").exists()


def test_empty_and_all_broken_sources_stop_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PricefitError) as err:
        ingest(str(empty), tmp_path / "raw", CurateConfig())
    assert "is empty" in err.value.message and str(empty) in err.value.message
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n[1]\n")
    with pytest.raises(PricefitError) as err:
        ingest(str(broken), tmp_path / "raw", CurateConfig())
    assert "no usable row" in err.value.message and "invalid_json, not_an_object" in err.value.message
    assert f"{broken}:1" in err.value.hint
    assert not (tmp_path / "raw").exists()


def test_ingest_in_chunks_gives_the_same_raw_rows(tmp_path, monkeypatch):
    import pricefit.ingestion as ingestion

    whole = ingest("demo:7", tmp_path / "a", CurateConfig())
    monkeypatch.setattr(ingestion, "INGEST_CHUNK", 3)
    chunked = ingest("demo:7", tmp_path / "b", CurateConfig())
    assert pl.read_parquet(whole.dir / "raw.parquet").equals(pl.read_parquet(chunked.dir / "raw.parquet"))
    assert whole.manifest()["files"] == chunked.manifest()["files"]
