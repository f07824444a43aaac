"""Where a sweep's trials run and how much of the accelerator slot each holds (no Prefect server)."""

from __future__ import annotations

import pytest

from flows import sweep as sw
from flows.common import RetrainParams, resolve_config
from tasks import gpu


def test_slot_shares_fit_exactly():
    """k holders of occupy_for(k) slots fit in one limit, a (k+1)-th does not; a solo step takes it all."""
    assert gpu.occupy_for(1) == gpu.CAPACITY
    for k in range(1, gpu.MAX_SHARE + 1):
        each = gpu.occupy_for(k)
        assert k * each <= gpu.CAPACITY < (k + 1) * each, k


def test_slot_names_follow_the_physical_gpu(monkeypatch):
    monkeypatch.setattr(gpu, "_physical_device", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.slot_name("cpu") == "cpu-train" and gpu.slot_name("cuda") == "gpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert gpu.slot_name("cuda") == "gpu:3"
    monkeypatch.setattr(gpu, "_physical_device", "1")  # a sweep worker pinned to GPU 1
    assert gpu.slot_name("cuda") == "gpu:1"


def _params(**kw):
    return sw.SweepParams(profile="demo", **kw)


@pytest.mark.parametrize(
    "n_trials, kw, want",
    [
        (3, {}, ((None,), 1)),                    # CPU: one at a time by default
        (3, {"concurrency": 2}, ((None,), 2)),
        (1, {"concurrency": 4}, ((None,), 1)),    # never more at once than there are trials
    ],
)
def test_cpu_placement(n_trials, kw, want):
    cfg = resolve_config(RetrainParams(profile="demo", overrides=["train.device=cpu"]))
    p = sw.plan_placement(cfg, _params(**kw), [{}] * n_trials)
    assert (p.devices, p.share) == want


@pytest.mark.parametrize(
    "gpus, n_trials, kw, auto, want",
    [
        (["0"], 8, {}, 8, ((None,), 8)),                      # a small model: all 8 on the one GPU
        (["0"], 8, {}, 1, ((None,), 1)),                      # a large one: one at a time
        (["0"], 8, {"trials_per_gpu": 4}, 8, ((None,), 4)),
        (["0"], 8, {"concurrency": 2}, 8, ((None,), 2)),
        (["0", "1", "2", "3"], 3, {}, 8, (("0", "1", "2"), 1)),  # several GPUs: one each first
        (["0", "1"], 8, {}, 1, (("0", "1"), 1)),
        (["2", "5"], 8, {"trials_per_gpu": 3}, 8, (("2", "5"), 3)),
        (["0", "1"], 8, {"concurrency": 5}, 8, (("0", "1"), 3)),
    ],
)
def test_cuda_placement(monkeypatch, gpus, n_trials, kw, auto, want):
    cfg = resolve_config(RetrainParams(profile="demo", overrides=["train.device=cuda"]))
    monkeypatch.setattr(gpu, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(sw, "visible_gpus", lambda: gpus)
    monkeypatch.setattr(sw, "auto_trials_per_gpu", lambda cfg, trials: auto)
    p = sw.plan_placement(cfg, _params(**kw), [{}] * n_trials)
    assert (p.devices, p.share) == want
