"""The run report: one Markdown page that links every artifact of the run (pricefit.report.render_run_report)."""

from __future__ import annotations

from typing import Any

from prefect import task

from pricefit.artifacts import ArtifactRef, atomic_dir, ref_for, write_manifest, write_text_atomic
from pricefit.report import render_run_report

from . import cache


@task(name="report", task_run_name="report", timeout_seconds=600)
def report(refs: dict[str, ArtifactRef], decision: dict[str, Any], workdir: str) -> ArtifactRef:
    out = cache.out_dir(workdir, "report", cache.current_key("report", dict(refs=refs, decision=decision, workdir=workdir)))
    with atomic_dir(out) as tmp:
        write_text_atomic(tmp / "report.md", render_run_report(refs, decision))
        write_manifest(tmp, {"kind": "report", "schema_version": 1, "artifacts": {k: r.path for k, r in refs.items()}})
    return ref_for(out, "report")
