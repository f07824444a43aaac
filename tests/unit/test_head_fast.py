"""head mode's fast path (PricePredictor(head_fast=True), the CUDA default): the same prices.

Tokenized once, right-padded length-sorted batches with no attention mask, one device read at
the end; on the CPU (float32) it must give the left-padded path's prices to rounding, for both
poolings, in input order, at any batch size.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from test_heads import ITEMS, PROMPT, cfg, tokenized, trained  # noqa: E402,F401 - shared fixtures


def _texts():
    # uneven lengths, so batches mix widths and the sort order matters
    return [t + " extra words" * (i % 4) for i, (t, _) in enumerate(ITEMS)]


@pytest.mark.parametrize("batch", [3, 64])
def test_fast_head_path_gives_the_left_padded_prices(trained, batch):
    from pricefit.inference import PricePredictor

    slow = PricePredictor(adapter_dir=trained, device="cpu")
    fast = PricePredictor(adapter_dir=trained, device="cpu", head_fast=True)
    assert not slow.head_fast and fast.head_fast  # auto: off on the CPU
    want = [p.value for p in slow.predict(_texts(), mode="head", batch_size=batch, progress=False)]
    got = fast.predict(_texts(), mode="head", batch_size=batch, progress=False)
    assert [p.value for p in got] == pytest.approx(want, rel=1e-5)
    assert all(p.parsed and p.raw.startswith("head ") for p in got)
    # the model is left as it was: the attention implementation is restored after the fast path
    base = fast.model.get_base_model()
    assert base.config._attn_implementation == slow.model.get_base_model().config._attn_implementation


def test_fast_head_path_mean_pool(tokenized, tmp_path):
    from pricefit.inference import PricePredictor
    from pricefit.training import train

    out = tmp_path / "mean"
    train(tokenized, out, cfg(head_pool="mean", max_steps=3))
    want = [p.value for p in PricePredictor(adapter_dir=out, device="cpu").predict(_texts(), mode="head", batch_size=5, progress=False)]
    got = PricePredictor(adapter_dir=out, device="cpu", head_fast=True).predict(_texts(), mode="head", batch_size=5, progress=False)
    assert [p.value for p in got] == pytest.approx(want, rel=1e-5)


def test_evaluate_config_reaches_the_predictor(trained):
    from pricefit.config import EvaluateConfig
    from pricefit.evaluation import make_predictor

    assert make_predictor(EvaluateConfig(device="cpu", head_fast=True), None, trained).head_fast
    assert not make_predictor(EvaluateConfig(device="cpu"), None, trained).head_fast
