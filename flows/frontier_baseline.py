"""The frontier model alone (OpenAI-compatible API) on the held-out items of the curated data."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import RetrainParams, Steps, resolve_config, run_name


@flow(name="frontier-baseline", flow_run_name=lambda: run_name("frontier"), description="Score the frontier model on the held-out items.")
def frontier_baseline(params: RetrainParams = RetrainParams()) -> dict[str, Any]:
    cfg = resolve_config(params)
    cfg = cfg.model_copy(update={"baselines": cfg.baselines.model_copy(update={"include": ["frontier"]})})
    steps = Steps(cfg, params.refresh)
    result = steps.run_to("baselines")["baselines"]  # and what it needs: ingest, curate and their contracts

    summary = result.dir / "summary.json"
    return {"states": dict(steps.states), "baselines": result.path, "summary": summary.read_text() if summary.exists() else None}


if __name__ == "__main__":
    frontier_baseline()
