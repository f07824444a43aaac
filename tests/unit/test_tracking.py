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


def test_tracking_mlflow_without_uri_logs_into_the_workdir_once(monkeypatch, tmp_path):
    """`tracking: mlflow` and no MLFLOW_TRACKING_URI: SQLite + artifacts in the workdir; a second
    log of the same adapter returns the first run (a Cached step adds no run)."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from pricefit import artifacts

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "train"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (out / "merged").mkdir()
    (out / "merged" / "model.safetensors").write_bytes(b"a full base model")
    (out / "loss.csv").write_text("step,loss,lr,tokens_per_s\n1,2.5,0.001,100.0\n2,2.0,0.001,110.0\n3,1.5,0.0005,120.0\n")
    (out / "loss.png").write_bytes(b"\x89PNG")
    artifacts.write_json_atomic(out / "train_summary.json", {"steps": 3, "final_loss": 1.5, "tokens_per_s": 110.0})
    artifacts.write_manifest(out, {"kind": "adapter", "config": {"base_model": "tiny-random", "lora_r": 4}})
    tgt = tracking.target("mlflow", tmp_path / "work")
    run_id = tracking.log_train(out / "adapter", tgt)  # its adapter/ folder names the same output
    assert run_id is not None and tracking.log_train(out, tgt) == run_id

    client = MlflowClient(tracking_uri=tgt.uri)
    run = client.get_run(run_id)
    assert run.data.params == {"base_model": "tiny-random", "lora_r": "4"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert run.data.metrics["mean_tokens_per_s"] == 110.0
    assert {a.path for a in client.list_artifacts(run_id, "adapter")} == {
        "adapter/adapter", "adapter/loss.csv", "adapter/loss.png", "adapter/manifest.json", "adapter/train_summary.json"}
    stored = tmp_path / "work" / "mlartifacts" / run_id / "artifacts"
    assert (stored / "adapter" / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (stored / "loss.png").exists() and (tmp_path / "work" / "mlflow.db").exists()


def test_a_champion_promoted_before_tracking_is_registered_when_tracking_first_sees_it(monkeypatch, tmp_path):
    """`make demo`, then the README's MLflow block: the rerun keeps the champion ("already the
    champion"), and that champion becomes the registered model's version 1 (alias champion), once."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from pricefit import artifacts

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out, ev = tmp_path / "train", tmp_path / "eval"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    artifacts.write_manifest(out, {"kind": "adapter", "config": {"base_model": "tiny-random"}})
    ev.mkdir()
    (ev / "metrics.json").write_text('{"n": 4, "mae": 57.28}')
    artifacts.write_manifest(ev, {"kind": "evaluation", "adapter": str(out / "adapter")})
    champion = {"evaluation": str(ev), "adapter": str(out / "adapter"), "metric": "mae", "metrics": {"n": 4, "mae": 57.28},
                "promoted_at": "2026-12-06T10:00:00+00:00", "model": {"label": "fine-tuned head x 0.45 + tfidf x 0.55"}}
    kept = {"promoted": False, "reason": "this adapter is already the champion", "metric": "mae",
            "challenger": champion, "champion_before": champion}
    tgt = tracking.target("mlflow", tmp_path / "work")
    assert tracking.register_champion({**kept, "champion_before": None}, tgt) is None  # no champion: nothing to register
    assert tracking.register_champion(kept, tgt) == "1"
    assert tracking.register_champion(kept, tgt) == "1"  # seen again: no second version
    client = MlflowClient(tracking_uri=tgt.uri, registry_uri=tgt.uri)
    mv = client.get_model_version_by_alias("pricefit", "champion")
    assert str(mv.version) == "1" and mv.tags["pricefit.evaluation"] == str(ev.resolve()) and mv.tags["mae"] == "57.28"
    assert mv.tags["pricefit.model"] == "fine-tuned head x 0.45 + tfidf x 0.55"
    assert mv.tags["pricefit.promoted_at"] == "2026-12-06T10:00:00+00:00"
    assert mv.description == "the champion promoted at 2026-12-06T10:00:00+00:00, registered when tracking first saw it"
