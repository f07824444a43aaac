"""What the Prefect UI shows for a run: table, markdown, image and progress artifacts.

Artifacts are published from the flow after each step (not inside the cached task bodies), so a
run whose steps all come back Cached still shows the data manifest, contract results, loss curve,
evaluation report, comparison table and scatter plot. A failure to publish is logged and never
fails the run. PNGs are embedded as data URIs (Prefect's image artifact takes only a URL and a
local file has none) together with their path on disk.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

from .steps import BY_NAME

log = logging.getLogger("pricefit.tasks")

MAX_EMBED_BYTES = 1_500_000


def _safe(fn, *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # the UI is a view: never fail a run over it
        log.warning("could not publish a Prefect artifact (%s): %s", getattr(fn, "__name__", fn), e)
        return None


def image_md(path: Path, alt: str) -> str:
    if not path.exists():
        return f"*({alt}: {path.name} not written)*"
    data = path.read_bytes()
    if len(data) > MAX_EMBED_BYTES:
        return f"{alt}: `{path}`"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode()})\n\n`{path}`"


def accounting_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Where every input row went, as table rows (raw and curated manifests)."""
    rows = [{"outcome": "rows read", "rows": manifest.get("rows_read")}]
    if manifest.get("kind") == "raw":
        rows.append({"outcome": "parsed", "rows": manifest.get("parsed")})
    for split, n in (manifest.get("kept") or {}).items():
        rows.append({"outcome": f"kept: {split}", "rows": n})
    for reason, n in (manifest.get("dropped") or {}).items():
        rows.append({"outcome": f"dropped: {reason}", "rows": n})
    rows.append({"outcome": "quarantined", "rows": manifest.get("quarantined")})
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def publish(step: str, result: Any) -> None:
    """Create the UI artifacts of one finished (or cached) step: its publisher in the step registry."""
    name = BY_NAME[step].publish if step in BY_NAME else None
    if name:
        globals()[name](step, result)


def publish_accounting(step: str, result: Any) -> None:
    from prefect.artifacts import create_table_artifact

    m = result.manifest()
    _safe(
        create_table_artifact,
        table=accounting_rows(m),
        key="data-manifest" if step == "curate" else "raw-manifest",
        description=f"{step}: where every input row of {m.get('source')} went ({result.path})",
    )


def publish_contract(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    ok = "passed" if result.get("success") else "FAILED"
    docs = result.get("data_docs")
    link = f"[Data Docs]({Path(docs).as_uri()})  `{docs}`" if docs else "(no Data Docs)"
    md = (
        f"### {result['stage']} contract {ok}\n\n{result.get('checked')} checks, {result.get('failed')} failed, "
        f"{result.get('skipped')} skipped.\n\n{link}\n\nReport: `{result.get('report_path')}`"
    )
    _safe(create_markdown_artifact, markdown=md, key=f"contract-{result['stage']}", description=f"{result['stage']} data contract")


def publish_train(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    d = result.dir
    summary = _read_json(d / "train_summary.json")
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, (dict, list)))
    md = f"### Training loss\n\n{image_md(d / 'loss.png', 'loss curve')}\n\n| field | value |\n|---|---|\n{rows}\n"
    _safe(create_markdown_artifact, markdown=md, key="loss-curve", description=f"adapter {result.path}")


def publish_evaluation(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    d = result.dir
    report = (d / "report.md").read_text() if (d / "report.md").exists() else "(no report.md)"
    _safe(create_markdown_artifact, markdown=report, key="evaluation-report", description=f"evaluation {result.path}")
    _safe(
        create_markdown_artifact,
        markdown=f"### Predicted vs true price\n\n{image_md(d / 'scatter.png', 'scatter plot')}",
        key="scatter-plot",
        description="held-out predictions",
    )


def publish_comparison(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    ref, decision = result["comparison"], result["decision"]
    md = (ref.dir / "comparison.md").read_text() if (ref.dir / "comparison.md").exists() else ""
    verdict = "promoted to champion" if decision.get("promoted") else "not promoted"
    md += f"\n\n**Promotion:** {verdict}: {decision.get('reason')}\n"
    _safe(create_markdown_artifact, markdown=md, key="comparison-table", description=f"comparison {ref.path}")


def publish_report(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    md = f"### Run report\n\n`{result.path}`\n"
    page = result.dir / "report.md"
    if page.exists():
        md = page.read_text()
    _safe(create_markdown_artifact, markdown=md, key="run-report", description=f"report {result.path}")


class Progress:
    """A progress artifact, updated at most every 2 s: call it as ``progress(step, total)``."""

    def __init__(self, key: str, description: str):
        self.key, self.description = key, description
        self.id = None
        self._last = 0.0

    def __call__(self, step: int, total: int | None = None, *args: Any, **kwargs: Any) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        pct = 100.0 * step / total if total else 0.0
        now = time.monotonic()
        if self.id is None:
            self.id = _safe(create_progress_artifact, progress=pct, key=self.key, description=self.description)
            self._last = now
        elif now - self._last >= 2.0 or (total and step >= total):
            _safe(update_progress_artifact, artifact_id=self.id, progress=pct)
            self._last = now

    def done(self) -> None:
        from prefect.artifacts import update_progress_artifact

        if self.id is not None:
            _safe(update_progress_artifact, artifact_id=self.id, progress=100.0)
