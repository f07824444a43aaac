"""Evaluate an existing adapter (default: the champion's) on the held-out split, then compare."""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import Field

from flows.common import OptionalText, RetrainParams, Steps, resolve_config, run_name
from pricefit.artifacts import ref_for
from pricefit.promotion import champion_adapter


class EvaluateParams(RetrainParams):
    adapter: OptionalText = Field("", description="Adapter artifact directory; empty: the champion's (<workdir>/champion.json).")


@flow(name="evaluate", flow_run_name=lambda: run_name("evaluate"), description="Evaluate an adapter and compare it with the baselines.")
def evaluate_only(params: EvaluateParams = EvaluateParams()) -> dict[str, Any]:
    cfg = resolve_config(params)
    steps = Steps(cfg, params.refresh)
    # the adapter stands for train's output: nothing trains; the champion is re-scored beside it
    # when it is another adapter, so the decision is on the same items
    adapter = ref_for(params.adapter or champion_adapter(cfg.workdir), "adapter")
    out = steps.run_to("compare", given={"train": adapter})
    return {"states": dict(steps.states), "evaluation": out["evaluate"].path, "promoted": out["compare"]["decision"].get("promoted")}


if __name__ == "__main__":
    evaluate_only()
