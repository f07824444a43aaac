"""The run report: one Markdown page that links every artifact of the run."""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from pricefit.artifacts import ArtifactRef, atomic_dir, ref_for, write_manifest, write_text_atomic

from . import cache
from .faults import maybe_fail


def render(refs: dict[str, ArtifactRef], decision: dict[str, Any] | None = None) -> str:
    """Markdown: the comparison, the promotion decision, the data accounting and where everything is."""
    lines = ["# pricefit run report", ""]
    comparison = refs.get("comparison")
    if comparison and (comparison.dir / "comparison.md").exists():
        lines += [(comparison.dir / "comparison.md").read_text().rstrip(), ""]
    if decision:
        lines += [f"**Promotion:** {'promoted' if decision.get('promoted') else 'not promoted'}: {decision.get('reason')}", ""]
    curated = refs.get("curated")
    if curated:
        m = curated.manifest()
        lines += [f"Data: {m.get('rows_read')} rows read from `{m.get('source')}`; kept {m.get('kept')}; dropped {m.get('dropped')}; "
                  f"quarantined {m.get('quarantined')}.", ""]
    adapter = refs.get("adapter")
    if adapter and (adapter.dir / "train_summary.json").exists():
        s = json.loads((adapter.dir / "train_summary.json").read_text())
        lines += [f"Training: {s.get('steps')} steps in {s.get('runtime_s')} s on {s.get('hardware')}.", ""]
    lines += ["| artifact | path |", "|---|---|"] + [f"| {k} | `{r.path}` |" for k, r in refs.items()]
    evaluation = refs.get("evaluation")
    if evaluation:
        lines += ["", f"Evaluation report: `{evaluation.dir / 'report.md'}`"]
    return "\n".join(lines) + "\n"


@task(name="report", task_run_name="report", timeout_seconds=600)
def report(refs: dict[str, ArtifactRef], decision: dict[str, Any], workdir: str) -> ArtifactRef:
    maybe_fail("report")
    out = cache.out_dir(workdir, "report", cache.current_key("report", dict(refs=refs, decision=decision, workdir=workdir)))
    with atomic_dir(out) as tmp:
        write_text_atomic(tmp / "report.md", render(refs, decision))
        write_manifest(tmp, {"kind": "report", "schema_version": 1, "artifacts": {k: r.path for k, r in refs.items()}})
    return ref_for(out, "report")
