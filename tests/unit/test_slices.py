"""Named slices: each filter's exact membership, their errors, and slices reaching the metrics and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from pricefit.errors import PricefitError
from pricefit.metrics import compute_metrics
from pricefit.slices import SliceSpec, slice_mask, slice_masks

ROWS = {
    "item_id": ["a", "b", "c", "d", "e"],
    "category": ["Tools", "Toys", None, "Tools", "Software"],
    "price": [10.0, 99.99, 100.0, 450.0, 2.0],
}


def test_each_filter_admits_exactly_its_rows():
    assert slice_mask(SliceSpec(name="tools", column="category", equals=["Tools"]), ROWS) == [True, False, False, True, False]
    assert slice_mask(SliceSpec(name="t", column="category", regex="^To"), ROWS) == [True, True, False, True, False]
    # [price_min, price_max): 100 is in the dear band, 99.99 is not
    assert slice_mask(SliceSpec(name="dear", price_min=100), ROWS) == [False, False, True, True, False]
    assert slice_mask(SliceSpec(name="mid", price_min=10, price_max=100), ROWS) == [True, True, False, False, False]
    assert slice_mask(SliceSpec(name="picked", ids=["e", "a", "zz"]), ROWS) == [True, False, False, False, True]
    # filters combine with AND
    assert slice_mask(SliceSpec(name="dear-tools", column="category", equals=["Tools"], price_min=100), ROWS) == [
        False, False, False, True, False]


def test_ids_file_with_a_pattern_and_an_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "provenance.csv").write_text(
        "parent_asin,source\na,course full test set (x)\nb,other\nd,\"course full test set, items 250+\"\n", encoding="utf-8-sig")
    monkeypatch.setenv("SLICE_DIR", str(tmp_path))
    spec = SliceSpec(name="reference", ids_file="${SLICE_DIR}/provenance.csv", id_column="parent_asin",
                     match_column="source", pattern="^course full test set")
    assert slice_mask(spec, ROWS) == [True, False, False, True, False]
    monkeypatch.delenv("SLICE_DIR")
    with pytest.raises(PricefitError, match="needs the environment variable SLICE_DIR"):
        slice_mask(spec, ROWS)
    bad = SliceSpec(name="r", ids_file=str(tmp_path / "provenance.csv"), id_column="asin")
    with pytest.raises(PricefitError, match="has no column 'asin'"):
        slice_mask(bad, ROWS)


def test_declarations_that_cannot_work_are_refused():
    for kwargs, message in [
        ({}, "sets no filter"),
        ({"equals": ["x"]}, "equals/regex need a column"),
        ({"column": "category"}, "needs equals or regex"),
        ({"ids_file": "f.csv", "pattern": "^x"}, "match_column and pattern go together"),
        ({"column": "category", "regex": "("}, "bad regular expression"),
    ]:
        with pytest.raises(ValidationError, match=message):
            SliceSpec(name="s", **kwargs)
    with pytest.raises(PricefitError, match="repeated: s"):
        slice_masks([SliceSpec(name="s", ids=["a"]), SliceSpec(name="s", ids=["b"])], ROWS)


def test_run_config_checks_the_names_that_point_at_slices():
    from pricefit.config import RunConfig

    with pytest.raises(ValidationError, match="promote.slice 'ref' is not a declared slice"):
        RunConfig.model_validate({"promote": {"slice": "ref"}})
    with pytest.raises(ValidationError, match=r"train.oversample names undeclared slices \['ref'\]"):
        RunConfig.model_validate({"train": {"oversample": {"ref": 2}}})
    ok = RunConfig.model_validate({"slices": [{"name": "ref", "ids": ["a"]}], "promote": {"slice": "ref"},
                                   "train": {"oversample": {"ref": 2}}})
    assert ok.promote.slice == "ref"


def test_slice_metrics_are_the_metrics_of_the_slice_items():
    truth, pred = [10.0, 100.0, 200.0, 400.0], [12.0, 80.0, 260.0, 400.0]
    m = compute_metrics(truth, pred, slices={"dear": [False, False, True, True], "none": [False] * 4})
    assert m["slices"]["dear"]["n"] == 2 and m["slices"]["dear"]["mae"] == pytest.approx(30.0)
    assert m["slices"]["dear"]["hit_rate"] == pytest.approx(0.5)  # $60 off $200 misses; exact hits
    assert m["slices"]["none"] == {"n": 0}
    with pytest.raises(ValueError, match="slice 'x' has 3 flags"):
        compute_metrics(truth, pred, slices={"x": [True] * 3})


def test_baselines_cli_reports_the_profile_slices(tmp_path: Path):
    import polars as pl
    from typer.testing import CliRunner

    from pricefit.cli import app

    d = tmp_path / "curated"
    d.mkdir()
    for split, n in (("train", 30), ("validation", 6), ("test", 8)):
        pl.DataFrame({"item_id": [f"{split}{i}" for i in range(n)], "category": ["Tools", "Toys"] * (n // 2),
                      "title": [f"thing {i}" for i in range(n)], "text": [f"thing {i} text" for i in range(n)],
                      "price": [5.0 + 10 * i for i in range(n)]}).write_parquet(d / f"{split}.parquet")
    (d / "manifest.json").write_text('{"kind": "curated"}')
    profile = tmp_path / "profile.yaml"
    profile.write_text("slices:\n  - {name: toys, column: category, equals: [Toys]}\n  - {name: dear, price_min: 50}\n")
    r = CliRunner().invoke(app, ["baselines", "--data", str(d), "--out", str(tmp_path / "bl"), "--include", "constant",
                                 "--config", str(profile), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "bl" / "constant" / "metrics.json").read_text())
    assert {k: v["n"] for k, v in m["slices"].items()} == {"toys": 4, "dear": 3}  # test prices 5..75 step 10
    test = pl.read_parquet(d / "test.parquet")
    mean = sum(5.0 + 10 * i for i in range(30)) / 30
    toys = [p for p, c in zip(test["price"], test["category"]) if c == "Toys"]
    assert m["slices"]["toys"]["mae"] == pytest.approx(sum(abs(p - mean) for p in toys) / len(toys))
