"""The retrain DAG, every step of tasks/steps.py: ingest -> contract -> curate -> contract -> tokenize
-> contract -> train -> evaluate -> champion (re-scored on the same items) -> baselines -> compare &
promote -> report.

    pricefit run --profile demo                       # in-process (ephemeral Prefect API)
    python -m flows.retrain                           # the same, demo profile

Every step is a cached task (tasks/cache.py): a rerun repeats only what changed or what failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import RetrainParams, Steps, resolve_config, run_name


@flow(
    name="retrain",
    flow_run_name=lambda: run_name("retrain"),
    description="Curate listings, QLoRA fine-tune, evaluate against the baselines, promote the winner.",
)
def retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:
    steps = Steps(resolve_config(params), params.refresh)
    out = steps.run_to("report")  # every step of the DAG (tasks/steps.py), the champion re-scored on tonight's items
    return summary(steps, out["evaluate"], out["compare"], out["report"])


def summary(steps: Steps, evaluation, comparison: dict[str, Any], report) -> dict[str, Any]:
    """What `pricefit run --json` prints: headline metrics, the decision, and where things are."""
    import json

    metrics = json.loads((evaluation.dir / "metrics.json").read_text())
    decision = comparison["decision"]
    return {
        "profile": steps.cfg.profile,
        "workdir": steps.workdir,
        "states": dict(steps.states),
        "metrics": {k: metrics.get(k) for k in ("n", "n_unparsed", "mae", "rmsle", "hit_rate", "mdape")},
        "model": (metrics.get("model") or {}).get("label"),  # what "fine_tuned" is, e.g. a blend and its weights
        "comparison": str(comparison["comparison"].dir / "comparison.md"),
        "promoted": decision.get("promoted"),
        "promotion_reason": decision.get("reason"),
        "report": str(report.dir / "report.md"),
    }


if __name__ == "__main__":
    retrain()
