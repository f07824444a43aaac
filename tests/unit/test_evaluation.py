"""evaluate() and the evaluate/predict CLI on a hand-made curated fixture with the tiny random Llama + a LoRA adapter."""

import json

import polars as pl
import pytest

torch = pytest.importorskip("torch")

from pricefit import artifacts  # noqa: E402
from pricefit.config import EvaluateConfig  # noqa: E402

ITEMS = [
    # item_id, category, title, price
    ("A1", "Appliances", "Stainless Steel Kettle", 35.0),
    ("A2", "Appliances", "Compact Blender", 120.0),
    ("T1", "Tools_and_Home_Improvement", "Cordless Drill", 89.0),
    ("T2", "Tools_and_Home_Improvement", "Socket Ratchet Set", 640.0),
    ("M1", "Musical_Instruments", "Guitar Strings", 12.0),
]
BODY = "Made from high quality materials for long lasting performance. Easy to install and use."


def _curated(d, n_train=2):
    d.mkdir(parents=True)
    rows = [
        {"item_id": i, "category": c, "title": t, "text": f"{t}\n{BODY}", "price": p, "source_file": "fixture.jsonl", "source_line": k + 1}
        for k, (i, c, t, p) in enumerate(ITEMS)
    ]
    frame = pl.DataFrame(rows, schema={"item_id": pl.String, "category": pl.String, "title": pl.String, "text": pl.String,
                                       "price": pl.Float64, "source_file": pl.String, "source_line": pl.Int64})
    frame.write_parquet(d / "test.parquet")
    frame.head(n_train).write_parquet(d / "train.parquet")
    # (not empty: datasets 4 cannot load_from_disk a DatasetDict saved with a 0-row split)
    frame.tail(1).write_parquet(d / "validation.parquet")
    artifacts.write_manifest(d, {"kind": "curated", "schema_version": 1})
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """PRICEFIT_HOME in a temp dir, one thread, a LoRA adapter on tiny-random, and a curated fixture."""
    root = tmp_path_factory.mktemp("evaluation")
    mp = pytest.MonkeyPatch()
    mp.setenv("PRICEFIT_HOME", str(root / "home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared 2-core machine
    try:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from pricefit.models import resolve_model

        base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random"))
        torch.manual_seed(0)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        train_out = root / "train"
        peft.save_pretrained(train_out / "adapter")
        artifacts.write_manifest(train_out, {"kind": "adapter", "base_model": "tiny-random"})
        yield {"root": root, "adapter": train_out, "curated": _curated(root / "curated")}
    finally:
        torch.set_num_threads(threads)
        mp.undo()


def test_evaluate_writes_every_file_with_the_right_rows(env):
    from pricefit.evaluation import evaluate

    cfg = EvaluateConfig(max_new_tokens=4, batch_size=2, device="cpu")
    out = env["root"] / "eval"
    # base model read from the adapter's train manifest
    ref = evaluate(env["curated"], out, cfg, base_model=None, adapter_dir=env["adapter"])
    assert ref.kind == "evaluation" and ref.rows == len(ITEMS)
    for name in ("predictions.parquet", "metrics.json", "report.md", "report.json", "scatter.png", "errors.png", "manifest.json"):
        assert (out / name).is_file(), name
    preds = pl.read_parquet(out / "predictions.parquet")
    assert preds.columns == ["item_id", "category", "price", "prediction", "raw", "parsed"]
    assert preds["item_id"].to_list() == [i[0] for i in ITEMS]
    assert preds["price"].to_list() == [i[3] for i in ITEMS]
    assert preds["parsed"].to_list() == preds["prediction"].is_not_null().to_list()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["n_unparsed"] == int((~preds["parsed"]).sum())
    assert set(metrics["by_category"]) == {"Appliances", "Tools_and_Home_Improvement", "Musical_Instruments"}
    assert sum(b["n"] for b in metrics["by_band"].values()) == 5
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "![scatter](scatter.png)" in report and "## By category" in report and "Stainless Steel Kettle" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "evaluation" and manifest["base_model"] == "tiny-random"
    assert manifest["rows"] == {"scored": 5, "skipped": 0}
    assert artifacts.verify(ref)


def test_evaluate_max_items_and_missing_split(env):
    from pricefit.errors import PricefitError
    from pricefit.evaluation import evaluate

    ref = evaluate(env["curated"], env["root"] / "eval2", EvaluateConfig(max_items=2, max_new_tokens=2, device="cpu"), "tiny-random")
    assert ref.rows == 2 and pl.read_parquet(ref.dir / "predictions.parquet").height == 2
    empty = env["root"] / "curated_empty"
    empty.mkdir()
    pl.read_parquet(env["curated"] / "test.parquet").head(0).write_parquet(empty / "test.parquet")
    artifacts.write_manifest(empty, {"kind": "curated", "schema_version": 1})
    with pytest.raises(PricefitError, match="no items to evaluate"):
        evaluate(empty, env["root"] / "eval3", EvaluateConfig(device="cpu"), "tiny-random")
    assert not (env["root"] / "eval3").exists()  # nothing half-written


def test_evaluate_cli_json(env):
    from typer.testing import CliRunner

    from pricefit.cli import app

    out = env["root"] / "eval_cli"
    r = CliRunner().invoke(app, ["evaluate", "--adapter", str(env["adapter"]), "--data", str(env["curated"]), "--out", str(out),
                                 "--max-items", "3", "--set", "max_new_tokens=2", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["n"] == 3 and result["ok"] is True
    assert {"mae", "rmsle", "hit_rate", "n_unparsed"} <= set(result)
    assert result["mae"] == json.loads((out / "metrics.json").read_text())["mae"]


def test_predict_cli_title_and_json_listing(env, tmp_path):
    from typer.testing import CliRunner

    from pricefit.cli import app
    from pricefit.evaluation import make_predictor, predict_listings

    runner = CliRunner()
    args = ["predict", "--adapter", str(env["adapter"]), "--device", "cpu", "--json"]
    r = runner.invoke(app, [*args, "--title", "Cordless Drill", "--description", BODY])
    assert r.exit_code == 0, r.output
    one = json.loads(r.stdout.strip().splitlines()[-1])
    assert one["n"] == 1 and one["title"] == "Cordless Drill" and one["parsed"] == (one["price"] is not None)

    # the same listing through the library gives the same raw output
    pred = make_predictor(EvaluateConfig(device="cpu"), None, env["adapter"])
    lib = predict_listings([{"title": "Cordless Drill", "description": BODY}], pred)
    assert lib[0]["raw"] == one["raw"] and lib[0]["text"].startswith("Cordless Drill\n")

    listings = tmp_path / "l.json"
    listings.write_text(json.dumps([{"title": "Guitar Strings", "description": ["steel", "set of 6"]}, {"description": "no title"}]))
    r = runner.invoke(app, [*args, "--json-listing", str(listings)])
    assert r.exit_code == 0, r.output
    many = json.loads(r.stdout.strip().splitlines()[-1])
    assert many["n"] == 2 and [p["skipped"] for p in many["predictions"]] == [None, "title_missing"]


def test_predict_cli_errors_are_clear(env):
    from typer.testing import CliRunner

    from pricefit.cli import app

    r = CliRunner().invoke(app, ["predict", "--adapter", str(env["adapter"]), "--title", "x", "--file", "y.jsonl"])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = CliRunner().invoke(app, ["evaluate", "--out", "x", "--data", "y"])
    assert r.exit_code == 2 and "no --adapter and no --base-model" in r.output


def _listing(title, price, desc=BODY):
    return {"main_category": "Appliances", "title": title, "description": [desc], "features": ["steel", "1.7 L"],
            "details": {"Brand": "Acme", "UPC": "123456789012"}, "price": price, "parent_asin": f"X{abs(hash(title)) % 10**6}"}


def test_evaluate_source_scores_usable_listings_and_accounts_for_the_rest(env, tmp_path):
    from pricefit.config import CurateConfig
    from pricefit.evaluation import evaluate_source

    lines = [
        json.dumps(_listing("Electric Kettle", 29.99)),
        json.dumps(_listing("Toaster Oven", "$1,049.00")),  # price_out_of_range (max 999.49)
        json.dumps(_listing("Blender", None)),  # price_missing: cannot be scored
        json.dumps({**_listing("x", 10.0), "title": None}),  # title_missing
        json.dumps(_listing("Hand Mixer", 45.0)),
        json.dumps(_listing("Rice Cooker", 60.0)),
        "{not json",  # quarantined by the reader: never reaches scoring
    ]
    src = tmp_path / "new.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = env["root"] / "eval_src"
    ref = evaluate_source(str(src), out, EvaluateConfig(max_items=2, max_new_tokens=2, device="cpu"), "tiny-random",
                          curate_cfg=CurateConfig(min_chars=40))
    preds = pl.read_parquet(out / "predictions.parquet")
    assert preds["price"].to_list() == [29.99, 45.0]  # usable ones in input order, cut to max_items=2
    skipped = pl.read_parquet(out / "skipped.parquet")
    assert sorted(skipped["reason"].to_list()) == ["price_missing", "price_out_of_range", "title_missing"]
    inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    assert inputs["rows_read"] == 6 and inputs["over_max_items"] == 1
    assert inputs["rows_read"] == ref.rows + skipped.height + inputs["over_max_items"]


def test_tokenized_input_gives_the_same_predictions_as_curated(env):
    """The tokenized artifact's prompt column and the prompt evaluate builds from curated text agree."""
    from pricefit.config import TokenizeConfig
    from pricefit.evaluation import evaluate, make_predictor
    from pricefit.tokenization import tokenize

    tok_dir = env["root"] / "tokenized"
    tokenize(env["curated"], tok_dir, TokenizeConfig(base_model="tiny-random"))
    cfg = EvaluateConfig(max_new_tokens=3, batch_size=5, device="cpu")
    pred = make_predictor(cfg, "tiny-random", env["adapter"])
    a = evaluate(env["curated"], env["root"] / "ev_cur", cfg, predictor=pred)
    b = evaluate(tok_dir, env["root"] / "ev_tok", cfg, predictor=pred)
    pa, pb = (pl.read_parquet(r.dir / "predictions.parquet") for r in (a, b))
    assert pb["item_id"].to_list() == pa["item_id"].to_list()
    assert pb["raw"].to_list() == pa["raw"].to_list()
    assert json.loads((b.dir / "manifest.json").read_text())["inputs"]["kind"] == "tokenized"


def test_predict_cli_file_writes_jsonl_and_expected_mode(env, tmp_path):
    from typer.testing import CliRunner

    from pricefit.cli import app

    src = tmp_path / "listings.jsonl"
    src.write_text("\n".join(json.dumps(_listing(t, None)) for t in ("Kettle", "Mixer", "Lamp")) + "\n")
    out = tmp_path / "preds.jsonl"
    r = CliRunner().invoke(app, ["predict", "--base-model", "tiny-random", "--file", str(src), "--out", str(out),
                                 "--mode", "expected", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert res["n"] == 3 and len(rows) == 3 and res["mode"] == "expected"
    assert [x["title"] for x in rows] == ["Kettle", "Mixer", "Lamp"]
    # expected mode always yields a number (normalised over digit mass), clipped to the default range
    assert all(x["parsed"] and 0.0 <= x["prediction"] <= 10_000.0 for x in rows)
    assert res["n_priced"] == 3
