"""quant.resolve: device/dtype resolution and the rejections that say what to change."""

from __future__ import annotations

import pytest

from pricefit import quant
from pricefit.config import TrainConfig
from pricefit.errors import PricefitError


def resolve(has_cuda=False, has_bnb=True, **kw):
    return quant.resolve(TrainConfig(**kw), has_cuda=has_cuda, has_bnb=has_bnb)


def test_auto_picks_float32_on_cpu_and_bfloat16_on_cuda():
    assert resolve() == quant.Plan("cpu", "float32", "4bit", ())
    assert resolve(has_cuda=True) == quant.Plan("cuda", "bfloat16", "4bit", ())
    assert resolve(has_cuda=True, device="cpu").device == "cpu"


def test_4bit_without_bitsandbytes_rejected():
    with pytest.raises(PricefitError, match="needs bitsandbytes") as e:
        resolve(has_bnb=False)
    assert "quantization=none" in e.value.hint
    assert resolve(has_bnb=False, quantization="none").quantization == "none"


def test_bf16_compute_with_4bit_on_cpu_rejected_with_the_25x_figure():
    with pytest.raises(PricefitError, match="25x slower") as e:
        resolve(compute_dtype="bfloat16")
    assert "compute_dtype=float32" in e.value.hint
    assert resolve(has_cuda=True, compute_dtype="bfloat16").compute_dtype == "bfloat16"


def test_bf16_without_quantization_on_cpu_only_warns():
    p = resolve(quantization="none", compute_dtype="bfloat16")
    assert p.compute_dtype == "bfloat16" and len(p.warnings) == 1 and "slow" in p.warnings[0]


@pytest.mark.parametrize("opt", ["paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit"])
def test_cuda_only_optimizers_rejected_on_cpu(opt):
    with pytest.raises(PricefitError, match=f"optimizer: {opt}") as e:
        resolve(optimizer=opt)
    assert "optimizer=adamw" in e.value.hint
    assert resolve(has_cuda=True, optimizer=opt).device == "cuda"


def test_cuda_requested_without_gpu_rejected():
    with pytest.raises(PricefitError, match="no CUDA GPU"):
        resolve(device="cuda")


def test_fp4_on_8bit_rejected_by_config_and_by_resolve():
    from pricefit.config import validate_model

    with pytest.raises(PricefitError, match="fp4 only applies"):
        validate_model(TrainConfig, {"quantization": "8bit", "quant_type": "fp4"}, "test")
    cfg = TrainConfig(quantization="4bit", quant_type="fp4").model_copy(update={"quantization": "8bit"})
    with pytest.raises(PricefitError, match="fp4 only applies to 4-bit"):
        quant.resolve(cfg, has_cuda=False, has_bnb=True)


def test_bnb_config_matches_plan():
    pytest.importorskip("transformers")
    import torch

    cfg = TrainConfig(quant_type="fp4", double_quant=False)
    q = quant.bnb_config(cfg, resolve(quant_type="fp4", double_quant=False))
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and q.bnb_4bit_use_double_quant is False
    assert q.bnb_4bit_compute_dtype == torch.float32
    assert quant.bnb_config(cfg, quant.Plan("cpu", "float32", "none")) is None
    assert quant.bnb_config(cfg, quant.Plan("cuda", "bfloat16", "8bit")).load_in_8bit


def test_train_cli_rejects_invalid_config_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from pricefit.cli import app

    from pricefit import artifacts

    artifacts.write_manifest(tmp_path, {"kind": "tokenized"})  # the path check passes; the config is what is wrong
    r = CliRunner().invoke(app, ["train", "--tokenized", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--set", "train.lora_r=0", "--json"])
    assert r.exit_code == 2
    assert "lora_r" in r.output


@pytest.mark.slow
def test_4bit_cpu_load_is_cached_and_bit_identical(tmp_path, monkeypatch):
    """First 4-bit load quantizes and saves the 4-bit copy; the second reads it (no quantization)."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from pricefit import models

    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path))
    path = models.resolve_model("tiny-random")
    cfg = TrainConfig(base_model="tiny-random")
    plan = quant.resolve(cfg, has_cuda=False, has_bnb=True)
    key = quant.quantized_cache_key(path, cfg, plan)
    m1 = quant.load_model(path, cfg, plan)
    assert (tmp_path / "quantized" / key / "config.json").is_file()
    calls = []
    real = bnb.functional.quantize_4bit
    monkeypatch.setattr(bnb.functional, "quantize_4bit", lambda *a, **k: calls.append(1) or real(*a, **k))
    m2 = quant.load_model(path, cfg, plan)
    assert calls == []  # nothing re-quantized
    a, b = m1.model.layers[1].mlp.down_proj, m2.model.layers[1].mlp.down_proj
    assert isinstance(b, bnb.nn.Linear4bit) and b.weight.quant_state.nested
    assert torch.equal(a.weight.data, b.weight.data)
    x = torch.randn(2, 3, 64)
    assert torch.equal(m1.model.layers[1].mlp(x), m2.model.layers[1].mlp(x))
    other = TrainConfig(base_model="tiny-random", double_quant=False)
    assert quant.quantized_cache_key(path, other, plan) != key
