"""Evaluation reports in Markdown and JSON.

Reusable pieces for anyone who reports metrics (baselines, comparison):

- :func:`markdown_table(header, rows, align)` (defined in pricefit.markdown): the one Markdown
  table writer (every table of pricefit's reports, the comparison, the run report and the UI's
  contract artifact goes through it).
- :func:`render_metrics_table(rows)`: one Markdown row per model (``name`` + metrics dicts).
- :func:`render_breakdown(metrics, "by_category" | "by_band")`: one row per group.
- :func:`worst_items(rows, k)`: the items with the largest absolute error.
- :func:`render_evaluation_report(...)` / :func:`write_evaluation_report(...)`: the whole report.
- :func:`render_run_report(refs, decision)`: the retrain flow's run report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .artifacts import write_json_atomic, write_text_atomic
from .composition import component_rows, describe
from .markdown import markdown_table  # noqa: F401 - also imported from here (compare, tests)
from .metrics import UNPARSED_FALLBACK

DEFAULT_COLUMNS = ("n", "n_unparsed", "mae", "rmsle", "hit_rate", "mdape")
_HEADERS = {
    "name": "model",
    "n": "n",
    "n_unparsed": "unparsed",
    "mae": "MAE",
    "rmsle": "RMSLE",
    "hit_rate": "hit rate",
    "mdape": "MdAPE",
    "mae_parsed": "MAE (parsed only)",
}


def fmt(key: str, value: Any) -> str:
    """One metric value as text: dollars, percent, or plain."""
    if value is None:
        return "-"
    if key.startswith("mae") or key in ("price", "prediction", "abs_error"):
        return f"${value:,.2f}"
    if key == "hit_rate":
        return f"{value * 100:.1f}%"
    if key == "mdape":
        return f"{value:.1f}%"
    if key == "rmsle":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_metrics_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = DEFAULT_COLUMNS, key: str = "name") -> str:
    """Markdown table, one row per mapping (``rows[i][key]`` names it; other keys are metrics)."""
    header = [_HEADERS.get(c, c) for c in (key, *columns)]
    return "\n".join(markdown_table(header, ([r.get(key, ""), *(fmt(c, r.get(c)) for c in columns)] for r in rows)))


def render_breakdown(metrics: Mapping[str, Any], by: str = "by_category", columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    groups = metrics.get(by) or {}
    label = {"by_category": "category", "by_band": "price band", "slices": "slice"}.get(by, by)
    return render_metrics_table([{label: g, **m} for g, m in groups.items()], columns, key=label)


def worst_items(rows: Iterable[Mapping[str, Any]], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` items with the largest absolute error (unparsed scored as $0), largest first."""

    def err(r: Mapping[str, Any]) -> float:
        p = r.get("prediction")
        return abs((UNPARSED_FALLBACK if p is None else float(p)) - float(r["price"]))

    out = []
    for r in sorted(rows, key=err, reverse=True)[:k]:
        out.append(
            {
                "item_id": r.get("item_id"),
                "category": r.get("category"),
                "title": (r.get("title") or "")[:80],
                "price": float(r["price"]),
                "prediction": r.get("prediction"),
                "raw": r.get("raw"),
                "abs_error": round(err(r), 4),
            }
        )
    return out


def render_evaluation_report(
    metrics: Mapping[str, Any],
    meta: Mapping[str, Any],
    worst: Sequence[Mapping[str, Any]],
    images: Sequence[str] = ("scatter.png", "errors.png"),
    title: str = "Evaluation",
) -> str:
    m = dict(metrics)
    lines = [f"# {title}", ""]
    for k in ("base_model", "adapter", "data", "split", "mode", "model", "device", "n_items", "runtime_s", "items_per_s"):
        if meta.get(k) is not None:
            lines.append(f"- **{k}**: `{meta[k]}`")
    lines += [
        "",
        "## Headline",
        "",
        render_metrics_table([{"name": meta.get("name", "model"), **m}], (*DEFAULT_COLUMNS, "mae_parsed")),
        "",
        *_composition_lines(m.get("model")),
        f"Unparsed predictions (no number in the output) are counted and scored as ${m.get('unparsed_scored_as', 0):.0f}; "
        "*MAE (parsed only)* leaves them out. Hit: error under $40 or under 20% of the true price.",
        f"Traffic light: {m.get('green', 0)} green, {m.get('orange', 0)} orange, {m.get('red', 0)} red.",
        "",
    ]
    for img in images:
        lines.append(f"![{Path(img).stem}]({img})")
    if m.get("slices"):
        lines += ["", "## By slice", "", render_breakdown(m, "slices"), ""]
    lines += ["", "## By price band", "", render_breakdown(m, "by_band"), ""]
    if m.get("by_category"):
        lines += ["## By category", "", render_breakdown(m, "by_category"), ""]
    if worst:
        lines += [
            f"## Worst {len(worst)} items",
            "",
            render_metrics_table(
                [{**w, "raw": repr(w.get("raw"))} for w in worst],
                ("title", "price", "prediction", "abs_error", "raw"),
                key="item_id",
            ),
            "",
        ]
    return "\n".join(lines)


def _composition_lines(record: Mapping[str, Any] | None) -> list[str]:
    """What the model is made of (pricefit.composition) and each component alone, when it has several."""
    rows = component_rows(record)
    if not rows:
        return []
    return [describe(record), "", "Each component alone on the same items:", "",
            render_metrics_table(rows, DEFAULT_COLUMNS, key="model"), ""]


def write_evaluation_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    meta: Mapping[str, Any],
    worst: Sequence[Mapping[str, Any]],
    title: str = "Evaluation",
) -> tuple[Path, Path]:
    """``report.md`` and ``report.json`` (headline metrics, breakdowns, meta, worst items) in ``out_dir``."""
    d = Path(out_dir)
    md = write_text_atomic(d / "report.md", render_evaluation_report(metrics, meta, worst, title=title) + "\n")
    js = write_json_atomic(d / "report.json", {"meta": dict(meta), "metrics": dict(metrics), "worst": list(worst)})
    return md, js


def render_run_report(refs: Mapping[str, Any], decision: Mapping[str, Any] | None = None) -> str:
    """The run report (Markdown): the comparison, the promotion decision, the data accounting and
    where every artifact is (``refs``: step name -> ArtifactRef)."""
    import json

    lines = ["# pricefit run report", ""]
    comparison = refs.get("comparison")
    if comparison and (comparison.dir / "comparison.md").exists():
        lines += [(comparison.dir / "comparison.md").read_text().rstrip(), ""]
    if decision:
        lines += [f"**Promotion:** {'promoted' if decision.get('promoted') else 'not promoted'}: {decision.get('reason')}", ""]
    curated = refs.get("curated")
    if curated:
        m = curated.manifest()
        def counts(d: Any) -> str:
            return ", ".join(f"{v} {k}" for k, v in (d or {}).items()) or "none"

        lines += [f"Data: {m.get('rows_read')} rows read from `{m.get('source')}`; kept {counts(m.get('kept'))}; "
                  f"dropped {counts(m.get('dropped'))}; quarantined {m.get('quarantined')}.", ""]
    adapter = refs.get("adapter")
    if adapter and (adapter.dir / "train_summary.json").exists():
        s = json.loads((adapter.dir / "train_summary.json").read_text())
        lines += [f"Training: {s.get('steps')} steps in {s.get('runtime_s')} s on {s.get('hardware')}.", ""]
    lines += markdown_table(["artifact", "path"], ([k, f"`{r.path}`"] for k, r in refs.items()), align="ll")
    evaluation = refs.get("evaluation")
    if evaluation:
        lines += ["", f"Evaluation report: `{evaluation.dir / 'report.md'}`"]
    return "\n".join(lines) + "\n"
