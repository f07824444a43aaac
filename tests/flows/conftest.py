"""Fixtures for the flow tests: one Prefect test harness (temporary server + SQLite) per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# the test-only fault switch (PRICEFIT_FAULT_FILE) lives in tests/, not in the tasks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faultinject"))
import pricefit_faults  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def fault_switch():
    """Every step task honours PRICEFIT_FAULT_FILE in the flow tests (pricefit_faults.install)."""
    pricefit_faults.install()
    return pricefit_faults


@pytest.fixture(scope="session")
def prefect_harness():
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    # the 2-core CI machine can take well over Prefect's default 30 s to start the server
    with prefect_test_harness(server_startup_timeout=240):
        yield
