"""Fixtures of the kill-and-restart suite: the fork server, a PRICEFIT_HOME, the upstream artifacts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "faultinject"))

import killrun  # noqa: E402


@pytest.fixture(scope="session")
def kill_env(tmp_path_factory) -> dict[str, str]:
    """The environment of every stage command the suite runs (and kills)."""
    home = os.environ.get("PRICEFIT_HOME") or str(tmp_path_factory.mktemp("pricefit-home"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRICEFIT_KILL", "MLFLOW_", "OPENAI_"))}
    env.update(PRICEFIT_HOME=home, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
               PRICEFIT_COMMANDS="flows.commands", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="session")
def forks(kill_env):
    server = killrun.ForkServer(kill_env)
    yield server
    server.close()
