from __future__ import annotations

from typing import Any

from prefect import task

from pricefit import compare as cmp
from pricefit import promotion
from pricefit.artifacts import ArtifactRef
from pricefit.settings.promote import PromoteConfig

from . import cache


@task(name="compare", task_run_name="compare and promote on {cfg.metric}", timeout_seconds=900)
def compare(evaluation: ArtifactRef, baselines: ArtifactRef, cfg: PromoteConfig, workdir: str,
            champion: ArtifactRef | None = None, champion_sha256: str | None = None) -> dict[str, Any]:
    """Comparison table against every baseline, then the champion/challenger decision.

    ``champion``: the current champion re-scored on the same items (None: no champion yet). Cached
    with the comparison: the decision for one (evaluation, baselines, champion) triple is taken once
    and appended to promotions.jsonl once; a new champion changes the key, so a rerun after a
    promotion decides again ("already the champion") instead of replaying "no champion yet".
    """
    inputs = dict(evaluation=evaluation, baselines=baselines, cfg=cfg, workdir=workdir, champion=champion,
                  champion_sha256=champion_sha256)
    key = cache.current_key("compare", inputs)
    ref = cmp.compare(evaluation.path, baselines.path, cache.out_dir(workdir, "compare", key), metric=cfg.metric)
    decision = promotion.promote(evaluation.path, workdir, cfg, champion_eval=champion.path if champion else None,
                           baselines_dir=baselines.path)
    return {"comparison": ref, "decision": decision}
