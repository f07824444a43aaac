from __future__ import annotations

from prefect import task

from pricefit.artifacts import ArtifactRef
from pricefit.config import BaselinesConfig
from pricefit.slices import SliceSpec

from . import cache


@task(
    name="baselines",
    task_run_name="baselines {cfg.include}",
    retries=2,
    retry_delay_seconds=[30, 120],  # the frontier API: rate limits and outages pass
    retry_jitter_factor=0.5,
    timeout_seconds=6 * 3600,
)
def baselines(curated: ArtifactRef, cfg: BaselinesConfig, workdir: str, slices: list[SliceSpec] | None = None) -> ArtifactRef:
    """Constant, linear, TF-IDF, base model and frontier model on the same held-out items."""
    from pricefit.baselines import run_baselines

    inputs = dict(curated=curated, cfg=cfg, workdir=workdir, slices=list(slices or []))
    out = cache.out_dir(workdir, "baselines", cache.current_key("baselines", inputs))
    return run_baselines(curated.path, out, cfg, slices=slices)
