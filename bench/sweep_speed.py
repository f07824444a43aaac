"""`pricefit sweep` wall time: N trials at once against one trial alone, on the same machine (issue 13 item 4).

Each sweep is the real command (`pricefit sweep --profile P --grid G --json`), run as a subprocess
and timed from start to exit. The data steps are cached first by a warm-up sweep of one short
trial, so every timed sweep pays for its trials only (its data steps come back Cached). Every
trial has its own learning rate (a geometric ladder), so no timed trial is a cache hit of another.

    # on the H200 (gpu-smollm2 needs PRICEFIT_SHARED_DATA and the built-in SmolLM2):
    python bench/sweep_speed.py --profile gpu-smollm2 --trials 1,8 --set train.epochs=1 \\
        --workdir /tmp/sw --out $OUT/sweep.jsonl
    # CPU smoke test (the tiny profile of tests/flows/test_sweep_concurrency.py):
    python bench/sweep_speed.py --profile tiny.yaml --trials 1,2 --workdir /tmp/sw --concurrency 2

One JSON line per timed sweep: trials, concurrency (what the sweep reported), wall_s, the ratio
to the one-trial sweep (target: at most 2 for 8 small-model trials on one H200), the span in
which the trainings held the accelerator (first train_started to last train_finished), every
trial's state and metric, and the failed trials.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: the warm-up trial's learning rate: below every rung of the ladder, so no timed trial equals it
WARMUP_LR = 1e-4


def ladder(n: int, offset: int) -> list[float]:
    """n distinct learning rates from 2e-4 up by 10% steps, starting ``offset`` steps in."""
    return [float(f"{2e-4 * 1.1 ** (offset + i):.6g}") for i in range(n)]


def run_sweep(a, lrs: list[float], extra_sets: list[str], log: Path) -> tuple[dict, float]:
    grid = Path(a.workdir) / f"grid-{len(lrs)}-{lrs[0]}.yaml"
    grid.write_text("trials:\n" + "".join(f"  - {{train.learning_rate: {lr}}}\n" for lr in lrs))
    cmd = [sys.executable, "-m", "pricefit", "sweep", "--profile", a.profile, "--grid", str(grid),
           "--workdir", str(Path(a.workdir) / "work"), "--json"]
    for s in [*a.set, *extra_sets]:
        cmd += ["--set", s]
    if a.concurrency:
        cmd += ["--concurrency", str(a.concurrency)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: some trial failed (its row says why)
        raise SystemExit(f"sweep exited {proc.returncode}; see {log}")
    return json.loads(proc.stdout), wall


def _span(rows: list[dict]) -> float | None:
    starts = [r["train_started"] for r in rows if r.get("train_started")]
    ends = [r["train_finished"] for r in rows if r.get("train_finished")]
    if not starts or not ends:
        return None
    parse = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return round((max(map(parse, ends)) - min(map(parse, starts))).total_seconds(), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="gpu-smollm2")
    p.add_argument("--trials", default="1,8", help="comma list of trial counts, timed in this order (the first is the ratio's base)")
    p.add_argument("--set", action="append", default=[], help="override for every sweep, e.g. train.epochs=1 (repeatable)")
    p.add_argument("--concurrency", type=int, default=None, help="pass --concurrency to the sweeps (default: the sweep's own)")
    p.add_argument("--warmup-set", action="append", default=["train.max_steps=2"],
                   help="overrides of the warm-up sweep that caches the data steps")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--workdir", default=None, help="runs and caches (default: a new temporary directory)")
    p.add_argument("--out", default=None, help="append each JSON line here")
    a = p.parse_args()
    a.workdir = a.workdir or tempfile.mkdtemp(prefix="pf-sweep-")
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    counts = [int(n) for n in a.trials.split(",")]

    def emit(obj: dict) -> None:
        line = json.dumps(obj, sort_keys=True)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")

    offset = 0
    if not a.no_warmup:
        out, wall = run_sweep(a, [WARMUP_LR], a.warmup_set, Path(a.workdir) / "warmup.log")
        emit({"bench": "sweep", "phase": "warmup (data steps)", "wall_s": round(wall, 2), "states": out.get("states")})
    base = None
    for n in counts:
        lrs = ladder(n, offset)
        offset += n
        out, wall = run_sweep(a, lrs, [], Path(a.workdir) / f"sweep-{n}.log")
        base = base or wall
        rows = out.get("rows", [])
        emit({"bench": "sweep", "profile": a.profile, "sets": a.set, "trials": n, "concurrency": out.get("concurrency"),
              "wall_s": round(wall, 2), "x_one_trial": round(wall / base, 3), "train_span_s": _span(rows),
              "data_states": out.get("states"), "failed": out.get("failed"),
              "rows": [{k: r.get(k) for k in ("trial", "state", "train", out.get("metric", "mae"), "train_started", "train_finished")}
                       for r in rows]})


if __name__ == "__main__":
    main()
