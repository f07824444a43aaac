"""GPU benchmarks: pricefit's training and evaluation paths against plain Hugging Face.

Runs on a CUDA machine with torch, transformers, peft, bitsandbytes (and datasets, pydantic for
pricefit itself). Every subcommand prints ONE JSON object on stdout. Speed and memory do not depend
on the weights' values, so the model is the real architecture with random weights.

    python bench/gpu_bench.py prepare --arch llama-3.1-8b --dir /tmp/pf8b
    python bench/gpu_bench.py plain   --dir /tmp/pf8b --batch 32 --optim paged_adamw_32bit
    python bench/gpu_bench.py ours    --dir /tmp/pf8b --batch 48 --warmup 25 --steps 25  # whole 25-step loss windows
    python bench/gpu_bench.py unsloth --dir /tmp/pf8b --batch 32 --optim adamw_torch_fused
    python bench/gpu_bench.py eval    --dir /tmp/pf8b --items 1024 --ref-items 64 --batch 256

`plain` is the baseline of docs/PERFORMANCE.md: the Trainer + peft + bitsandbytes setup of the
reference notebook (NF4, double quantization, bf16 compute, LoRA r=32 alpha=64 dropout 0.1 on
q/k/v/o, prepare_model_for_kbit_training, full-vocabulary loss at every position with labels -100
except the last 4 tokens). `ours` runs `pricefit.training.train`, the same function the pipeline
runs, on the same synthetic tokens. `eval` compares the reference loop (one `generate` per item)
with `pricefit.inference.PricePredictor.predict` on the same model and prompts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ARCHS = {
    # Llama-3.1 shapes (config.json of the meta-llama repos)
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, tie_word_embeddings=True),
}
VOCAB = 128256
LABEL_TOKENS = 4  # "123.00"-like completion: the loss sits on the last few tokens only


def _emit(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def _gpu() -> dict:
    import torch

    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "gpu_mem_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__}


def _versions() -> dict:
    out = {}
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def _arch(model_dir) -> str:
    """The ARCHS name of a prepared model directory ("?" for another shape)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    for name, shape in ARCHS.items():
        if all(cfg.get(k) == v for k, v in shape.items() if k != "tie_word_embeddings"):
            return name
    return "?"


def _bench_tokenizer(out: Path) -> None:
    """A word-level tokenizer with the model's full vocabulary: words w0..wN, digits, '.', '$'.

    Llama 3's tokenizer cannot be fetched offline; this one gives every id a string, so decoded
    generations of a random model are well defined (and identical between the two eval paths).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>"]
    base = special + [str(d) for d in range(10)] + [".", "$", "Price", "is"]
    vocab = {t: i for i, t in enumerate(base)}
    for i in range(len(base), VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(out))


def cmd_prepare(a) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(a.dir)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        _emit({"prepared": str(out), "cached": True})
        return
    out.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, rope_theta=500000.0,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, **ARCHS[a.arch])
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(out), max_shard_size="4GB")
    _bench_tokenizer(out)
    n = sum(p.numel() for p in model.parameters())
    _emit({"prepared": str(out), "params": n, "seconds": round(time.perf_counter() - t0, 1), **_gpu()})


def _synthetic_rows(n: int, seq: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, VOCAB, (n, seq), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -LABEL_TOKENS:] = ids[:, -LABEL_TOKENS:]
    return ids, labels


def _tokenized_dir(model_dir: Path, n: int, seq: int) -> Path:
    """A tokenized artifact (pricefit layout) of random tokens, built once per (n, seq)."""
    from datasets import Dataset, DatasetDict

    from pricefit import artifacts

    d = Path(f"/tmp/pf-bench-tokenized-{n}-{seq}")
    if (d / artifacts.MANIFEST).exists():
        return d
    ids, labels = _synthetic_rows(n, seq)
    rows = {"input_ids": ids.tolist(), "attention_mask": [[1] * seq] * n, "labels": labels.tolist(),
            "price": [1.0] * n, "item_id": [str(i) for i in range(n)]}
    with artifacts.atomic_dir(d) as tmp:
        DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp / "dataset"))
        artifacts.write_manifest(tmp, {"kind": "tokenized", "base_model": str(model_dir), "synthetic": True,
                                       "rows": {"train": n}, "max_tokens": seq})
    return d


def _bnb(compute="bfloat16"):  # noqa: D401 - the reference quantization
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, compute))


def _trainer_run(model, a, impl: str, extra: dict | None = None) -> None:
    """Train ``model`` with a plain transformers Trainer on the synthetic rows; print the JSON row.

    Each step is timed between two CUDA synchronisations; the first ``--warmup`` steps are dropped.
    """
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    steps = a.warmup + a.steps
    ids, labels = _synthetic_rows(a.batch * steps, a.seq)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * a.seq] * len(ids),
                            "labels": labels.tolist()})
    times, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = TrainingArguments(output_dir=f"/tmp/pf-bench-{impl}", per_device_train_batch_size=a.batch,
                             max_steps=steps, learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=max(1, round(0.03 * steps)),
                             optim=a.optim, max_grad_norm=0.3, bf16=True, logging_steps=1, save_strategy="no",
                             report_to=[], gradient_checkpointing=a.gc, dataloader_num_workers=0,
                             remove_unused_columns=False, seed=42, disable_tqdm=True,
                             gradient_checkpointing_kwargs={"use_reentrant": False} if a.gc else None)
    torch.cuda.reset_peak_memory_stats()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs: stdout is the one JSON row
        Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator,
                callbacks=[Clock()]).train()
    step_s = statistics.median(times[a.warmup:])
    _emit({"bench": "train", "impl": impl, "arch": _arch(a.dir), "batch": a.batch, "seq": a.seq, "optim": a.optim, "gc": a.gc,
           "steps_timed": len(times[a.warmup:]), "step_s": round(step_s, 4),
           "tokens_per_s": round(a.batch * a.seq / step_s, 1),
           "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
           "losses": [round(x, 4) for x in losses], **(extra or {}), **_gpu(), **_versions()})


def cmd_plain(a) -> None:
    """The plain Hugging Face setup (the baseline)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.dir, quantization_config=_bnb(), dtype=torch.bfloat16,
                                                 device_map={"": 0})
    load_s = time.perf_counter() - t_load
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=a.gc)
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.1, bias="none",
                                             task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    _trainer_run(model, a, "plain-hf", {"load_s": round(load_s, 1)})


def cmd_unsloth(a) -> None:
    """Unsloth's FastLanguageModel (its own 4-bit load, LoRA kernels and loss) under the same Trainer.

    Same NF4 + double quantization, r=32 alpha=64 on q/k/v/o, same rows, schedule and clip as
    ``plain``. LoRA dropout is 0 (``--dropout``): Unsloth's fused LoRA kernels only run without it.
    Unsloth must be importable (it is not a pricefit dependency: it pins datasets < 5).
    """
    import unsloth  # noqa: F401 - first: it patches transformers and peft on import
    import torch
    from unsloth import FastLanguageModel

    t_load = time.perf_counter()
    model, _tok = FastLanguageModel.from_pretrained(a.dir, max_seq_length=a.seq, dtype=torch.bfloat16,
                                                    load_in_4bit=True,
                                                    use_gradient_checkpointing=a.gc)
    load_s = time.perf_counter() - t_load
    model = FastLanguageModel.get_peft_model(model, r=32, lora_alpha=64, lora_dropout=a.dropout, bias="none",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             use_gradient_checkpointing="unsloth" if a.gc else False,
                                             random_state=42)
    _trainer_run(model, a, "unsloth", {"load_s": round(load_s, 1), "lora_dropout": a.dropout,
                                       "unsloth": unsloth.__version__})


def cmd_ours(a) -> None:
    """pricefit.training.train: the pipeline's own training function."""
    import csv

    import torch

    from pricefit.config import TrainConfig
    from pricefit.training import train

    steps = a.warmup + a.steps
    tok = _tokenized_dir(Path(a.dir), a.batch * steps, a.seq)
    out = Path(f"/tmp/pf-bench-ours-{a.mode}-{a.batch}-{os.getpid()}")
    fields = dict(base_model=a.dir, device="cuda", quantization="4bit", quant_type="nf4", double_quant=True,
                  compute_dtype="bfloat16", lora_r=32, lora_alpha=64, lora_dropout=0.1,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], learning_rate=1e-4,
                  batch_size=a.batch, max_steps=steps, lr_scheduler="cosine", warmup_ratio=0.03,
                  max_grad_norm=0.3, save_steps=10**9, seed=42, mode=a.mode)
    fields.update(json.loads(a.set) if a.set else {})  # --set wins over the reference setup
    cfg = TrainConfig(**fields)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(tok, out, cfg)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(open(out / "loss.csv")))
    summary = json.loads((out / "train_summary.json").read_text())
    sync = _sync_steps(summary)
    timed = _steady_rows(rows, a.warmup, sync)
    _emit({"bench": "train", "impl": "pricefit", "arch": _arch(a.dir), "mode": a.mode, "batch": a.batch, "seq": a.seq,
           "config": {k: v for k, v in cfg.model_dump(mode="json").items()
                      if k in ("optimizer", "gradient_checkpointing", "mode", "batch_size", "grad_accum",
                               "quantization", "compile", "compile_mode", "lora_dropout")},
           "fast_path": summary.get("fast_path"), "loss_sync_steps": sync,
           "steps_timed": len(timed), "tokens_per_s": round(_tokens_per_s(timed, a.batch * cfg.grad_accum * a.seq), 1),
           "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
           "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
           "estimate_gib": summary.get("estimate_gib"), "wall_s": round(wall, 1),
           "losses": [round(float(r["loss"]), 4) for r in rows], **_gpu(), **_versions()})


def _sync_steps(summary: dict) -> int:
    """How many steps share one loss read (and so one tokens/s figure) in loss.csv."""
    fast = summary.get("fast_path") or {}
    return int(fast.get("loss_sync_steps", 1))


def _steady_rows(rows: list[dict], warmup: int, sync: int) -> list[dict]:
    """The loss.csv rows of the loss-read windows that start after the warm-up steps.

    With loss_sync_steps N the loop times N steps at once and writes that window's average
    tokens/s on each of its rows, so a window that holds a warm-up (compiling) step is dropped
    whole. Raises when no such window is left: ask for more --steps.
    """
    timed = [r for r in rows if (int(r["step"]) - 1) // sync * sync >= warmup]
    if not timed:
        raise SystemExit(f"no loss-read window starts after the {warmup} warm-up steps (windows of {sync} steps, "
                         f"{len(rows)} steps in all): --steps {-(-warmup // sync) * sync + sync - warmup} gives one whole window after them")
    return timed


def _tokens_per_s(rows: list[dict], tokens_per_step: int) -> float:
    """Steady-state tokens/s: all timed steps' tokens over their time (each row holds its window's rate)."""
    seconds = sum(tokens_per_step / float(r["tokens_per_s"]) for r in rows)
    return tokens_per_step * len(rows) / seconds


def cmd_eval(a) -> None:
    """Reference loop (one generate per item) vs PricePredictor.predict on the same prompts."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pricefit.inference import PricePredictor, reference_predict

    tok = AutoTokenizer.from_pretrained(a.dir)
    model = AutoModelForCausalLM.from_pretrained(a.dir, quantization_config=_bnb(a.compute),
                                                 dtype=getattr(torch, a.compute), device_map={"": 0})
    rnd = random.Random(0)
    # prompts of realistic, varied length (the reference texts are ~160 tokens)
    texts = [" ".join(f"w{rnd.randrange(20, VOCAB)}" for _ in range(rnd.randint(120, 170)))
             for _ in range(a.items)]
    pred = PricePredictor(model=model, tokenizer=tok, prompt_template="{text} Price is $",
                          max_new_tokens=a.new_tokens)
    pred.predict(texts[:8], batch_size=8, progress=False)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    ref = reference_predict(pred, texts[: a.ref_items])
    torch.cuda.synchronize()
    ref_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fast = pred.predict(texts, batch_size=a.batch, progress=False)
    torch.cuda.synchronize()
    fast_s = time.perf_counter() - t0
    same = sum(r.raw == f.raw for r, f in zip(ref, fast[: a.ref_items]))
    ref_ips, fast_ips = a.ref_items / ref_s, a.items / fast_s
    _emit({"bench": "eval", "compute": a.compute, "items": a.items, "ref_items": a.ref_items, "batch": a.batch,
           "new_tokens": a.new_tokens, "reference_items_per_s": round(ref_ips, 2),
           "batched_items_per_s": round(fast_ips, 2), "speedup": round(fast_ips / ref_ips, 1),
           "same_predictions": f"{same}/{a.ref_items}",
           "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), **_gpu(), **_versions()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare", help="random-weight model of a real architecture + a full-vocab tokenizer")
    s.add_argument("--arch", default="llama-3.1-8b", choices=sorted(ARCHS))
    s.add_argument("--dir", required=True)
    for name in ("plain", "unsloth", "ours"):
        s = sub.add_parser(name)
        s.add_argument("--dir", required=True)
        s.add_argument("--batch", type=int, default=4)
        s.add_argument("--seq", type=int, default=182)
        s.add_argument("--steps", type=int, default=10, help="timed steps (plain, unsloth: the median step; ours: the loss-read windows after the warm-up)")
        s.add_argument("--warmup", type=int, default=3, help="untimed first steps")
        if name in ("plain", "unsloth"):
            s.add_argument("--optim", default="paged_adamw_32bit")
            s.add_argument("--gc", action="store_true", help="gradient checkpointing")
        if name == "unsloth":
            s.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (Unsloth's fast path needs 0)")
        if name == "ours":
            s.add_argument("--mode", default="throughput", choices=["auto", "throughput", "memory"])
            s.add_argument("--set", default=None, help='JSON of extra TrainConfig fields, e.g. {"optimizer":"adamw_fused"}')
    s = sub.add_parser("eval")
    s.add_argument("--dir", required=True)
    s.add_argument("--items", type=int, default=1024)
    s.add_argument("--ref-items", type=int, default=64)
    s.add_argument("--batch", type=int, default=256)
    s.add_argument("--new-tokens", type=int, default=4)
    s.add_argument("--compute", default="bfloat16", choices=["bfloat16", "float32"],
                   help="compute dtype of the 4-bit layers (float32: no bf16 near-tie flips)")
    a = p.parse_args()
    {"prepare": cmd_prepare, "plain": cmd_plain, "unsloth": cmd_unsloth, "ours": cmd_ours, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
