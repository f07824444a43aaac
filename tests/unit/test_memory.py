"""Memory planner: itemised numbers exact on a hand-checked tiny config; Llama-3.1 sizes; CLI."""

from __future__ import annotations

import json

import pytest

from pricefit import memory
from pricefit.errors import PricefitError

# vocab 10, hidden 8, intermediate 16, 2 layers, 2 heads / 1 kv head of dim 4, untied embeddings
TINY = memory.ModelShape("tiny", vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=2,
                         num_heads=2, num_kv_heads=1, head_dim=4)
ACT = memory.ActivationModel(c_h=1, c_i=1, c_ckpt=2, c_vocab=3, overhead_gib=0.0, source="test")


def test_parameter_counts_by_hand():
    # per layer: q 8x8=64, k 8x4=32, v 32, o 64, gate 8x16=128, up 128, down 128 -> 576
    assert TINY.linear_params == 2 * 576
    assert TINY.embedding_params == 2 * 10 * 8
    assert TINY.norm_params == (2 * 2 + 1) * 8
    assert TINY.total_params == 1152 + 160 + 40
    # LoRA r=2 on q (8+8) and v (8+4): 2*16 + 2*12 = 56 a layer
    assert TINY.lora_params(2, ["q_proj", "v_proj"]) == 112


def test_qlora_items_exact():
    e = memory.estimate(TINY, "qlora", batch=2, seq=3, lora_r=2, target_modules=["q_proj", "v_proj"], act=ACT)
    assert e.items == {
        "weights": 1152 // 2 + 2 * 200,  # 4-bit linears + bf16 embeddings/norms
        "quant_constants": 2 * 4 * (1 + 1 + 1 + 1 + 2 + 2 + 2),  # fp32 absmax per 64-block, ceil per tensor
        "adapters": 4 * 112,
        "gradients": 4 * 112,
        "optimizer": 8 * 112,
        "activations": 6 * 2 * (8 + 16),  # T * L * (c_h h + c_i i)
        "logits": 2 * 3 * 10 * 3,
        "overhead": 0,
    }
    assert e.total == 976 + 80 + 448 + 448 + 896 + 288 + 180


def test_double_quant_constants_and_checkpointing_exact():
    e = memory.estimate(TINY, "qlora-dq", 2, 3, 2, ["q_proj", "v_proj"], gradient_checkpointing=True,
                        logits_positions=1, act=ACT)
    # per tensor: blocks (uint8 absmax) + 4 * ceil(blocks/256) + 4 (offset)
    assert e.items["quant_constants"] == 2 * (4 * (1 + 4 + 4) + 3 * (2 + 4 + 4))
    assert e.items["activations"] == 6 * (2 * 2 * 8 + 24)  # layer inputs + one recomputed layer
    assert e.items["logits"] == 2 * 1 * 10 * 3


def test_full_and_lora_items_exact():
    full = memory.estimate(TINY, "full", 1, 1, act=ACT)
    assert (full.items["weights"], full.items["gradients"], full.items["optimizer"], full.items["adapters"]) == (
        2 * 1352, 2 * 1352, 8 * 1352, 0)
    lora = memory.estimate(TINY, "lora", 1, 1, 2, "all-linear", act=ACT)
    a = 2 * 2 * ((8 + 8) + (8 + 4) + (8 + 4) + (8 + 8) + (8 + 16) + (8 + 16) + (16 + 8))
    assert lora.params["lora"] == a
    assert (lora.items["weights"], lora.items["quant_constants"], lora.items["optimizer"]) == (2 * 1352, 0, 8 * a)


def test_llama_31_sizes():
    assert memory.load_shape("llama-3.1-8b").total_params == 8_030_261_248
    assert memory.load_shape("70b").total_params == 70_553_706_496
    assert memory.load_shape("meta-llama/Llama-3.1-405B").total_params == 405_853_388_800


def test_first_principles_within_15_percent_of_h200_measurements():
    for row in memory.check_against_measurements():
        assert abs(row["error_pct"]) <= 15.0, row


def test_calibration_reproduces_measurements():
    s = memory.BUILTIN_SHAPES["llama-3.1-8b"]
    act = memory.calibrate(memory.H200_MEASURED, s, "qlora-dq", 32, ["q_proj", "k_proj", "v_proj", "o_proj"])
    for row in memory.check_against_measurements(act):
        assert abs(row["estimate_gib"] - row["peak_gib"]) < 0.01, row


def test_local_config_json(tmp_path):
    cfg = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = memory.load_shape(str(tmp_path))
    assert (s.head_dim, s.embedding_params) == (4, 80)


def test_rejections():
    with pytest.raises(PricefitError, match="unknown method"):
        memory.estimate(TINY, "qlora-3bit", 1, 1)
    with pytest.raises(PricefitError, match="unknown target module"):
        memory.estimate(TINY, "lora", 1, 1, target_modules=["w_pack"])
    with pytest.raises(PricefitError, match="lacks 'hidden_size'"):
        memory.shape_from_config({"vocab_size": 3}, "broken")


def test_plan_memory_cli_json():
    from typer.testing import CliRunner

    from pricefit.cli import app

    r = CliRunner().invoke(app, ["plan-memory", "--model", "8b", "--batch", "4", "--seq", "182", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["params"]["total"] == 8_030_261_248
    assert set(out["methods"]) == {"full", "lora", "qlora", "qlora-dq"}
    s = memory.BUILTIN_SHAPES["llama-3.1-8b"]
    # default loop: pricefit's (bf16 base, logits only at the label positions)
    assert out["loop"] == "pricefit"
    assert out["methods"]["qlora-dq"]["items_bytes"] == memory.estimate(
        s, "qlora-dq", 4, 182, logits_positions=8, act=memory.PRICEFIT_CUDA).items
    r = CliRunner().invoke(app, ["plan-memory", "--model", "8b", "--batch", "4", "--loop", "plain-hf", "--json"])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["methods"]["qlora-dq"]["items_bytes"] == memory.estimate(s, "qlora-dq", 4, 182).items


def test_planner_within_15_percent_of_every_h200_measurement():
    """Every peak in bench/results (plain Trainer and pricefit's loop) against plan-memory's estimate."""
    from pathlib import Path

    results = sorted((Path(__file__).resolve().parents[2] / "bench" / "results").glob("h200-*.jsonl"))
    rows = [json.loads(line) for f in results for line in f.read_text().splitlines() if line.strip()]
    # bench/gpu_bench.py's rows (the 8B architecture, with "impl"); bench/train_speed.py's are SmolLM2's
    # plan-memory models the per-step loop; a row of the CUDA fast path (marked fast_path) is not held to it:
    # at batch 48 its 8B rows peak at 43.8 GiB against the planner's 55.6 (docs/PERFORMANCE.md)
    # the rows of other architectures or of Unsloth's own loop are not what the planner models either
    trains = [r for r in rows if r.get("bench") == "train" and r.get("impl") in ("pricefit", "plain-hf")
              and r.get("arch", "llama-3.1-8b") == "llama-3.1-8b" and not r.get("superseded") and not r.get("fast_path")]
    assert len(trains) >= 10
    s = memory.BUILTIN_SHAPES["llama-3.1-8b"]
    for r in trains:
        ours = r["impl"] == "pricefit"
        gc = r["mode"] == "memory" if ours else r["gc"]
        e = memory.estimate(s, "qlora-dq", r["batch"], r["seq"], 32, ["q_proj", "k_proj", "v_proj", "o_proj"], gc,
                            logits_positions=8 if ours else None,
                            act=memory.PRICEFIT_CUDA if ours else memory.FIRST_PRINCIPLES)
        err = abs(e.total_gib - r["peak_alloc_gib"]) / r["peak_alloc_gib"]
        assert err < 0.15, (r["impl"], r["batch"], gc, r["peak_alloc_gib"], round(e.total_gib, 2))
