from __future__ import annotations

from typing import Any

from prefect import task

from pricefit.artifacts import ArtifactRef

from .faults import maybe_fail


@task(name="contract", task_run_name="contract {stage}", timeout_seconds=1800)
def contract(stage: str, ref: ArtifactRef) -> dict[str, Any]:
    """Validate a stage artifact against its great-expectations contract (raises ContractError on failure)."""
    import data_contracts

    maybe_fail(f"contract_{stage}")
    report = data_contracts.check(stage, ref.path)
    # the full report stays on disk beside the artifact; the cached result is the summary
    keep = ("stage", "success", "checked", "failed", "skipped", "batches", "report_path", "data_docs")
    return {k: report.get(k) for k in keep} | {"artifact": ref.path}
