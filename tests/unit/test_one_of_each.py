"""One held-out reader, one model loader, one Markdown table writer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_baselines_read_the_held_out_items_through_evaluation():
    import pricefit.baselines as baselines
    from pricefit import evaluation

    assert baselines.load_heldout is evaluation.load_heldout
    assert not hasattr(baselines, "load_held_out")


class _Loaded(Exception):
    pass


def test_inference_loads_through_the_training_loader(monkeypatch):
    from pricefit import inference, quant

    calls = []

    def fake(path, **kw):
        calls.append((kw.pop("name"), sorted(kw)))
        raise _Loaded

    monkeypatch.setattr(quant, "from_pretrained", fake)
    with pytest.raises(_Loaded):
        inference.load_model("tiny-random", device="cpu", quantization="4bit")
    assert calls == [("tiny-random", ["device_map", "dtype", "hint", "quantization_config"])]


def test_markdown_table_aligns_and_escapes():
    from pricefit.report import markdown_table

    assert markdown_table(["rank", "model", "MAE"], [[1, "a|b", "$1.00"]], align="rlr") == [
        "| rank | model | MAE |", "|---:|---|---:|", "| 1 | a\\|b | $1.00 |"]


def test_comparison_and_run_report_tables_come_from_report():
    offenders = [rel for rel in ("src/pricefit/compare.py", "tasks/report.py") if re.search(r"\|---", (ROOT / rel).read_text())]
    assert offenders == []
