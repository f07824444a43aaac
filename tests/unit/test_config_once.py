"""A setting is written once: the base model, the held-out items and the clip range are checked
(or filled) when the RunConfig loads, with a message naming both values."""

from __future__ import annotations

import pytest

from pricefit.config import BASE_MODEL_FIELDS, list_profiles, load_run_config
from pricefit.errors import PricefitError


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_names_its_base_model_once(name, monkeypatch):
    monkeypatch.setenv("PRICEFIT_SHARED_DATA", "/data")
    cfg = load_run_config(name)
    assert {getattr(getattr(cfg, s), k) for s, k in BASE_MODEL_FIELDS} == {cfg.base_model}


def test_top_level_base_model_fills_every_stage():
    cfg = load_run_config(overrides=["base_model=tiny-random"])
    assert (cfg.curate.tokenizer, cfg.tokenize.base_model, cfg.train.base_model, cfg.baselines.base_model) == (
        "tiny-random", "tiny-random", "tiny-random", "tiny-random")


def test_a_second_base_model_is_refused_naming_both():
    with pytest.raises(PricefitError) as e:
        load_run_config("demo", overrides=["train.base_model=tiny-random"])
    assert "base_model is 'smollm2-135m' but train.base_model is 'tiny-random'" in e.value.message
    assert "--set train.base_model=tiny-random" in e.value.message


def test_held_out_items_checked_at_load():
    with pytest.raises(PricefitError) as e:
        load_run_config("demo", overrides=["evaluate.max_items=7"])
    assert "baselines score split=test max_items=40 but evaluate scores split=test max_items=7" in e.value.message


def test_one_clip_range():
    with pytest.raises(PricefitError) as e:
        load_run_config("demo", overrides=["evaluate.max_price=500"])
    assert "evaluate clips predictions to [0.0, 500.0] but the language-model baselines clip theirs to [0.0, 10000.0]" in e.value.message
