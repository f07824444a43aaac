"""Data contracts: a good batch passes, each kind of bad batch is stopped with a readable report.

Each GX run costs a few seconds, so one bad batch carries several independent defects and the
test asserts exactly which checks failed, on how many rows, with which examples.
"""

from __future__ import annotations

import json

import pytest

import data_contracts
from pricefit.errors import ContractError, PricefitError

from .conftest import curated_rows, raw_rows, tokenized_split, write_curated, write_raw, write_tokenized


def failures(report: dict) -> dict[tuple[str, str, str | None], dict]:
    return {(e["batch"], e["name"], e["column"]): e for e in report["expectations"] if not e["success"]}


# ---------------------------------------------------------------------------------------------- curated


def test_good_curated_batch_passes_and_writes_report_and_data_docs(tmp_path, capsys):
    d = write_curated(tmp_path / "curated")
    report = data_contracts.check("curated", d)

    assert report["success"] is True
    assert report["failed"] == 0
    assert report["batches"]["train"] == 4 and report["batches"]["validation"] == 1 and report["batches"]["test"] == 1
    # the report on disk is the returned dict
    assert json.loads((d / "contracts" / "curated.json").read_text()) == report
    # 6 items: far too few for split shares to mean anything, so that check says why it was skipped
    skipped = [e for e in report["expectations"] if e.get("skipped")]
    assert [e["name"] for e in skipped] == ["split_proportions"]
    assert "6 items < 100" in skipped[0]["skipped"]
    # Data Docs beside the manifest, listing every suite
    index = d / "data_docs" / "index.html"
    assert report["data_docs"] == str(index)
    html = index.read_text()
    for suite in ("curated.train", "curated.validation", "curated.test", "curated.all_splits", "curated.manifest"):
        assert suite in html
    # GX chatter (progress bars, prints) never reaches stdout
    assert capsys.readouterr().out == ""


def test_bad_curated_batch_is_stopped_with_report(tmp_path):
    train = curated_rows("train", 5)
    train[0]["title"] = None  # null title
    train[1]["price"] = 1500.0  # above max_price 999.49
    train[2]["text"] = "Too short to price."  # < min_chars 300
    validation = curated_rows("val", 2, 10)
    train[3]["item_id"] = validation[0]["item_id"]  # the same item in train and validation
    d = write_curated(
        tmp_path / "curated",
        splits={"train": train, "validation": validation, "test": curated_rows("test", 1, 20)},
        manifest_overrides={"rows_read": 5 + 2 + 1 + 2 + 1 + 7},  # 7 rows unaccounted for
    )
    with pytest.raises(ContractError) as err:
        data_contracts.check("curated", d, data_docs=False)
    report = err.value.report
    assert report["success"] is False

    failed = failures(report)
    assert set(failed) == {
        ("train", "expect_column_values_to_not_be_null", "title"),
        ("train", "expect_column_values_to_be_between", "price"),
        ("train", "expect_column_value_lengths_to_be_between", "text"),
        ("all_splits", "expect_column_values_to_be_between", "splits_with_item"),
        ("manifest", "expect_column_pair_values_to_be_equal", "rows_read,kept_plus_dropped_plus_quarantined"),
    }
    assert report["failed"] == 5
    null_title = failed[("train", "expect_column_values_to_not_be_null", "title")]
    assert null_title["unexpected_count"] == 1 and null_title["element_count"] == 5
    assert null_title["examples"] == [{"item_id": "train-0", "title": None}]
    price = failed[("train", "expect_column_values_to_be_between", "price")]
    assert price["unexpected_count"] == 1
    assert price["examples"] == [{"item_id": "train-1", "price": 1500.0}]
    assert price["kwargs"]["min_value"] == 0.5 and price["kwargs"]["max_value"] == 999.49
    short = failed[("train", "expect_column_value_lengths_to_be_between", "text")]
    assert short["unexpected_count"] == 1 and short["examples"][0]["item_id"] == "train-2"
    overlap = failed[("all_splits", "expect_column_values_to_be_between", "splits_with_item")]
    assert overlap["unexpected_count"] == 2  # the row in train and the row in validation
    assert {(e["split"], e["item_id"]) for e in overlap["examples"]} == {("train", "val-10"), ("validation", "val-10")}
    accounting = failed[("manifest", "expect_column_pair_values_to_be_equal", "rows_read,kept_plus_dropped_plus_quarantined")]
    assert accounting["examples"] == [{"rows_read": 18, "kept_plus_dropped_plus_quarantined": 11}]
    assert all(e["guards"] for e in failed.values())

    # the message a user reads names the expectation, the count and an example
    msg = err.value.message
    assert msg.startswith(f"curated contract failed: 5 of {report['checked']} checks failed")
    assert "[train] expect_column_values_to_not_be_null(title): 1 of 5 rows" in msg
    assert "'item_id': 'train-0'" in msg
    assert "[all_splits] expect_column_values_to_be_between(splits_with_item): 2 of 8 rows" in msg
    assert str(d / "contracts" / "curated.json") in msg
    # the failing report is on disk too
    assert json.loads((d / "contracts" / "curated.json").read_text())["failed"] == 5


def test_missing_split_and_unknown_drop_reason(tmp_path):
    d = write_curated(
        tmp_path / "curated",
        splits={"train": curated_rows("train", 4), "validation": curated_rows("val", 1, 10)},
        dropped=[{"item_id": "d1", "source_file": "f", "source_line": 9, "reason": "too_expensive", "title": "x", "price": 5000.0}],
        manifest_overrides={"kept": {"train": 4, "validation": 1, "test": 0}},
    )
    with pytest.raises(ContractError) as err:
        data_contracts.check("curated", d, data_docs=False)
    failed = failures(err.value.report)
    assert set(failed) == {
        ("test.parquet", "file_present", None),
        ("kept", "expect_column_pair_values_to_be_equal", "manifest_kept,parquet_rows"),
        ("dropped", "expect_column_values_to_be_in_set", "reason"),
    }
    assert failed[("dropped", "expect_column_values_to_be_in_set", "reason")]["examples"] == [{"reason": "too_expensive"}]
    assert failed[("kept", "expect_column_pair_values_to_be_equal", "manifest_kept,parquet_rows")]["examples"][0]["split"] == "test"


def test_split_proportions_checked_on_a_large_enough_dataset(tmp_path):
    # 120 items: 96/12/12 is within tolerance of 0.8/0.1/0.1 ...
    good = write_curated(
        tmp_path / "good",
        splits={"train": curated_rows("train", 96), "validation": curated_rows("val", 12, 200), "test": curated_rows("test", 12, 300)},
    )
    report = data_contracts.check("curated", good, data_docs=False)
    assert not any(e.get("skipped") for e in report["expectations"])
    assert report["batches"]["proportions"] == 3
    # ... 118/1/1 (validation and test nearly empty) is not
    bad = write_curated(
        tmp_path / "bad",
        splits={"train": curated_rows("train", 118), "validation": curated_rows("val", 1, 200), "test": curated_rows("test", 1, 300)},
    )
    with pytest.raises(ContractError) as err:
        data_contracts.check("curated", bad, data_docs=False)
    failed = failures(err.value.report)
    assert set(failed) == {("proportions", "expect_column_pair_values_a_to_be_greater_than_b", "tolerance,abs_deviation")}
    entry = next(iter(failed.values()))
    assert entry["unexpected_count"] == 3
    assert {e["split"] for e in entry["examples"]} == {"train", "validation", "test"}


# ---------------------------------------------------------------------------------------------- raw


def test_good_raw_batch_passes(tmp_path):
    report = data_contracts.check("raw", write_raw(tmp_path / "raw"), data_docs=False)
    assert report["success"] is True
    assert report["batches"]["raw"] == 4
    assert report["checked"] == len(report["expectations"]) >= 15


def test_bad_raw_batch_is_stopped_with_report(tmp_path):
    rows = raw_rows(4)
    rows[1]["source_line"] = rows[0]["source_line"]  # two rows claim the same input line
    rows[2]["price"] = -12.0  # a sign picked up in parsing
    rows[0]["item_id"] = None
    d = write_raw(tmp_path / "raw", rows=rows, quarantined=2, manifest_overrides={"quarantined": 3})
    with pytest.raises(ContractError) as err:
        data_contracts.check("raw", d, data_docs=False)
    failed = failures(err.value.report)
    assert set(failed) == {
        ("raw", "expect_column_values_to_not_be_null", "item_id"),
        ("raw", "expect_compound_columns_to_be_unique", "source_file,source_line"),
        ("raw", "expect_column_values_to_be_between", "price"),
        # rows_read (4 + 2) != parsed + quarantined (4 + 3), and 3 != the 2 lines in quarantine.jsonl
        ("manifest", "expect_column_pair_values_to_be_equal", "rows_read,parsed_plus_quarantined"),
        ("manifest", "expect_column_pair_values_to_be_equal", "quarantined,quarantine_jsonl_lines"),
    }
    assert failed[("raw", "expect_compound_columns_to_be_unique", "source_file,source_line")]["unexpected_count"] == 2
    price = failed[("raw", "expect_column_values_to_be_between", "price")]
    assert price["unexpected_count"] == 1 and price["examples"][0]["price"] == -12.0
    assert price["examples"][0]["item_id"] == "B0002"


# ---------------------------------------------------------------------------------------------- tokenized


def test_good_tokenized_dataset_passes(tmp_path, tiny_tokenizer):
    d = write_tokenized(tmp_path / "tok", tiny_tokenizer)
    report = data_contracts.check("tokenized", d, tokenizer=tiny_tokenizer, data_docs=False)
    assert report["success"] is True
    assert report["rows"] == {"train": 3, "validation": 1, "test": 1}
    names = {(e["batch"], e["name"], e["column"]) for e in report["expectations"]}
    assert ("train", "expect_column_pair_values_to_be_equal", "completion,unmasked_label_text") in names


def test_tokenized_without_tokenizer_reports_the_decode_check_skipped(tmp_path, tiny_tokenizer):
    # the manifest names a hub id that is not in the local cache: no network call, the check is skipped
    d = write_tokenized(tmp_path / "tok", tiny_tokenizer, manifest_overrides={"base_model": "nobody/no-such-model-xyz"})
    report = data_contracts.check("tokenized", d, data_docs=False)
    skipped = [e for e in report["expectations"] if e.get("skipped")]
    assert [e["name"] for e in skipped] == ["labels_decode_to_completion"]
    assert "nobody/no-such-model-xyz" in skipped[0]["skipped"]


def test_tokenized_tokenizer_from_local_dir_in_manifest(tmp_path, tiny_tokenizer):
    tok_dir = tmp_path / "tokenizer"
    tiny_tokenizer.save_pretrained(str(tok_dir))
    train = tokenized_split(tiny_tokenizer, "train", [12, 305])
    # labels that are the right tokens for another price: structure is fine, only decoding catches it
    wrong = tiny_tokenizer("99.00", add_special_tokens=False)["input_ids"]
    n_prompt = train["labels"][1].count(-100)
    train["input_ids"][1] = train["input_ids"][1][:n_prompt] + wrong + [tiny_tokenizer.eos_token_id]
    train["labels"][1] = [-100] * n_prompt + wrong + [tiny_tokenizer.eos_token_id]
    train["attention_mask"][1] = [1] * len(train["input_ids"][1])
    d = write_tokenized(
        tmp_path / "tok",
        tiny_tokenizer,
        splits={"train": train, "validation": tokenized_split(tiny_tokenizer, "val", [4], 10), "test": tokenized_split(tiny_tokenizer, "test", [5], 20)},
        manifest_overrides={"base_model": str(tok_dir)},
    )
    with pytest.raises(ContractError) as err:
        data_contracts.check("tokenized", d, data_docs=False)
    failed = failures(err.value.report)
    assert set(failed) == {("train", "expect_column_pair_values_to_be_equal", "completion,unmasked_label_text")}
    assert next(iter(failed.values()))["examples"] == [
        {"item_id": "train-1", "completion": "305.00", "unmasked_label_text": "99.00"}
    ]


def test_bad_tokenized_dataset_is_stopped_with_report(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    train = tokenized_split(tok, "train", [12, 305, 7, 8])
    train["labels"][0][0] = train["input_ids"][0][0]  # a prompt token left unmasked
    train["attention_mask"][1][-1] = 0  # padding baked into the stored sequence
    train["labels"][2][-2] = train["labels"][2][-5]  # "7.07": a label that is not the input token at its position
    train["input_ids"][3] = train["input_ids"][3] * 3  # over the 32-token budget ...
    train["attention_mask"][3] = [1] * len(train["input_ids"][3])
    train["labels"][3] = [-100] * (len(train["input_ids"][3]) - 6) + train["input_ids"][3][-6:]  # ... labels still aligned
    test = tokenized_split(tok, "test", [5], 20)
    test["item_id"][0] = "train-0"  # overlap with train
    d = write_tokenized(
        tmp_path / "tok", tok, splits={"train": train, "validation": tokenized_split(tok, "val", [4], 10), "test": test}
    )
    with pytest.raises(ContractError) as err:
        data_contracts.check("tokenized", d, tokenizer=tok, data_docs=False)
    failed = failures(err.value.report)
    assert set(failed) == {
        ("train", "expect_column_values_to_be_in_set", "unmasked_runs"),
        ("train", "expect_column_values_to_be_in_set", "attention_zeros"),
        ("train", "expect_column_values_to_be_in_set", "label_token_mismatch"),
        ("train", "expect_column_values_to_be_between", "n_tokens"),
        ("train", "expect_column_pair_values_to_be_equal", "completion,unmasked_label_text"),
        ("all_splits", "expect_column_values_to_be_between", "splits_with_item"),
    }
    assert failed[("train", "expect_column_values_to_be_in_set", "unmasked_runs")]["examples"] == [
        {"item_id": "train-0", "unmasked_runs": 2}
    ]
    assert failed[("train", "expect_column_values_to_be_in_set", "attention_zeros")]["examples"] == [
        {"item_id": "train-1", "attention_zeros": 1}
    ]
    assert failed[("train", "expect_column_values_to_be_in_set", "label_token_mismatch")]["examples"] == [
        {"item_id": "train-2", "label_token_mismatch": 1}
    ]
    n_long = len(train["input_ids"][3])
    assert n_long == 48 > 32
    assert failed[("train", "expect_column_values_to_be_between", "n_tokens")]["examples"] == [
        {"item_id": "train-3", "n_tokens": n_long}
    ]
    decode = failed[("train", "expect_column_pair_values_to_be_equal", "completion,unmasked_label_text")]
    # row 0 decodes with the stray prompt word, row 2 with the wrong digit, row 3 with its own extra tokens
    assert [e["item_id"] for e in decode["examples"]] == ["train-0", "train-2", "train-3"]
    assert decode["examples"][0]["unmasked_label_text"] == "how12.00"


# ---------------------------------------------------------------------------------------------- errors, CLI


def test_not_a_stage_directory(tmp_path):
    with pytest.raises(PricefitError, match="unknown contract stage 'curate'"):
        data_contracts.check("curate", tmp_path)
    with pytest.raises(PricefitError, match="no manifest.json"):
        data_contracts.check("curated", tmp_path)


def test_cli_validate_json_reports_failure_with_exit_code_3(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from pricefit.cli import app

    train = curated_rows("train", 3)
    train[0]["price"] = 0.1
    d = write_curated(tmp_path / "curated", splits={"train": train, "validation": curated_rows("val", 1, 10), "test": curated_rows("test", 1, 20)})
    args = ["validate", "curated", str(d), "--json", "--no-docs"]
    monkeypatch.setattr(sys, "argv", ["pricefit", *args])  # pricefit.cli.command reads --json from argv
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3
    out = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert out["ok"] is False
    assert out["contract"]["failed"] == 1
    entry = [e for e in out["contract"]["expectations"] if not e["success"]][0]
    assert (entry["batch"], entry["column"], entry["examples"]) == ("train", "price", [{"item_id": "train-0", "price": 0.1}])
    assert not (d / "data_docs").exists()


def test_relative_directory_builds_data_docs(tmp_path, monkeypatch):
    """`pricefit curate --out runs/x` passes a relative path: GX's Data Docs store refused it."""
    write_curated(tmp_path / "curated")
    monkeypatch.chdir(tmp_path)
    report = data_contracts.check("curated", "curated")
    assert report["success"] is True
    assert (tmp_path / "curated" / "data_docs" / "index.html").is_file()


# ---------------------------------------------------------------------------------------------- pure helpers (no GX)


def test_row_profile_counts_runs_mismatches_and_padding():
    from data_contracts.tokenized import row_profile

    good = row_profile([5, 6, 7, 8], [1, 1, 1, 1], [-100, -100, 7, 8])
    assert (good["unmasked_runs"], good["label_token_mismatch"], good["attention_zeros"], good["_unmasked_ids"]) == (1, 0, 0, [7, 8])
    stray = row_profile([5, 6, 7, 8], [1, 1, 1, 0], [5, -100, 7, 9])
    assert (stray["unmasked_runs"], stray["label_token_mismatch"], stray["attention_zeros"]) == (2, 1, 1)
    unlabeled = row_profile([5, 6], [1, 1], [-100, -100])
    assert (unlabeled["unmasked_runs"], unlabeled["unmasked_tokens"]) == (0, 0)


def test_jsonable_makes_gx_values_json_safe():
    import numpy as np

    from data_contracts.runner import jsonable

    assert jsonable({"a": np.int64(3), "b": float("nan"), "c": (np.float64(1.5), "x"), 4: np.array([1, 2])}) == {
        "a": 3,
        "b": None,
        "c": [1.5, "x"],
        "4": [1, 2],
    }


def test_data_docs_read_offline_with_the_results_listed(tmp_path):
    """GX loads its CSS/JS from CDNs and fills the index's lists with JavaScript: the pages are
    rewritten to fetch nothing and to list every validation result as plain HTML."""
    import re

    d = write_curated(tmp_path / "curated")
    report = data_contracts.check("curated", d)
    pages = sorted((d / "data_docs").rglob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text()
        remote = re.findall(r'<(?:script|link|img)\b[^>]*(?:src|href)="https?://[^"]*"', text)
        assert remote == [], (page, remote[:3])
        assert "<!-- pricefit: offline Data Docs -->" in text
    index = (d / "data_docs" / "index.html").read_text()
    table = re.search(r'<table\b[^>]*id="section-1-content-block-2-1-body-table"[^>]*>(.*?)</table>', index, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)
    links = [re.search(r'<a href="(validations/[^"]+)">open</a>', r).group(1) for r in rows]
    suites = {b for b in report["batches"]} | {"manifest", "all_splits"}
    assert len(rows) == len(suites) and all('<span class="text-success">Success</span>' in r for r in rows)
    assert all((d / "data_docs" / link).is_file() for link in links)
    assert sorted(link.split("/")[2] for link in links) == sorted(suites)
