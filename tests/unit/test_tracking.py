"""pricefit.tracking without a server: off means nothing (mlflow not even imported), on fails early
with the fix, params never carry a secret. The real `mlflow server` tests: tests/e2e/test_tracking_server.py."""

from __future__ import annotations

import socket
import sys

import pytest

from pricefit import tracking
from pricefit.config import load_run_config
from pricefit.errors import PricefitError


@pytest.fixture()
def no_mlflow(monkeypatch):
    """``import mlflow`` raises ImportError (as when the extra is not installed)."""
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)


def test_off_does_nothing_and_never_imports_mlflow(no_mlflow, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.target() is None and tracking.target("auto", tmp_path) is None
    tracking.check(None)
    assert tracking.log_train(tmp_path) is None
    assert tracking.log_evaluation(tmp_path) is None
    assert tracking.register_champion({"promoted": True, "challenger": {"adapter": str(tmp_path)}}) is None
    # a profile's tracking: off wins over the environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.target("off", tmp_path) is None


def test_on_without_mlflow_fails_before_the_work_with_the_install_hint(no_mlflow, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(PricefitError) as e:
        tracking.check(tracking.target())
    assert e.value.message == "experiment tracking is on but mlflow is not installed"
    assert "pip install 'pricefit[mlflow]'" in e.value.hint


def test_a_server_that_does_not_answer_fails_at_once_without_its_password(monkeypatch):
    pytest.importorskip("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:hunter2secret@127.0.0.1:{port}")
    with pytest.raises(PricefitError) as e:
        tracking.check(tracking.target())
    assert e.value.message.startswith(f"the MLflow tracking server at http://***@127.0.0.1:{port} does not answer")
    assert "hunter2" not in str(e.value) and "mlflow server" in e.value.hint


def test_profile_tracking_mlflow_without_uri_uses_a_store_in_the_workdir(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cfg = load_run_config("demo", overrides=["tracking=mlflow", f"workdir={tmp_path}"])
    assert cfg.tracking == "mlflow" and load_run_config("demo").tracking == "auto"
    assert tracking.target(cfg.tracking, cfg.workdir) == tracking.Target(
        f"sqlite:///{tmp_path.resolve()}/mlflow.db", "pricefit", (tmp_path.resolve() / "mlartifacts").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "prices")
    assert tracking.target(cfg.tracking, cfg.workdir) == tracking.Target("http://h:5000", "prices")
    with pytest.raises(PricefitError, match="tracking"):
        load_run_config("demo", overrides=["tracking=wandb"])


def test_params_are_the_flattened_config_and_never_a_secret(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789")
    config = {
        "frontier": {"model": "gpt-4o", "api_key": "sk-other-secret", "api_key_env": "OPENAI_API_KEY", "base_url": None},
        "headers": "Authorization: Bearer sk-live-0123456789",
        "hf_token": "hf_abcdefgh",
        "max_tokens": 5,
        "target_modules": ["q_proj", "v_proj"],
        "learning_rate": 0.0002,
    }
    assert tracking.params_of(config) == {
        "frontier.model": "gpt-4o",
        "frontier.base_url": "null",
        "max_tokens": "5",
        "target_modules": '["q_proj", "v_proj"]',
        "learning_rate": "0.0002",
    }


def test_evaluation_metrics_are_flat_numbers_with_valid_names():
    metrics = {"n": 4, "mae": 12.5, "unparsed_scored_as": 0.0, "parsed_all": True, "note": "x",
               "by_band": {"$0-50": {"n": 2, "mae": 3.0}}, "by_category": {"Tools & Home": {"mae": 7.25, "name": "t"}}}
    assert tracking.evaluation_metrics(metrics) == {
        "n": 4.0, "mae": 12.5, "unparsed_scored_as": 0.0,
        "band/_0-50/n": 2.0, "band/_0-50/mae": 3.0, "category/Tools _ Home/mae": 7.25,
    }
