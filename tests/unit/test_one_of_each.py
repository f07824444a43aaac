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


def test_one_intactness_check_for_the_cache_and_the_tests(tmp_path):
    from pricefit.artifacts import atomic_dir, ref_for, verify, write_manifest

    with atomic_dir(tmp_path / "a") as tmp:
        (tmp / "x.txt").write_text("1")
        write_manifest(tmp, {"kind": "t"})
    ref = ref_for(tmp_path / "a", "t")
    assert verify(ref) and verify(ref, hashes=False)
    (tmp_path / "a" / "x.txt").write_text("2")  # edited in place: the cache's cheap check still passes
    assert not verify(ref) and verify(ref, hashes=False)
    (tmp_path / "a" / "x.txt").unlink()
    assert not verify(ref, hashes=False)
