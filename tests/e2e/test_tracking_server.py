"""Experiment tracking against a REAL `mlflow server` (pricefit.tracking), not a mock.

The session fixture starts ``mlflow server`` on a free loopback port with a temp SQLite backend
store and a temp artifact destination (artifacts go through the server, as with a remote one), waits
for /health and stops it (its whole process group) at the end. The tests then read back through
MlflowClient what a user would see in the MLflow UI:

- the stage commands (`pricefit curate/tokenize/train/evaluate/promote` with MLFLOW_TRACKING_URI
  set): the train run's params, its per-step loss/lr/tokens_per_s history, loss.png and the adapter
  directory; the evaluation run's metrics and report; the champion as a registered model version.
- the retrain flow (Prefect test harness): train and evaluate runs tagged with the flow run, the
  champion registered; a second, all-Cached run of the same parameters adds no run and no version.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="pip install -e '.[test]' (the mlflow extra)")

pytestmark = [pytest.mark.slow]

START_TIMEOUT_S = 180
TINY_PROFILE = """
# pytest tests/e2e/test_tracking_server.py   (tiny random Llama, 80 synthetic listings)
profile: tiny
source: "demo:80"
curate: {tokenizer: tiny-random, max_text_tokens: 32, min_chars: 40}
tokenize: {base_model: tiny-random, max_length: 64}
train: {base_model: tiny-random, device: cpu, quantization: none, lora_r: 4, lora_alpha: 8,
        target_modules: [q_proj, v_proj], batch_size: 4, max_steps: 5, save_steps: 50, learning_rate: 0.002}
evaluate: {split: test, max_items: 4, batch_size: 4, device: cpu}
baselines: {include: [constant, linear], base_model: tiny-random, split: test, max_items: 4}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    import httpx

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    argv = [str(exe) if exe.exists() else "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path = root / "server.log"
    with open(log_path, "wb") as fh:
        # no job runner (six huey workers for GenAI jobs): nothing here uses it, and the machine has 2 cores
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # its own process group: the server and its workers
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture()
def tracked(mlflow_server, monkeypatch, tmp_path_factory):
    """MLFLOW_TRACKING_URI -> the server, an experiment of this test's own; returns a client on it."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"pricefit-test-{uuid.uuid4().hex[:8]}")
    if not os.environ.get("PRICEFIT_HOME"):
        monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path_factory.mktemp("home")))
    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def _runs(client, step: str | None = None):
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    if exp is None:
        return []
    query = f"tags.`pricefit.step` = '{step}'" if step else ""
    return client.search_runs([exp.experiment_id], query)


def _cli(args: list[str]) -> dict:
    from typer.testing import CliRunner

    from pricefit.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # the whole stdout: MLflow's "View run" lines must not land there


def _versions_of(client, eval_dir: Path):
    return [mv for mv in client.search_model_versions("name = 'pricefit'")
            if mv.tags.get("pricefit.evaluation") == str(eval_dir.resolve())]


def test_stage_commands_log_runs_and_register_the_champion(tracked, tmp_path):
    client = tracked
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    cur, tok, adapter, ev, wd = (tmp_path / n for n in ("curated", "tokenized", "train", "eval", "work"))
    _cli(["curate", "--source", "demo:80", "--out", str(cur), "--config", str(profile), "--json"])
    _cli(["tokenize", "--curated", str(cur), "--out", str(tok), "--config", str(profile), "--json"])
    train = _cli(["train", "--tokenized", str(tok), "--out", str(adapter), "--config", str(profile), "--json"])
    assert train["steps"] == 5

    (run,) = _runs(client, "train")
    assert run.info.status == "FINISHED"
    assert run.data.tags["pricefit.output"] == str(adapter.resolve())
    p = run.data.params
    assert (p["base_model"], p["learning_rate"], p["lora_r"], p["max_steps"], p["quantization"]) == ("tiny-random", "0.002", "4", "5", "none")
    assert p["target_modules"] == '["q_proj", "v_proj"]'
    rows = list(csv.DictReader((adapter / "loss.csv").open()))
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [(int(r["step"]), float(r["loss"])) for r in rows]
    assert [m.step for m in loss] and sorted(m.step for m in loss) == [1, 2, 3, 4, 5]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "lr")) == [1, 2, 3, 4, 5]
    assert len(client.get_metric_history(run.info.run_id, "tokens_per_s")) == 5
    assert run.data.metrics["final_loss"] == float(rows[-1]["loss"])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss.png", "adapter"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "adapter")} >= {
        "adapter/manifest.json", "adapter/model_card.md", "adapter/loss.csv", "adapter/adapter"}
    assert "adapter/adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "adapter/adapter")}
    local = Path(client.download_artifacts(run.info.run_id, "adapter/manifest.json", str(tmp_path / "dl")))
    assert local.read_bytes() == (adapter / "manifest.json").read_bytes()

    evaluation = _cli(["evaluate", "--adapter", str(adapter), "--data", str(cur), "--out", str(ev), "--config", str(profile), "--json"])
    assert evaluation["mode"] == "greedy"  # --mode auto, resolved for an adapter without a price head
    (erun,) = _runs(client, "evaluate")
    metrics = json.loads((ev / "metrics.json").read_text())
    assert erun.data.metrics["mae"] == pytest.approx(metrics["mae"]) and erun.data.metrics["mae"] == pytest.approx(evaluation["mae"])
    assert erun.data.metrics["n"] == 4.0
    assert erun.data.params["max_items"] == "4" and erun.data.params["adapter"] == str(adapter)
    assert erun.data.tags["pricefit.train_run_id"] == run.info.run_id
    assert {"report.md", "metrics.json", "scatter.png", "predictions.parquet"} <= {a.path for a in client.list_artifacts(erun.info.run_id)}

    # the baseline guard has its own tests; here: a promotion and what MLflow registers of it
    rec = _cli(["promote", "--evaluation", str(ev), "--workdir", str(wd), "--no-baseline-guard", "--json"])
    assert rec["promoted"] is True
    (mv,) = _versions_of(client, ev)
    assert mv.run_id == run.info.run_id and mv.source == f"runs:/{run.info.run_id}/adapter"
    assert float(mv.tags["mae"]) == pytest.approx(metrics["mae"]) and mv.tags["n"] == "4"
    assert mv.tags["pricefit.evaluation_run_id"] == erun.info.run_id
    assert client.get_model_version_by_alias("pricefit", "champion").version == mv.version
    # the same train output logged again (e.g. a Cached step) is found, not logged twice
    from pricefit import tracking

    assert tracking.log_train(adapter) == run.info.run_id and len(_runs(client, "train")) == 1
    # refused promotion: no new version
    again = _cli(["promote", "--evaluation", str(ev), "--workdir", str(wd), "--json"])
    assert again["promoted"] is False and len(_versions_of(client, ev)) == 1


def test_retrain_flow_tracks_once_even_when_cached(tracked, tmp_path, monkeypatch):
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from flows.common import RetrainParams
    from flows.retrain import retrain

    client = tracked
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    params = RetrainParams(profile=str(profile), workdir=str(tmp_path / "work"))
    with prefect_test_harness(server_startup_timeout=240):
        first = retrain(params, return_state=True)
        assert first.is_completed(), first
        flow_run_id = str(first.state_details.flow_run_id)
        (train,) = _runs(client, "train")
        (evaluation,) = _runs(client, "evaluate")
        assert train.data.tags["prefect.flow_run_id"] == flow_run_id == evaluation.data.tags["prefect.flow_run_id"]
        assert train.data.tags["pricefit.profile"] == "tiny" and train.data.params["max_steps"] == "5"
        assert sorted(m.step for m in client.get_metric_history(train.info.run_id, "loss")) == [1, 2, 3, 4, 5]
        assert evaluation.data.tags["pricefit.train_run_id"] == train.info.run_id
        eval_dir = Path(evaluation.data.tags["pricefit.output"])
        (mv,) = _versions_of(client, eval_dir)
        assert mv.run_id == train.info.run_id
        assert client.get_model_version_by_alias("pricefit", "champion").version == mv.version

        second = retrain(params, return_state=True)  # every step Cached, the cached decision says promoted
        assert second.is_completed(), second
    assert len(_runs(client)) == 2 and len(_versions_of(client, eval_dir)) == 1
