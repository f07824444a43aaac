"""Deployments on a REAL Prefect server: trigger as the UI does, read artifacts back, retry a failed run.

`pricefit serve` (a subprocess) registers the deployments of deployments/prefect.yaml on the
session's server; the test then talks only to the server's REST API, like the UI: it creates a
flow run from the `retrain-manual` deployment, waits for Completed and reads the artifacts back.

The retry scenario: the test-only fault switch (tasks/faults.py: the file named by
PRICEFIT_FAULT_FILE lists "evaluate") makes a run fail in evaluation; the file is deleted (the fix)
and the SAME flow run is retried the way the UI's Retry button and `prefect flow-run retry` do
(forced back to a scheduled state; the serving process picks it up). Per task run: the steps
before evaluation come back Cached, evaluation and what follows Completed.

The `served` fixture (conftest.py) serves a test-sized profile (tiny random Llama, 80 synthetic
listings, 2 training steps); PRICEFIT_E2E_TOY=1 swaps in a seconds-long stand-in flow for development.
"""

from __future__ import annotations

import os
import time

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

RUN_TIMEOUT_S = float(os.environ.get("PRICEFIT_E2E_RUN_TIMEOUT", "420"))
FLOW = "retrain"


def expected(served) -> tuple[list[str], list[str], dict[str, str]]:
    """(steps before evaluation, evaluation and what follows, artifact key -> type) of the served flow."""
    if served.toy:
        return ["ingest", "curate", "tokenize", "train"], ["evaluate", "report"], {"data-manifest": "table", "evaluation-report": "markdown"}
    before = ["ingest", "contract_raw", "curate", "contract_curated", "tokenize", "contract_tokenized", "train"]
    after = ["evaluate", "baselines", "compare", "report"]
    artifacts = {
        "data-manifest": "table",
        "contract-raw": "markdown",
        "contract-curated": "markdown",
        "contract-tokenized": "markdown",
        "evaluation-report": "markdown",
        "comparison-table": "markdown",
    }
    return before, after, artifacts


def fault_params(served) -> dict:
    """Another evaluation (3 held-out items instead of 4) on the same data and model: every step up to train is reusable."""
    if served.toy:
        return {"eval_items": 7}
    return {"params": {"profile": str(served.profile), "overrides": ["evaluate.max_items=3", "baselines.max_items=3"]}}


def _step(task_run: dict) -> str:
    """The step a task run belongs to, from its name: 'curate 60 rows …' -> curate, 'contract raw' -> contract_raw."""
    words = (task_run.get("name") or task_run["task_key"]).replace("-", " ").replace("[", " ").split()
    return f"contract_{words[1]}" if words[0] == "contract" and len(words) > 1 else words[0]


def _attempts(api, flow_run_id: str, expect: dict[str, int], timeout_s: float = 90) -> dict[str, list[str]]:
    """step -> state names of its task runs, oldest first (one per flow-run attempt).

    Task runs reach the server as events, a moment after the flow run's own state: wait until each
    step in ``expect`` has at least that many task runs and every task run has a final state."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = api.task_runs(flow_run_id)
        settled = all((tr.get("state") or {}).get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for tr in runs)
        counts: dict[str, int] = {}
        for tr in runs:
            counts[_step(tr)] = counts.get(_step(tr), 0) + 1
        settled = settled and all(counts.get(step, 0) >= n for step, n in expect.items())
        if settled or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    out: dict[str, list[str]] = {}
    for tr in runs:
        out.setdefault(_step(tr), []).append((tr.get("state") or {}).get("name", "(no state)"))
    return out


def _states(api, flow_run_id: str, expect: dict[str, int]) -> dict[str, str]:
    """step -> state name of its latest task run."""
    return {step: names[-1] for step, names in _attempts(api, flow_run_id, expect).items()}


def test_serve_registers_the_nightly_schedule(served, prefect_api):
    dep = prefect_api.deployment(FLOW, "retrain-nightly")
    crons = [(s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"]) for s in dep["schedules"]]
    assert crons == [("0 2 * * *", "UTC", True)]
    manual = prefect_api.deployment(FLOW, "retrain-manual")
    assert manual["schedules"] == []
    assert manual["parameters"]["params"]["profile"] == str(served.profile) if not served.toy else True


def test_manual_run_completes_and_shows_artifacts(served, prefect_api):
    dep = prefect_api.deployment(FLOW, "retrain-manual")
    before, after, artifacts = expected(served)
    fr = prefect_api.create_flow_run(dep["id"])  # the deployment's defaults, like the UI's Quick run
    done = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S)
    assert done["state"]["type"] == "COMPLETED", prefect_api.logs(fr["id"])
    states = _states(prefect_api, fr["id"], dict.fromkeys(before + after, 1))
    assert set(before + after) <= set(states), states
    assert set(states.values()) <= {"Completed", "Cached"}, states
    arts = {a["key"]: a for a in prefect_api.artifacts(fr["id"]) if a.get("key")}
    assert {k: arts[k]["type"] for k in artifacts if k in arts} == artifacts, sorted(arts)
    assert all(arts[k]["data"] for k in artifacts), {k: arts[k]["data"] for k in artifacts}


def test_failed_evaluation_retried_reuses_finished_steps(served, prefect_api):
    before, after, _ = expected(served)
    served.fault_file.write_text("evaluate\n")  # evaluation is broken
    dep = prefect_api.deployment(FLOW, "retrain-manual")
    fr = prefect_api.create_flow_run(dep["id"], fault_params(served))
    failed = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S)
    assert failed["state"]["type"] == "FAILED"
    first = _states(prefect_api, fr["id"], dict.fromkeys(before + ["evaluate"], 1))
    assert first["evaluate"] == "Failed", first
    assert all(first[s] in {"Completed", "Cached"} for s in before), first
    assert not set(after[1:]) & set(first), first  # nothing after the failure ran

    served.fault_file.unlink()  # the fix
    prefect_api.retry(fr["id"])
    retried = prefect_api.wait_terminal(fr["id"], served.proc, RUN_TIMEOUT_S, after=failed["state"]["id"])
    assert retried["state"]["type"] == "COMPLETED", prefect_api.logs(fr["id"])
    assert retried["run_count"] == 2
    # the second attempt adds one task run per step: two for the steps up to evaluate, one after
    second = _states(prefect_api, fr["id"], {**dict.fromkeys(before + after[:1], 2), **dict.fromkeys(after[1:], 1)})
    assert {s: second[s] for s in before} == {s: "Cached" for s in before}, second
    assert {s: second[s] for s in after} == {s: "Completed" for s in after}, second
