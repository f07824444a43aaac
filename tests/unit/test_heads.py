"""The regression price head (train.head: regression): it learns, it resumes, it reloads without pricefit.

Tiny-random Llama through real bitsandbytes 4-bit on the CPU, on a hand-made tokenized artifact
where the colour word decides the price (red $12, blue $340), so a head that learns anything must
price blue items far above red ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from pricefit import artifacts  # noqa: E402
from pricefit.config import TrainConfig  # noqa: E402

PROMPT = "How much does this cost to the nearest dollar?\n\n{text}\n\nPrice is $"
WORDS = ("two", "six", "ten", "many", "few", "some", "nine", "all")
ITEMS = [(f"Widget {w} {c} {c} {c}", p) for c, p in (("red", 12.0), ("blue", 340.0)) for w in WORDS]


@pytest.fixture(scope="module")
def tokenized(home, tmp_path_factory) -> Path:
    from datasets import Dataset, DatasetDict

    from pricefit.models import load_tokenizer

    tok = load_tokenizer("tiny-random")
    rows = {k: [] for k in ("item_id", "category", "text", "price", "prompt", "input_ids", "attention_mask", "labels")}
    for i, (text, price) in enumerate(ITEMS):
        prompt = PROMPT.replace("{text}", text)
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        c = tok(f"{int(price)}.00", add_special_tokens=False)["input_ids"]
        rows["item_id"].append(f"i{i}")
        rows["category"].append("Red" if "red" in text else "Blue")
        rows["text"].append(text)
        rows["price"].append(price)
        rows["prompt"].append(prompt)
        rows["input_ids"].append(p + c)
        rows["attention_mask"].append([1] * (len(p) + len(c)))
        rows["labels"].append([-100] * len(p) + c)
    ds = Dataset.from_dict(rows)
    out = tmp_path_factory.mktemp("tok") / "tokenized"
    out.mkdir()
    DatasetDict({"train": ds, "validation": ds, "test": ds}).save_to_disk(str(out / "dataset"))
    artifacts.write_manifest(out, {"kind": "tokenized", "base_model": "tiny-random", "rows": {"train": len(ds)}})
    return out


def cfg(**kw) -> TrainConfig:
    base = dict(base_model="tiny-random", quantization="4bit", compute_dtype="float32", device="cpu", lora_r=8,
                lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", learning_rate=1e-2, batch_size=8,
                max_steps=30, lr_scheduler="constant", warmup_ratio=0.0, save_steps=10, seed=3, head="regression")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tokenized, tmp_path_factory) -> Path:
    from pricefit.training import train

    out = tmp_path_factory.mktemp("train") / "train"
    train(tokenized, out, cfg())
    return out


def test_head_is_saved_beside_the_adapter_with_its_target_scale(trained):
    spec = json.loads((trained / "adapter" / "price_head.json").read_text())
    logs = [math.log1p(p) for _, p in ITEMS]
    mean = sum(logs) / len(logs)
    std = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    assert spec["kind"] == "regression" and spec["pool"] == "last" and spec["target"] == "log1p"
    assert spec["mean"] == pytest.approx(mean) and spec["std"] == pytest.approx(std)
    assert (trained / "adapter" / "price_head.safetensors").is_file()
    assert artifacts.read_manifest(trained)["head"] == "regression"
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] / 3


def test_head_separates_the_prices_it_was_trained_on(trained):
    from pricefit.inference import PricePredictor

    pred = PricePredictor(adapter_dir=trained, device="cpu")
    assert pred.resolve_mode("auto") == "head"
    out = pred.predict([t for t, _ in ITEMS], batch_size=5, mode="auto")
    red = [p.value for p, (t, _) in zip(out, ITEMS) if "red" in t]
    blue = [p.value for p, (t, _) in zip(out, ITEMS) if "blue" in t]
    assert all(p.parsed and p.raw.startswith("head ") for p in out)
    assert max(red) < 60 and min(blue) > 150, (red, blue)


def test_left_padding_does_not_change_a_prediction(trained):
    from pricefit.inference import PricePredictor

    pred = PricePredictor(adapter_dir=trained, device="cpu")
    short, long = "Widget red", "Widget " + "very " * 30 + "blue blue blue"
    alone = pred.predict([short], mode="head")[0].value
    padded = pred.predict([short, long], batch_size=2, mode="head")[0].value
    assert padded == pytest.approx(alone, rel=1e-4)


def test_a_hugging_face_user_reloads_the_head_without_pricefit(trained):
    """transformers + peft + safetensors alone reproduce pricefit's prediction from the saved files."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from pricefit.inference import PricePredictor
    from pricefit.models import load_tokenizer, resolve_model

    text = ITEMS[9][0]
    expected = PricePredictor(adapter_dir=trained, device="cpu").predict([text], mode="head")[0].value
    spec = json.loads((trained / "adapter" / "price_head.json").read_text())
    w = load_file(str(trained / "adapter" / "price_head.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(str(resolve_model("tiny-random")), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(trained / "adapter")).eval()
    tok = load_tokenizer("tiny-random")
    ids = tok(PROMPT.replace("{text}", text), return_tensors="pt")
    with torch.no_grad():
        h = model(**ids, output_hidden_states=True).hidden_states[-1][0, -1]
    z = float(h @ w["weight"][0] + w["bias"][0])
    # the 4-bit base in training vs a float32 base here: close, not equal
    assert math.expm1(z * spec["std"] + spec["mean"]) == pytest.approx(expected, rel=0.15)


class _Kill(Exception):
    pass


def _killed_at(step_to_kill: int, tokenized, out, c) -> None:
    """Train until just after step ``step_to_kill`` (its checkpoint written, if any), then die."""
    from pricefit.training import train

    def stop(step, total, loss, tps):
        if step == step_to_kill:
            raise _Kill

    with pytest.raises(_Kill):
        train(tokenized, out, c, progress=stop)


def test_killed_head_run_resumes_to_the_same_head(tokenized, tmp_path):
    from safetensors.torch import load_file

    from pricefit.training import train

    c = cfg(max_steps=6, save_steps=2)
    whole = tmp_path / "whole"
    train(tokenized, whole, c)
    resumed = tmp_path / "resumed"
    _killed_at(3, tokenized, resumed, c)
    train(tokenized, resumed, c)
    assert json.loads((resumed / "train_summary.json").read_text())["resumed"] is True
    a = load_file(str(whole / "adapter" / "price_head.safetensors"))
    b = load_file(str(resumed / "adapter" / "price_head.safetensors"))
    assert torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"])


def test_oversample_and_price_balance_shape_the_epoch(tokenized):
    from datasets import load_from_disk

    from pricefit.slices import SliceSpec
    from pricefit.training import train_index

    ds = load_from_disk(str(tokenized / "dataset"))["train"]
    assert train_index(ds, cfg()) == list(range(len(ds)))
    blue = SliceSpec(name="blue", column="category", equals=["Blue"])
    idx = train_index(ds, cfg(oversample={"blue": 3}), [blue])
    blue_rows = {i for i, c in enumerate(ds["category"]) if c == "Blue"}
    assert sorted(idx) == sorted([i for i in range(len(ds)) if i not in blue_rows] + [i for i in blue_rows for _ in range(3)])
    # a catalogue of 12 cheap and 4 dear items: full balancing gives each price bin the same expected weight
    prices = [5.0] * 12 + [500.0] * 4
    from datasets import Dataset

    skewed = Dataset.from_dict({"price": prices, "item_id": [str(i) for i in range(16)]})
    idx = train_index(skewed, cfg(price_balance=1.0))
    cheap = sum(1 for i in idx if prices[i] < 100)
    assert abs(cheap - (len(idx) - cheap)) <= 2 and abs(len(idx) - 16) <= 2


@pytest.mark.slow
def test_scoring_raw_listings_builds_the_prompts_training_built(home, tmp_path):
    """No train/serve skew: `evaluate --source` (raw listings, as held-out files are scored) gives the
    same prediction for an item as `evaluate --data` on its tokenized prompt, because the adapter
    records the curation and tokenization settings and the prompt is cut the same way."""
    import polars as pl

    from pricefit.config import CurateConfig, EvaluateConfig, TokenizeConfig
    from pricefit.curation import curate, ingest
    from pricefit.evaluation import evaluate, evaluate_source
    from pricefit.tokenization import tokenize
    from pricefit.training import train

    ccfg = CurateConfig(tokenizer="tiny-random", max_text_tokens=40, min_chars=40)
    ingest("demo:120", tmp_path / "raw", ccfg)
    curate(tmp_path / "raw", tmp_path / "curated", ccfg)
    # a cap below the longest prompts: some texts are cut by the token budget, as in real data
    tokenize(tmp_path / "curated", tmp_path / "tok", TokenizeConfig(base_model="tiny-random", max_length=56))
    assert artifacts.read_manifest(tmp_path / "tok")["truncated"] > 0
    train(tmp_path / "tok", tmp_path / "train", cfg(max_steps=2, save_steps=50))
    ecfg = EvaluateConfig(device="cpu", batch_size=4)
    evaluate(tmp_path / "tok", tmp_path / "ev-data", ecfg, adapter_dir=tmp_path / "train")
    evaluate_source("demo:120", tmp_path / "ev-src", ecfg, adapter_dir=tmp_path / "train")
    data = pl.read_parquet(tmp_path / "ev-data" / "predictions.parquet")
    src = pl.read_parquet(tmp_path / "ev-src" / "predictions.parquet")
    joined = data.join(src, on="item_id", suffix="_src")
    assert joined.height == data.height > 0
    assert joined["prediction"].to_list() == pytest.approx(joined["prediction_src"].to_list(), rel=1e-5)


def test_choose_weight_takes_the_validation_minimum_and_prefers_the_head_on_ties():
    from pricefit.blend import choose_weight

    truth = [10.0, 100.0]
    # the head is exact: weight 0; TF-IDF exact: weight 1; both equally off in log space: any weight ties -> 0
    assert choose_weight(truth, [20.0, 50.0], truth)[0] == 0.0
    assert choose_weight([20.0, 50.0], truth, truth)[0] == 1.0
    w, scores = choose_weight([5.0, 200.0], [20.0, 50.0], truth)
    assert 0 < w < 1 and scores["blend_mae"] < min(scores["head_mae"], scores["tfidf_mae"])
    assert scores["head_mae"] == pytest.approx((5 + 100) / 2) and scores["tfidf_mae"] == pytest.approx((10 + 50) / 2)


def test_tfidf_blend_is_fit_on_validation_saved_without_pickles_and_applied(tokenized, tmp_path):
    import numpy as np

    from pricefit.blend import BLEND_ARRAYS, BLEND_CONFIG, GRID, load_blend
    from pricefit.inference import PricePredictor
    from pricefit.training import train

    out = tmp_path / "train"
    train(tokenized, out, cfg(max_steps=4, blend="tfidf", blend_min_items=1))
    saved = json.loads((out / "adapter" / BLEND_CONFIG).read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    assert saved["weight"] in GRID and summary["blend"]["weight"] == saved["weight"]
    assert summary["blend"]["blend_mae"] <= min(summary["blend"]["head_mae"], summary["blend"]["tfidf_mae"]) + 1e-9
    assert set(np.load(out / "adapter" / BLEND_ARRAYS).files) == {"idf", "coef", "intercept"}  # plain arrays

    pred = PricePredictor(adapter_dir=out, device="cpu")
    blend = load_blend(out)
    assert pred.blend is not None and blend.weight == saved["weight"]
    prompts = [PROMPT.replace("{text}", t) for t, _ in ITEMS[:3]]
    got = pred.predict(prompts, prompts=True, mode="head")
    pred.blend = None
    head_only = [p.value for p in pred.predict(prompts, prompts=True, mode="head")]
    w = blend.weight
    expected = np.expm1((1 - w) * np.log1p(head_only) + w * np.log1p(blend.tfidf(prompts)))
    assert [p.value for p in got] == pytest.approx(expected.tolist(), rel=1e-6)
    assert got[0].raw.startswith("blend ")
    # each prediction carries its components (issue 22): the head alone and TF-IDF alone
    assert [p.parts["head"] for p in got] == pytest.approx(head_only, rel=1e-6)
    assert [p.parts["tfidf"] for p in got] == pytest.approx(blend.tfidf(prompts).tolist(), rel=1e-6)

    # the evaluation records what the model is and scores each component alone on the same items
    from pricefit.config import EvaluateConfig
    from pricefit.evaluation import evaluate

    ev = Path(evaluate(tokenized, tmp_path / "ev", EvaluateConfig(device="cpu", split="test"), adapter_dir=out).path)
    model = json.loads((ev / "metrics.json").read_text())["model"]
    assert model["label"] == f"fine-tuned head x {1 - w:.2f} + tfidf x {w:.2f}"
    assert [(c["name"], c["weight"]) for c in model["components"]] == [("head", round(1 - w, 4)), ("tfidf", w)]
    truth = [p for _, p in ITEMS]
    pred.blend = blend
    parts = [p.parts for p in pred.predict([PROMPT.replace("{text}", t) for t, _ in ITEMS], prompts=True, mode="head")]
    head_mae = float(np.mean([abs(p["head"] - t) for p, t in zip(parts, truth)]))
    assert model["components"][0]["metrics"]["mae"] == pytest.approx(head_mae, rel=1e-5)
    assert json.loads((ev / "manifest.json").read_text())["model"]["label"] == model["label"]
    assert f"- **model**: `{model['label']}`" in (ev / "report.md").read_text()


def test_retrieval_blend_is_fit_on_validation_and_both_head_paths_apply_it(tokenized, tmp_path):
    """train.blend: tfidf+knn: the index of the training items' pooled states is saved, and the
    left-padded and the fast (right-padded, length-sorted) paths give each item its own neighbours."""
    import numpy as np

    from pricefit.blend import BLEND_CONFIG, load_blend, mix
    from pricefit.heads import head_prices
    from pricefit.inference import PricePredictor
    from pricefit.retrieval import KNN_CONFIG
    from pricefit.training import train

    out = tmp_path / "train"
    train(tokenized, out, cfg(max_steps=4, blend="tfidf+knn", blend_min_items=1))
    saved = json.loads((out / "adapter" / BLEND_CONFIG).read_text())
    index = json.loads((out / "adapter" / KNN_CONFIG).read_text())
    summary = json.loads((out / "train_summary.json").read_text())["blend"]
    assert saved["parts"] == ["tfidf", "knn"] and index["items"] == len(ITEMS)
    assert summary["weights"] == saved["weights"] and sum(saved["weights"].values()) == pytest.approx(1.0)
    assert summary["blend_mae"] <= min(summary["head_mae"], summary["tfidf_mae"], summary["knn_mae"]) + 1e-9

    blend = load_blend(out)
    # items of different lengths, in an order the fast path re-sorts
    prompts = [PROMPT.replace("{text}", t) for t in ("Widget blue", ITEMS[0][0] + " extra words here", "Widget red red")]
    slow = PricePredictor(adapter_dir=out, device="cpu", head_fast=False)
    fast = PricePredictor(adapter_dir=out, device="cpu", head_fast=True)
    got_slow = [p.value for p in slow.predict(prompts, prompts=True, mode="head")]
    got_fast = [p.value for p in fast.predict(prompts, prompts=True, mode="head")]
    assert got_fast == pytest.approx(got_slow, rel=1e-4)
    enc = slow._encode(prompts)
    head, pooled = head_prices(slow.model, slow.head, slow.head_spec, enc["input_ids"], enc["attention_mask"], return_pooled=True)
    parts = {"head": head.numpy(), "tfidf": blend.tfidf(prompts), "knn": blend.knn.predict(pooled.numpy())}
    assert got_slow == pytest.approx(mix(parts, blend.weights()).tolist(), rel=1e-6)
    assert "knn" in slow.predict(prompts[:1], prompts=True, mode="head")[0].raw


def test_too_few_validation_items_leave_the_head_alone_and_say_so(tokenized, tmp_path):
    """Weights chosen on a few dozen items are noise (the demo's 33 put all weight on TF-IDF, which
    then lost to the head on test): below train.blend_min_items the head stands alone."""
    from pricefit.blend import BLEND_CONFIG

    from pricefit.training import train

    out = tmp_path / "train"
    train(tokenized, out, cfg(max_steps=2, blend="tfidf+knn", blend_min_items=len(ITEMS) + 1))
    saved = json.loads((out / "adapter" / BLEND_CONFIG).read_text())
    train_summary = json.loads((out / "train_summary.json").read_text())["blend"]
    assert saved["weights"] == {"head": 1.0, "tfidf": 0.0, "knn": 0.0}
    assert train_summary["blend_mae"] == train_summary["head_mae"]
    assert train_summary["note"] == f"{len(ITEMS)} validation items are fewer than train.blend_min_items ({len(ITEMS) + 1}): the head alone"
    assert {"tfidf_mae", "knn_mae"} <= set(train_summary)  # the parts are still scored and reported


def test_blend_needs_the_regression_head():
    with pytest.raises(ValueError, match="train.blend needs train.head: regression"):
        cfg(head="generate", blend="tfidf")


def test_a_damaged_checkpoint_is_skipped_for_the_previous_good_one(tokenized, tmp_path, caplog):
    """Issue 10 finding 7: a 0-byte optimizer.pt in the last checkpoint blocked every restart."""
    from safetensors.torch import load_file

    from pricefit.training import checkpoint_root, train

    c = cfg(max_steps=6, save_steps=2)
    whole = tmp_path / "whole"
    train(tokenized, whole, c)
    out = tmp_path / "run"
    _killed_at(5, tokenized, out, c)
    steps = sorted(checkpoint_root(out).glob("*/step-*"))
    assert [p.name for p in steps] == ["step-0000002", "step-0000004"]  # the last two are kept
    (steps[-1] / "optimizer.pt").write_bytes(b"")  # the damage
    with caplog.at_level("WARNING", logger="pricefit.training"):
        train(tokenized, out, c)
    assert any("checkpoint" in r.message and "optimizer.pt does not match its recorded sha256 (0 bytes)" in r.message
               and "resuming from the previous good one" in r.message for r in caplog.records)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed"] is True
    # resumed from step 2 and ended where an uninterrupted run ends
    a = load_file(str(whole / "adapter" / "price_head.safetensors"))
    b = load_file(str(out / "adapter" / "price_head.safetensors"))
    assert torch.equal(a["weight"], b["weight"])
    assert json.loads((whole / "train_summary.json").read_text())["final_loss"] == summary["final_loss"]
