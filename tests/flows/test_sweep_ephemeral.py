"""`pricefit sweep --concurrency 2` with no Prefect server configured: one temporary server for all.

Without PREFECT_API_URL Prefect starts a temporary server in each process that needs one. The
sweep's worker processes must use the sweep's own instead (flows.sweep._share_ephemeral_server):
otherwise each starts another, records its trial there (lost when it stops) and counts the
accelerator slots of tasks/gpu.py on its own. The command runs in a subprocess, outside the
test harness's server, as a user runs it. Beside it, bench/sweep_speed.py (the script of the H200
sweep measurement) on the same tiny profile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_sweep_concurrency import PROFILE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _setup(tmp_path) -> tuple[Path, dict[str, str]]:
    """The tiny profile, and an environment with no Prefect server named (and its own PREFECT_HOME)."""
    profile = tmp_path / "tiny.yaml"
    profile.write_text(textwrap.dedent(PROFILE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")]),
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.setdefault("PRICEFIT_HOME", str(tmp_path / "home"))
    return profile, env


def test_concurrent_cli_sweep_starts_one_temporary_server(tmp_path):
    profile, env = _setup(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("trials:\n  - {train.learning_rate: 5.0e-4}\n  - {train.learning_rate: 2.0e-3}\n")
    p = subprocess.run([sys.executable, "-m", "pricefit", "sweep", "--profile", str(profile), "--grid", str(grid),
                        "--workdir", str(tmp_path / "work"), "--concurrency", "2", "--json"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["concurrency"] == 2 and out["failed"] == []
    assert [r["state"] for r in out["rows"]] == ["Completed", "Completed"]
    # the sweep's process starts one; its two worker processes use it
    assert p.stderr.count("Starting temporary server") == 1, p.stderr[-3000:]


def test_sweep_speed_bench_times_each_sweep_with_cached_data_steps(tmp_path):
    """bench/sweep_speed.py (the H200 measurement's script) on the tiny profile: a warm-up caches
    the data steps, then each timed sweep runs only its own, distinct trials."""
    profile, env = _setup(tmp_path)
    out = tmp_path / "sweep.jsonl"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "sweep_speed.py"), "--profile", str(profile), "--trials", "1,2",
                        "--concurrency", "2", "--workdir", str(tmp_path / "w"), "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    warm, one, two = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(warm["states"].values()) == {"Completed"}  # the warm-up computed the data steps
    for row, n in ((one, 1), (two, 2)):
        assert row["trials"] == n and row["concurrency"] == n and row["failed"] == []
        assert set(row["data_states"].values()) == {"Cached"}
        assert [r["train"] for r in row["rows"]] == ["Completed"] * n  # no trial is another's cache hit
        assert row["wall_s"] > 0 and row["train_span_s"] > 0
    assert one["x_one_trial"] == 1.0
    assert two["x_one_trial"] == pytest.approx(two["wall_s"] / one["wall_s"], abs=2e-3)  # from unrounded walls
    lrs = [r["trial"] for r in one["rows"] + two["rows"]]
    assert len(set(lrs)) == 3
