"""The base model before fine-tuning: the same prompt and parser as the fine-tuned model, no adapter.

It shows how much of the fine-tuned model's skill the fine-tuning added. Scored with
:class:`pricefit.inference.PricePredictor` (greedy, left-padded batches), so the only difference
from ``pricefit evaluate`` is ``adapter_dir=None``.
"""

from __future__ import annotations

from typing import Sequence

from ..inference import PricePredictor


def predict(
    base_model: str,
    texts: Sequence[str],
    price_range: tuple[float, float] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[list[float | None], list[str], dict]:
    """(predictions, raw model outputs, info) for ``texts`` with the un-tuned ``base_model``.

    ``batch_size`` None: the predictor's default for the device (as ``pricefit evaluate``).
    """
    kwargs = {}
    if price_range is not None:
        kwargs = {"low": price_range[0], "high": price_range[1]}
    predictor = PricePredictor(base_model, adapter_dir=None, device=device, **kwargs)
    preds = predictor.predict(list(texts), batch_size=batch_size, mode="greedy", progress=progress)
    info = {"base_model": base_model, "device": predictor.device, "mode": "greedy", "batch_size": batch_size}
    return [p.value for p in preds], [p.raw for p in preds], info
