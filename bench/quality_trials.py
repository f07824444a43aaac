"""Quality trials of the price models on real listings: train, then score validation (and test).

Runs the pipeline's own functions (pricefit.tokenization.tokenize, pricefit.training.train,
pricefit.evaluation.evaluate) once per (trial, seed), each in its own process so that several
trials share one GPU (a 135M model leaves most of an H200 idle). Every metric is reported overall
and per slice of the profile (the reference-distribution slice of gpu-smollm2). Choices are made on
the validation split; ``--splits validation,test`` is for the final run of the chosen settings.

    python bench/quality_trials.py --curated runs/dev/curated --work /tmp/q --profile gpu-smollm2 \
        --trials head,head-4bit --seeds 0 --splits validation --jobs 8 \
        --results $OUT/results.jsonl --predictions $OUT/predictions.parquet

One JSON line per (trial, seed) goes to --results (and stdout); every prediction goes to one
--predictions parquet (trial, seed, split, item_id, category, price, prediction), the input of the
ensembles in bench/ensembles.py.
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

# overrides of the profile's train section, one trial each
TRIALS: dict[str, dict] = {
    "head": {},
    "head-4bit": {"quantization": "4bit", "quant_type": "nf4", "double_quant": True},
    "head-mean": {"head_pool": "mean"},
    "head-over3": {"oversample": {"reference": 3.0}},
    "head-balance": {"price_balance": 0.5},
    "head-lr1e-3": {"learning_rate": 1e-3},
    "head-lm": {"head_lm_weight": 0.5},
    "head-ep5": {"epochs": 5},
    "head-hlr10": {"head_lr_scale": 10.0},
    "head-drop0": {"lora_dropout": 0.0},
    "head-mse": {"head_loss": "mse"},
    "head-r16": {"lora_r": 16, "lora_alpha": 32},
    "generate": {"head": "generate", "learning_rate": 1e-3, "epochs": 2},
    "head-lr2e-4": {"learning_rate": 2e-4},
    "head-lr5e-5": {"learning_rate": 5e-5},
    # speed and memory of NF4 + double quantization alone on the GPU (150 steps; not a quality trial)
    "head-4bit-speed": {"quantization": "4bit", "quant_type": "nf4", "double_quant": True, "max_steps": 150, "blend": "none"},
}


def child(a) -> None:
    import polars as pl

    from pricefit.config import load_run_config
    from pricefit.evaluation import evaluate
    from pricefit.training import train

    run = load_run_config(a.profile, overrides=a.set)
    cfg = run.train.model_copy(update={**TRIALS[a.trial], "seed": a.seed, **({"max_steps": a.max_steps} if a.max_steps else {})})
    cfg = type(cfg).model_validate(cfg.model_dump())
    work = Path(a.work) / f"{a.trial}-s{a.seed}"
    t0 = time.perf_counter()
    ref = train(a.tokenized, work / "train", cfg, slices=run.slices)
    train_s = time.perf_counter() - t0
    s = json.loads((Path(ref.path) / "train_summary.json").read_text())
    row = {"trial": a.trial, "seed": a.seed, "overrides": TRIALS[a.trial], "steps": s["steps"], "train_s": round(train_s, 1),
           "tokens_per_s": s["tokens_per_s"], "first_loss": s["first_loss"], "final_loss": s["final_loss"],
           "peak_mem_gib": s["peak_mem_gib"], "blend": s.get("blend")}
    frames = []
    for split in a.splits.split(","):
        ecfg = run.evaluate.model_copy(update={"split": split, "max_items": a.max_items})
        t1 = time.perf_counter()
        ev = evaluate(a.tokenized, work / f"eval-{split}", ecfg, adapter_dir=ref.path, slices=run.slices)
        m = json.loads((Path(ev.path) / "metrics.json").read_text())
        row[split] = {k: m.get(k) for k in ("n", "n_unparsed", "mae", "rmsle", "hit_rate")} | {
            "slices": {n: {k: v.get(k) for k in ("n", "mae", "rmsle", "hit_rate")} for n, v in m["slices"].items()},
            "eval_s": round(time.perf_counter() - t1, 2), "items_per_s": json.loads((Path(ev.path) / "manifest.json").read_text()).get("items_per_s")}
        frames.append(pl.read_parquet(Path(ev.path) / "predictions.parquet").select("item_id", "category", "price", "prediction", "raw")
                      .with_columns(pl.lit(a.trial).alias("trial"), pl.lit(a.seed).alias("seed"), pl.lit(split).alias("split")))
    pl.concat(frames).write_parquet(work / "predictions.parquet")
    (work / "row.json").write_text(json.dumps(row))
    print(json.dumps(row), flush=True)


def save(a, rows: list[dict], work: Path, done: list[tuple[str, int]]) -> None:
    import polars as pl

    if a.results:
        Path(a.results).write_text("".join(json.dumps(r) + "\n" for r in rows))
    if a.predictions and done:
        tmp = Path(a.predictions).with_suffix(".tmp")
        pl.concat([pl.read_parquet(work / f"{n}-s{s}" / "predictions.parquet") for n, s in done]).write_parquet(tmp)
        tmp.replace(a.predictions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curated", help="curated artifact (tokenized here once, into WORK/tokenized)")
    p.add_argument("--tokenized", help="an existing tokenized artifact instead of --curated")
    p.add_argument("--work", required=True)
    p.add_argument("--profile", default="gpu-smollm2")
    p.add_argument("--trials", default="head")
    p.add_argument("--seeds", default="0")
    p.add_argument("--splits", default="validation")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--runs", help="explicit TRIAL:SEED list run in this order (instead of --trials x --seeds)")
    p.add_argument("--max-steps", type=int, default=None, help="cap every trial (smoke tests)")
    p.add_argument("--max-items", type=int, default=None, help="score at most N items per split (smoke tests)")
    p.add_argument("--set", action="append", default=[], help="profile override key=value (repeatable)")
    p.add_argument("--results")
    p.add_argument("--predictions")
    p.add_argument("--child", nargs=2, metavar=("TRIAL", "SEED"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.trial, a.seed = a.child[0], int(a.child[1])
        return child(a)
    runs = [(r.split(":")[0], int(r.split(":")[1])) for r in a.runs.split(",")] if a.runs else None
    names = sorted({n for n, _ in runs}) if runs else [n for n in a.trials.split(",") if n]
    unknown = [n for n in names if n not in TRIALS]
    if unknown:
        p.error(f"unknown trial(s) {', '.join(unknown)}; choose from: {', '.join(TRIALS)}")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    from pricefit.config import load_run_config
    from pricefit.models import builtin_models, ensure_builtin

    run = load_run_config(a.profile, overrides=a.set)
    if run.train.base_model in builtin_models():
        ensure_builtin(run.train.base_model)  # build once, before the children race for its lock
    if not a.tokenized:
        from pricefit.tokenization import tokenize

        a.tokenized = str(work / "tokenized")
        if not (Path(a.tokenized) / "manifest.json").exists():
            t0 = time.perf_counter()
            tokenize(a.curated, a.tokenized, run.tokenize)
            print(json.dumps({"tokenized": a.tokenized, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    jobs = runs or [(n, s) for n in names for s in (int(x) for x in a.seeds.split(","))]
    common = ["--tokenized", a.tokenized, "--work", str(work), "--profile", a.profile, "--splits", a.splits]
    common += [x for o in a.set for x in ("--set", o)]
    common += (["--max-steps", str(a.max_steps)] if a.max_steps else []) + (["--max-items", str(a.max_items)] if a.max_items else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), TOKENIZERS_PARALLELISM="false")
    running: dict[tuple[str, int], subprocess.Popen] = {}
    rows, failed = [], []
    queue = []
    for n, s in jobs:  # a trial finished by an earlier (timed-out) call is reported, not rerun
        row_file = work / f"{n}-s{s}" / "row.json"
        if row_file.exists():
            rows.append(json.loads(row_file.read_text()))
        else:
            queue.append((n, s))
    if rows:
        save(a, rows, work, [(r["trial"], r["seed"]) for r in rows])
    while queue or running:
        while queue and len(running) < a.jobs:
            n, s = queue.pop(0)
            log = open(work / f"{n}-s{s}.log", "w")
            running[(n, s)] = subprocess.Popen([sys.executable, __file__, *common, "--child", n, str(s)],
                                               stdout=subprocess.DEVNULL, stderr=log, env=env)
        time.sleep(2)
        for key, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            row_file = work / f"{key[0]}-s{key[1]}" / "row.json"
            if proc.returncode != 0 or not row_file.exists():
                failed.append(key)
                tail = (work / f"{key[0]}-s{key[1]}.log").read_text()[-1500:]
                print(json.dumps({"trial": key[0], "seed": key[1], "failed": proc.returncode, "log_tail": tail}), flush=True)
                continue
            row = json.loads(row_file.read_text())
            rows.append(row)
            print(json.dumps(row), flush=True)
            save(a, rows, work, [(r["trial"], r["seed"]) for r in rows])  # as each trial ends: a timeout keeps them
    if failed:
        raise SystemExit(f"trials failed: {failed}")


if __name__ == "__main__":
    main()
