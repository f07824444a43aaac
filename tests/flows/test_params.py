"""Flow parameters, profiles and sweep grids (no Prefect server)."""

from __future__ import annotations

import pytest

from flows.common import RetrainParams, expand_env, resolve_config
from flows.sweep import expand_grid, trial_config
from pricefit.errors import PricefitError


def test_grid_is_the_cross_product_in_order():
    trials = expand_grid({"grid": {"train.learning_rate": [1e-4, 3e-4], "train.lora_r": [8, 16]}})
    assert trials == [
        {"train.learning_rate": 1e-4, "train.lora_r": 8},
        {"train.learning_rate": 1e-4, "train.lora_r": 16},
        {"train.learning_rate": 3e-4, "train.lora_r": 8},
        {"train.learning_rate": 3e-4, "train.lora_r": 16},
    ]
    assert expand_grid({"trials": [{"train.lora_r": 4}]}) == [{"train.lora_r": 4}]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"evaluate.max_items": [1, 2]}}, "sweep keys must be train"),
        ({"trials": []}, "no trial"),
        ({"trials": "x"}, "must be a list of mappings"),
        ({"other": 1}, "needs a 'grid' mapping"),
    ],
)
def test_bad_grids_say_what_to_change(spec, message):
    with pytest.raises(PricefitError, match=message):
        expand_grid(spec)


def test_trial_config_applies_overrides_and_validates():
    cfg = resolve_config(RetrainParams(profile="demo"))
    t = trial_config(cfg, {"train.lora_r": 4, "train.target_modules": ["q_proj"]})
    assert (t.lora_r, t.target_modules, t.base_model) == (4, ["q_proj"], cfg.train.base_model)
    with pytest.raises(PricefitError, match="lora_r"):
        trial_config(cfg, {"train.lora_r": 0})


def test_env_expansion_in_the_source(monkeypatch):
    monkeypatch.setenv("PRICEFIT_SHARED_DATA", "/data/shared")
    assert expand_env("${PRICEFIT_SHARED_DATA}/a.jsonl") == "/data/shared/a.jsonl"
    monkeypatch.delenv("PRICEFIT_SHARED_DATA")
    with pytest.raises(PricefitError, match="needs the environment variable PRICEFIT_SHARED_DATA"):
        expand_env("${PRICEFIT_SHARED_DATA}/a.jsonl")


def test_profiles_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("PRICEFIT_SHARED_DATA", str(tmp_path))
    demo = resolve_config(RetrainParams(profile="demo", workdir=str(tmp_path / "w")))
    assert demo.source.startswith("demo:") and demo.train.base_model == "smollm2-135m"
    assert demo.train.compute_dtype == "float32" and demo.workdir == str(tmp_path / "w")
    shared = resolve_config(RetrainParams(profile="shared-cpu"))
    assert shared.source == f"{tmp_path}/amazon_meta/listings.jsonl.gz"
    ref = resolve_config(RetrainParams(profile="gpu-8b")).train
    assert (ref.base_model, ref.lora_r, ref.lora_alpha, ref.lora_dropout) == ("meta-llama/Llama-3.1-8B", 32, 64, 0.1)
    assert ref.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (ref.epochs, ref.batch_size, ref.learning_rate, ref.lr_scheduler, ref.warmup_ratio) == (1, 4, 1e-4, "cosine", 0.03)
    assert (ref.optimizer, ref.max_grad_norm, ref.quant_type, ref.double_quant, ref.compute_dtype) == (
        "paged_adamw_32bit", 0.3, "nf4", True, "bfloat16",
    )


def test_profiles_start_with_the_command_that_runs_them():
    from pricefit.config import list_profiles, profiles_dir

    assert {"demo", "shared-cpu", "gpu-8b", "gpu-smollm2", "gpu-qwen1.5b"} <= set(list_profiles())
    for name in list_profiles():
        first = (profiles_dir() / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# ") and f"--profile {name}" in first


def test_mismatched_held_out_items_are_refused():
    with pytest.raises(PricefitError, match="not be on the same items"):
        resolve_config(RetrainParams(profile="demo", overrides=["evaluate.max_items=7"]))


def test_shipped_grid_files_expand():
    from pathlib import Path

    from flows.sweep import load_grid

    grids = Path(__file__).resolve().parents[2] / "flows" / "grids"
    assert len(load_grid(str(grids / "demo-lr.yaml"))) == 4
    trials = load_grid(str(grids / "reference-trials.yaml"))
    assert len(trials) == 4 and trials[1] == {"train.lora_r": 32, "train.lora_alpha": 64}
