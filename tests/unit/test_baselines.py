"""Classical baselines on hand-made frames, and run_baselines' artifact layout."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import polars as pl
import pytest

from pricefit.baselines import constant, linear, run_baselines, tfidf
from pricefit.baselines.frontier import skip_reason
from pricefit.config import BaselinesConfig, FrontierConfig
from pricefit.errors import PricefitError


def _frame(rows: list[tuple[str, str, str, float]], prefix: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [f"{prefix}{i}" for i in range(len(rows))],
            "category": [r[0] for r in rows],
            "title": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "price": [float(r[3]) for r in rows],
            "source_file": ["x.jsonl"] * len(rows),
            "source_line": list(range(1, len(rows) + 1)),
        }
    )


def _learnable(n: int, seed: int) -> list[tuple[str, str, str, float]]:
    """Price is set by a word in the text: a bag-of-words model can learn it, a constant cannot."""
    rng = random.Random(seed)
    kinds = {"pencil": 2.0, "lamp": 40.0, "guitar": 400.0}
    fillers = ["red", "blue", "sturdy", "classic", "new", "compact", "premium", "light"]
    rows = []
    for _ in range(n):
        kind = rng.choice(sorted(kinds))
        words = rng.sample(fillers, 4) + [kind]
        rng.shuffle(words)
        price = kinds[kind] * rng.uniform(0.9, 1.1)
        rows.append(("Tools", f"{kind} item", " ".join(words), round(price, 2)))
    return rows


@pytest.fixture
def curated(tmp_path: Path) -> Path:
    d = tmp_path / "curated"
    d.mkdir()
    _frame(_learnable(120, 1), "tr").write_parquet(d / "train.parquet")
    _frame(_learnable(20, 2), "va").write_parquet(d / "validation.parquet")
    _frame(_learnable(30, 3), "te").write_parquet(d / "test.parquet")
    (d / "manifest.json").write_text(json.dumps({"kind": "curated"}))
    return d


def test_constant_predicts_training_mean_exactly():
    preds, info = constant.fit_predict([1.0, 2.0, 6.0], 4)
    assert preds == [3.0, 3.0, 3.0, 3.0]
    assert info == {"mean": 3.0, "train_rows": 3}


def test_constant_refuses_empty_training_split():
    with pytest.raises(ValueError, match="training split is empty"):
        constant.fit_predict([], 2)


def test_linear_features_are_documented_and_exact():
    x = linear.features(["ab 12 c3", ""], ["t one", ""], ["B", "unseen"], ["A", "B"])
    # text_chars, text_words, log_text_chars, title_chars, title_words, digits, numbers, max_number_log, cat=A, cat=B
    assert x.shape == (2, len(linear.NUMERIC_FEATURES) + 2)
    assert x[0].tolist() == pytest.approx([8, 3, math.log1p(8), 5, 2, 3, 2, math.log1p(12), 0, 1])
    assert x[1].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # unseen category: no one-hot column set


def test_linear_recovers_an_exact_linear_price_and_clips_to_training_range():
    # price = 10 * words in text: a linear model on text_words fits it exactly
    texts = ["w " * k for k in range(1, 9)]
    train = {"text": texts, "title": ["t"] * 8, "category": ["A"] * 8, "price": [10.0 * k for k in range(1, 9)]}
    test = {"text": ["w " * 3, "w " * 50], "title": ["t", "t"], "category": ["A", "A"]}
    preds, info = linear.fit_predict(train, test)
    assert preds[0] == pytest.approx(30.0, abs=1e-6)
    assert preds[1] == 80.0  # 500 extrapolated, clipped to the training maximum
    assert info["clip"] == [10.0, 80.0]


def test_tfidf_beats_constant_on_a_learnable_set():
    train, test = _learnable(150, 1), _learnable(40, 2)
    truth = [r[3] for r in test]
    tf_pred, info = tfidf.fit_predict([r[2] for r in train], [r[3] for r in train], [r[2] for r in test])
    const_pred, _ = constant.fit_predict([r[3] for r in train], len(test))
    mae = lambda p: sum(abs(a - b) for a, b in zip(p, truth)) / len(truth)  # noqa: E731
    assert info["target"] == "log1p(price)"
    assert mae(tf_pred) < 0.6 * mae(const_pred)


def test_run_baselines_writes_layout_on_the_same_items(curated: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = BaselinesConfig(include=["constant", "linear", "tfidf", "frontier"], max_items=25)
    ref = run_baselines(curated, tmp_path / "bl", cfg, progress=False)
    out = Path(ref.path)
    assert ref.kind == "baselines" and ref.rows == 25
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baselines"]["frontier"] == {"status": "skipped: no API key in OPENAI_API_KEY"}
    assert not (out / "frontier").exists()
    test_ids = pl.read_parquet(curated / "test.parquet")["item_id"].head(25).to_list()
    train_mean = pl.read_parquet(curated / "train.parquet")["price"].mean()
    for name in ("constant", "linear", "tfidf"):
        preds = pl.read_parquet(out / name / "predictions.parquet")
        assert preds.columns == ["item_id", "category", "price", "prediction", "raw", "parsed"]
        assert preds["item_id"].to_list() == test_ids
        assert preds["parsed"].all()
        m = json.loads((out / name / "metrics.json").read_text())
        assert m["n"] == 25 and m["n_unparsed"] == 0
        assert summary["baselines"][name]["mae"] == m["mae"]
    const = pl.read_parquet(out / "constant" / "predictions.parquet")
    assert const["prediction"].to_list() == pytest.approx([train_mean] * 25)
    assert summary["baselines"]["tfidf"]["mae"] < summary["baselines"]["constant"]["mae"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == {"constant": "ok", "linear": "ok", "tfidf": "ok", "frontier": summary["baselines"]["frontier"]["status"]}
    assert set(manifest["files"]) == {
        "summary.json",
        *(f"{n}/{f}" for n in ("constant", "linear", "tfidf") for f in ("predictions.parquet", "metrics.json")),
    }


def test_run_baselines_explains_a_missing_split(tmp_path: Path):
    with pytest.raises(PricefitError, match="not a finished pricefit artifact"):
        run_baselines(tmp_path, tmp_path / "bl", BaselinesConfig(include=["constant"]))
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "curated"}))
    with pytest.raises(PricefitError, match="train.parquet does not exist") as e:
        run_baselines(tmp_path, tmp_path / "bl", BaselinesConfig(include=["constant"]))
    assert "pricefit curate" in e.value.hint
    assert not (tmp_path / "bl").exists()


def test_frontier_skip_reasons(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    assert skip_reason(FrontierConfig(api_key_env="MY_KEY")) == "skipped: no API key in MY_KEY"
    monkeypatch.setenv("MY_KEY", "k")
    assert skip_reason(FrontierConfig(api_key_env="MY_KEY")) is None
    assert skip_reason(FrontierConfig(api_key_env="MY_KEY", enabled=False)).startswith("skipped: disabled")


@pytest.mark.slow
def test_base_model_baseline_with_tiny_random(curated: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path / "home"))
    cfg = BaselinesConfig(include=["base_model"], base_model="tiny-random", max_items=6)
    out = Path(run_baselines(curated, tmp_path / "bl", cfg, progress=False).path)
    preds = pl.read_parquet(out / "base_model" / "predictions.parquet")
    assert preds.height == 6
    # a random model writes junk: whatever it wrote is either parsed into the range or counted
    assert preds["parsed"].to_list() == [p is not None for p in preds["prediction"].to_list()]
    m = json.loads((out / "base_model" / "metrics.json").read_text())
    assert m["n_unparsed"] == preds.height - preds["parsed"].sum()
    assert m["info"]["base_model"] == "tiny-random"

    # `pricefit evaluate` of the same model without an adapter scores the same items identically
    from pricefit.compare import compare
    from pricefit.config import EvaluateConfig
    from pricefit.evaluation import evaluate

    ev = evaluate(curated, tmp_path / "eval", EvaluateConfig(max_items=6, device="cpu"), base_model="tiny-random")
    table = json.loads((Path(compare(ev.path, out, tmp_path / "cmp").path) / "comparison.json").read_text())
    assert table["ratios"] == {"base_model": 1.0}
    assert table["n_items"] == 6


def test_frontier_cap_refuses_before_any_request(curated: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    cfg = BaselinesConfig(
        include=["frontier"], max_items=10, frontier=FrontierConfig(max_items=5, base_url="http://127.0.0.1:9/v1")
    )
    with pytest.raises(PricefitError, match="sent 10 held-out items, above its cap baselines.frontier.max_items=5"):
        run_baselines(curated, tmp_path / "bl", cfg, progress=False)
    assert not (tmp_path / "bl").exists()

