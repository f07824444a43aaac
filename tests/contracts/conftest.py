"""Tiny stage directories built by hand (no curation or tokenization code involved)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pricefit import artifacts
from pricefit.curation import RAW_SCHEMA  # the ingest stage's schema, not a copy

TEXT = "A sturdy stainless steel kettle with a comfortable handle and a whistle. " * 5  # 365 chars


def curated_rows(split: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "item_id": f"{split}-{start + i}",
            "category": "Appliances",
            "title": f"Kettle {start + i}",
            "text": TEXT,
            "price": 10.0 + i,
            "source_file": "listings.jsonl",
            "source_line": start + i + 1,
        }
        for i in range(n)
    ]


CURATED_SCHEMA = {
    "item_id": pl.String,
    "category": pl.String,
    "title": pl.String,
    "text": pl.String,
    "price": pl.Float64,
    "source_file": pl.String,
    "source_line": pl.Int64,
}


def write_curated(
    out: Path,
    splits: dict[str, list[dict[str, Any]]] | None = None,
    dropped: list[dict[str, Any]] | None = None,
    quarantine: list[dict[str, Any]] | None = None,
    manifest_overrides: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """A curated stage dir: 4/1/1 good rows by default, 2 dropped, 1 quarantined, manifest that adds up."""
    if splits is None:
        splits = {"train": curated_rows("train", 4), "validation": curated_rows("val", 1, 10), "test": curated_rows("test", 1, 20)}
    if dropped is None:
        dropped = [
            {"item_id": "d1", "source_file": "listings.jsonl", "source_line": 90, "reason": "text_too_short", "title": "x", "price": 3.0},
            {"item_id": "d2", "source_file": "listings.jsonl", "source_line": 91, "reason": "price_missing", "title": "y", "price": None},
        ]
    if quarantine is None:
        quarantine = [{"source_file": "listings.jsonl", "source_line": 99, "reason": "malformed_json", "excerpt": "{"}]
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        pl.DataFrame(rows, schema=CURATED_SCHEMA).write_parquet(out / f"{name}.parquet")
    pl.DataFrame(
        dropped,
        schema={"item_id": pl.String, "source_file": pl.String, "source_line": pl.Int64, "reason": pl.String, "title": pl.String, "price": pl.Float64},
    ).write_parquet(out / "dropped.parquet")
    (out / "quarantine.jsonl").write_text("".join(json.dumps(q) + "\n" for q in quarantine))
    reasons: dict[str, int] = {}
    for d in dropped:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    kept = {name: len(rows) for name, rows in splits.items()}
    manifest = {
        "kind": "curated",
        "schema_version": 1,
        "source": "hand-built test fixture",
        "raw_sha256": "0" * 64,
        "config": {"min_price": 0.5, "max_price": 999.49, "min_chars": 300, "validation_fraction": 0.1, "test_fraction": 0.1, **(config or {})},
        "rows_read": sum(kept.values()) + len(dropped) + len(quarantine),
        "kept": kept,
        "dropped": reasons,
        "quarantined": len(quarantine),
        "synthetic": True,
        "tokenizer": "tiny",
    }
    manifest.update(manifest_overrides or {})
    artifacts.write_manifest(out, manifest)
    return out




def raw_rows(n: int = 4) -> list[dict[str, Any]]:
    rows = [
        {
            "item_id": f"B{i:04d}",
            "source_file": "meta_Appliances.jsonl",
            "source_line": i + 1,
            "category": "Appliances",
            "title": f"Kettle {i}",
            "description": "A kettle.",
            "features": "steel\nwhistle",
            "details": '{"Brand": "Acme"}',
            "price_raw": f"{10 + i}.99",
            "price": 10.99 + i,
            "price_issue": None,
        }
        for i in range(n)
    ]
    # a messy but legal raw row: no title, no price (curation drops it with a reason)
    rows[-1].update(title=None, price_raw=None, price=None, price_issue="price_missing")
    return rows


def write_raw(out: Path, rows: list[dict[str, Any]] | None = None, quarantined: int = 1, manifest_overrides: dict | None = None) -> Path:
    rows = raw_rows() if rows is None else rows
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, schema=RAW_SCHEMA).write_parquet(out / "raw.parquet")
    (out / "quarantine.jsonl").write_text(
        "".join(json.dumps({"source_file": "meta_Appliances.jsonl", "source_line": 100 + i, "reason": "malformed_json", "excerpt": "{"}) + "\n" for i in range(quarantined))
    )
    manifest = {
        "kind": "raw",
        "schema_version": 1,
        "source": "hand-built test fixture",
        "rows_read": len(rows) + quarantined,
        "parsed": len(rows),
        "quarantined": quarantined,
        "synthetic": True,
    }
    manifest.update(manifest_overrides or {})
    artifacts.write_manifest(out, manifest)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A word-level fast tokenizer built in memory: every word and digit is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<eos>", "how", "much", "does", "this", "cost", "?", "kettle", "steel", "price", "is", "$", ".",
             "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def tokenized_split(tok, split: str, prices: list[int], start: int = 0) -> dict[str, list]:
    """Rows tokenized the way the contract expects: prompt masked, completion (+eos) unmasked."""
    cols: dict[str, list] = {k: [] for k in ("item_id", "category", "price", "text", "prompt", "completion", "input_ids", "attention_mask", "labels")}
    for i, price in enumerate(prices):
        text = "steel kettle"
        prompt = f"how much does this cost ? {text} price is $"
        completion = f"{price}.00"
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = p_ids + c_ids
        cols["item_id"].append(f"{split}-{start + i}")
        cols["category"].append("Appliances")
        cols["price"].append(float(price))
        cols["text"].append(text)
        cols["prompt"].append(prompt)
        cols["completion"].append(completion)
        cols["input_ids"].append(ids)
        cols["attention_mask"].append([1] * len(ids))
        cols["labels"].append([-100] * len(p_ids) + c_ids)
    return cols


def write_tokenized(out: Path, tok, splits: dict[str, dict[str, list]] | None = None, max_tokens: int = 32, manifest_overrides: dict | None = None) -> Path:
    import datasets

    if splits is None:
        splits = {
            "train": tokenized_split(tok, "train", [12, 305, 7]),
            "validation": tokenized_split(tok, "val", [45], 10),
            "test": tokenized_split(tok, "test", [99], 20),
        }
    out.mkdir(parents=True, exist_ok=True)
    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict(cols) for name, cols in splits.items()})
    dd.save_to_disk(str(out / "dataset"))
    manifest = {
        "kind": "tokenized",
        "base_model": "test-only-tokenizer",
        "tokenizer_sha256": "0" * 64,
        "config": {"max_length": max_tokens},
        "rows": {name: len(cols["item_id"]) for name, cols in splits.items()},
        "curated_sha256": "0" * 64,
        "max_tokens": max_tokens,
        "truncated": 0,
    }
    manifest.update(manifest_overrides or {})
    artifacts.write_manifest(out, manifest)
    return out
