"""pricefit's own log lines reach the flow run's Prefect logs (issue 11, item 1), on a REAL server.

`prefect flow-run logs ID` (what the UI's Logs tab shows) must hold pricefit's records of that run:
curate counts, metrics, promotion decisions, warnings, progress lines. Two ways a flow runs:

- a process where Prefect was imported first and nobody set PREFECT_LOGGING_EXTRA_LOGGERS (a worker
  running the deployment, `python flows/curate_only.py`): flows/common.py attaches the handler when the
  flow starts its steps;
- `pricefit serve` (and `pricefit run`): the command sets PREFECT_LOGGING_EXTRA_LOGGERS=pricefit
  before Prefect is imported, and the served flow runs inherit it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

server = pytest.mark.server
slow = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FLOW = "retrain"


def write_tiny_profile(path: Path) -> Path:
    """The e2e test-sized profile of tests/e2e/conftest.py (loaded by path: no `import conftest`)."""
    import importlib.util

    name = "pricefit_e2e_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("conftest.py"))
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name].write_tiny_profile(path)


def _prefect() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


def _flow_run_logs(prefect_server, flow_run_id: str, expect: list[str], timeout_s: float = 60) -> str:
    """`prefect flow-run logs ID`, polled until every expected text is there (logs arrive in batches)."""
    deadline = time.monotonic() + timeout_s
    while True:
        p = subprocess.run([_prefect(), "flow-run", "logs", flow_run_id], capture_output=True, text=True,
                           env=prefect_server.env({"COLUMNS": "400"}), timeout=120)
        assert p.returncode == 0, p.stderr
        if all(e in p.stdout for e in expect) or time.monotonic() > deadline:
            return p.stdout
        time.sleep(1.0)


CURATE_ONLY = """
import sys
from flows.common import RetrainParams
from flows.curate_only import curate_only

state = curate_only(RetrainParams(profile=sys.argv[1], workdir=sys.argv[2]), return_state=True)
print("FLOW_RUN_ID", state.state_details.flow_run_id, state.type.value)
"""


@server
def test_pricefit_lines_of_a_flow_run_are_in_its_prefect_logs(prefect_server, tmp_path):
    profile = write_tiny_profile(tmp_path / "e2e-tiny.yaml")
    env = prefect_server.env({"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert "PREFECT_LOGGING_EXTRA_LOGGERS" not in env  # the worker-like path: nothing set beforehand
    p = subprocess.run([sys.executable, "-c", CURATE_ONLY, str(profile), str(tmp_path / "runs")], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    flow_run_id, state = next(line.split()[1:] for line in p.stdout.splitlines() if line.startswith("FLOW_RUN_ID"))
    assert state == "COMPLETED", p.stderr[-4000:]
    # the records pricefit.curation logs in the ingest and curate tasks, with their numbers
    expect = ["ingest: 80 rows read", "curate: kept ", "60 train"]
    logs = _flow_run_logs(prefect_server, flow_run_id, expect)
    assert all(e in logs for e in expect), logs[-4000:]
    # no "attempted to send logs to the API without a flow run id" warnings on the console
    assert "without a flow run id" not in p.stderr


@server
@slow
def test_served_run_logs_hold_pricefit_lines(served, prefect_api, prefect_server):
    """The README path: `pricefit serve`, a Quick run from the UI, the run's Logs tab."""
    if served.toy:
        pytest.skip("the toy flow (PRICEFIT_E2E_TOY=1) logs no pricefit lines")
    dep = prefect_api.deployment(FLOW, "retrain-manual")
    # a workdir of its own: other tests run the same deployment, and a fully Cached run logs no training
    params = {"params": {**(dep.get("parameters") or {}).get("params", {}), "workdir": str(Path(tempfile.mkdtemp()) / "runs")}}
    fr = prefect_api.create_flow_run(dep["id"], parameters=params)
    done = prefect_api.wait_terminal(fr["id"], served.proc, float(os.environ.get("PRICEFIT_E2E_RUN_TIMEOUT", "420")))
    assert done["state"]["type"] == "COMPLETED", prefect_api.logs(fr["id"])
    # evaluate names the model: the served profile's head blended with TF-IDF (issue 22)
    expect = ["ingest: 80 rows read", "training tiny-random:", "train: done, 2/2 steps", "evaluate: fine-tuned head x ",
              ": n=4 mae="]
    logs = _flow_run_logs(prefect_server, fr["id"], expect)
    assert all(e in logs for e in expect), logs[-4000:]
    # and the serving process's own output (the flow runs' included) is quiet: no line per HTTP
    # request (the runner polls every 10 s), no library deprecation warnings
    console = served.proc.log_tail(10_000_000)
    assert "ingest: 80 rows read" in console
    assert [noise for noise in ("HTTP Request:", "FutureWarning", "Loading weights") if noise in console] == []
