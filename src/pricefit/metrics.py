"""Price-prediction metrics of the reference product pricer, plus a few that a practitioner expects.

- ``mae``: mean absolute error in dollars.
- ``rmsle``: root mean squared log error, ``sqrt(mean((log1p(truth) - log1p(pred))**2))``.
- ``hit_rate``: share of items whose error is under $40 or under 20% of the true price (the
  reference's "green" rule).
- ``mdape``: median absolute percentage error, in percent (items with a true price of 0 left out).

Unparsed predictions (the model wrote no number) are **scored as $0**, as the reference does with
its fallback, and counted in ``n_unparsed``. Excluding them instead would reward a model for
refusing the items it finds hard; ``mae_parsed`` gives the error over the parsed items alone so
both views are visible.

Every metric is also given by category and by price band of the true price
(:data:`PRICE_BANDS`). All functions are pure numpy, no heavy imports.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

UNPARSED_FALLBACK = 0.0
NO_CATEGORY = "(none)"

# [low, high) in dollars
PRICE_BANDS: list[tuple[str, float, float]] = [
    ("<$25", 0.0, 25.0),
    ("$25-50", 25.0, 50.0),
    ("$50-100", 50.0, 100.0),
    ("$100-250", 100.0, 250.0),
    ("$250-500", 250.0, 500.0),
    ("$500+", 500.0, math.inf),
]

GREEN, ORANGE, RED = "green", "orange", "red"


def price_band(price: float) -> str:
    for name, lo, hi in PRICE_BANDS:
        if lo <= price < hi:
            return name
    return PRICE_BANDS[0][0] if price < 0 else PRICE_BANDS[-1][0]


def color_for(truth: float, pred: float) -> str:
    """The reference's traffic light: green under $40 or 20%, orange under $80 or 40%, else red."""
    err = abs(pred - truth)
    rel = err / truth if truth > 0 else math.inf
    if err < 40 or rel < 0.2:
        return GREEN
    if err < 80 or rel < 0.4:
        return ORANGE
    return RED


def _as_arrays(truth: Sequence[float], pred: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(truth) != len(pred):
        raise ValueError(f"truth has {len(truth)} items but pred has {len(pred)}")
    t = np.asarray([float(x) for x in truth], dtype=np.float64)
    parsed = np.asarray([p is not None and not (isinstance(p, float) and math.isnan(p)) for p in pred], dtype=bool)
    p = np.asarray([float(x) if ok else UNPARSED_FALLBACK for x, ok in zip(pred, parsed)], dtype=np.float64)
    if np.any(t < 0):
        raise ValueError("true prices must be >= 0")
    return t, p, parsed


def _core(t: np.ndarray, p: np.ndarray, parsed: np.ndarray) -> dict[str, Any]:
    n = int(t.size)
    err = np.abs(p - t)
    # log1p needs > -1; predictions are clipped >= 0 by the parser, but guard hand-made inputs
    log_err = np.log1p(np.clip(p, 0, None)) - np.log1p(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(t > 0, err / np.where(t > 0, t, 1.0), np.inf)
    hits = (err < 40) | (rel < 0.2)
    pos = t > 0
    return {
        "n": n,
        "n_parsed": int(parsed.sum()),
        "n_unparsed": int(n - parsed.sum()),
        "mae": float(err.mean()),
        "rmsle": float(np.sqrt(np.mean(log_err**2))),
        "hit_rate": float(hits.mean()),
        "mdape": float(np.median(rel[pos]) * 100) if pos.any() else None,
        "mae_parsed": float(err[parsed].mean()) if parsed.any() else None,
    }


def compute_metrics(
    truth: Sequence[float],
    pred: Sequence[float | None],
    categories: Sequence[str | None] | None = None,
    slices: Mapping[str, Sequence[bool]] | None = None,
) -> dict[str, Any]:
    """Headline metrics, plus ``by_band``, ``by_category`` (when ``categories`` is given) and
    ``slices`` (name -> the same headline metrics over the items of each named mask; ``{"n": 0}``
    for a slice with no items here).

    ``pred`` items that are ``None`` (or NaN) are unparsed: counted and scored as $0.
    """
    t, p, parsed = _as_arrays(truth, pred)
    if t.size == 0:
        raise ValueError("no items to score")
    out = _core(t, p, parsed)
    out["unparsed_scored_as"] = UNPARSED_FALLBACK
    out["green"], out["orange"], out["red"] = _color_counts(t, p)

    bands = np.asarray([price_band(x) for x in t])
    out["by_band"] = {
        name: _core(t[bands == name], p[bands == name], parsed[bands == name])
        for name, _, _ in PRICE_BANDS
        if np.any(bands == name)
    }
    if categories is not None:
        if len(categories) != t.size:
            raise ValueError(f"categories has {len(categories)} items but truth has {t.size}")
        cats = np.asarray([c if c else NO_CATEGORY for c in categories], dtype=object)
        out["by_category"] = {
            str(c): _core(t[cats == c], p[cats == c], parsed[cats == c]) for c in sorted(set(cats.tolist()))
        }
    else:
        out["by_category"] = {}
    out["slices"] = {}
    for name, mask in (slices or {}).items():
        m = np.asarray(list(mask), dtype=bool)
        if m.size != t.size:
            raise ValueError(f"slice {name!r} has {m.size} flags but truth has {t.size} items")
        out["slices"][name] = _core(t[m], p[m], parsed[m]) if m.any() else {"n": 0}
    return out


def _color_counts(t: np.ndarray, p: np.ndarray) -> tuple[int, int, int]:
    colors = [color_for(a, b) for a, b in zip(t.tolist(), p.tolist())]
    return colors.count(GREEN), colors.count(ORANGE), colors.count(RED)


def colors(truth: Iterable[float], pred: Iterable[float | None]) -> list[str]:
    """Traffic-light colour per item, unparsed scored as $0 (same rule as the metrics)."""
    return [color_for(float(t), UNPARSED_FALLBACK if p is None else float(p)) for t, p in zip(truth, pred)]
