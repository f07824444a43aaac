"""What a finished training run writes beside its adapter: the loss curve, the model card, the
blend fitted on validation, the merged model, and the facts its summary reports about the machine.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import resource
from pathlib import Path

from .. import artifacts
from ..errors import PricefitError
from ..heads import head_outputs
from .model import autocast

log = logging.getLogger("pricefit.training")  # one logger for the package: the log lines keep their name


def write_loss(tmp: Path, history: list[dict]) -> None:
    """loss.csv (one row per optimizer step) and loss.png."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["step", "loss", "lr", "tokens_per_s"], lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow(row)
    artifacts.write_text_atomic(tmp / "loss.csv", buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set(ylabel="training loss", title="training loss")
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole: no 0.5 ticks on a short run
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(tmp / "loss.png", dpi=100)
    plt.close(fig)


def hardware(plan) -> str:
    import torch

    if plan.device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def peak_gib(plan) -> tuple[float, str]:
    """(this process's peak memory in GiB, where the number comes from)."""
    import torch

    if plan.device == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**3, "torch.cuda.max_memory_allocated"
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kb / 1024**2, "process peak RSS (CPU run)"


def fit_blend(tokenized_dir: Path, model, tokenizer, head, head_spec, plan, parts: str, min_items: int = 1):
    """train.blend: TF-IDF on the training prompts and/or a retrieval index of the training items'
    embeddings, their weights against the head chosen on validation."""
    from datasets import load_from_disk

    from ..blend import fit_blend as fit  # deferred: numpy behind it, needed only with train.blend

    dd = load_from_disk(str(tokenized_dir / "dataset"))
    if "validation" not in dd or "prompt" not in dd["validation"].column_names:
        raise PricefitError("train.blend needs the tokenized validation split with its prompts", hint="re-run `pricefit tokenize`")
    val, knn = dd["validation"], "knn" in parts.split("+")

    def score(prompts, pooled):
        return head_outputs(prompts, model, tokenizer, head, head_spec, plan.device, lambda: autocast(plan), pooled=pooled)

    head_val, val_pooled = score(val["prompt"], knn)
    train_pooled = score(dd["train"]["prompt"], True)[1] if knn else None
    blend = fit(dd["train"]["prompt"], dd["train"]["price"], val["prompt"], val["price"], head_val,
                parts=parts.split("+"), train_pooled=train_pooled, val_pooled=val_pooled, min_items=min_items)
    v = blend.validation
    if v.get("note"):
        log.info("blend: %s (validation MAE: %s)", v["note"],
                 ", ".join(f"{k[:-4]} ${x:.2f}" for k, x in v.items() if k.endswith("_mae") and k != "blend_mae"))
        return blend
    log.info("blend: weights %s chosen on %d validation items (MAE: %s)", ", ".join(f"{k} {w:.2f}" for k, w in v["weights"].items()),
             len(val), ", ".join(f"{k[:-4]} ${x:.2f}" for k, x in v.items() if k.endswith("_mae")))
    return blend


def model_card(cfg, summary: dict) -> str:
    cfg_yaml = json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
    peak = summary["peak_mem_gib"]
    est = summary["estimate_gib"]
    return f"""# pricefit adapter: {cfg.base_model} + LoRA r={cfg.lora_r}

Predicts a product's price from its listing text: {"a linear price head on the prompt's final hidden state (price_head.safetensors + price_head.json beside the adapter; pricefit.heads)" if cfg.head == "regression" else 'the completion after "Price is $"'}.

| | |
|---|---|
| base model | `{cfg.base_model}` |
| training data | tokenized artifact sha256 `{summary['tokenized_sha256']}` ({summary['train_items']} items) |
| method | {summary['quantization']['quantization']} quantization, compute {summary['quantization']['compute_dtype']}, LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} on {cfg.target_modules} |
| steps | {summary['steps']} optimizer steps (batch {cfg.batch_size} x accum {cfg.grad_accum}) |
| final loss | {summary['final_loss']:.4f} |
| hardware | {summary['hardware']} |
| time | {summary['runtime_s']:.1f} s, {summary['tokens_per_s']:.0f} tokens/s |
| peak memory | {peak:.2f} GiB ({summary['peak_mem_source']}) |
| planner estimate | {'n/a' if est is None else f'{est:.2f} GiB'} (pricefit plan-memory) |

## Metrics

Filled in by `pricefit evaluate` (held-out MAE, RMSLE, hit rate); see the evaluation artifact.

## Configuration

```json
{cfg_yaml}
```
"""


def merge(base_path: str, adapter_dir: Path, out: Path) -> None:
    """Merged model in float32: base (unquantized) + adapter, so it loads without peft/bitsandbytes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
