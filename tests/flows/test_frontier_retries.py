"""The outage retries wrap the frontier requests alone: an outage repeats no other baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest
from prefect import flow

from pricefit.artifacts import ArtifactRef, ref_for, write_manifest
from pricefit.config import BaselinesConfig, FrontierConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
from openai_server import FakeOpenAI  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _curated(root: Path, texts: list[str]) -> ArtifactRef:
    curated = root / "curated"
    curated.mkdir(parents=True)
    n = len(texts)
    frame = pl.DataFrame({"item_id": [f"i{i}" for i in range(n)], "category": ["X"] * n, "title": ["t"] * n,
                          "text": texts, "price": [10.0 + i for i in range(n)]})
    for split in ("train", "validation", "test"):
        frame.write_parquet(curated / f"{split}.parquet")
    write_manifest(curated, {"kind": "curated"})
    return ref_for(curated, "curated", rows=n)


def test_a_frontier_outage_is_retried_without_rerunning_the_other_baselines(tmp_path, monkeypatch):
    from pricefit.baselines import constant
    from tasks import baselines as task_mod

    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-retries")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    fits = []
    real_fit = constant.fit_predict
    monkeypatch.setattr(constant, "fit_predict", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    monkeypatch.setattr(task_mod, "OUTAGE_RETRY_DELAYS", (0.0, 0.0))

    with FakeOpenAI() as server:
        curated = _curated(tmp_path, ["x [[fail:503x3]] [[price:7]]", "y [[price:2]]"])
        frontier = FrontierConfig(base_url=server.base_url, backoff_base_s=0.0, max_retries=2, timeout_s=5.0)
        cfg = BaselinesConfig(include=["constant", "frontier"], frontier=frontier)

        @flow
        def one_step() -> ArtifactRef:
            return task_mod.baselines(curated, cfg, str(tmp_path / "wd"))

        ref = one_step()
        # 3 attempts of item x fail (its per-request retries), the outage retry sends x alone: answered
        assert server.requests == 3 + 1 + 1
    assert fits == [1]  # the constant baseline ran once, not once per frontier retry
    preds = pl.read_parquet(ref.dir / "frontier" / "predictions.parquet")
    assert preds["prediction"].to_list() == [7.0, 2.0]


def test_a_rejected_key_is_not_retried(tmp_path, monkeypatch):
    from tasks import baselines as task_mod

    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-retries")
    monkeypatch.setattr(task_mod, "OUTAGE_RETRY_DELAYS", (0.0, 0.0))
    with FakeOpenAI() as server:
        curated = _curated(tmp_path, ["x [[fail:401x9]] [[price:7]]"])
        cfg = BaselinesConfig(include=["frontier"], frontier=FrontierConfig(base_url=server.base_url, timeout_s=5.0))

        @flow
        def one_step() -> ArtifactRef:
            return task_mod.baselines(curated, cfg, str(tmp_path / "wd"))

        with pytest.raises(Exception, match="rejected the API key"):
            one_step()
        assert server.requests == 1
