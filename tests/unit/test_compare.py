"""Comparison table and champion/challenger promotion on hand-made metrics."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pricefit.compare import build_comparison, compare, item_set_sha256, to_markdown
from pricefit.config import PromoteConfig
from pricefit.errors import PricefitError
from pricefit.promotion import decide, promote

IDS = ["a", "b", "c", "d"]


def _m(mae: float, rmsle: float = 0.5, hit: float = 0.5, n: int = 4) -> dict:
    return {"n": n, "n_unparsed": 0, "mae": mae, "rmsle": rmsle, "hit_rate": hit, "mdape": 20.0}


def test_ranks_and_ratios_are_exact():
    models = {"fine_tuned": _m(50.0), "constant": _m(150.0), "tfidf": _m(40.0), "frontier": _m(80.0)}
    table = build_comparison(models, {k: IDS for k in models})
    assert [r["model"] for r in table["rows"]] == ["tfidf", "fine_tuned", "frontier", "constant"]
    assert [r["rank"] for r in table["rows"]] == [1, 2, 3, 4]
    assert table["fine_tuned_rank"] == 2
    assert table["ratios"] == {"tfidf": 1.25, "frontier": 0.625, "constant": pytest.approx(1 / 3)}
    assert table["n_items"] == 4 and table["items_sha256"] == item_set_sha256(reversed(IDS))
    md = to_markdown(table)
    assert "| 2 | **fine_tuned** | 4 | 0 | $50.00 |" in md
    assert "| 4 | constant | 4 | 0 | $150.00 | 0.500 | 50.0% | 20.0% | 0.333 |" in md


def test_ties_share_a_rank_and_hit_rate_ranks_higher_first():
    models = {"fine_tuned": _m(50.0, hit=0.7), "linear": _m(50.0, hit=0.6), "constant": _m(90.0, hit=0.7)}
    by_mae = build_comparison(models, {k: IDS for k in models})
    assert {r["model"]: r["rank"] for r in by_mae["rows"]} == {"fine_tuned": 1, "linear": 1, "constant": 3}
    by_hit = build_comparison(models, {k: IDS for k in models}, metric="hit_rate")
    assert {r["model"]: r["rank"] for r in by_hit["rows"]} == {"constant": 1, "fine_tuned": 1, "linear": 3}
    assert by_hit["ratios"]["linear"] == pytest.approx(0.7 / 0.6)


def test_refuses_different_item_sets():
    models = {"fine_tuned": _m(50.0), "constant": _m(150.0)}
    with pytest.raises(PricefitError, match="constant was scored on different items") as e:
        build_comparison(models, {"fine_tuned": IDS, "constant": IDS[:3] + ["z"]})
    assert "1 item(s) only in constant, 1 only in fine_tuned" in e.value.message
    assert "max_items" in e.value.hint


def _eval_dir(root: Path, name: str, mae: float, ids=IDS, manifest: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    pl.DataFrame(
        {"item_id": ids, "category": ["X"] * len(ids), "price": [1.0] * len(ids), "prediction": [1.0] * len(ids),
         "raw": ["1"] * len(ids), "parsed": [True] * len(ids)}
    ).write_parquet(d / "predictions.parquet")
    (d / "metrics.json").write_text(json.dumps(_m(mae, n=len(ids))))
    if manifest:
        (d / "manifest.json").write_text(json.dumps({"kind": "evaluation", "adapter": f"/adapters/{name}"}))
    return d


def test_compare_reads_directories_and_lists_skipped(tmp_path: Path):
    ev = _eval_dir(tmp_path, "eval", 50.0)
    bl = tmp_path / "bl"
    _eval_dir(bl, "constant", 100.0)
    (bl / "summary.json").write_text(json.dumps({"baselines": {
        "constant": {"status": "ok"}, "frontier": {"status": "skipped: no API key in OPENAI_API_KEY"}}}))
    (bl / "manifest.json").write_text("{}")
    out = Path(compare(ev, bl, tmp_path / "cmp").path)
    table = json.loads((out / "comparison.json").read_text())
    assert table["ratios"] == {"constant": 0.5}
    assert table["skipped"] == {"frontier": "skipped: no API key in OPENAI_API_KEY"}
    assert "- frontier: skipped: no API key in OPENAI_API_KEY" in (out / "comparison.md").read_text()


def test_compare_reports_frontier_usage(tmp_path: Path):
    ev = _eval_dir(tmp_path, "eval", 50.0)
    bl = tmp_path / "bl"
    _eval_dir(bl, "frontier", 75.0)
    usage = {"model": "gpt-4o", "host": "api.openai.com", "requests": 6, "retries": 2, "cached_items": 0, "items": 4,
             "prompt_tokens": 400, "completion_tokens": 8, "estimated_cost_usd": 0.00108,
             "price_per_mtok": {"input": 2.5, "output": 10.0}}
    (bl / "frontier" / "usage.json").write_text(json.dumps(usage))
    (bl / "summary.json").write_text(json.dumps({"baselines": {"frontier": {"status": "ok"}}}))
    (bl / "manifest.json").write_text("{}")
    out = Path(compare(ev, bl, tmp_path / "cmp").path)
    assert json.loads((out / "comparison.json").read_text())["frontier_usage"] == usage
    assert (
        "Frontier model gpt-4o at api.openai.com: 6 requests (2 retries), 0 of 4 items from the cache, "
        "400 prompt + 8 completion tokens, estimated cost $0.0011"
    ) in (out / "comparison.md").read_text()


@pytest.mark.parametrize(
    "challenger, margin, promoted",
    [(98.0, 0.02, True), (98.01, 0.02, False), (100.0, 0.0, True), (100.01, 0.0, False), (90.0, 0.1, True), (90.1, 0.1, False)],
)
def test_decide_at_the_margin_boundary(challenger, margin, promoted):
    assert decide(challenger, 100.0, margin)[0] is promoted


# the champion/challenger rules alone; the baseline guard has its own tests below
NO_GUARD = dict(require_beat_baselines=False)


def test_promotion_accepts_then_refuses_at_margin(tmp_path: Path):
    wd = tmp_path / "work"
    cfg = PromoteConfig(margin=0.02, **NO_GUARD)
    first = promote(_eval_dir(tmp_path, "e1", 100.0), wd, cfg)
    assert first["promoted"] is True and first["reason"] == "no champion yet"
    champ = json.loads((wd / "champion.json").read_text())
    assert champ["value"] == 100.0 and champ["adapter"] == "/adapters/e1"

    weak = promote(_eval_dir(tmp_path, "e2", 98.5), wd, cfg)  # 1.5% better: under the 2% margin
    assert weak["promoted"] is False and weak["relative_improvement"] == pytest.approx(0.015)
    assert json.loads((wd / "champion.json").read_text())["adapter"] == "/adapters/e1"

    strong = promote(_eval_dir(tmp_path, "e3", 98.0), wd, cfg)  # exactly 2%: meets the margin
    assert strong["promoted"] is True
    assert json.loads((wd / "champion.json").read_text())["adapter"] == "/adapters/e3"

    again = promote(tmp_path / "e3", wd, cfg)
    assert again["promoted"] is False and again["reason"] == "this adapter is already the champion"

    lines = [json.loads(x) for x in (wd / "promotions.jsonl").read_text().splitlines()]
    assert [x["promoted"] for x in lines] == [True, False, True, False]
    assert lines[2]["champion_before"]["value"] == 100.0 and lines[2]["challenger"]["value"] == 98.0


def test_promotion_refuses_a_champion_scored_on_other_items(tmp_path: Path):
    wd = tmp_path / "work"
    promote(_eval_dir(tmp_path, "e1", 100.0), wd, PromoteConfig(**NO_GUARD))
    rec = promote(_eval_dir(tmp_path, "e2", 10.0, ids=["a", "b", "c"]), wd, PromoteConfig(**NO_GUARD))
    assert rec["promoted"] is False
    assert rec["reason"].startswith("champion was evaluated on different items (4 items")
    assert json.loads((wd / "champion.json").read_text())["evaluation"].endswith("e1")


def test_decide_against_a_zero_champion_has_no_relative_gain():
    assert decide(1.0, 0.0, 0.02) == (False, None)
    assert decide(0.0, 0.0, 0.0) == (True, None)


def test_promotion_on_another_metric_uses_the_champions_value_of_that_metric(tmp_path: Path):
    wd = tmp_path / "work"
    promote(_eval_dir(tmp_path, "e1", 100.0), wd, PromoteConfig(metric="mae", **NO_GUARD))  # rmsle 0.5 recorded too
    d = _eval_dir(tmp_path, "e2", 120.0)
    (d / "metrics.json").write_text(json.dumps({**_m(120.0), "rmsle": 0.45}))  # worse MAE, 10% better RMSLE
    rec = promote(d, wd, PromoteConfig(metric="rmsle", margin=0.05, **NO_GUARD))
    assert rec["promoted"] is True and rec["relative_improvement"] == pytest.approx(0.1)
    assert json.loads((wd / "champion.json").read_text())["metric"] == "rmsle"


# ---------------------------------------------------------------------------------------------- guard, slices, re-scoring


def _with_slice(d: Path, mae_all: float, mae_slice: float, n_slice: int = 2) -> Path:
    m = {**_m(mae_all), "slices": {"reference": {**_m(mae_slice, n=n_slice)}}}
    (d / "metrics.json").write_text(json.dumps(m))
    return d


def _baselines(root: Path, **maes: tuple[float, float]) -> Path:
    """A baselines artifact: name -> (MAE on all items, MAE on the reference slice)."""
    bl = root / "baselines"
    for name, (mae_all, mae_slice) in maes.items():
        _with_slice(_eval_dir(bl, name, mae_all), mae_all, mae_slice)
    (bl / "summary.json").write_text(json.dumps({"items_sha256": item_set_sha256(IDS),
                                                 "baselines": {k: {"status": "ok"} for k in maes}}))
    (bl / "manifest.json").write_text(json.dumps({"kind": "baselines"}))
    return bl


def test_a_challenger_worse_than_tfidf_is_never_promoted_even_without_a_champion(tmp_path: Path):
    """The demo's old failure: 'promoted to champion' for a model 2.7x worse than TF-IDF."""
    wd = tmp_path / "work"
    bl = _baselines(tmp_path, constant=(150.0, 200.0), tfidf=(44.91, 90.0))
    rec = promote(_eval_dir(tmp_path, "e1", 122.34), wd, PromoteConfig(), baselines_dir=bl)
    assert rec["promoted"] is False and not (wd / "champion.json").exists()
    assert rec["reason"] == ("challenger mae $122.34 on all items does not beat the best classical baseline, tfidf "
                             "$44.91: a model no better than tfidf is never promoted")
    ok = promote(_eval_dir(tmp_path, "e2", 40.0), wd, PromoteConfig(), baselines_dir=bl)
    assert ok["promoted"] is True and ok["reason"] == "no champion yet; it beats the classical baselines"


def test_the_guard_needs_baselines_unless_switched_off(tmp_path: Path):
    rec = promote(_eval_dir(tmp_path, "e1", 10.0), tmp_path / "work", PromoteConfig())
    assert rec["promoted"] is False and rec["reason"].startswith("no baselines were given")


def test_decision_on_a_slice_uses_the_slice_metrics(tmp_path: Path):
    """Better overall but worse than TF-IDF on the decision slice: refused; the slice decides."""
    wd = tmp_path / "work"
    bl = _baselines(tmp_path, tfidf=(60.0, 100.0))
    cfg = PromoteConfig(slice="reference")
    rec = promote(_with_slice(_eval_dir(tmp_path, "e1", 50.0), 50.0, 120.0), wd, cfg, baselines_dir=bl)
    assert rec["promoted"] is False and "on slice 'reference'" in rec["reason"] and "tfidf $100.00" in rec["reason"]
    rec = promote(_with_slice(_eval_dir(tmp_path, "e2", 70.0), 70.0, 90.0), wd, cfg, baselines_dir=bl)
    assert rec["promoted"] is True and rec["challenger"]["value"] == 90.0 and rec["challenger"]["n_decided"] == 2


def test_the_champion_is_rescored_on_todays_items(tmp_path: Path):
    """Tonight's items differ from the champion's night; its re-scored evaluation decides, not its old record."""
    wd = tmp_path / "work"
    cfg = PromoteConfig(margin=0.02, **NO_GUARD)
    promote(_eval_dir(tmp_path, "night1", 100.0, ids=["a", "b", "c"]), wd, cfg)
    champion_today = _eval_dir(tmp_path, "champion-today", 60.0)  # the champion's adapter on tonight's 4 items
    (champion_today / "manifest.json").write_text(json.dumps({"kind": "evaluation", "adapter_sha256": "c0ffee"}))
    worse = promote(_eval_dir(tmp_path, "night2", 70.0), wd, cfg, champion_eval=champion_today)
    assert worse["promoted"] is False
    assert worse["champion_rescored"]["value"] == 60.0
    assert "the champion re-scored on the same 4 items ($60.00)" in worse["reason"]
    better = promote(_eval_dir(tmp_path, "night3", 50.0), wd, cfg, champion_eval=champion_today)
    assert better["promoted"] is True and better["relative_improvement"] == pytest.approx(1 / 6)
    with pytest.raises(PricefitError, match="covers other items"):
        promote(_eval_dir(tmp_path, "night4", 50.0, ids=["a", "b"]), wd, cfg, champion_eval=champion_today)


def _eval_of(root: Path, name: str, mae: float, adapter_sha: str) -> Path:
    d = _eval_dir(root, name, mae)
    (d / "manifest.json").write_text(json.dumps({"kind": "evaluation", "adapter": f"/adapters/{name}", "adapter_sha256": adapter_sha}))
    return d


def test_a_champion_replaced_after_the_rescore_is_judged_as_it_is_now_under_the_lock(tmp_path: Path):
    """Issue 21 #6: run A re-scores champion c0, run B then promotes c1 (much better), then A decides.
    A must not beat c1 with a comparison against c0's score (the old code promoted A over c1)."""
    wd = tmp_path / "work"
    cfg = PromoteConfig(margin=0.02, **NO_GUARD)
    assert promote(_eval_of(tmp_path, "c0", 100.0, "sha-c0"), wd, cfg)["promoted"] is True
    c0_today = _eval_of(tmp_path, "c0-today", 100.0, "sha-c0")  # both runs re-score c0 on today's items
    b = promote(_eval_of(tmp_path, "c1", 50.0, "sha-c1"), wd, cfg, champion_eval=c0_today)
    assert b["promoted"] is True  # B wins against c0

    a = promote(_eval_of(tmp_path, "a", 80.0, "sha-a"), wd, cfg, champion_eval=c0_today)  # A still holds c0's score

    assert a["promoted"] is False
    assert json.loads((wd / "champion.json").read_text())["adapter_sha256"] == "sha-c1"
    assert a["reason"].startswith("the champion was replaced (now adapter sha-c1) after this run re-scored the one before (sha-c0)")
    assert "does not beat champion $50.00" in a["reason"]  # judged against c1's record on the same items
    assert a["champion_rescored"]["stale"] and a["champion_before"]["adapter_sha256"] == "sha-c1"
    # a rescore of the champion in place is used as before
    c1_today = _eval_of(tmp_path, "c1-today", 60.0, "sha-c1")
    again = promote(_eval_of(tmp_path, "a2", 55.0, "sha-a2"), wd, cfg, champion_eval=c1_today)
    assert again["promoted"] is True and "the champion re-scored on the same 4 items ($60.00)" in again["reason"]


def test_the_champions_adapter_is_kept_apart_from_the_cache_it_was_trained_into(tmp_path: Path):
    """CI at 9e4e385: the train artifact a champion came from was cleared and retrained into the same
    directory (not bit-identical), so champion.json named files that no longer had its sha256 and the
    next run's champion step failed. The promoted adapter is copied to champions/<sha256[:16]>."""
    from pricefit.artifacts import sha256_dir

    trained = tmp_path / "artifacts" / "train" / "k1"
    trained.mkdir(parents=True)
    (trained / "adapter_model.safetensors").write_bytes(b"weights-1")
    (trained / ".tmp-half-written").write_bytes(b"x")
    sha = sha256_dir(trained)
    ev = _eval_dir(tmp_path, "e1", 100.0)
    (ev / "manifest.json").write_text(json.dumps({"kind": "evaluation", "adapter": str(trained), "adapter_sha256": sha}))
    wd = tmp_path / "work"

    rec = promote(ev, wd, PromoteConfig(**NO_GUARD))

    champ = json.loads((wd / "champion.json").read_text())
    kept = wd.resolve() / "champions" / sha[:16]
    assert rec["promoted"] is True and champ["adapter"] == str(kept) and champ["trained_adapter"] == str(trained)
    assert rec["challenger"]["adapter"] == str(kept)
    assert sorted(p.name for p in kept.iterdir()) == ["adapter_model.safetensors"]
    (trained / "adapter_model.safetensors").write_bytes(b"weights-2")  # retrained into the same cache entry
    assert sha256_dir(champ["adapter"]) == champ["adapter_sha256"]
    # the same adapter again is recognised by its hash, wherever it now lives
    assert promote(ev, wd, PromoteConfig(**NO_GUARD))["reason"] == "this adapter is already the champion"


def test_an_adapter_changed_after_its_evaluation_is_not_promoted(tmp_path: Path):
    trained = tmp_path / "train" / "k1"
    trained.mkdir(parents=True)
    (trained / "adapter_model.safetensors").write_bytes(b"weights-1")
    ev = _eval_dir(tmp_path, "e1", 100.0)
    (ev / "manifest.json").write_text(json.dumps({"kind": "evaluation", "adapter": str(trained), "adapter_sha256": "0" * 64}))
    wd = tmp_path / "work"
    with pytest.raises(PricefitError, match="no longer hashes to the sha256 its evaluation recorded"):
        promote(ev, wd, PromoteConfig(**NO_GUARD))
    assert not (wd / "champion.json").exists() and not (wd / "promotions.jsonl").exists()
