"""Deployments on a REAL Prefect server: trigger as the UI does, read artifacts back, retry a failed run.

`pricefit serve` (a subprocess) registers the deployments of deployments/prefect.yaml on the
session's server; the test then talks only to the server's REST API, like the UI: it creates a
flow run from the `retrain-manual` deployment, waits for Completed and reads the artifacts back.

The retry scenario: the serving process is restarted with the test-only fault hook
PRICEFIT_FAULT=evaluate (the evaluate task raises), a run fails in evaluation, the serving process
is restarted without it (the fix is "deployed"), and the SAME flow run is retried the way the UI's
Retry button and `prefect flow-run retry` do (forced back to a scheduled state). Per task run:
the steps before evaluation come back Cached, evaluation and what follows Completed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = float(os.environ.get("PRICEFIT_E2E_RUN_TIMEOUT", "420"))
FLOW = "retrain"
SERVED = ["retrain-nightly", "retrain-manual"]
# PRICEFIT_E2E_TOY=1: a seconds-long stand-in flow with the same step names (tests/e2e/toy_project)
TOY = os.environ.get("PRICEFIT_E2E_TOY") == "1"

if TOY:
    PREFECT_FILE = Path(__file__).parent / "toy_project" / "prefect.yaml"
    RUN_PARAMS: dict = {"eval_items": 5}
    FAULT_PARAMS: dict = {"eval_items": 7}
    BEFORE_FAULT = ["ingest", "curate", "tokenize", "train"]
    FROM_FAULT = ["evaluate", "report"]
    ARTIFACTS = {"data-manifest": "table", "evaluation-report": "markdown"}
else:
    PREFECT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"
    # the demo profile made test-sized: tiny random Llama, 60 synthetic listings, 2 training steps
    TINY = [
        "curate.tokenizer=tiny-random",
        "curate.max_items=60",
        "curate.min_chars=50",
        "tokenize.base_model=tiny-random",
        "train.base_model=tiny-random",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.save_steps=1",
        "baselines.base_model=tiny-random",
        "baselines.include=[constant,linear]",
    ]

    def _params(eval_items: int) -> dict:
        items = [f"evaluate.max_items={eval_items}", f"baselines.max_items={eval_items}"]
        return {"params": {"profile": "demo", "source": "demo:60", "overrides": TINY + items}}

    RUN_PARAMS = _params(6)
    FAULT_PARAMS = _params(5)  # another evaluation: every step up to train is reusable
    BEFORE_FAULT = ["ingest", "contract_raw", "curate", "contract_curated", "tokenize", "contract_tokenized", "train"]
    FROM_FAULT = ["evaluate", "baselines", "compare", "report"]
    ARTIFACTS = {
        "data-manifest": "table",
        "contract-raw": "markdown",
        "contract-curated": "markdown",
        "contract-tokenized": "markdown",
        "evaluation-report": "markdown",
        "comparison-table": "markdown",
    }


def _serve_argv() -> list[str]:
    exe = Path(sys.executable).with_name("pricefit")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "pricefit.cli"]
    argv = head + ["serve", "--file", str(PREFECT_FILE)]
    for name in SERVED:
        argv += ["--only", name]
    return argv


class Served:
    """The `pricefit serve` process of this module; restartable with a different environment."""

    def __init__(self, server, api, workdir: Path):
        self.server, self.api, self.workdir = server, api, workdir
        self.proc = None
        self.starts = 0
        self.fault_file = workdir / "fault-steps.txt"  # tasks/faults.py: PRICEFIT_FAULT_FILE

    def start(self, extra_env: dict[str, str] | None = None) -> dict[str, dict]:
        self.stop()
        env = {"PRICEFIT_WORKDIR": str(self.workdir), "PRICEFIT_FAULT_FILE": str(self.fault_file), **(extra_env or {})}
        self.starts += 1
        self.proc = self.server.spawn(f"pricefit-serve-{self.starts}", _serve_argv(), env)
        return self.api.wait_for_deployments(FLOW, SERVED, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture(scope="module")
def served(prefect_server, prefect_api, tmp_path_factory):
    s = Served(prefect_server, prefect_api, tmp_path_factory.mktemp("workdir"))
    s.start()
    yield s
    s.stop()


def _step(task_run: dict) -> str:
    """The step a task run belongs to, from its name: 'curate 60 rows …' -> curate, 'contract raw' -> contract_raw."""
    words = (task_run.get("name") or task_run["task_key"]).replace("-", " ").replace("[", " ").split()
    return f"contract_{words[1]}" if words[0] == "contract" and len(words) > 1 else words[0]


def _attempts(api, flow_run_id: str, timeout_s: float = 60) -> dict[str, list[str]]:
    """step -> state names of its task runs, oldest first (one per flow-run attempt).

    Task run states reach the server as events, a moment after the flow run's own state; wait
    until every task run has a final one."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = api.task_runs(flow_run_id)
        settled = all((tr.get("state") or {}).get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for tr in runs)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    out: dict[str, list[str]] = {}
    for tr in runs:
        out.setdefault(_step(tr), []).append((tr.get("state") or {}).get("name", "(no state)"))
    return out


def _states(api, flow_run_id: str) -> dict[str, str]:
    """step -> state name of its latest task run."""
    return {step: names[-1] for step, names in _attempts(api, flow_run_id).items()}


def test_serve_registers_the_nightly_schedule(served, prefect_api):
    dep = prefect_api.deployment(FLOW, "retrain-nightly")
    crons = [(s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"]) for s in dep["schedules"]]
    assert crons == [("0 2 * * *", "UTC", True)]
    manual = prefect_api.deployment(FLOW, "retrain-manual")
    assert manual["schedules"] == []

def test_manual_run_completes_and_shows_artifacts(served, prefect_api):
    dep = prefect_api.deployment(FLOW, "retrain-manual")
    fr = prefect_api.create_flow_run(dep["id"], RUN_PARAMS)
    done = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S)
    assert done["state"]["type"] == "COMPLETED", prefect_api.logs(fr["id"])
    states = _states(prefect_api, fr["id"])
    assert set(BEFORE_FAULT + FROM_FAULT) <= set(states), states
    assert set(states.values()) <= {"Completed", "Cached"}, states
    arts = {a["key"]: a for a in prefect_api.artifacts(fr["id"]) if a.get("key")}
    assert {k: arts[k]["type"] for k in ARTIFACTS if k in arts} == ARTIFACTS, sorted(arts)
    assert all(arts[k]["data"] for k in ARTIFACTS), {k: arts[k]["data"] for k in ARTIFACTS}


def test_failed_evaluation_retried_reuses_finished_steps(served, prefect_api):
    served.fault_file.write_text("evaluate\n")  # evaluation is broken
    dep = prefect_api.deployment(FLOW, "retrain-manual")
    fr = prefect_api.create_flow_run(dep["id"], FAULT_PARAMS)
    failed = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S)
    assert failed["state"]["type"] == "FAILED"
    first = _states(prefect_api, fr["id"])
    assert first["evaluate"] == "Failed", first
    assert all(first[s] in {"Completed", "Cached"} for s in BEFORE_FAULT), first
    assert not set(FROM_FAULT[1:]) & set(first), first  # nothing after the failure ran

    served.fault_file.unlink()  # the fix
    prefect_api.retry(fr["id"])
    retried = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S, after=failed["state"]["id"])
    assert retried["state"]["type"] == "COMPLETED", prefect_api.logs(fr["id"])
    assert retried["run_count"] == 2
    second = _states(prefect_api, fr["id"])
    assert {s: second[s] for s in BEFORE_FAULT} == {s: "Cached" for s in BEFORE_FAULT}, second
    assert {s: second[s] for s in FROM_FAULT} == {s: "Completed" for s in FROM_FAULT}, second
