"""Where named profiles come from: one lookup (PRICEFIT_PROFILES, else the checkout's deployments/profiles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pricefit import config
from pricefit.errors import PricefitError

ROOT = Path(__file__).resolve().parents[2]


def test_without_the_variable_the_checkout_holding_the_package_is_used(monkeypatch):
    monkeypatch.delenv("PRICEFIT_PROFILES", raising=False)
    assert config.profiles_dir() == ROOT / "deployments" / "profiles"
    assert config.load_run_config("demo").profile == "demo"


def test_the_variable_names_the_folder(monkeypatch, tmp_path):
    (tmp_path / "mine.yaml").write_text("profile: mine\nsource: demo:10\n")
    monkeypatch.setenv("PRICEFIT_PROFILES", str(tmp_path))
    assert config.profiles_dir() == tmp_path and config.list_profiles() == ["mine"]
    assert config.load_run_config("mine").source == "demo:10"


def test_a_variable_naming_no_folder_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PRICEFIT_PROFILES", str(tmp_path / "nope"))
    with pytest.raises(PricefitError, match=r"^PRICEFIT_PROFILES=.*nope is not a folder"):
        config.profiles_dir()
    assert config.list_profiles() == []


@pytest.mark.parametrize("depth", [("src", "pricefit"), ("pricefit",), ("lib", "python3.12", "site-packages", "pricefit")])
def test_the_nearest_deployments_profiles_above_the_package_whatever_the_layout(tmp_path, depth):
    (tmp_path / "deployments" / "profiles").mkdir(parents=True)
    package = tmp_path.joinpath(*depth)
    package.mkdir(parents=True)
    assert config.find_profiles_dir(package) == tmp_path / "deployments" / "profiles"


def test_an_install_outside_any_checkout_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("PRICEFIT_PROFILES", raising=False)
    assert config.find_profiles_dir(tmp_path) is None or not str(config.find_profiles_dir(tmp_path)).startswith(str(tmp_path))
    monkeypatch.setattr(config, "find_profiles_dir", lambda start: None)
    with pytest.raises(PricefitError, match="no profiles folder") as e:
        config.load_run_config("demo")
    assert "PRICEFIT_PROFILES" in e.value.hint
    assert config.list_profiles() == []
    assert config.load_run_config(str(ROOT / "deployments" / "profiles" / "demo.yaml")).profile == "demo"  # a path still works


def test_no_parent_counting_in_the_lookup():
    assert "parents[" not in Path(config.__file__).read_text()
