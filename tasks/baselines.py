from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pricefit.artifacts import ArtifactRef
from pricefit.baselines import frontier, run_baselines
from pricefit.config import BaselinesConfig, FrontierConfig
from pricefit.slices import SliceSpec

from . import cache


def _outage(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what an outage explains (items with no answer, an endpoint that answered nothing),
    never a rejected key or a setting to change."""
    try:
        state.result()
    except (frontier.FrontierIncomplete, frontier.FrontierUnavailable):
        return True
    except Exception:
        return False
    return False


@task(
    name="frontier requests",
    retries=2,
    retry_delay_seconds=[30, 120],  # rate limits and outages pass; each request has its own retries (tenacity)
    retry_jitter_factor=0.5,
    retry_condition_fn=_outage,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def frontier_requests(texts: list[str], cfg: FrontierConfig, price_range: tuple[float, float], progress: bool = True) -> Any:
    """The frontier model's requests alone: a retry sends only the items the reply cache lacks."""
    return frontier.price_texts(texts, cfg, price_range=price_range, progress=progress)


@task(name="baselines", task_run_name="baselines {cfg.include}", timeout_seconds=6 * 3600)
def baselines(curated: ArtifactRef, cfg: BaselinesConfig, workdir: str, slices: list[SliceSpec] | None = None) -> ArtifactRef:
    """Constant, linear, TF-IDF, base model and frontier model on the same held-out items.

    No retries of its own: those are around the frontier requests only (``frontier_requests``), so
    a frontier outage repeats no other baseline (the base model's inference included).
    """
    inputs = dict(curated=curated, cfg=cfg, workdir=workdir, slices=list(slices or []))
    out = cache.out_dir(workdir, "baselines", cache.current_key("baselines", inputs))
    return run_baselines(curated.path, out, cfg, slices=slices, price_frontier=_frontier_requests)


def _frontier_requests(*args: Any, **kwargs: Any) -> Any:
    return frontier_requests(*args, **kwargs)  # the module attribute at call time (tests shorten its delays)
