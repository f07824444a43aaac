"""(Named evaluation, not evaluate: Hugging Face's ``evaluate`` package must stay importable.)"""

from __future__ import annotations

import contextlib

from prefect import task

from pricefit import evaluation
from pricefit.artifacts import ArtifactRef
from pricefit.settings.evaluate import EvaluateConfig
from pricefit.slices import SliceSpec

from . import cache, gpu


@task(name="evaluate", task_run_name="evaluate on {cfg.split} (max {cfg.max_items} items)", timeout_seconds=6 * 3600)
def evaluate(adapter: ArtifactRef, tokenized: ArtifactRef, cfg: EvaluateConfig, workdir: str,
             slices: list[SliceSpec] | None = None) -> ArtifactRef:
    """Score the fine-tuned adapter on the held-out split: predictions, metrics (overall and per slice), report.md, plots."""
    inputs = dict(adapter=adapter, tokenized=tokenized, cfg=cfg, workdir=workdir, slices=list(slices or []))
    out = cache.out_dir(workdir, "evaluate", cache.current_key("evaluate", inputs))
    on_gpu = gpu.resolve_device(cfg.device) == "cuda"
    with gpu.slot(cfg.device) if on_gpu else contextlib.nullcontext():
        return evaluation.evaluate(tokenized.path, out, cfg, adapter_dir=adapter.path, slices=slices)


@task(name="champion", task_run_name="re-score the champion on {cfg.split}", timeout_seconds=6 * 3600)
def champion(adapter_path: str | None, adapter_sha256: str | None, tokenized: ArtifactRef, cfg: EvaluateConfig,
             workdir: str, slices: list[SliceSpec] | None = None) -> ArtifactRef | None:
    """The current champion's adapter scored on today's held-out items, so it is judged beside the challenger.

    None when there is no other champion to judge (none yet, or the challenger is the champion).
    """
    if adapter_path is None:
        return None
    inputs = dict(adapter_path=adapter_path, adapter_sha256=adapter_sha256, tokenized=tokenized, cfg=cfg, workdir=workdir,
                  slices=list(slices or []))
    out = cache.out_dir(workdir, "champion", cache.current_key("champion", inputs))
    on_gpu = gpu.resolve_device(cfg.device) == "cuda"
    with gpu.slot(cfg.device) if on_gpu else contextlib.nullcontext():
        return evaluation.evaluate(tokenized.path, out, cfg, adapter_dir=adapter_path, slices=slices)
