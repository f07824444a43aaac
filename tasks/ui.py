"""What the Prefect UI shows for a run: table, markdown, image and progress artifacts.

Artifacts are published from the flow after each step (not inside the cached task bodies), so a
run whose steps all come back Cached still shows the data manifest, contract results, loss curve,
evaluation report, comparison table and scatter plot. A failure to publish is logged and never
fails the run. PNGs are embedded as data URIs (Prefect's image artifact takes only a URL and a
local file has none) together with their path on disk; so are the pictures a published Markdown
page (the evaluation report, the run report) links relative to its folder.

Keys and descriptions start with the step's place in the step registry (tasks/steps.py):
``03-curate-manifest``, "step 3/12 curate: ...". The UI lists a run's artifacts in no order of
their own (the server sorts them by their random id), so the number is what reads them in pipeline
order.

The contract artifact holds the contract's results (one row per expectation) and links its Great
Expectations Data Docs through http when ``PRICEFIT_DOCS_URL`` names a Data Docs server (``pricefit
serve`` starts one and sets it for the runs it serves); a ``file://`` link does nothing in a browser.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pricefit.markdown import markdown_table  # not pricefit.report: the train step imports this module

from .steps import BY_NAME, NAMES

log = logging.getLogger("pricefit.tasks")

MAX_EMBED_BYTES = 1_500_000  # one picture
MAX_PAGE_EMBED_BYTES = 4_000_000  # all pictures of one page
DOCS_URL_ENV = "PRICEFIT_DOCS_URL"  # base URL of a Data Docs server (flows/serve.py: start_docs_server)
DOCS_PREFIX = "/data-docs"  # <base>/data-docs/<absolute path of a file under a data_docs folder>
# a file the Data Docs server reads: one docs folder a line, the only folders it serves (besides the
# served workdir's); a run appends the folder of each page it links (flows/serve.py: docs roots)
DOCS_ROOTS_ENV = "PRICEFIT_DOCS_ROOTS_FILE"


def _safe(fn, *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # the UI is a view: never fail a run over it
        log.warning("could not publish a Prefect artifact (%s): %s", getattr(fn, "__name__", fn), e)
        return None


def step_position(step: str) -> int:
    """1-based place of ``step`` in the step registry (the DAG order)."""

    return NAMES.index(step) + 1


def artifact_key(step: str, what: str = "") -> str:
    """``NN-step[-what]``: a Prefect artifact key (lowercase, digits, dashes) that sorts in DAG order."""
    key = f"{step_position(step):02d}-{step.replace('_', '-')}" + (f"-{what}" if what else "")
    if not re.fullmatch(r"[a-z0-9-]+", key):
        raise ValueError(f"not a Prefect artifact key: {key!r}")
    return key


def step_label(step: str) -> str:
    """'step 3/12 curate': the start of every artifact description."""

    return f"step {step_position(step)}/{len(NAMES)} {step.replace('_', ' ')}"


def _data_uri(path: Path) -> str:
    kind = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".svg": "svg+xml"}.get(path.suffix.lower(), "png")
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def image_md(path: Path, alt: str) -> str:
    if not path.exists():
        return f"*({alt}: {path.name} not written)*"
    if path.stat().st_size > MAX_EMBED_BYTES:
        return f"{alt}: `{path}`"
    return f"![{alt}]({_data_uri(path)})\n\n`{path}`"


_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def embed_images(md: str, base: Path, budget: int = MAX_PAGE_EMBED_BYTES) -> str:
    """Markdown whose pictures linked relative to ``base`` (``![scatter](scatter.png)``) are data URIs.

    A picture that is missing or over the size limits is replaced by its path on disk; links that
    are already URLs are left alone.
    """
    left = budget

    def sub(m: re.Match[str]) -> str:
        nonlocal left
        alt, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # data:, http(s):, file: ...
            return m.group(0)
        path = (base / target).resolve()
        if not path.is_file():
            return f"*({alt or target}: {target} not written)*"
        size = path.stat().st_size
        if size > MAX_EMBED_BYTES or size > left:
            return f"{alt or target}: `{path}`"
        left -= size
        return f"![{alt}]({_data_uri(path)})"

    return _IMAGE_LINK.sub(sub, md)


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
        _safe(globals()[name], step, result)  # a report that cannot be read is a warning, not a failed run


def publish_accounting(step: str, result: Any) -> None:
    from prefect.artifacts import create_table_artifact

    m = result.manifest()
    _safe(
        create_table_artifact,
        table=accounting_rows(m),
        key=artifact_key(step, "manifest"),
        description=f"{step_label(step)}: where every input row of {m.get('source')} went ({result.path})",
    )


def data_docs_url(index: str | os.PathLike, base_url: str | None = None) -> str | None:
    """The http URL of a Data Docs page on the Data Docs server (``PRICEFIT_DOCS_URL``), or None without one."""
    base = base_url if base_url is not None else os.environ.get(DOCS_URL_ENV, "")
    if not base:
        return None
    page = Path(index).resolve()
    roots_file = os.environ.get(DOCS_ROOTS_ENV)
    if roots_file:  # the server serves this run's docs folder, and no folder no run linked
        with open(roots_file, "a", encoding="utf-8") as f:
            f.write(page.parent.as_posix() + "\n")
    return base.rstrip("/") + DOCS_PREFIX + quote(page.as_posix())


def contract_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per expectation of a contract report: what was checked, on what, and how it went."""
    rows = []
    for e in report.get("expectations") or []:
        rows.append(
            {
                "expectation": e.get("name"),
                "batch": e.get("batch"),
                "column": e.get("column") or "",
                "success": "skipped" if e.get("skipped") else ("passed" if e.get("success") else "FAILED"),
                "unexpected": e.get("unexpected_count"),
                "of": "" if e.get("element_count") is None else e.get("element_count"),
            }
        )
    return rows


def contract_markdown(step: str, result: dict[str, Any]) -> str:
    """The contract artifact: verdict, one table row per expectation, and how to open the Data Docs."""

    ok = "passed" if result.get("success") else "FAILED"
    lines = [
        f"### {step_label(step)}: {result['stage']} contract {ok}",
        "",
        f"{result.get('checked')} checks, {result.get('failed')} failed, {result.get('skipped')} skipped.",
        "",
    ]
    report_path = result.get("report_path")
    report = _read_json(Path(report_path)) if report_path else {}
    rows = contract_rows(report)
    if rows:
        cols = list(rows[0])
        lines += markdown_table(cols, ([r[c] for c in cols] for r in rows), align="llllrr") + [""]
    docs = result.get("data_docs")
    if docs:
        url = data_docs_url(docs)
        folder = Path(docs).parent
        if url:
            lines.append(f"**[Open the Data Docs]({url})** (served by `pricefit serve` at {url.split(DOCS_PREFIX)[0]})")
            lines.append("")
        lines.append(
            f"Data Docs: `{docs}`. A browser cannot open that file from the UI"
            + (" when the server above is not running" if url else "")
            + f"; on the machine that ran the flow, serve the folder and open it: "
            f"`python -m http.server 8765 --bind 127.0.0.1 --directory {folder}` and "
            "http://127.0.0.1:8765/index.html (or run the flows with `pricefit serve`, which serves every "
            "run's Data Docs and links them here)."
        )
    else:
        lines.append("(no Data Docs)")
    lines += ["", f"Report: `{report_path}`"]
    return "\n".join(lines) + "\n"


def publish_contract(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    _safe(
        create_markdown_artifact,
        markdown=contract_markdown(step, result),
        key=artifact_key(step),
        description=f"{step_label(step)}: {result['stage']} data contract, one row per expectation",
    )


def publish_train(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    d = result.dir
    summary = _read_json(d / "train_summary.json")
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, (dict, list)))
    md = f"### Training loss\n\n{image_md(d / 'loss.png', 'loss curve')}\n\n| field | value |\n|---|---|\n{rows}\n"
    _safe(create_markdown_artifact, markdown=md, key=artifact_key(step, "loss-curve"),
          description=f"{step_label(step)}: loss curve of adapter {result.path}")


def publish_evaluation(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    d = result.dir
    report = embed_images((d / "report.md").read_text(), d) if (d / "report.md").exists() else "(no report.md)"
    _safe(create_markdown_artifact, markdown=report, key=artifact_key(step, "report"),
          description=f"{step_label(step)}: evaluation {result.path}")
    _safe(
        create_markdown_artifact,
        markdown=f"### Predicted vs true price\n\n{image_md(d / 'scatter.png', 'scatter plot')}",
        key=artifact_key(step, "scatter-plot"),
        description=f"{step_label(step)}: held-out predictions",
    )


def publish_comparison(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    ref, decision = result["comparison"], result["decision"]
    md = (ref.dir / "comparison.md").read_text() if (ref.dir / "comparison.md").exists() else ""
    verdict = "promoted to champion" if decision.get("promoted") else "not promoted"
    md += f"\n\n**Promotion:** {verdict}: {decision.get('reason')}\n"
    _safe(create_markdown_artifact, markdown=md, key=artifact_key(step, "table"),
          description=f"{step_label(step)}: comparison {ref.path}")


# the pictures of a run, by the run report's artifact names (its manifest's "artifacts")
REPORT_PICTURES = (("adapter", "loss.png", "Training loss"), ("evaluation", "scatter.png", "Predicted vs true price"),
                   ("evaluation", "errors.png", "Errors"))


def report_markdown(result: Any) -> str:
    """The run report page with its pictures inline (loss curve, scatter plot, errors)."""
    page = result.dir / "report.md"
    md = embed_images(page.read_text(), result.dir) if page.exists() else f"### Run report\n\n`{result.path}`\n"
    refs = (result.manifest().get("artifacts") or {}) if (result.dir / "manifest.json").exists() else {}
    pictures, left = [], MAX_PAGE_EMBED_BYTES
    for name, file, title in REPORT_PICTURES:
        if not refs.get(name):
            continue
        path = Path(refs[name]) / file
        if path.is_file() and path.stat().st_size <= min(MAX_EMBED_BYTES, left):
            left -= path.stat().st_size
            pictures.append(f"#### {title}\n\n![{title}]({_data_uri(path)})\n\n`{path}`")
        elif path.is_file():
            pictures.append(f"#### {title}\n\n`{path}` (too large to show here)")
    if pictures:
        md = md.rstrip() + "\n\n## Pictures\n\n" + "\n\n".join(pictures) + "\n"
    return md


def publish_report(step: str, result: Any) -> None:
    from prefect.artifacts import create_markdown_artifact

    _safe(create_markdown_artifact, markdown=report_markdown(result), key=artifact_key(step),
          description=f"{step_label(step)}: run report {result.path}")


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
