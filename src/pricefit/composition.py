"""What the evaluated "fine_tuned" model is: its components and their weights.

An evaluation records, in ``metrics.json`` and its manifest (key ``model``), which components
made each prediction, with what weight, and how each component alone scored on the same items::

    {"label": "fine-tuned head x 0.45 + tfidf x 0.55",
     "combine": "log-space blend, weights chosen on the validation split",
     "fine_tuned_weight": 0.45,
     "components": [{"name": "head", "fine_tuned": true, "weight": 0.45, "metrics": {...}},
                    {"name": "tfidf", "fine_tuned": false, "weight": 0.55, "metrics": {...}}],
     "validation": {...}}

The comparison table, the reports, the CLI and the UI render this record (:func:`describe`,
:func:`component_rows`); promotion reads ``fine_tuned_weight`` (:func:`adds_nothing`). A new
post-hoc component (a calibration, a retrieval blend) only has to add itself to the record
(:func:`record_for`), with ``fine_tuned: false``, and its per-item value to ``Prediction.parts``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .metrics import compute_metrics

HEADLINE = ("n", "n_unparsed", "mae", "rmsle", "hit_rate", "mdape")
_WHAT = {"head": "fine-tuned head", "greedy": "fine-tuned model, digits generated greedily",
         "expected": "fine-tuned model, expected digit value"}


#: blend parts computed by the fine-tuned model itself: what "the fine-tune adds" is measured on
FINE_TUNED = ("head", "knn")
_LABELS = {"head": "fine-tuned head", "knn": "knn (fine-tuned embeddings)"}


def record_for(mode: str, blend: Any = None, has_adapter: bool = True) -> dict[str, Any]:
    """The model record of a predictor in ``mode`` (``blend``: a :class:`pricefit.blend.TfidfBlend` or None)."""
    if not has_adapter:
        return {"label": f"base model ({mode})", "fine_tuned_weight": 0.0,
                "components": [{"name": "base_model", "fine_tuned": False, "weight": 1.0}]}
    if mode != "head" or blend is None:
        return {"label": _WHAT.get(mode, mode), "fine_tuned_weight": 1.0,
                "components": [{"name": mode, "fine_tuned": True, "weight": 1.0}]}
    # a blend: {"head": w0, "tfidf": w1, ...}; blend.weights() where the blend has several parts,
    # else the one TF-IDF weight. The head and retrieval (neighbours in the fine-tuned model's own
    # embedding space) are the fine-tune's work; TF-IDF is post-hoc, independent of it.
    weights = dict(blend.weights()) if hasattr(blend, "weights") else {"head": 1.0 - float(blend.weight), "tfidf": float(blend.weight)}
    weights = {k: round(float(v), 4) for k, v in weights.items()}
    order = ["head", *[k for k in weights if k != "head"]]
    return {
        "label": " + ".join(f"{_LABELS.get(k, k)} x {weights[k]:.2f}" for k in order),
        "combine": "log-space blend: expm1(sum(weight * log1p(component))), weights chosen on the validation split",
        "fine_tuned_weight": round(sum(w for k, w in weights.items() if k in FINE_TUNED), 4),
        "components": [{"name": k, "fine_tuned": k in FINE_TUNED, "weight": weights[k]} for k in order],
        "validation": dict(blend.validation or {}),
    }


def score_components(record: dict[str, Any], truth: Sequence[float], parts: Sequence[Mapping[str, float] | None],
                     categories: Sequence[str], slices: Mapping[str, list[bool]] | None = None) -> dict[str, Any]:
    """``record`` with each component's metrics alone on the same items (when predictions carry parts)."""
    if len(record.get("components", [])) < 2 or not parts or any(p is None for p in parts):
        return record
    out = []
    for comp in record["components"]:
        values = [p.get(comp["name"]) for p in parts]  # type: ignore[union-attr]
        m = compute_metrics(list(truth), values, list(categories), slices=slices)
        out.append({**comp, "metrics": {**{k: m.get(k) for k in HEADLINE}, "slices": m.get("slices") or {}}})
    return {**record, "components": out}


def describe(record: Mapping[str, Any] | None) -> str:
    """One line for people: what the model is, and what it adds over its other components."""
    if not record:
        return ""
    text = f"fine_tuned = {record['label']}"
    if record.get("combine"):
        text += f" ({record['combine']})"
    text += "."
    if adds_nothing(record):
        others = ", ".join(c["name"] for c in record["components"] if not c.get("fine_tuned"))
        text += (f" The fine-tuned part has weight {record['fine_tuned_weight']:.2f}: the fine-tune adds nothing"
                 f" over {others}.")
    return text


def adds_nothing(record: Mapping[str, Any] | None, min_weight: float = 0.1) -> bool:
    """True when the fine-tuned components together weigh less than ``min_weight`` (a blend that is
    all but its post-hoc components)."""
    if not record or "fine_tuned_weight" not in record:
        return False
    return float(record["fine_tuned_weight"]) < min_weight - 1e-9


def component_rows(record: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Each component scored alone, as rows ``{"model": "fine_tuned: head alone", **metrics}``."""
    if not record:
        return []
    return [{"model": f"fine_tuned: {c['name']} alone", **c["metrics"]}
            for c in record.get("components", []) if c.get("metrics")]
