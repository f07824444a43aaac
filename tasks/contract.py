from __future__ import annotations

from typing import Any

from prefect import task

import data_contracts
from pricefit.artifacts import ArtifactRef
from pricefit.errors import ContractError


@task(name="contract", task_run_name="contract {stage}", timeout_seconds=1800)
def contract(stage: str, ref: ArtifactRef) -> dict[str, Any]:
    """Validate a stage artifact against its great-expectations contract (raises ContractError on failure)."""
    import json

    verdict = ref.manifest().get("contract")
    if isinstance(verdict, dict) and "success" in verdict:
        # raw and curated are checked by their stage before the rename (bad rows moved out there);
        # here the recorded verdict and report are read, not recomputed
        path = ref.dir / "contracts" / f"{stage}.json"
        report = json.loads(path.read_text()) if path.exists() else dict(verdict)
        if verdict["success"] is not True:
            raise ContractError(
                f"{stage} contract of {ref.path} did not pass ({verdict.get('failed')} check(s) failed); report: {path}",
                report=report,
                hint="fix the data or the settings the report names, then re-run",
            )
    else:
        report = data_contracts.check(stage, ref.path)
    # the full report stays on disk beside the artifact; the cached result is the summary
    keep = ("stage", "success", "checked", "failed", "skipped", "batches", "report_path", "data_docs")
    return {k: report.get(k) for k in keep} | {"artifact": ref.path}
