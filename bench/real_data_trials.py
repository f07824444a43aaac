"""The first real-data model: QLoRA trials of a base model on a tokenized pricefit artifact.

Runs the pipeline's own functions (pricefit.training.train, pricefit.evaluation.evaluate) once per
trial and scores each adapter on the VALIDATION split (the held-out test split stays untouched
for the final comparison). Prints one JSON line per trial (and one for the base model alone).

    python bench/real_data_trials.py --tokenized DIR --work /tmp/trials [--trials base,lr5e-5,...] [--jobs N]

--jobs N runs N trials at once, each in its own process on the same GPU: a model as small as
SmolLM2-135M leaves the GPU mostly idle (the loop is bound by per-step launch overhead), so
concurrent trials finish sooner in total, but each trial's train_s and tokens_per_s are then
slowed by the sharing and are not solo speeds.

The tokenized artifact comes from `pricefit curate` + `pricefit tokenize` on
$PRICEFIT_SHARED_DATA/amazon_meta/listings.jsonl.gz (docs/RESULTS.md gives the commands).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BASE = dict(quantization="4bit", quant_type="nf4", double_quant=True, lora_r=16, lora_alpha=32, lora_dropout=0.1,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], learning_rate=1e-4, batch_size=16,
            epochs=1.0, lr_scheduler="cosine", warmup_ratio=0.03, max_grad_norm=0.3, optimizer="adamw",
            save_steps=10**9, seed=42)

# the reference's hyperparameter questions (1e-4 vs 5e-5, batch 8 vs 16, r 8 vs 16), target modules,
# epochs, and a higher learning rate for a small model
TRIALS = {
    "base": {},
    "lr5e-5": {"learning_rate": 5e-5},
    "lr3e-4": {"learning_rate": 3e-4},
    "batch8": {"batch_size": 8},
    "r8": {"lora_r": 8, "lora_alpha": 16},
    "all-linear": {"target_modules": "all-linear"},
    "epochs2": {"epochs": 2.0},
    "lr1e-3": {"learning_rate": 1e-3},
    "lr2e-3": {"learning_rate": 2e-3},
    "all-linear-lr3e-4": {"target_modules": "all-linear", "learning_rate": 3e-4},
    "all-linear-lr1e-3": {"target_modules": "all-linear", "learning_rate": 1e-3},
    "r64-lr1e-3": {"lora_r": 64, "lora_alpha": 128, "learning_rate": 1e-3},
    "lr3e-4-ep2": {"learning_rate": 3e-4, "epochs": 2.0},
    "all-linear-lr3e-4-ep2": {"target_modules": "all-linear", "learning_rate": 3e-4, "epochs": 2.0},
}


def main() -> None:
    from pricefit.config import EvaluateConfig, TrainConfig
    from pricefit.evaluation import evaluate
    from pricefit.training import train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenized", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--base-model", default="smollm2-135m")
    p.add_argument("--trials", default=",".join(TRIALS), help=f"comma-separated, from: {', '.join(TRIALS)}")
    p.add_argument("--skip-base", action="store_true", help="do not score the base model alone")
    p.add_argument("--split", default="validation", choices=["validation", "test"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--max-steps", type=int, default=None, help="cap every trial (smoke tests)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at once, one process each (default 1)")
    a = p.parse_args()
    work = Path(a.work)
    names = [n for n in a.trials.split(",") if n]
    unknown = [n for n in names if n not in TRIALS]
    if unknown:
        p.error(f"unknown trial(s) {', '.join(unknown)}; choose from: {', '.join(TRIALS)}")
    if a.jobs > 1:
        return run_parallel(a, names, work)
    ecfg = EvaluateConfig(split=a.split, quantization="4bit", batch_size=256 if a.device == "cuda" else 16,
                          device=a.device, max_items=None if a.device == "cuda" else 4)

    def score(adapter, name):
        t0 = time.perf_counter()
        ref = evaluate(a.tokenized, work / f"eval-{name}", ecfg, base_model=a.base_model, adapter_dir=adapter)
        m = json.loads((Path(ref.path) / "metrics.json").read_text())
        return {k: m.get(k) for k in ("n", "n_unparsed", "mae", "rmsle", "hit_rate", "mdape")} | {
            "eval_s": round(time.perf_counter() - t0, 1)}

    if not a.skip_base:
        print(json.dumps({"trial": "base_model (no fine-tuning)", "split": a.split, **score(None, "base")}), flush=True)
    for name in names:
        extra = {"max_steps": a.max_steps} if a.max_steps else {}
        cfg = TrainConfig(base_model=a.base_model, device=a.device, **(BASE | TRIALS[name] | extra))
        t0 = time.perf_counter()
        ref = train(a.tokenized, work / f"train-{name}", cfg)
        s = json.loads((Path(ref.path) / "train_summary.json").read_text())
        row = {"trial": name, "split": a.split, "overrides": TRIALS[name], "steps": s["steps"],
               "train_s": round(time.perf_counter() - t0, 1), "tokens_per_s": s["tokens_per_s"],
               "first_loss": s["first_loss"], "final_loss": s["final_loss"], "peak_mem_gib": s["peak_mem_gib"],
               **score(ref.path, name)}
        print(json.dumps(row), flush=True)


def run_parallel(a, names: list[str], work: Path) -> None:
    """One child process per trial, at most a.jobs at once; each child's JSON line is echoed as it ends."""
    from pricefit.models import builtin_models, ensure_builtin

    if a.base_model in builtin_models():
        ensure_builtin(a.base_model)  # build the model once, before the children race for its lock
    work.mkdir(parents=True, exist_ok=True)
    common = ["--tokenized", a.tokenized, "--work", str(work), "--base-model", a.base_model, "--split", a.split,
              "--device", a.device, "--skip-base"] + (["--max-steps", str(a.max_steps)] if a.max_steps else [])
    queue = (["__base__"] if not a.skip_base else []) + names
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    failed = []
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    while queue or running:
        while queue and len(running) < a.jobs:
            name = queue.pop(0)
            if name == "__base__":  # the base model alone: a child with no trials but the base score
                cmd = [sys.executable, __file__, *[x for x in common if x != "--skip-base"], "--trials", ""]
            else:
                cmd = [sys.executable, __file__, *common, "--trials", name]
            log = work / f"{name}.log"
            with open(log, "w") as fh:
                running[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, env=env, text=True), log)
        time.sleep(2)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read()
            del running[name]
            if proc.returncode != 0:
                failed.append(name)
                print(json.dumps({"trial": name, "failed": proc.returncode, "log": str(log)}), flush=True)
            else:
                sys.stdout.write(out)
                sys.stdout.flush()
    if failed:
        raise SystemExit(f"trials failed: {', '.join(failed)} (logs under {work})")


if __name__ == "__main__":
    main()
