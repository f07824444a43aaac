"""One device resolution (pricefit.devices) behind training, inference and the GPU scheduler."""

from __future__ import annotations

import pytest

from pricefit import devices, quant
from pricefit.config import TrainConfig
from pricefit.errors import PricefitError


def test_auto_cpu_and_cuda():
    assert devices.resolve_device("auto", has_cuda=False) == "cpu"
    assert devices.resolve_device("auto", has_cuda=True) == "cuda"
    assert devices.resolve_device("cpu", has_cuda=True) == "cpu"
    assert devices.resolve_device("cuda", has_cuda=True) == "cuda"
    assert devices.resolve_device("cuda", check=False, has_cuda=False) == "cuda"
    with pytest.raises(PricefitError, match="^evaluate.device: cuda was requested but torch sees no CUDA GPU") as e:
        devices.resolve_device("cuda", setting="evaluate.device", has_cuda=False)
    assert e.value.hint.startswith("set evaluate.device=auto (or cpu)")
    with pytest.raises(PricefitError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu")


@pytest.mark.parametrize("visible", [False, True])
def test_training_inference_and_the_scheduler_ask_the_same_function(monkeypatch, visible):
    from pricefit import inference
    from tasks import gpu

    monkeypatch.setattr(devices, "cuda_available", lambda: visible)
    want = "cuda" if visible else "cpu"
    assert quant.resolve(TrainConfig(device="auto", quantization="none")).device == want
    assert gpu.resolve_device("auto") == want
    assert inference.resolve_device is devices.resolve_device
    assert not hasattr(inference, "pick_device") and not hasattr(quant, "cuda_available")
