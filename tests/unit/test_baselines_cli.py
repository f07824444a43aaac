"""`pricefit baselines`, `pricefit compare`, `pricefit promote` end to end on a tiny curated set."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pricefit.cli import app


def _split(n: int, offset: int) -> pl.DataFrame:
    kinds = [("pencil pack", 3.0), ("desk lamp", 45.0), ("acoustic guitar", 420.0)]
    rows = [kinds[(i + offset) % 3] for i in range(n)]
    return pl.DataFrame(
        {
            "item_id": [f"i{offset}-{i}" for i in range(n)],
            "category": ["Office", "Home", "Music"] * (n // 3) + ["Office"] * (n % 3),
            "title": [r[0] for r in rows],
            "text": [f"{r[0]} number {i}" for i, r in enumerate(rows)],
            "price": [r[1] + i % 5 for i, r in enumerate(rows)],
        }
    )


@pytest.fixture
def curated(tmp_path: Path) -> Path:
    d = tmp_path / "curated"
    d.mkdir()
    _split(60, 0).write_parquet(d / "train.parquet")
    _split(9, 1).write_parquet(d / "validation.parquet")
    _split(12, 2).write_parquet(d / "test.parquet")
    (d / "manifest.json").write_text('{"kind": "curated"}')
    return d


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    lines = [x for x in result.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_baselines_compare_promote_cli(curated: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    runner = CliRunner()
    bl = tmp_path / "bl"
    r = _json(runner.invoke(app, ["baselines", "--data", str(curated), "--out", str(bl),
                                  "--include", "constant,tfidf,frontier", "--max-items", "9", "--json"]))
    assert r["n"] == 9 and r["split"] == "test"
    assert sorted(r["baselines"]) == ["constant", "frontier", "tfidf"]
    assert r["baselines"]["frontier"]["status"] == "skipped: no API key in OPENAI_API_KEY"

    # an "evaluation" of a fine-tuned model on the same 9 items: the tfidf predictions, 10% better
    tf = pl.read_parquet(bl / "tfidf" / "predictions.parquet")
    ev = tmp_path / "eval"
    ev.mkdir()
    tf.write_parquet(ev / "predictions.parquet")
    tf_mae = r["baselines"]["tfidf"]["mae"]
    (ev / "metrics.json").write_text(json.dumps({"n": 9, "n_unparsed": 0, "mae": 0.9 * tf_mae, "rmsle": 0.1,
                                                 "hit_rate": 1.0, "mdape": 1.0}))
    c = _json(runner.invoke(app, ["compare", "-e", str(ev), "-b", str(bl), "-o", str(tmp_path / "cmp"), "--json"]))
    assert c["fine_tuned_rank"] == 1
    assert c["ratios"]["tfidf"] == pytest.approx(0.9)
    assert c["skipped"] == {"frontier": "skipped: no API key in OPENAI_API_KEY"}

    unguarded = _json(runner.invoke(app, ["promote", "-e", str(ev), "-w", str(tmp_path / "wd0"), "--json"]))
    assert unguarded["promoted"] is False and unguarded["reason"].startswith("no baselines were given")
    p = _json(runner.invoke(app, ["promote", "-e", str(ev), "-b", str(bl), "-w", str(tmp_path / "wd"), "--json"]))
    assert p["promoted"] is True and p["reason"] == "no champion yet; it beats the classical baselines"

    # a baseline run on other items is refused by compare with exit code 2 and a hint
    _json(runner.invoke(app, ["baselines", "--data", str(curated), "--out", str(bl), "--include", "constant",
                              "--max-items", "5", "--json"]))
    bad = runner.invoke(app, ["compare", "-e", str(ev), "-b", str(bl), "-o", str(tmp_path / "cmp2"), "--json"])
    assert bad.exit_code == 2
    assert "constant was scored on different items" in bad.stderr


def test_unknown_baseline_name_is_refused(curated: Path, tmp_path: Path):
    res = CliRunner().invoke(app, ["baselines", "--data", str(curated), "--out", str(tmp_path / "x"), "--include", "constant,forest"])
    assert res.exit_code == 2
    assert "unknown baseline(s): forest" in res.stderr
