"""Evaluation plots as PNG (matplotlib, Agg backend: no display needed).

- :func:`scatter_plot`: truth against prediction, each point coloured by the reference rule
  (green: error under $40 or 20%; orange: under $80 or 40%; red otherwise), the y = x line, and
  MAE / RMSLE / hit rate in the title. Unparsed predictions are drawn at $0 (as they are scored)
  with an ``x`` marker.
- :func:`error_histogram`: signed errors (prediction - truth).

Files are written atomically (rendered to memory, then renamed into place).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from .artifacts import write_bytes_atomic
from .metrics import UNPARSED_FALLBACK, colors

_COLORS = {"green": "#2ca02c", "orange": "#ff7f0e", "red": "#d62728"}


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    # no timestamp in the PNG: the same inputs give the same bytes (and the same artifact hash)
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def headline(metrics: dict[str, Any]) -> str:
    return (
        f"MAE ${metrics['mae']:,.2f}   RMSLE {metrics['rmsle']:.3f}   "
        f"hit rate {metrics['hit_rate'] * 100:.1f}%   (n={metrics['n']})"
    )


def scatter_plot(
    truth: Sequence[float],
    pred: Sequence[float | None],
    path: str | Path,
    metrics: dict[str, Any] | None = None,
    title: str = "Predicted vs true price",
) -> Path:
    plt = _figure()
    cols = colors(truth, pred)
    y = [UNPARSED_FALLBACK if p is None else float(p) for p in pred]
    top = max([1.0, *map(float, truth), *y]) * 1.05
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot([0, top], [0, top], color="#1f77b4", lw=1, ls="--", label="y = x")
    for name, hexcol in _COLORS.items():
        xs = [float(t) for t, c, p in zip(truth, cols, pred) if c == name and p is not None]
        ys = [v for v, c, p in zip(y, cols, pred) if c == name and p is not None]
        if xs:
            ax.scatter(xs, ys, s=10, c=hexcol, alpha=0.7, label=f"{name} ({len(xs)})")
    bad = [float(t) for t, p in zip(truth, pred) if p is None]
    if bad:
        ax.scatter(bad, [UNPARSED_FALLBACK] * len(bad), s=18, marker="x", c="black", label=f"unparsed ({len(bad)})")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("true price ($)")
    ax.set_ylabel("predicted price ($)")
    ax.set_title(title + ("\n" + headline(metrics) if metrics else ""), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def error_histogram(
    truth: Sequence[float],
    pred: Sequence[float | None],
    path: str | Path,
    metrics: dict[str, Any] | None = None,
    bins: int = 40,
    title: str = "Prediction error",
) -> Path:
    plt = _figure()
    errs = [(UNPARSED_FALLBACK if p is None else float(p)) - float(t) for t, p in zip(truth, pred)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(errs, bins=bins, color="#1f77b4", alpha=0.8)
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("prediction - truth ($)")
    ax.set_ylabel("items")
    ax.set_title(title + ("\n" + headline(metrics) if metrics else ""), fontsize=10)
    return _save(fig, path)
