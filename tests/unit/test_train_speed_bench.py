"""bench/train_speed.py runs its variants side by side on tiny-random on the CPU (the GPU run's smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = tmp_path / f"{args[0]}.jsonl"
    subprocess.run([sys.executable, str(ROOT / "bench" / "train_speed.py"), *args, "--model", "tiny-random",
                    "--device", "cpu", "--seq", "48", "--work", str(tmp_path / "work"), "--out", str(out)],
                   check=True, env=env, capture_output=True, text=True, timeout=600)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_train_speed_bench_writes_one_line_per_variant(home, tmp_path):
    rows = _run(["train", "--steps", "2", "--warmup", "2", "--batch", "4", "--lora-r", "8",
                 "--variants", "all-eager,baseline", "--quant", "none", "--head", "regression,generate"], tmp_path)
    assert [(r["head"], r["variant"]) for r in rows] == [
        ("regression", "baseline"), ("regression", "all-eager"), ("generate", "baseline"), ("generate", "all-eager")]
    for r in rows:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["s_per_step"] > 0 and r["steps_timed"] == 2
        assert abs(r["final_loss_rel_diff"]) < 0.05 and not r["compile_fell_back"]
    assert rows[0]["fast_path"] is None
    assert rows[1]["fast_path"] == {"loss_sync_steps": 2, "pad_to": "max", "pad_multiple": 32, "device_data": True,
                                    "compile": False}
    ev = _run(["eval", "--items", "24", "--batches", "8,5", "--train-steps", "2", "--lora-r", "8"], tmp_path)
    assert [(r["variant"], r["batch"]) for r in ev] == [
        (v, b) for v in ("baseline", "head_fast", "head_fast+merge") for b in (8, 5)]
    assert all(r["items"] == 24 and r["items_per_s"] > 0 and r["tokenize_s"] > 0 for r in ev)
    assert [r["merged"] for r in ev] == [False] * 4 + [True] * 2
    assert all(r["max_rel_diff_vs_baseline"] < 1e-5 for r in ev)
