"""(Named evaluation, not evaluate: Hugging Face's ``evaluate`` package must stay importable.)"""

from __future__ import annotations

import contextlib

from prefect import task

from pricefit.artifacts import ArtifactRef
from pricefit.config import EvaluateConfig

from . import cache, gpu
from .faults import maybe_fail


@task(name="evaluate", task_run_name="evaluate on {cfg.split} (max {cfg.max_items} items)", timeout_seconds=6 * 3600)
def evaluate(adapter: ArtifactRef, tokenized: ArtifactRef, cfg: EvaluateConfig, workdir: str) -> ArtifactRef:
    """Score the fine-tuned adapter on the held-out split: predictions, metrics, report.md, plots."""
    from pricefit import evaluation

    maybe_fail("evaluate")
    out = cache.out_dir(
        workdir, "evaluate", cache.current_key("evaluate", dict(adapter=adapter, tokenized=tokenized, cfg=cfg, workdir=workdir))
    )
    on_gpu = gpu.resolve_device(cfg.device) == "cuda"
    with gpu.slot(cfg.device) if on_gpu else contextlib.nullcontext():
        return evaluation.evaluate(tokenized.path, out, cfg, adapter_dir=adapter.path)
