"""Hyperparameter sweep: one subflow per trial (train -> evaluate), sharing the cached data steps.

    pricefit sweep --profile demo --grid flows/grids/demo-lr.yaml

Grid file (YAML), either lists per key (the full cross product) or an explicit list of trials:

    grid:                          trials:
      train.learning_rate: [1e-4, 3e-4]   - {train.lora_r: 8,  train.lora_alpha: 16}
      train.lora_r: [8, 16]               - {train.lora_r: 32, train.lora_alpha: 64}

Only ``train.*`` keys: every trial is scored on the same held-out items as the others.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from prefect import flow
from pydantic import Field

from flows.common import RetrainParams, Steps, resolve_config, run_name
from pricefit.artifacts import ArtifactRef
from pricefit.config import RunConfig, TrainConfig, apply_overrides, validate_model
from pricefit.errors import PricefitError


class SweepParams(RetrainParams):
    trials: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"train.learning_rate": 1e-4}, {"train.learning_rate": 3e-4}],
        description="One dict of train.* overrides per trial (expand a grid file with flows.sweep.load_grid).",
    )


def expand_grid(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """{'grid': {key: [values]}} or {'trials': [{key: value}]} -> list of override dicts."""
    if "trials" in spec:
        trials = spec["trials"]
        if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
            raise PricefitError("'trials' must be a list of mappings", hint="e.g. trials: [{train.lora_r: 8}]")
    elif "grid" in spec and isinstance(spec["grid"], dict):
        keys = list(spec["grid"])
        values = [v if isinstance(v, list) else [v] for v in spec["grid"].values()]
        trials = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    else:
        raise PricefitError("a sweep file needs a 'grid' mapping (key: [values]) or a 'trials' list", hint="see flows/sweep.py")
    if not trials:
        raise PricefitError("the sweep has no trial")
    bad = sorted({k for t in trials for k in t if not str(k).startswith("train.")})
    if bad:
        raise PricefitError(f"sweep keys must be train.* settings, got {', '.join(bad)}", hint="e.g. train.learning_rate, train.lora_r")
    return trials


def load_grid(path: str) -> list[dict[str, Any]]:
    from pricefit.config import load_yaml

    return expand_grid(load_yaml(path))


def trial_config(cfg: RunConfig, overrides: dict[str, Any]) -> TrainConfig:
    data = apply_overrides({"train": cfg.train.model_dump()}, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    return validate_model(TrainConfig, data["train"], f"sweep trial {overrides}")


def trial_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return "trial-" + ",".join(f"{k.removeprefix('train.')}={v}" for k, v in (p.get("overrides") or {}).items())


@flow(name="sweep-trial", flow_run_name=trial_name)
def sweep_trial(params: RetrainParams, overrides: dict[str, Any], tokenized: ArtifactRef) -> dict[str, Any]:
    cfg = resolve_config(params)
    steps = Steps(cfg, params.refresh)

    adapter = steps.train(tokenized, trial_config(cfg, overrides))
    evaluation = steps.evaluate(adapter, tokenized)

    metrics = json.loads((evaluation.dir / "metrics.json").read_text())
    return {"overrides": overrides, "states": dict(steps.states), "adapter": adapter.path, "evaluation": evaluation.path, "metrics": metrics}


@flow(name="sweep", flow_run_name=lambda: run_name("sweep"), description="Train and evaluate a grid of train settings on the same data.")
def sweep(params: SweepParams = SweepParams()) -> dict[str, Any]:
    cfg = resolve_config(params)
    steps = Steps(cfg, params.refresh)
    trials = expand_grid({"trials": params.trials})

    _, tokenized = steps.prepared_data()
    base = RetrainParams(**params.model_dump(exclude={"trials"}))
    results = [sweep_trial(base, overrides, tokenized) for overrides in trials]

    return publish_table(results, cfg.promote.metric) | {"states": dict(steps.states)}


def publish_table(results: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """One comparison table artifact over the trials, the best (lowest metric) marked."""
    from prefect.artifacts import create_table_artifact

    scored = [r for r in results if r["metrics"].get(metric) is not None]
    best = min(scored, key=lambda r: r["metrics"][metric]) if scored else None
    rows = [
        {
            "best": "*" if r is best else "",
            "trial": ", ".join(f"{k}={v}" for k, v in r["overrides"].items()),
            metric: r["metrics"].get(metric),
            **{k: r["metrics"].get(k) for k in ("rmsle", "hit_rate", "n_unparsed") if k != metric},
            "train": r["states"].get("train"),
            "adapter": r["adapter"],
        }
        for r in results
    ]
    create_table_artifact(table=rows, key="sweep-comparison", description=f"sweep trials by {metric}; * marks the best")
    return {"metric": metric, "rows": rows, "best": best["overrides"] if best else None}


if __name__ == "__main__":
    sweep()
