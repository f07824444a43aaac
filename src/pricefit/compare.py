"""Every model side by side on the same held-out items.

``compare(eval_dir, baselines_dir, out_dir)`` reads the fine-tuned model's evaluation
(``predictions.parquet`` + ``metrics.json``) and each baseline's, checks that all of them scored
exactly the same item_id set (refuses otherwise: an error on other items is not comparable), ranks
them by the chosen metric (lower is better; ties share the better rank) and gives the ratio of the
fine-tuned model's error to each baseline's (below 1: the fine-tuned model is better). Writes
``comparison.json`` and ``comparison.md``. Champion and promotion: :mod:`pricefit.promotion`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from .artifacts import (
    ArtifactRef,
    atomic_dir,
    ref_for,
    write_json_atomic,
    write_manifest,
    write_text_atomic,
)
from .baselines import read_summary
from .composition import component_rows, describe
from .errors import PricefitError
from .items import item_set_sha256
from .promotion import (
    EPS,
    FINE_TUNED,
    LOWER_IS_BETTER,
    METRICS,
    read_item_ids,
    read_metrics,
)
from .report import fmt, markdown_table

log = logging.getLogger("pricefit.compare")


def build_comparison(
    models: Mapping[str, Mapping[str, Any]],
    item_sets: Mapping[str, Iterable[str]],
    metric: str = "mae",
    fine_tuned: str = FINE_TUNED,
    skipped: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Pure core of :func:`compare`: ``models`` maps a name to its metrics dict.

    Raises PricefitError when the item sets differ or the metric is missing.
    """
    if metric not in LOWER_IS_BETTER:
        raise PricefitError(f"unknown metric {metric!r}", hint=f"choose from {', '.join(LOWER_IS_BETTER)}")
    if fine_tuned not in models:
        raise PricefitError(f"no {fine_tuned!r} model to compare", hint="pass the evaluation of the fine-tuned adapter")
    sets = {name: set(ids) for name, ids in item_sets.items()}
    ref = sets[fine_tuned]
    for name, s in sets.items():
        if s != ref:
            raise PricefitError(
                f"{name} was scored on different items than {fine_tuned}: "
                f"{len(s - ref)} item(s) only in {name}, {len(ref - s)} only in {fine_tuned} "
                f"({len(s)} vs {len(ref)} items)",
                hint="rerun the baselines with the same split and max_items as the evaluation "
                "(baselines.split / baselines.max_items = evaluate.split / evaluate.max_items)",
            )
    for name, m in models.items():
        if m.get(metric) is None:
            raise PricefitError(f"{name}'s metrics lack {metric!r}", hint="rerun that stage")

    sign = 1.0 if LOWER_IS_BETTER[metric] else -1.0
    ordered = sorted(models, key=lambda k: (sign * float(models[k][metric]), k))
    ranks: dict[str, int] = {}
    for i, name in enumerate(ordered):
        prev = ordered[i - 1] if i else None
        same = prev is not None and math.isclose(float(models[prev][metric]), float(models[name][metric]), rel_tol=0, abs_tol=EPS)
        ranks[name] = ranks[prev] if same else i + 1  # type: ignore[index]

    ft_value = float(models[fine_tuned][metric])
    rows = []
    for name in ordered:
        m = models[name]
        value = float(m[metric])
        ratio = None if name == fine_tuned or value == 0 else ft_value / value
        rows.append(
            {
                "model": name,
                "rank": ranks[name],
                "n": m.get("n"),
                "n_unparsed": m.get("n_unparsed"),
                **{k: m.get(k) for k in METRICS},
                "fine_tuned_ratio": ratio,
            }
        )
    slice_names = sorted({n for m in models.values() for n in (m.get("slices") or {})})
    by_slice = {
        sl: {name: {k: ((models[name].get("slices") or {}).get(sl) or {}).get(k) for k in ("n", *METRICS)} for name in ordered}
        for sl in slice_names
    }
    return {
        "metric": metric,
        "lower_is_better": LOWER_IS_BETTER[metric],
        "slices": by_slice,
        "n_items": len(ref),
        "items_sha256": item_set_sha256(ref),
        "fine_tuned": fine_tuned,
        "fine_tuned_rank": ranks[fine_tuned],
        "models_ranked": len(ordered),
        "ratios": {r["model"]: r["fine_tuned_ratio"] for r in rows if r["model"] != fine_tuned},
        "rows": rows,
        "skipped": dict(skipped or {}),
        "fine_tuned_model": models[fine_tuned].get("model"),
    }


def _fmt(v: Any, kind: str) -> str:
    """Table cell: the evaluation report's formats, a dash for a missing value, ratios to 3 places."""
    if v is None:
        return "—"
    return f"{v:.3f}" if kind == "ratio" else fmt(kind, v)


def to_markdown(table: dict[str, Any]) -> str:
    metric = table["metric"]
    lines = [
        "# Model comparison",
        "",
        f"{table['n_items']} held-out items (item set sha256 `{table['items_sha256'][:12]}`), "
        f"ranked by {metric} ({'lower' if table['lower_is_better'] else 'higher'} is better). "
        f"The fine-tuned model ranks **{table['fine_tuned_rank']} of {table['models_ranked']}**. "
        f"Ratio = fine-tuned {metric} / that model's {metric}.",
        "",
    ]

    record = table.get("fine_tuned_model")

    def bold(name: str) -> str:
        if name != table["fine_tuned"]:
            return name
        return f"**{name}** ({record['label']})" if record else f"**{name}**"

    def cells(r: dict[str, Any]) -> list[str]:
        return [_fmt(r.get(k), k) for k in ("mae", "rmsle", "hit_rate", "mdape")]

    ft_value = next(r[metric] for r in table["rows"] if r["model"] == table["fine_tuned"])
    # each component of the fine-tuned model scored alone on the same items: shown, not ranked
    alone = [{**r, "rank": "—", "fine_tuned_ratio": (ft_value / r[metric]) if r.get(metric) else None}
             for r in component_rows(record)]
    lines += markdown_table(
        ["rank", "model", "n", "unparsed", "MAE", "RMSLE", "hit rate", "MdAPE", "ratio"],
        ([r["rank"], bold(r["model"]), r["n"], r["n_unparsed"], *cells(r), _fmt(r["fine_tuned_ratio"], "ratio")]
         for r in [*table["rows"], *alone]),
        align="rlrrrrrrr",
    )
    if record and alone:
        lines += ["", describe(record) + " Rows marked — score each component alone and are not ranked."]
    for sl, rows in (table.get("slices") or {}).items():
        n = next((r["n"] for r in rows.values() if r.get("n") is not None), 0)
        lines += ["", f"Slice **{sl}** ({n} of the {table['n_items']} items):", ""]
        lines += markdown_table(["model", "MAE", "RMSLE", "hit rate", "MdAPE"], ([bold(name), *cells(r)] for name, r in rows.items()))
    if table["skipped"]:
        lines += ["", "Not compared:"]
        lines += [f"- {name}: {why}" for name, why in table["skipped"].items()]
    usage = table.get("frontier_usage")
    if usage:
        lines += [
            "",
            f"Frontier model {usage.get('model')} at {usage.get('host')}: {usage.get('requests')} requests "
            f"({usage.get('retries')} retries), {usage.get('cached_items')} of {usage.get('items')} items from the cache, "
            f"{usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} completion tokens, "
            f"estimated cost ${usage.get('estimated_cost_usd', 0):.4f} "
            f"(at ${usage.get('price_per_mtok', {}).get('input')}/${usage.get('price_per_mtok', {}).get('output')} "
            "per million input/output tokens).",
        ]
    lines.append("")
    return "\n".join(lines)


def compare(
    eval_dir: str | Path, baselines_dir: str | Path, out_dir: str | Path, metric: str = "mae"
) -> ArtifactRef:
    """Comparison table of the evaluation in ``eval_dir`` against every baseline in ``baselines_dir``."""
    ev, bl = Path(eval_dir), Path(baselines_dir)
    models = {FINE_TUNED: read_metrics(ev)}
    items = {FINE_TUNED: read_item_ids(ev)}
    summary = read_summary(bl)
    skipped: dict[str, str] = {}
    for name, entry in summary.get("baselines", {}).items():
        if entry.get("status") != "ok":
            skipped[name] = entry.get("status", "unknown")
            continue
        models[name] = read_metrics(bl / name)
        items[name] = read_item_ids(bl / name)
    table = build_comparison(models, items, metric=metric, skipped=skipped)
    usage_file = bl / "frontier" / "usage.json"
    if "frontier" in models and usage_file.exists():
        table["frontier_usage"] = json.loads(usage_file.read_text())
    table["evaluation"] = str(ev.resolve())
    table["baselines"] = str(bl.resolve())
    with atomic_dir(out_dir) as tmp:
        write_json_atomic(tmp / "comparison.json", table)
        write_text_atomic(tmp / "comparison.md", to_markdown(table))
        write_manifest(tmp, {"kind": "comparison", "schema_version": 1, "metric": metric, "n_items": table["n_items"]})
    return ref_for(out_dir, "comparison", rows=table["n_items"])


# ---------------------------------------------------------------------------------------------- promotion


