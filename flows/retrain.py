"""The retrain DAG: ingest -> contract -> curate -> contract -> tokenize -> contract -> train ->
evaluate -> champion (re-scored on the same items) -> baselines -> compare & promote -> report.

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
    cfg = resolve_config(params)
    steps = Steps(cfg, params.refresh)

    curated, tokenized = steps.prepared_data()
    adapter = steps.train(tokenized)
    evaluation = steps.evaluate(adapter, tokenized)
    champion = steps.champion(tokenized, adapter)  # the champion judged on tonight's items too
    baselines = steps.baselines(curated)
    comparison = steps.compare(evaluation, baselines, champion)
    report = steps.report(
        comparison["decision"], curated=curated, adapter=adapter, evaluation=evaluation, baselines=baselines,
        comparison=comparison["comparison"],
    )

    return summary(steps, evaluation, comparison, report)


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
