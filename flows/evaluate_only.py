"""Evaluate an existing adapter (default: the champion's) on the held-out split, then compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import Field

from flows.common import OptionalText, RetrainParams, Steps, resolve_config, run_name
from pricefit.artifacts import ref_for
from pricefit.errors import PricefitError


class EvaluateParams(RetrainParams):
    adapter: OptionalText = Field("", description="Adapter artifact directory; empty: the champion's (<workdir>/champion.json).")


def _adapter_dir(params: EvaluateParams, workdir: str) -> str:
    if params.adapter:
        return params.adapter
    champ = Path(workdir) / "champion.json"
    adapter = json.loads(champ.read_text()).get("adapter") if champ.exists() else None
    if not adapter:
        raise PricefitError(f"no adapter given and no champion in {champ}", hint="pass adapter=<dir> or run the retrain flow first")
    return adapter


@flow(name="evaluate", flow_run_name=lambda: run_name("evaluate"), description="Evaluate an adapter and compare it with the baselines.")
def evaluate_only(params: EvaluateParams = EvaluateParams()) -> dict[str, Any]:
    cfg = resolve_config(params)
    steps = Steps(cfg, params.refresh)

    curated, tokenized = steps.prepared_data()
    adapter = ref_for(_adapter_dir(params, cfg.workdir), "adapter")
    evaluation = steps.evaluate(adapter, tokenized)
    baselines = steps.baselines(curated)
    comparison = steps.compare(evaluation, baselines)

    return {"states": dict(steps.states), "evaluation": evaluation.path, "promoted": comparison["decision"].get("promoted")}


if __name__ == "__main__":
    evaluate_only()
