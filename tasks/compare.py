from __future__ import annotations

from typing import Any

from prefect import task

from pricefit.artifacts import ArtifactRef
from pricefit.config import PromoteConfig

from . import cache
from .faults import maybe_fail


@task(name="compare", task_run_name="compare and promote on {cfg.metric}", timeout_seconds=900)
def compare(evaluation: ArtifactRef, baselines: ArtifactRef, cfg: PromoteConfig, workdir: str) -> dict[str, Any]:
    """Comparison table against every baseline, then the champion/challenger decision.

    Cached with the comparison: the decision for one (evaluation, baselines) pair is taken once and
    appended to promotions.jsonl once; a rerun returns that decision instead of re-deciding.
    """
    from pricefit import compare as cmp

    maybe_fail("compare")
    key = cache.current_key("compare", dict(evaluation=evaluation, baselines=baselines, cfg=cfg, workdir=workdir))
    ref = cmp.compare(evaluation.path, baselines.path, cache.out_dir(workdir, "compare", key), metric=cfg.metric)
    decision = cmp.promote(evaluation.path, workdir, cfg)
    return {"comparison": ref, "decision": decision}
