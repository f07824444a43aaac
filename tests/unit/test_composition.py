"""What the "fine_tuned" model is: a blend is named with its weights everywhere it is shown, the
head alone is scored beside it, and a blend that is all TF-IDF is not promoted as a fine-tune."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from pricefit.compare import build_comparison, item_set_sha256, to_markdown
from pricefit.composition import adds_nothing, describe, record_for, score_components
from pricefit.config import PromoteConfig
from pricefit.promotion import promote
from pricefit.report import render_evaluation_report

IDS = ["a", "b", "c", "d"]
TRUTH = [100.0, 200.0, 50.0, 10.0]
HEAD = [110.0, 150.0, 50.0, 30.0]    # |err| 10, 50, 0, 20 -> MAE 20
TFIDF = [100.0, 180.0, 80.0, 10.0]   # |err| 0, 20, 30, 0 -> MAE 12.5


def _record(weight: float) -> dict:
    blend = SimpleNamespace(weight=weight, validation={"head_mae": 61.0, "tfidf_mae": 60.0, "blend_mae": 55.0, "n": 9})
    rec = record_for("head", blend)
    parts = [{"head": h, "tfidf": t} for h, t in zip(HEAD, TFIDF)]
    return score_components(rec, TRUTH, parts, ["X"] * 4)


def test_a_blend_records_its_components_weights_and_each_one_alone():
    rec = _record(0.55)
    assert rec["label"] == "fine-tuned head x 0.45 + tfidf x 0.55"
    assert rec["fine_tuned_weight"] == pytest.approx(0.45)
    assert [(c["name"], c["fine_tuned"], c["weight"]) for c in rec["components"]] == [("head", True, 0.45), ("tfidf", False, 0.55)]
    assert [c["metrics"]["mae"] for c in rec["components"]] == [pytest.approx(20.0), pytest.approx(12.5)]
    assert rec["validation"]["head_mae"] == 61.0
    assert not adds_nothing(rec)
    # no blend: the head alone, weight 1, no second row
    plain = record_for("head", None)
    assert plain == {"label": "fine-tuned head", "fine_tuned_weight": 1.0,
                     "components": [{"name": "head", "fine_tuned": True, "weight": 1.0}]}
    assert score_components(plain, TRUTH, [None] * 4, ["X"] * 4) is plain


def test_a_weight_near_one_says_the_fine_tune_adds_nothing():
    assert adds_nothing(_record(1.0)) and adds_nothing(_record(0.95)) and not adds_nothing(_record(0.9))
    assert describe(_record(1.0)).endswith("The fine-tuned part has weight 0.00: the fine-tune adds nothing over tfidf.")


def _m(mae: float) -> dict:
    return {"n": 4, "n_unparsed": 0, "mae": mae, "rmsle": 0.5, "hit_rate": 0.5, "mdape": 20.0}


def test_the_table_names_the_blend_and_shows_the_head_alone_unranked():
    models = {"fine_tuned": {**_m(12.0), "model": _record(0.55)}, "tfidf": _m(12.5), "constant": _m(80.0)}
    table = build_comparison(models, {k: IDS for k in models})
    assert [r["model"] for r in table["rows"]] == ["fine_tuned", "tfidf", "constant"]  # components are not ranked
    md = to_markdown(table)
    assert "| 1 | **fine_tuned** (fine-tuned head x 0.45 + tfidf x 0.55) | 4 | 0 | $12.00 |" in md
    assert "| — | fine_tuned: head alone | 4 | 0 | $20.00 | " in md and "| 0.600 |" in md
    assert "| — | fine_tuned: tfidf alone | 4 | 0 | $12.50 | " in md
    assert "fine_tuned = fine-tuned head x 0.45 + tfidf x 0.55 (log-space blend" in md


def test_the_evaluation_report_names_the_model_and_its_components():
    rec = _record(0.55)
    md = render_evaluation_report({**_m(12.0), "model": rec}, {"mode": "head", "model": rec["label"]}, [])
    assert "- **model**: `fine-tuned head x 0.45 + tfidf x 0.55`" in md
    assert "| fine_tuned: head alone | 4 | 0 | $20.00 |" in md


def _eval_dir(root: Path, name: str, metrics: dict) -> Path:
    d = root / name
    d.mkdir(parents=True)
    pl.DataFrame({"item_id": IDS, "category": ["X"] * 4, "price": TRUTH, "prediction": TRUTH, "raw": ["1"] * 4,
                  "parsed": [True] * 4}).write_parquet(d / "predictions.parquet")
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "manifest.json").write_text(json.dumps({"kind": "evaluation", "adapter": f"/adapters/{name}", "adapter_sha256": name}))
    return d


def _baselines(root: Path) -> Path:
    bl = root / "bl"
    for name, mae in (("constant", 80.0), ("tfidf", 12.5)):
        _eval_dir(bl, name, _m(mae))
    (bl / "summary.json").write_text(json.dumps({"items_sha256": item_set_sha256(IDS),
                                                 "baselines": {"constant": {"status": "ok"}, "tfidf": {"status": "ok"}}}))
    (bl / "manifest.json").write_text(json.dumps({"kind": "baselines"}))
    return bl


def test_promotion_does_not_credit_the_fine_tune_for_tfidfs_work(tmp_path: Path):
    bl = _baselines(tmp_path)
    all_tfidf = promote(_eval_dir(tmp_path, "e1", {**_m(12.0), "model": _record(1.0)}), tmp_path / "w", PromoteConfig(),
                        baselines_dir=bl)
    assert all_tfidf["promoted"] is False and not (tmp_path / "w" / "champion.json").exists()
    assert all_tfidf["reason"] == ("the fine-tune adds nothing: the challenger is head (weight 0.00, mae $20.00 alone), "
                                   "tfidf (weight 1.00, mae $12.50 alone) on all items; its score is the other "
                                   "components' work, so it is not promoted")
    mixed = promote(_eval_dir(tmp_path, "e2", {**_m(12.0), "model": _record(0.55)}), tmp_path / "w", PromoteConfig(),
                    baselines_dir=bl)
    assert mixed["promoted"] is True
    champion = json.loads((tmp_path / "w" / "champion.json").read_text())
    assert champion["model"] == {"label": "fine-tuned head x 0.45 + tfidf x 0.55", "fine_tuned_weight": 0.45}


def test_a_blend_of_several_parts_names_each_with_its_weight():
    """A blend with a weights() mapping (head + TF-IDF + retrieval, say) is recorded part by part."""
    blend = SimpleNamespace(weights=lambda: {"head": 0.3, "tfidf": 0.5, "knn": 0.2}, validation={})
    rec = record_for("head", blend)
    assert rec["label"] == "fine-tuned head x 0.30 + tfidf x 0.50 + knn (fine-tuned embeddings) x 0.20"
    # retrieval reads the fine-tuned model's own embeddings: it is the fine-tune's work, TF-IDF is not
    assert [(c["name"], c["fine_tuned"], c["weight"]) for c in rec["components"]] == [
        ("head", True, 0.3), ("tfidf", False, 0.5), ("knn", True, 0.2)]
    assert rec["fine_tuned_weight"] == 0.5 and not adds_nothing(rec)
    # all on retrieval: the fine-tune still carries the model; all on TF-IDF: it adds nothing
    assert not adds_nothing(record_for("head", SimpleNamespace(weights=lambda: {"head": 0.0, "tfidf": 0.05, "knn": 0.95}, validation={})))
    assert adds_nothing(record_for("head", SimpleNamespace(weights=lambda: {"head": 0.05, "tfidf": 0.95, "knn": 0.0}, validation={})))
    parts = [{"head": h, "tfidf": t, "knn": t} for h, t in zip(HEAD, TFIDF)]
    scored = score_components(rec, TRUTH, parts, ["X"] * 4)
    assert [c["metrics"]["mae"] for c in scored["components"]] == [pytest.approx(20.0), pytest.approx(12.5), pytest.approx(12.5)]
