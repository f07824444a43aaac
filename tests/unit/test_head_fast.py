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


def test_merged_adapter_gives_the_unmerged_prices(trained):
    """merge_lora folds W + scale * B @ A into the base: the same prices in float32, and the
    model's LoRA layers then skip their own matmuls (peft's merged flag)."""
    from pricefit.inference import PricePredictor

    want = [p.value for p in PricePredictor(adapter_dir=trained, device="cpu").predict(_texts(), mode="head", batch_size=4, progress=False)]
    merged = PricePredictor(adapter_dir=trained, device="cpu", head_fast=True, merge=True)
    assert merged.merged
    lora = [m for m in merged.model.modules() if hasattr(m, "merged_adapters")]
    assert lora and all(m.merged for m in lora)
    got = [p.value for p in merged.predict(_texts(), mode="head", batch_size=4, progress=False)]
    assert got == pytest.approx(want, rel=1e-5)
    # auto merges on CUDA only, and never a model handed in (its owner keeps it as it was)
    assert not PricePredictor(adapter_dir=trained, device="cpu", merge="auto").merged
    handed = PricePredictor(adapter_dir=trained, device="cpu")
    again = PricePredictor(model=handed.model, tokenizer=handed.tokenizer, adapter_dir=trained, merge="auto")
    assert not again.merged and not any(m.merged for m in handed.model.modules() if hasattr(m, "merged_adapters"))


def test_merging_into_a_quantized_base_is_refused(trained):
    from pricefit.errors import PricefitError
    from pricefit.inference import PricePredictor

    p = PricePredictor(adapter_dir=trained, device="cpu")
    with pytest.raises(PricefitError, match="requantize"):
        p._merge(True, "4bit", True)
    p.device = "cuda"  # what auto decides on a GPU (the merge itself runs on this CPU model)
    assert p._merge("auto", "4bit", True) is False
    assert p._merge("auto", "none", False) is False  # a model handed in
    assert p._merge("auto", "none", True) is True
