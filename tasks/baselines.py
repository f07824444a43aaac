from __future__ import annotations

import logging
import random
from typing import Any

import tenacity
from prefect import task

from pricefit.artifacts import ArtifactRef
from pricefit.baselines import frontier, run_baselines
from pricefit.settings.baselines import BaselinesConfig, FrontierConfig
from pricefit.slices import SliceSpec

from . import cache


log = logging.getLogger("pricefit.baselines.frontier")

# seconds before the frontier requests are sent again after an outage (items with no answer after
# their own per-request retries, or an endpoint that answered nothing); each retry sends only the
# items the reply cache lacks. Tests set it to zeros or to () (no retry).
OUTAGE_RETRY_DELAYS: tuple[float, ...] = (30.0, 120.0)
OUTAGE_JITTER = 0.5  # each delay x (1 + up to 50%): runs that failed together do not retry together


def _frontier_requests(texts: list[str], cfg: FrontierConfig, price_range: tuple[float, float], progress: bool = True) -> Any:
    """The frontier model's requests, sent again after an outage (tenacity), inside the baselines step.

    Not a nested Prefect task with retries: a child task that fails once rolls back the cached
    baselines step's transaction, releasing its lock under it (Prefect then logs "No lock for
    transaction" and the step's result is not cached). A rejected key or a setting to change is
    never retried.
    """
    delays = tuple(OUTAGE_RETRY_DELAYS)

    def wait(state: tenacity.RetryCallState) -> float:
        return delays[state.attempt_number - 1] * (1 + OUTAGE_JITTER * random.random())

    def before_sleep(state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning("frontier outage (%s); sending the unanswered items again in %.0f s (retry %d of %d)",
                    err, state.next_action.sleep if state.next_action else 0.0, state.attempt_number, len(delays))

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((frontier.FrontierIncomplete, frontier.FrontierUnavailable)),
        stop=tenacity.stop_after_attempt(len(delays) + 1), wait=wait, before_sleep=before_sleep, reraise=True)
    return retrying(frontier.price_texts, texts, cfg, price_range=price_range, progress=progress)


@task(name="baselines", task_run_name="baselines {cfg.include}", timeout_seconds=6 * 3600)
def baselines(curated: ArtifactRef, cfg: BaselinesConfig, workdir: str, slices: list[SliceSpec] | None = None) -> ArtifactRef:
    """Constant, linear, TF-IDF, base model and frontier model on the same held-out items.

    No Prefect retries: an outage retries the frontier requests alone (``_frontier_requests``), so
    it repeats no other baseline (the base model's inference included).
    """
    inputs = dict(curated=curated, cfg=cfg, workdir=workdir, slices=list(slices or []))
    out = cache.out_dir(workdir, "baselines", cache.current_key("baselines", inputs))
    return run_baselines(curated.path, out, cfg, slices=slices, price_frontier=_frontier_requests)
