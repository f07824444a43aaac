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


def test_a_typed_option_is_set_as_typed_never_parsed_again():
    """Issue 23: `--base-model X` became the text "base_model=X" and was parsed again as YAML, so a
    value YAML reads as another type changed (a workdir "2026" became the int 2026, "on" a bool)."""
    from pricefit.config import BaselinesConfig, load_run_config, load_stage_config

    cfg = load_run_config("demo", overrides=[("workdir", "2026", "--workdir 2026"), ("source", "on", "--source on")])
    assert cfg.workdir == "2026" and cfg.source == "on"
    stage = load_stage_config(BaselinesConfig, None, "baselines", [("include", ["constant", "tfidf"], "--include constant,tfidf"),
                                                                    ("max_items", 5, "--max-items 5")])
    assert stage.include == ["constant", "tfidf"] and stage.max_items == 5
    # text given to --set is still read as YAML would
    assert load_run_config("demo", overrides=["train.learning_rate=1e-4"]).train.learning_rate == 1e-4
    with pytest.raises(PricefitError, match="--max-items many: baselines.max_items: Input should be a valid integer"):
        load_stage_config(BaselinesConfig, None, "baselines", [("max_items", "many", "--max-items many")])
