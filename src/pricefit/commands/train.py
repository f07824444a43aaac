"""`pricefit train` (QLoRA/LoRA fine-tuning) and `pricefit plan-memory` (GPU memory planner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..cli import JSON_OPTION_HELP, PROFILE_OPTION_HELP, app, check_config, check_input, command, emit
from ..errors import PricefitError


def _human_train(r: dict[str, Any]) -> str:
    return (
        f"adapter -> {r['out']}\n"
        f"  {r['steps']} steps, loss {r['first_loss']:.4f} -> {r['final_loss']:.4f}, "
        f"{r['runtime_s']:.0f} s, {r['tokens_per_s']:.0f} tokens/s{' (resumed)' if r['resumed'] else ''}\n"
        f"  peak memory {r['peak_mem_gib']:.2f} GiB ({r['peak_mem_source']}), "
        f"planner estimate {r['estimate_gib'] if r['estimate_gib'] is not None else 'n/a'} GiB"
    )


@app.command("train")
@command
def train_cmd(
    tokenized: Path = typer.Option(..., "--tokenized", "-t", help="Tokenized directory (output of `pricefit tokenize`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: adapter/, loss.csv, loss.png, model_card.md, train_summary.json."),
    config: Optional[str] = typer.Option(None, "--profile", "--config", "-p", "-c", help=PROFILE_OPTION_HELP),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a setting, e.g. --set lora_r=16 --set max_steps=20 --set quantization=none."
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Fine-tune the base model with (Q)LoRA on the tokenized train split; loss on the price only.

    Settings: --profile NAME takes that run profile's train: section (--profile demo: the recipe
    `make demo` trains, LoRA r16 on all linear layers + a regression price head blended with TF-IDF,
    float32, lr 2e-3, 2 epochs); --set overrides it. Without a profile, the TrainConfig defaults (a
    smoke test, not a good model): smollm2-135m, 4-bit NF4 + double quantization, LoRA r=32 alpha=64
    on q/k/v/o, lr 1e-4 cosine, batch 4, digit generation. Checkpoints go to <out>.ckpt/ every
    save_steps; rerunning the same command after a kill resumes from the last one.

    Example:  pricefit train --tokenized runs/x/tokenized --out runs/x/train --profile demo
    """
    check_input(tokenized, "--tokenized", ("tokenized",))
    config = check_config(config)
    from .. import tracking  # deferred: keeps `pricefit --help` fast (loads pydantic)
    from ..config import TrainConfig, load_stage_config  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)
    from ..training import train  # deferred: keeps `pricefit --help` fast (loads pydantic)

    cfg = load_stage_config(TrainConfig, str(config) if config else None, "train", set_)  # "train." prefix optional
    tracking.check(tracking.target())  # MLFLOW_TRACKING_URI set: fail now, not after training
    from ..config import load_slices  # deferred: keeps `pricefit --help` fast (loads pydantic, yaml)

    ref = train(tokenized, out, cfg, slices=load_slices(config))  # the slices train.oversample names
    tracking.log_train(ref.path)
    import json

    summary = json.loads((ref.dir / "train_summary.json").read_text())
    result = {"ok": True, "out": ref.path, "sha256": ref.sha256, "rows": ref.rows, **{
        k: summary[k] for k in ("steps", "first_loss", "final_loss", "runtime_s", "tokens_per_s", "peak_mem_gib",
                                "peak_mem_source", "estimate_gib", "hardware", "resumed")}}
    emit(result, as_json, _human_train)


def _human_plan(r: dict[str, Any]) -> str:
    items = list(next(iter(r["methods"].values()))["items_gib"])
    head = f"{'GiB':<16}" + "".join(f"{m:>11}" for m in r["methods"])
    lines = [
        f"{r['model']}: {r['params']['total'] / 1e9:.2f} B params, batch {r['batch']} x seq {r['seq']}, LoRA r={r['lora_r']}"
        f"{', gradient checkpointing' if r['gradient_checkpointing'] else ''}",
        head,
    ]
    for it in items:
        lines.append(f"{it:<16}" + "".join(f"{e['items_gib'][it]:>11.2f}" for e in r["methods"].values()))
    lines.append(f"{'total':<16}" + "".join(f"{e['total_gib']:>11.2f}" for e in r["methods"].values()))
    lines.append("formulas: pricefit.memory module docstring; activations calibratable via memory.calibrate()")
    return "\n".join(lines)


@app.command("plan-memory")
@command
def plan_memory_cmd(
    model: str = typer.Option(
        "llama-3.1-8b", "--model", "-m",
        help="llama-3.1-8b|70b|405b (or 8b|70b|405b), a built-in (smollm2-135m), a local dir or config.json, or a hub id.",
    ),
    batch: int = typer.Option(4, "--batch", "-b", min=1, help="Micro-batch size."),
    seq: int = typer.Option(182, "--seq", "-s", min=1, help="Sequence length in tokens."),
    lora_r: int = typer.Option(32, "--lora-r", min=1, help="LoRA rank."),
    target_modules: str = typer.Option("q_proj,k_proj,v_proj,o_proj", "--target-modules",
                                       help="Comma-separated Linear names, or all-linear."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Keep only each layer's input; recompute in backward."),
    logits_positions: Optional[int] = typer.Option(
        None, "--logits-positions", help="Positions per sequence that produce logits (default: all; pricefit's loop: the label tokens)."
    ),
    loop: str = typer.Option(
        "pricefit", "--loop",
        help="Training loop to plan for: pricefit (bf16 base, loss at the label positions) or plain-hf "
             "(Trainer + prepare_model_for_kbit_training, logits everywhere).",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    """Estimate peak GPU memory for full fine-tuning, LoRA, QLoRA and QLoRA + double quantization.

    Itemised: weights, quantization constants, adapters, gradients, optimizer states, activations,
    logits, CUDA/workspace overhead. Example:  pricefit plan-memory --model 70b --batch 4 --seq 182
    """
    from .. import memory  # deferred: keeps `pricefit --help` fast (a module pricefit --help does not load)

    if loop not in memory.LOOPS:
        raise PricefitError(f"unknown --loop {loop!r}", hint=f"one of {', '.join(memory.LOOPS)}")
    act = memory.LOOPS[loop]
    if loop == "pricefit" and logits_positions is None:
        logits_positions = 8  # the price completion's tokens, with room to spare
    shape = memory.load_shape(model)
    targets: Any = "all-linear" if target_modules.strip() == "all-linear" else [t.strip() for t in target_modules.split(",") if t.strip()]
    plans = memory.plan(shape, batch, seq, lora_r=lora_r, target_modules=targets,
                        gradient_checkpointing=gradient_checkpointing, logits_positions=logits_positions, act=act)
    first = next(iter(plans.values()))
    result = {
        "ok": True, "model": shape.name, "batch": batch, "seq": seq, "lora_r": lora_r,
        "target_modules": targets, "gradient_checkpointing": gradient_checkpointing,
        "logits_positions": logits_positions, "loop": loop, "params": first.params,
        "methods": {m: {"items_gib": e.to_dict()["items_gib"], "items_bytes": e.items, "total_gib": round(e.total_gib, 3)}
                    for m, e in plans.items()},
        "activation_model": first.activation_model,
    }
    emit(result, as_json, _human_plan)
