"""Curate only: ingest -> contract -> curate -> contract (no tokenizer model, no training)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import RetrainParams, Steps, resolve_config, run_name


@flow(name="curate-only", flow_run_name=lambda: run_name("curate"), description="Ingest and curate the listings, with both contracts.")
def curate_only(params: RetrainParams = RetrainParams()) -> dict[str, Any]:
    steps = Steps(resolve_config(params), params.refresh)
    curated = steps.run_to("contract_curated")["curate"]  # and what it needs: ingest and the raw contract
    return {"states": dict(steps.states), "curated": curated.path, "kept": curated.manifest().get("kept")}


if __name__ == "__main__":
    curate_only()
