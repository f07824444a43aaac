"""`pricefit sweep` runs its trials at once through Prefect's task runners (tiny random Llama, CPU).

One workdir, three sweeps in a row:
  1. sequential (concurrency 1): the reference numbers
  2. the same trials, concurrency 2, --refresh train: both trainings hold their slot at the same
     time (a barrier in tasks/gpu.py waits inside the slot until both are there: a sweep that ran
     them one after another would time out there), and every number and adapter byte equals 1.
  3. concurrency 2 with one trial that fails in training: the other trial's row keeps its result.
"""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime

import pytest

from tasks import gpu

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

PROFILE = """
# pytest tests/flows/test_sweep_concurrency.py
profile: tiny-sweep
source: "demo:60"
curate: {tokenizer: tiny-random, max_text_tokens: 32, min_chars: 40}
tokenize: {base_model: tiny-random, max_length: 64}
train: {base_model: tiny-random, device: cpu, quantization: none, lora_r: 4, lora_alpha: 8, lora_dropout: 0.1,
        target_modules: [q_proj, v_proj], batch_size: 4, max_steps: 3, save_steps: 50}
evaluate: {split: test, max_items: 4, batch_size: 4, device: cpu}
baselines: {include: [constant], base_model: tiny-random, split: test, max_items: 4}
"""

TRIALS = [{"train.learning_rate": 5e-4}, {"train.learning_rate": 2e-3}]


def _sweep(profile, workdir, trials, **kw):
    from flows.sweep import SweepParams, sweep

    state = sweep(SweepParams(profile=str(profile), workdir=str(workdir), trials=trials, **kw), return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def _weights(row) -> str:
    from pathlib import Path

    return hashlib.sha256((Path(row["adapter"]) / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_trials_run_at_once_with_the_sequential_numbers(tmp_path, monkeypatch):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(textwrap.dedent(PROFILE))
    workdir = tmp_path / "work"

    # 1. sequential: in this process, one trial after the other
    seq = _sweep(profile, workdir, TRIALS)
    assert seq["concurrency"] == 1 and seq["failed"] == []
    assert [r["train"] for r in seq["rows"]] == ["Completed", "Completed"]
    s0, s1 = ((datetime.fromisoformat(r["train_started"]), datetime.fromisoformat(r["train_finished"])) for r in seq["rows"])
    assert s0[1] <= s1[0]  # one after the other
    ref = {r["trial"]: (r["mae"], r["rmsle"], _weights(r)) for r in seq["rows"]}

    # 2. concurrency 2: the two trainings are inside their slots together, same numbers and bytes
    monkeypatch.setenv(gpu.BARRIER_ENV, f"{tmp_path / 'barrier'}:2:240")
    par = _sweep(profile, workdir, TRIALS, concurrency=2, refresh="train")
    monkeypatch.delenv(gpu.BARRIER_ENV)
    assert par["concurrency"] == 2 and par["failed"] == []
    assert set(par["states"].values()) == {"Cached"}, par["states"]  # the data steps ran once, in sweep 1
    assert [r["train"] for r in par["rows"]] == ["Completed", "Completed"]
    assert len(list((tmp_path / "barrier").iterdir())) == 2
    (a0, a1), (b0, b1) = ((datetime.fromisoformat(r["train_started"]), datetime.fromisoformat(r["train_finished"]))
                          for r in par["rows"])
    assert a0 < b1 and b0 < a1  # the training windows overlap
    assert {r["trial"]: (r["mae"], r["rmsle"], _weights(r)) for r in par["rows"]} == ref
    assert [r["best"] for r in par["rows"]] == [r["best"] for r in seq["rows"]] and par["best"] == seq["best"]

    # 3. a trial that fails in training (no such LoRA target in the model) loses nothing of the other
    bad = {"train.target_modules": ["no_such_proj"]}
    out = _sweep(profile, workdir, [bad, {"train.learning_rate": 1e-3}], concurrency=2)
    assert out["failed"] == ["train.target_modules=['no_such_proj']"]
    failed, good = out["rows"]
    assert failed["state"] == "Failed" and "no_such_proj" in failed["error"] and failed["mae"] is None
    assert failed["best"] == "" and failed["adapter"] is None
    assert good["state"] == "Completed" and good["train"] == "Completed" and good["error"] is None
    assert good["mae"] is not None and good["best"] == "*" and out["best"] == {"train.learning_rate": 1e-3}

