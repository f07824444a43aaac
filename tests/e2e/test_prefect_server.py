"""Deployments on a REAL Prefect server: trigger as the UI does, read artifacts back, retry a failed run.

`pricefit serve` (a subprocess) registers the deployments of deployments/prefect.yaml on the
session's server; the test then talks only to the server's REST API, like the UI: it creates a
flow run from the `retrain-manual` deployment, waits for Completed and reads the artifacts back.

The retry scenario: the test-only fault switch (tests/faultinject/pricefit_faults.py: the file named by
PRICEFIT_FAULT_FILE lists "evaluate") makes a run fail in evaluation; the file is deleted (the fix)
and the SAME flow run is retried the way the UI's Retry button and `prefect flow-run retry` do
(forced back to a scheduled state; the serving process picks it up). Per task run: the steps
before evaluation come back Cached, evaluation and what follows Completed.

The `served` fixture (conftest.py) serves a test-sized profile (tiny random Llama, 80 synthetic
listings, 2 training steps); PRICEFIT_E2E_TOY=1 swaps in a seconds-long stand-in flow for development.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

server = pytest.mark.server
slow = pytest.mark.slow

RUN_TIMEOUT_S = float(os.environ.get("PRICEFIT_E2E_RUN_TIMEOUT", "420"))
FLOW = "retrain"


def expected(served) -> tuple[list[str], list[str], dict[str, str]]:
    """(steps before evaluation, evaluation and what follows, artifact key -> type) of the served flow."""
    if served.toy:
        return ["ingest", "curate", "tokenize", "train"], ["evaluate", "report"], {"data-manifest": "table", "evaluation-report": "markdown"}
    before = ["ingest", "contract_raw", "curate", "contract_curated", "tokenize", "contract_tokenized", "train"]
    after = ["evaluate", "baselines", "compare", "report"]
    artifacts = {  # keys start with the step's place in tasks/steps.py (tasks/ui.artifact_key)
        "03-curate-manifest": "table",
        "02-contract-raw": "markdown",
        "04-contract-curated": "markdown",
        "06-contract-tokenized": "markdown",
        "08-evaluate-report": "markdown",
        "11-compare-table": "markdown",
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


@server
@slow
def test_serve_registers_the_nightly_schedule(served, prefect_api):
    dep = prefect_api.deployment(FLOW, "retrain-nightly")
    crons = [(s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"]) for s in dep["schedules"]]
    assert crons == [("0 2 * * *", "UTC", True)]
    manual = prefect_api.deployment(FLOW, "retrain-manual")
    assert manual["schedules"] == []
    if not served.toy:  # `pricefit serve --profile PATH` put the profile into the default parameters
        assert manual["parameters"]["params"]["profile"] == str(served.profile)


@server
@slow
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


@server
@slow
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


# ------------------------------------------------------------------------------------------------
# the file itself, both ways it is read

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pricefit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("pricefit")
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base["PREFECT_HOME"] = os.environ.get("PREFECT_HOME", str(Path.home() / ".prefect"))
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env={**base, **(env or {})}, timeout=300)


def test_serve_check_lists_the_four_deployments_with_the_nightly_cron():
    out = _pricefit("serve", "--check", "--json", "--profile", "shared-cpu", "--timezone", "Europe/Berlin")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    by_name = {d["name"]: d for d in result["deployments"]}
    assert sorted(by_name) == [
        "evaluate/evaluate",
        "frontier-baseline/frontier-baseline",
        "retrain/retrain-manual",
        "retrain/retrain-nightly",
    ]
    nightly = by_name["retrain/retrain-nightly"]["schedules"]
    assert [(s["cron"], s["timezone"], s["active"]) for s in nightly] == [("0 2 * * *", "Europe/Berlin", True)]
    assert all(by_name[n]["schedules"] == [] for n in by_name if n != "retrain/retrain-nightly")
    assert {d["parameters"]["params"]["profile"] for d in result["deployments"]} == {"shared-cpu"}


def test_serve_without_a_server_says_how_to_start_one():
    out = _pricefit("serve", "--json")
    assert out.returncode == 2
    assert json.loads(out.stdout)["hint"].startswith("start one with `prefect server start`")


@server
@slow
def test_prefect_deploy_reads_the_same_file(prefect_server, prefect_api, tmp_path):
    """The production path: `prefect deploy --all` puts the four deployments on the process pool.

    The deployment names get a suffix so that they do not replace the ones `pricefit serve`
    registered on the same server for the other tests."""
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        d["name"] += "-deploy-check"
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    prefect = str(Path(sys.executable).with_name("prefect"))
    env = prefect_server.env()
    for argv in (
        [prefect, "work-pool", "create", "pricefit-process", "--type", "process", "--overwrite"],
        [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
    ):
        out = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    deps = {
        name: prefect_api.deployment(flow, f"{name}-deploy-check")
        for flow, name in [("retrain", "retrain-nightly"), ("retrain", "retrain-manual"), ("evaluate", "evaluate"), ("frontier-baseline", "frontier-baseline")]
    }
    assert all(deps.values()), deps
    assert {n: d["work_pool_name"] for n, d in deps.items()} == dict.fromkeys(deps, "pricefit-process")
    assert {n: d["entrypoint"] for n, d in deps.items()} == {
        "retrain-nightly": "flows/retrain.py:retrain",
        "retrain-manual": "flows/retrain.py:retrain",
        "evaluate": "flows/evaluate_only.py:evaluate_only",
        "frontier-baseline": "flows/frontier_baseline.py:frontier_baseline",
    }
    cron = [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in deps["retrain-nightly"]["schedules"]]
    assert cron == [("0 2 * * *", "UTC")]
    # never two nightlies at once (Prefect 3 reports it as the deployment's global concurrency limit)
    assert (deps["retrain-nightly"]["global_concurrency_limit"] or {}).get("limit") == 1
    assert deps["retrain-manual"]["global_concurrency_limit"] is None
    assert deps["retrain-manual"]["parameters"] == {"params": {"profile": "demo"}}
    # the worker moves into the checkout `prefect deploy` ran in
    pull = deps["retrain-manual"]["pull_steps"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
