"""The test-only fault switch wraps the step tasks from tests/ (no fault hook in the tasks' code)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pricefit_faults
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_no_fault_hook_in_the_project():
    assert not (ROOT / "tasks" / "faults.py").exists()
    assert [p.name for p in sorted((ROOT / "tasks").glob("*.py")) if "maybe_fail" in p.read_text()] == []


def test_listed_steps_fail_before_any_work(tmp_path, monkeypatch):
    from tasks import contract, report

    fault = tmp_path / "fault"
    fault.write_text("report\ncontract_raw\n")
    monkeypatch.setenv(pricefit_faults.ENV, str(fault))
    with pytest.raises(pricefit_faults.InjectedFault, match="injected fault in step 'report'"):
        report.report.fn({}, {}, str(tmp_path / "work"))
    with pytest.raises(pricefit_faults.InjectedFault, match="'contract_raw'"):
        contract.contract.fn("raw", None)
    assert not (tmp_path / "work").exists()


def test_processes_a_test_starts_get_the_switch_from_sitecustomize(tmp_path):
    fault = tmp_path / "fault"
    fault.write_text("report\n")
    env = {**os.environ, pricefit_faults.ENV: str(fault),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "faultinject"), str(ROOT / "src"), str(ROOT)])}
    code = "import tasks.report as r; r.report.fn({}, {}, 'w')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "InjectedFault: injected fault in step 'report'" in out.stderr
