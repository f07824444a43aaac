"""Data-parallel training (train.num_processes): 2 gloo processes on the CPU, launched by train() itself.

Tiny-random Llama through real bitsandbytes 4-bit, launched with `accelerate launch` exactly as a
GPU host runs it (nccl there, gloo here). The items have prices of 2 and 3 digits, so the ranks'
label-token counts differ inside a micro-batch: a wrong share of the loss shows.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from pricefit import artifacts  # noqa: E402
from pricefit.config import TrainConfig  # noqa: E402
from pricefit.errors import PricefitError  # noqa: E402

from test_training import ITEMS, tokenized  # noqa: E402,F401 - the same tiny widget data as the one-process tests

NVLS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def cfg(**kw) -> TrainConfig:
    base = dict(base_model="tiny-random", quantization="4bit", quant_type="nf4", double_quant=True,
                compute_dtype="float32", device="cpu", lora_r=8, lora_alpha=16, lora_dropout=0.0,
                target_modules="all-linear", learning_rate=5e-3, batch_size=4, grad_accum=2,
                max_steps=4, lr_scheduler="constant", warmup_ratio=0.0, save_steps=2, seed=7, max_grad_norm=1.0)
    base.update(kw)
    return TrainConfig(**base)


class Killed(RuntimeError):
    pass


def kill_at(n):
    def progress(step, total, loss, tps):
        if step == n:
            raise Killed()
    return progress


def _losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader(open(out / "loss.csv"))]


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _checkpoint(out: Path) -> Path:
    from pricefit.training import checkpoint_root

    (ck,) = sorted(checkpoint_root(out).glob("*/step-*"))
    return ck


def _ckpt_state(ck: Path) -> dict:
    opt = torch.load(ck / "optimizer.pt", weights_only=False)
    return {"adapter": torch.load(ck / "adapter.pt", weights_only=True),
            "exp_avg": [s["exp_avg"] for _, s in sorted(opt["state"].items())],
            "exp_avg_sq": [s["exp_avg_sq"] for _, s in sorted(opt["state"].items())],
            "files": sorted(p.name for p in ck.iterdir())}


# Tolerance of one process against two. The math is the same (each rank's loss is its exact share of
# the global micro-batch's loss, the gradients are summed); what differs is float rounding: each
# rank runs the decoder on 2 rows padded to their own width instead of 4, with 1 BLAS thread instead
# of 2, and a micro-batch's loss is the sum of two shares. Measured here (this test's settings):
# losses 1.6e-7 relative (the 6-decimal rounding of loss.csv), optimizer moments 3.6e-7 of the
# tensor's largest value, adapter 4.7e-7 absolute. The bugs this guards against, each measured by
# planting it: averaging instead of summing the gradients (moments 0.45 off, adapter 1.7e-3, loss
# 1.2e-4), no all-reduce (0.46, 1.9e-2, 1.1e-3), equal shares instead of label-token shares
# (6.8e-3, 7.4e-3, 4.1e-5). The bounds sit ~50-300x above the rounding and >= 4x below every bug.
LOSS_RTOL = 1e-5
MOMENT_TOL = 1e-4  # of the tensor's largest |value|
ADAPTER_ATOL = 1e-4
HEAD_ATOL = 1e-6  # the head run: measured 8.4e-9; token shares of its digit loss planted wrong: 8.6e-5


@pytest.mark.slow
def test_two_processes_train_as_one_process_does(tokenized, tmp_path):
    """Same global batch (4 x accum 2) in 1 and 2 processes: same gradients, same losses, same adapter."""
    from pricefit.training import train

    one, two = tmp_path / "one", tmp_path / "two"
    c1 = cfg()
    c2 = cfg(num_processes=2)
    # stop both after the step-2 checkpoint: it holds the optimizer moments, which are proportional to
    # the gradients (the adapter after AdamW steps hardly depends on the gradients' scale)
    with pytest.raises(Killed):
        train(tokenized, one, c1, progress=kill_at(3))
    with pytest.raises(Killed):
        train(tokenized, two, c2, progress=kill_at(3))
    assert not two.exists()  # no half artifact
    s1, s2 = _ckpt_state(_checkpoint(one)), _ckpt_state(_checkpoint(two))
    assert _checkpoint(two).name == "step-0000002"
    assert s2["files"] == ["adapter.pt", "optimizer.pt", "rng-rank1.pt", "rng.pt", "scheduler.pt", "state.json"]
    assert s1["adapter"].keys() == s2["adapter"].keys()
    for k in s1["adapter"]:
        torch.testing.assert_close(s2["adapter"][k], s1["adapter"][k], rtol=0, atol=ADAPTER_ATOL)
    assert len(s1["exp_avg"]) == len(s2["exp_avg"]) > 0
    for m1, m2 in zip(s1["exp_avg"] + s1["exp_avg_sq"], s2["exp_avg"] + s2["exp_avg_sq"]):
        scale = float(m1.abs().max())
        assert scale > 0 and float((m2 - m1).abs().max()) <= MOMENT_TOL * scale

    seen = []
    ref1 = train(tokenized, one, c1)
    ref2 = train(tokenized, two, c2, progress=lambda s, t, loss, tps: seen.append((s, t)))
    assert seen == [(3, 4), (4, 4)]  # the callback gets rank 0's steps, resumed after step 2
    assert ref2.kind == ref1.kind == "adapter" and ref2.rows == ref1.rows == len(ITEMS)
    assert artifacts.verify(ref2)
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 4
    assert l2 == pytest.approx(l1, rel=LOSS_RTOL)
    a1, a2 = _adapter(one), _adapter(two)
    assert a1.keys() == a2.keys()
    for k in a1:
        torch.testing.assert_close(a2[k], a1[k], rtol=0, atol=ADAPTER_ATOL)
    sum1 = json.loads((one / "train_summary.json").read_text())
    sum2 = json.loads((two / "train_summary.json").read_text())
    assert sum1["steps"] == sum2["steps"] == 4 and sum2["total_steps"] == 4
    assert "num_processes" not in sum1 and "distributed" not in sum1
    assert sum2["num_processes"] == 2 and sum2["hardware"].startswith("2 x CPU")
    d = sum2["distributed"]
    assert (d["launcher"], d["backend"], d["world_size"], d["per_process_batch"]) == ("accelerate launch", "gloo", 2, 2)
    assert d["env"] == NVLS  # read inside the launched rank 0
    assert artifacts.read_manifest(two)["config"]["num_processes"] == 2


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_uninterrupted_one(tokenized, tmp_path):
    """Kill the launched run after a checkpoint, rerun: bit-identical to an uninterrupted 2-process run.

    Dropout on: each rank's RNG state is in the checkpoint and must come back to that rank.
    """
    from pricefit.training import checkpoint_root, train

    c = cfg(num_processes=2, lora_dropout=0.1, max_steps=6, save_steps=2)
    full = tmp_path / "full"
    train(tokenized, full, c)

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train(tokenized, out, c, progress=kill_at(3))
    assert not out.exists()
    ck = _checkpoint(out)  # step 2, or step 4 when rank 0 got there before the kill landed
    assert ck.name in ("step-0000002", "step-0000004")
    assert (ck / "rng-rank1.pt").is_file()
    done = int(ck.name.split("-")[1])

    seen = []
    train(tokenized, out, c, progress=lambda s, t, loss, tps: seen.append(s))
    assert seen == list(range(done + 1, 7))
    a, b = json.loads((full / "train_summary.json").read_text()), json.loads((out / "train_summary.json").read_text())
    assert (a["resumed"], b["resumed"]) == (False, True)
    assert a["steps"] == b["steps"] == 6
    assert _losses(full) == _losses(out)
    ta, tb = _adapter(full), _adapter(out)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert not checkpoint_root(out).exists()  # removed by rank 0 after success


@pytest.mark.slow
def test_two_process_price_head_matches_one_process(tokenized, tmp_path):
    """train.head regression: the head's gradients are summed too, and rank 0 saves the head.

    The 2-process run goes through `pricefit train --json`: the ranks' output goes to stderr, the
    result line to stdout.
    """
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from pricefit.cli import app
    from pricefit.training import train

    # head_lm_weight > 0: the digit cross-entropy (shared by label tokens) beside the head's loss (by rows)
    c1 = cfg(head="regression", head_lm_weight=0.5, grad_accum=1, learning_rate=1e-2)
    one, two = tmp_path / "one", tmp_path / "two"
    train(tokenized, one, c1)
    sets = []
    for k, v in {**c1.model_dump(mode="json"), "num_processes": 2}.items():
        if v is not None:
            sets += ["--set", f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"]
    r = CliRunner().invoke(app, ["train", "--tokenized", str(tokenized), "--out", str(two), *sets, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert (res["ok"], res["steps"], res["rows"], res["resumed"]) == (True, 4, len(ITEMS), False)
    assert res["hardware"].startswith("2 x CPU")
    assert "[rank 0]" in r.stderr  # the ranks' log lines, streamed by the caller
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_RTOL)
    h1 = load_file(str(one / "adapter" / "price_head.safetensors"))
    h2 = load_file(str(two / "adapter" / "price_head.safetensors"))
    for k in ("weight", "bias"):
        torch.testing.assert_close(h2[k], h1[k], rtol=0, atol=HEAD_ATOL)
    assert json.loads((two / "adapter" / "price_head.json").read_text()) == json.loads((one / "adapter" / "price_head.json").read_text())
    assert artifacts.read_manifest(two)["head"] == "regression"


def test_batch_that_does_not_divide_is_refused_before_launch(tokenized, tmp_path, monkeypatch):
    import subprocess

    from typer.testing import CliRunner

    from pricefit import distributed
    from pricefit.cli import app
    from pricefit.training import train

    def no_launch(*a, **k):
        raise AssertionError("launched")

    monkeypatch.setattr(subprocess, "Popen", no_launch)
    r = CliRunner().invoke(app, ["train", "--tokenized", str(tokenized), "--out", str(tmp_path / "x"),
                                 "--set", "num_processes=2", "--set", "batch_size=3", "--set", "base_model=tiny-random"])
    assert r.exit_code == 2, r.output
    assert "batch_size 3 does not divide into num_processes 2" in r.output
    # a config built without validation meets the same check in train(), still before any launch
    bad = TrainConfig.model_construct(**{**cfg().model_dump(), "batch_size": 3, "num_processes": 2})
    with pytest.raises(PricefitError, match="batch_size 3 does not divide into num_processes 2") as e:
        train(tokenized, tmp_path / "y", bad)
    assert "multiple of 2" in e.value.hint
    assert cfg(batch_size=6, num_processes=3).num_processes == 3
    with pytest.raises(PricefitError, match="needs 2 CUDA GPUs; 1 visible"):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        from pricefit.quant import Plan

        distributed.check(cfg(num_processes=2), Plan(device="cuda", compute_dtype="bfloat16", quantization="4bit"))


def test_launched_processes_get_nvlink_multicast_off():
    from pricefit import distributed
    from pricefit.quant import Plan

    c, cpu = cfg(num_processes=2), Plan(device="cpu", compute_dtype="float32", quantization="4bit")
    env = distributed.child_env(c, cpu, base={"PATH": "/bin"})
    assert {k: env[k] for k in NVLS} == NVLS
    src = str(Path(distributed.__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep)[0] == src and env["PATH"] == "/bin"
    # what the user set stays as set
    env = distributed.child_env(c, cpu, base={"NCCL_NVLS_ENABLE": "1", "OMP_NUM_THREADS": "3"})
    assert (env["NCCL_NVLS_ENABLE"], env["NVSHMEM_DISABLE_NVLS"], env["OMP_NUM_THREADS"]) == ("1", "1", "3")
    cmd = distributed.launch_command(Path("/tmp/spec.json"), c)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-3:] == ["--module", "pricefit.distributed", "/tmp/spec.json"]


def test_one_process_keeps_its_checkpoint_key():
    """Adding num_processes did not change the key of a one-process run (its checkpoints still resume)."""
    from pricefit.training import checkpoint_key
    from pricefit.training.checkpoints import _NOT_IN_KEY

    c = cfg()
    old_body = {k: v for k, v in c.model_dump(mode="json").items() if k not in _NOT_IN_KEY and k != "num_processes"}
    old = artifacts.sha256_bytes(artifacts.canonical_json({"tokenized": "t", "config": old_body}).encode())[:16]
    assert checkpoint_key("t", c) == old
    assert checkpoint_key("t", cfg(num_processes=2)) != old
