"""Row-level vs systemic contract failures (issue 10, finding 1).

A few rows that fail a row-level check (a price of 1e12, a null key) are moved out of the data with
the expectation's name as their reason and the stage goes on; more than ``max_bad_row_fraction``
of a table (GX's ``mostly``) stops it. Every row stays accounted for.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

import data_contracts
from pricefit.errors import ContractError

from .conftest import curated_rows, raw_rows, write_curated, write_raw

PRICE = "expect_column_values_to_be_between(price)"


def _raw_rows(n: int, bad_price: list[int] = (), null_details: list[int] = ()) -> list[dict]:
    rows = raw_rows(n)
    for i in bad_price:
        rows[i].update(price=1e12, price_raw="1000000000000")
    for i in null_details:
        rows[i]["details"] = None
    return rows


def test_a_few_bad_raw_rows_are_quarantined_with_the_expectation_name(tmp_path):
    bad = [10, 200, 350, 500, 777, 990]  # 6 of 1,000 rows: 0.6% < the default 1%
    d = write_raw(tmp_path / "raw", rows=_raw_rows(1000, bad_price=bad), quarantined=2)

    # validating an existing directory never changes it: the rows are reported, the check passes
    report = data_contracts.check("raw", d, data_docs=False)
    assert report["success"] is True
    assert report["row_failures"] == {"raw": {PRICE: 6}}
    assert pl.read_parquet(d / "raw.parquet").height == 1000

    # the stage's own check (on the directory it is building) moves them to the quarantine
    report = data_contracts.check("raw", d, data_docs=False, remove_bad_rows=True)
    assert report["success"] is True and report["removed_rows"] == {PRICE: 6}
    assert report["row_failures"] == {}  # the second pass, on what is left, is clean
    raw = pl.read_parquet(d / "raw.parquet")
    assert raw.height == 994 and raw["price"].max() < 1e6
    lines = [json.loads(x) for x in (d / "quarantine.jsonl").read_text().splitlines()]
    moved = [q for q in lines if q["reason"] == PRICE]
    assert [q["source_line"] for q in moved] == [i + 1 for i in bad]
    assert all('"price": 1000000000000.0' in q["excerpt"] for q in moved)
    m = json.loads((d / "manifest.json").read_text())
    assert m["parsed"] == 994 and m["quarantined"] == 8 and m["rows_read"] == 1002 == m["parsed"] + m["quarantined"]
    assert m["quarantine_reasons"] == {PRICE: 6}  # the fixture's 2 lines carry no reason count
    assert m["files"]["raw.parquet"]  # manifest rewritten with the new file hashes


def test_bad_rows_above_the_fraction_stop_the_stage(tmp_path):
    # 15 of 1,000 (1.5%) bad prices: more than 1% is a systemic problem (a broken parser), not noise
    d = write_raw(tmp_path / "raw", rows=_raw_rows(1000, bad_price=list(range(0, 1000, 67))), quarantined=0)
    with pytest.raises(ContractError) as err:
        data_contracts.check("raw", d, data_docs=False, remove_bad_rows=True)
    failed = [(e["batch"], e["name"], e["column"]) for e in err.value.report["expectations"] if not e["success"]]
    assert failed == [("raw", "expect_column_values_to_be_between", "price")]
    assert "15 of 1000 rows (at most 1.00% may fail: curate.max_bad_row_fraction)" in err.value.message
    assert pl.read_parquet(d / "raw.parquet").height == 1000  # nothing moved when the stage stops
    # the fraction is a setting: 2% lets the same data through
    report = data_contracts.check("raw", d, data_docs=False, remove_bad_rows=True, max_bad_row_fraction=0.02)
    assert report["removed_rows"] == {PRICE: 15}


def test_bad_rows_of_several_checks_count_together(tmp_path):
    # 8 bad prices and 8 null details: each 0.8% of 1,000, together 1.6% of the rows
    d = write_raw(
        tmp_path / "raw", rows=_raw_rows(1000, bad_price=list(range(8)), null_details=list(range(100, 108))), quarantined=0
    )
    with pytest.raises(ContractError) as err:
        data_contracts.check("raw", d, data_docs=False, remove_bad_rows=True)
    failed = [e for e in err.value.report["expectations"] if not e["success"]]
    assert [(e["batch"], e["name"]) for e in failed] == [("raw", "bad_row_fraction")]
    assert failed[0]["unexpected_count"] == 16 and failed[0]["observed_fraction"] == 0.016
    assert failed[0]["reasons"] == {PRICE: 8, "expect_column_values_to_not_be_null(details)": 8}


def test_a_few_bad_curated_rows_are_dropped_with_the_expectation_name(tmp_path):
    train = curated_rows("train", 160)
    train[7]["price"] = 1500.0  # above max_price 999.49: 1 of 160 rows is more than 0.5% ...
    d = write_curated(
        tmp_path / "curated",
        splits={"train": train, "validation": curated_rows("val", 20, 200), "test": curated_rows("test", 20, 300)},
    )
    with pytest.raises(ContractError):  # ... so with max_bad_row_fraction=0.005 the stage stops
        data_contracts.check("curated", d, data_docs=False, remove_bad_rows=True, max_bad_row_fraction=0.005)
    report = data_contracts.check("curated", d, data_docs=False, remove_bad_rows=True)  # default 1%
    assert report["success"] is True and report["removed_rows"] == {PRICE: 1}
    assert pl.read_parquet(d / "train.parquet").height == 159
    dropped = pl.read_parquet(d / "dropped.parquet")
    assert dropped.filter(pl.col("reason") == PRICE).select("item_id", "price").rows() == [("train-7", 1500.0)]
    m = json.loads((d / "manifest.json").read_text())
    assert m["kept"] == {"train": 159, "validation": 20, "test": 20}
    assert m["dropped"] == {PRICE: 1, "price_missing": 1, "text_too_short": 1}
    assert m["rows_read"] == sum(m["kept"].values()) + sum(m["dropped"].values()) + m["quarantined"]
