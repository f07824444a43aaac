"""Fixtures for the flow tests: one Prefect test harness (temporary server + SQLite) per session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    # the 2-core CI machine can take well over Prefect's default 30 s to start the server
    with prefect_test_harness(server_startup_timeout=240):
        yield
