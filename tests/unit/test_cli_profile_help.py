"""Issue 22: the stage commands take a profile's recipe (`--profile demo`), and --help is readable:
commands in pipeline order, no `<bool>` or `<list[str]>`, long option names not cut at 80 columns."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from pricefit.cli import COMMAND_ORDER, app, check_config
from pricefit.config import TrainConfig, TokenizeConfig, load_stage_config, profiles_dir
from pricefit.errors import PricefitError


def _help(args: list[str]) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"}, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_commands_are_listed_in_pipeline_order():
    box = _help([]).split("Commands")[1]
    names = re.findall(r"^│ ([a-z][a-z-]*)\s{2,}", box, flags=re.M)
    assert names[:9] == ["curate", "validate", "tokenize", "train", "evaluate", "baselines", "compare", "promote", "predict"]
    assert names == [n for n in COMMAND_ORDER if n in names] + [n for n in names if n not in COMMAND_ORDER]


def test_help_shows_no_python_types_and_keeps_long_option_names_whole():
    promote = _help(["promote"])
    assert "--champion-evaluation " in promote and "…" not in promote
    assert "<bool>" not in promote and "[x>=0.0]" not in promote
    assert re.search(r"--no-baseline-guard\s+Promote even", promote)
    train = _help(["train"])
    assert "<list[str]>" not in train and re.search(r"--set\s+<text>\.\.\.", train)
    assert "--profile,--config" in train and "(--profile demo: the recipe" in " ".join(train.split())


def test_profile_names_a_profile_file_and_gives_its_recipe_to_each_stage():
    demo = check_config("demo")
    assert demo == profiles_dir() / "demo.yaml"
    train = load_stage_config(TrainConfig, str(demo), "train")
    assert (train.head, train.blend, train.lora_r, train.quantization, train.learning_rate) == ("regression", "tfidf", 16, "none", 2e-3)
    # the profile's top-level base_model reaches the stage, as it does in `pricefit run`
    gpu8b = load_stage_config(TokenizeConfig, str(check_config("gpu-8b")), "tokenize")
    assert gpu8b.base_model == "meta-llama/Llama-3.1-8B"
    # --set still wins over the profile
    assert load_stage_config(TrainConfig, str(demo), "train", ["lora_r=4"]).lora_r == 4


def test_an_unknown_profile_lists_the_available_ones():
    with pytest.raises(PricefitError) as e:
        check_config("dmeo")
    assert e.value.message == f"--profile dmeo: no such profile in {profiles_dir()}"
    assert "demo" in e.value.hint and "gpu-smollm2" in e.value.hint


def test_the_run_form_and_run_help_list_every_profile_in_the_folder():
    from flows.commands import PROFILE_HELP
    from flows.common import RetrainParams

    names = sorted(p.stem for p in profiles_dir().glob("*.yaml"))
    described = RetrainParams.model_fields["profile"].description
    assert f"({', '.join(names)})" in described and f"({', '.join(names)})" in PROFILE_HELP
    assert "gpu-smollm2" in names


def test_the_light_profile_listing_agrees_with_the_config(monkeypatch, tmp_path):
    from pricefit.cli import profile_names
    from pricefit.config import list_profiles

    assert profile_names() == list_profiles() and "demo" in profile_names()
    (tmp_path / "mine.yaml").write_text("profile: mine\n")
    monkeypatch.setenv("PRICEFIT_PROFILES", str(tmp_path))
    assert profile_names() == list_profiles() == ["mine"]


def test_a_profile_name_with_a_dot_is_a_name_and_a_yaml_path_is_a_file(monkeypatch, tmp_path):
    (tmp_path / "gpu-qwen1.5b.yaml").write_text("profile: gpu-qwen1.5b\n")
    monkeypatch.setenv("PRICEFIT_PROFILES", str(tmp_path))
    assert check_config("gpu-qwen1.5b") == tmp_path / "gpu-qwen1.5b.yaml"
    with pytest.raises(PricefitError, match="--config nope.yaml: no such file"):
        check_config("nope.yaml")
