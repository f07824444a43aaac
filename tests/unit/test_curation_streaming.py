"""Curation at scale: ingest streams its source, curate reads raw.parquet in chunks above a size,
and both write the same bytes as the all-in-memory path (word-level tokenizer, hand-made rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pricefit import curation, ingestion
from pricefit.config import CurateConfig

WORDS = "sturdy handle quiet motor easy clean compact design bright finish steel frame".split()


def _listings(path: Path) -> None:
    """430 lines with every rule at work: prices in a few crowded dollars (balancing), duplicates,
    bad prices, missing titles, short and over-long texts, part numbers, and two broken lines."""
    lines = []
    for i in range(420):
        n = 5 + (i * 7) % 40  # 5..44 words: some under min_chars, some cut by the token budget
        rec = {"parent_asin": f"A{i:04d}", "title": f"Gadget {WORDS[i % 12]} model X{i}Z",
               "price": [19.99, 20.25, 35.0, 35.4, 250.0, 1500.0][i % 6], "main_category": ["Tools", "Toys", None][i % 3],
               "description": [" ".join(WORDS[(i + k) % 12] for k in range(n))], "features": [f"part AB{i}C"],
               "details": {"Brand": "Acme", "Item model number": f"M-{i}"}}
        if i % 41 == 0:
            rec["price"] = None
        if i % 53 == 0:
            rec["title"] = "  "
        if i % 37 == 0 and i:  # same title and text as an earlier item: duplicate
            rec = dict(json.loads(lines[i - 37]), parent_asin=f"DUP{i}")
        if i % 97 == 0:
            rec["price"] = "10 - 20"
        lines.append(json.dumps(rec))
    lines.insert(100, "{not json")
    lines.insert(300, "[1, 2]")
    lines.append(json.dumps({"parent_asin": "A0001", "title": "Gadget again", "price": 5.0, "description": [" ".join(WORDS * 3)]}))
    path.write_text("\n".join(lines) + "\n")


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def cfg():
    return CurateConfig(tokenizer="word", max_text_tokens=40, min_chars=110, balance_cap_per_dollar=40,
                        max_items=120, part_number_min_len=5)


def test_chunked_paths_write_the_same_bytes(tmp_path, monkeypatch, word_tokenizer, cfg):
    src = tmp_path / "listings.jsonl"
    _listings(src)

    # ingest: one chunk, or 23-row chunks streamed through part files into one sink -> the same raw bytes
    monkeypatch.setattr(ingestion, "INGEST_CHUNK", 10_000)
    one = curation.ingest(str(src), tmp_path / "raw-one", cfg)
    monkeypatch.setattr(ingestion, "INGEST_CHUNK", 23)
    many = curation.ingest(str(src), tmp_path / "raw-many", cfg)
    assert _files(one.dir) == _files(many.dir)
    m = one.manifest()
    assert (m["rows_read"], m["parsed"], m["quarantined"]) == (423, 421, 2)

    # curate: all at once, or 29 rows at a time (and never more in one apply_filters call)
    real, sizes = curation.apply_filters, []

    def spy(df, *a, **kw):
        sizes.append(df.height)
        return real(df, *a, **kw)

    monkeypatch.setattr(curation, "apply_filters", spy)
    whole = curation.curate(one.dir, tmp_path / "cur-whole", cfg, tokenizer=word_tokenizer, chunk_rows=None)
    assert sizes == [421]
    sizes.clear()
    chunked = curation.curate(one.dir, tmp_path / "cur-chunked", cfg, tokenizer=word_tokenizer, chunk_rows=29)
    assert sizes == [29] * 14 + [15]
    assert _files(whole.dir) == _files(chunked.dir)

    # the rules really ran: every reason occurs, and the counts add up
    cm = whole.manifest()
    assert set(cm["dropped"]) == {"price_missing", "price_unparseable", "title_missing", "price_out_of_range",
                                  "text_too_short", "duplicate", "sampled_out", "over_max_items"}
    assert sum(cm["kept"].values()) == 120
    assert sum(cm["kept"].values()) + sum(cm["dropped"].values()) + cm["quarantined"] == 423


def test_auto_switches_to_chunks_above_the_threshold(tmp_path, monkeypatch, word_tokenizer, cfg):
    assert curation.curate_chunk_rows(curation.STREAM_ROWS) is None
    assert curation.curate_chunk_rows(curation.STREAM_ROWS + 1) == curation.CURATE_CHUNK
    src = tmp_path / "listings.jsonl"
    _listings(src)
    raw = curation.ingest(str(src), tmp_path / "raw", cfg)
    whole = curation.curate(raw.dir, tmp_path / "a", cfg, tokenizer=word_tokenizer, chunk_rows=None)
    monkeypatch.setenv("PRICEFIT_CURATE_STREAM_ROWS", "100")
    monkeypatch.setattr(curation, "CURATE_CHUNK", 64)
    real, sizes = curation.apply_filters, []
    monkeypatch.setattr(curation, "apply_filters", lambda df, *a, **kw: sizes.append(df.height) or real(df, *a, **kw))
    auto = curation.curate(raw.dir, tmp_path / "b", cfg, tokenizer=word_tokenizer)
    assert max(sizes) == 64 and len(sizes) == 7
    assert _files(whole.dir) == _files(auto.dir)
