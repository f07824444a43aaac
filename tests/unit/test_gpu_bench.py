"""bench/gpu_bench.py's steady-state speed from loss.csv (the loss is read once per window of steps)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_bench  # noqa: E402


def _loss_csv(windows: list[tuple[int, float]]) -> list[dict]:
    """loss.csv rows as the fast path writes them: every step of a window carries the window's tokens/s."""
    rows, step = [], 0
    for n, tps in windows:
        for _ in range(n):
            step += 1
            rows.append({"step": str(step), "loss": "12.5", "lr": "1e-4", "tokens_per_s": str(tps)})
    return rows


def test_the_window_that_holds_compilation_is_left_out():
    # 25 steps with compilation (2,704 tokens/s on the H200's first 8B run), then 25 and a partial 10
    rows = _loss_csv([(25, 2704.0), (25, 19000.0), (10, 20000.0)])
    timed = gpu_bench._steady_rows(rows, warmup=25, sync=25)
    assert [int(r["step"]) for r in timed] == list(range(26, 61))
    # 35 steps of 1,000 tokens: 25 of them at 19,000 tokens/s and 10 at 20,000
    assert gpu_bench._tokens_per_s(timed, 1000) == pytest.approx(35 / (25 / 19000 + 10 / 20000))


def test_per_step_rows_drop_only_the_warmup_steps():
    rows = _loss_csv([(1, 100.0), (1, 100.0), (1, 100.0)] + [(1, 200.0 + i) for i in range(5)])
    timed = gpu_bench._steady_rows(rows, warmup=3, sync=1)
    assert [int(r["step"]) for r in timed] == [4, 5, 6, 7, 8]


def test_too_few_steps_for_a_window_after_the_warmup_says_how_many():
    rows = _loss_csv([(8, 2704.0)])
    with pytest.raises(SystemExit, match="--steps 47 gives one whole window"):
        gpu_bench._steady_rows(rows, warmup=3, sync=25)


def test_sync_steps_come_from_the_run_summary():
    assert gpu_bench._sync_steps({"fast_path": {"loss_sync_steps": 25, "pad_to": "max"}}) == 25
    assert gpu_bench._sync_steps({"fast_path": None}) == 1
