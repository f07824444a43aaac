"""Tokenization: prompt/completion masks token by token, truncation, the stage on a hand-built curated dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pricefit import models
from pricefit.artifacts import sha256_file, verify, write_manifest
from pricefit.config import TokenizeConfig
from pricefit.errors import PricefitError
from pricefit.tokenization import (
    IGNORE_INDEX,
    build_completion,
    build_prompt,
    encode_example,
    tokenize,
)

TEXT = "Stainless Steel Kettle\nElectric kettle with auto shut-off, 1.7 litre, {not a slot}."


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("pricefit_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRICEFIT_HOME", str(home))
        models.ensure_builtin("tiny-random")
        yield home


@pytest.fixture
def tok(home, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(home))
    return models.load_tokenizer("tiny-random")


@pytest.fixture
def cfg(home, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(home))
    return TokenizeConfig(base_model="tiny-random", max_length=96)


def test_prompt_and_completion_follow_the_reference(cfg):
    assert build_prompt(TEXT, cfg) == f"How much does this cost to the nearest dollar?\n\n{TEXT}\n\nPrice is $"
    assert build_completion(122.6, cfg) == "123.00"
    assert build_completion(0.5, cfg) == "0.00"  # Python round, half to even, as the reference
    assert build_completion(999.49, cfg) == "999.00"
    custom = TokenizeConfig(base_model="tiny-random", prompt_template="{text} costs ", completion_template="{price} USD")
    assert build_prompt("Mug", custom) + build_completion(7.2, custom) == "Mug costs 7 USD"


def test_labels_are_exactly_the_completion_tokens(tok, cfg):
    ex = encode_example(tok, TEXT, 122.6, cfg)
    ids, labels = ex["input_ids"], ex["labels"]
    assert ex["completion"] == "123.00" and ex["truncated"] is False
    assert ex["attention_mask"] == [1] * len(ids) and len(labels) == len(ids)
    prompt_ids = tok(ex["prompt"])["input_ids"]  # what inference feeds the model
    n = len(prompt_ids)
    assert ids[0] == tok.bos_token_id == prompt_ids[0]
    assert ids[:n] == prompt_ids
    # token by token: every prompt position masked, every completion position the input token
    for i in range(len(ids)):
        if i < n:
            assert labels[i] == IGNORE_INDEX, i
        else:
            assert labels[i] == ids[i], i
    completion_ids = [x for x in labels if x != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(completion_ids) == ["1", "2", "3", ".", "0", "0"]
    assert tok.decode(completion_ids) == "123.00"
    assert tok.decode(ids, skip_special_tokens=True) == ex["prompt"] + "123.00"


def test_joined_tokenization_matches_separate_at_the_boundary(tok, cfg):
    for price in (1.0, 9.99, 45.0, 100.0, 999.0):
        ex = encode_example(tok, TEXT, price, cfg)
        joined = tok(ex["prompt"] + ex["completion"])["input_ids"]
        separate = tok(ex["prompt"])["input_ids"] + tok(ex["completion"], add_special_tokens=False)["input_ids"]
        assert ex["input_ids"] == joined == separate


def test_truncation_cuts_the_text_and_keeps_the_completion(tok, cfg):
    long_text = " ".join(["portable wireless speaker with deep bass"] * 40)
    ex = encode_example(tok, long_text, 250.0, cfg)
    assert ex["truncated"] is True
    assert len(ex["input_ids"]) <= cfg.max_length
    assert len(ex["input_ids"]) >= cfg.max_length - 2  # cut to fit, not far below
    assert ex["prompt"].startswith("How much does this cost to the nearest dollar?\n\nportable wireless")
    assert ex["prompt"].endswith("\n\nPrice is $")
    kept_text = ex["prompt"][len("How much does this cost to the nearest dollar?\n\n") : -len("\n\nPrice is $")]
    assert long_text.startswith(kept_text) and len(kept_text) < len(long_text)
    completion_ids = [x for x in ex["labels"] if x != IGNORE_INDEX]
    assert tok.decode(completion_ids) == "250.00"
    assert ex["input_ids"][-len(completion_ids):] == completion_ids


def test_truncation_drops_a_multi_token_character_whole(tok, cfg):
    # an emoji is several byte-level tokens that all map to the same character
    assert len(tok("\U0001F495", add_special_tokens=False)["input_ids"]) > 1
    base = "soft plush pillow " * 3
    for extra in range(1, 4):
        text = base + "\U0001F495"
        full = len(tok(build_prompt(text, cfg) + "12.00")["input_ids"])
        small = TokenizeConfig(base_model="tiny-random", max_length=full - extra)
        ex = encode_example(tok, text, 12.0, small)
        assert ex["truncated"] is True and len(ex["input_ids"]) <= full - extra
        assert "\ufffd" not in tok.decode(ex["input_ids"])  # no half character left behind
        assert ex["prompt"] == build_prompt(base.rstrip(), small)


def test_max_length_too_small_for_the_template_is_a_clear_error(tok, home, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(home))
    tiny = TokenizeConfig(base_model="tiny-random", max_length=10)
    with pytest.raises(PricefitError, match="max_length=10") as e:
        encode_example(tok, TEXT, 5.0, tiny)
    assert "max_length" in e.value.hint


def test_template_that_merges_across_the_boundary_is_rejected(tok, home, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(home))
    # a prompt without the trailing "$" still splits cleanly before the digits
    bad = TokenizeConfig(base_model="tiny-random", prompt_template="{text}\n\nPrice is", completion_template="{price}")
    ex_ok = encode_example(tok, TEXT, 12.0, bad)  # "is" + "12": digits always split, still fine
    assert tok.decode([x for x in ex_ok["labels"] if x != IGNORE_INDEX]) == "12"
    # "Pri" + "ce is $12": the joined text has the single token "Price", the prompt alone does not
    merged = TokenizeConfig(base_model="tiny-random", prompt_template="{text}\n\nPri", completion_template="ce is ${price}")
    assert "Price" in tok.convert_ids_to_tokens(tok(TEXT + "\n\nPrice is $12")["input_ids"])
    with pytest.raises(PricefitError, match="not a prefix"):
        encode_example(tok, TEXT, 12.0, merged)


# ----------------------------------------------------------------------------------------------
# the stage


def _curated_dir(root: Path, rows: dict[str, int]) -> Path:
    import polars as pl

    d = root / "curated"
    d.mkdir()
    for split, n in rows.items():
        frame = pl.DataFrame(
            {
                "item_id": [f"{split}-{i}" for i in range(n)],
                "category": ["Appliances" if i % 2 else "Automotive" for i in range(n)],
                "title": [f"Item {i}" for i in range(n)],
                "text": [f"Item {i}\n" + "Durable compact blender with glass jar. " * (1 + 5 * i) for i in range(n)],
                "price": [float(10 * i + 0.4) for i in range(n)],
                "source_file": ["hand.jsonl"] * n,
                "source_line": list(range(1, n + 1)),
            },
            schema_overrides={"price": pl.Float64, "source_line": pl.Int64},
        )
        frame.write_parquet(d / f"{split}.parquet")
    write_manifest(d, {"kind": "curated", "schema_version": 1, "kept": rows, "synthetic": True})
    return d


def test_tokenize_stage_writes_the_dataset_with_exact_counts(tmp_path, cfg):
    import datasets

    curated = _curated_dir(tmp_path, {"train": 5, "validation": 2, "test": 3})
    ref = tokenize(curated, tmp_path / "tok", cfg)
    assert ref.kind == "tokenized" and ref.rows == 10 and verify(ref)
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert m["rows"] == {"train": 5, "validation": 2, "test": 3}
    assert m["base_model"] == "tiny-random"
    assert m["curated_sha256"] == sha256_file(curated / "manifest.json")
    assert m["tokenizer_sha256"] == models.model_info("tiny-random")["tokenizer_sha256"]
    assert m["max_tokens"] == 96 and m["config"]["max_length"] == 96
    dd = datasets.load_from_disk(str(tmp_path / "tok" / "dataset"))
    assert set(dd) == {"train", "validation", "test"}
    train = dd["train"]
    assert train.column_names == [
        "item_id", "category", "price", "text", "prompt", "completion", "input_ids", "attention_mask", "labels"
    ]
    assert train["item_id"] == [f"train-{i}" for i in range(5)]
    assert train["completion"] == ["0.00", "10.00", "20.00", "30.00", "40.00"]
    lengths = [len(x) for x in train["input_ids"]]
    assert max(lengths) <= 96
    # rows 2.. have long texts (the text grows with i): those and only those were cut
    tok = models.load_tokenizer("tiny-random")
    expect_trunc = [len(tok(build_prompt(t, cfg) + c)["input_ids"]) > 96 for t, c in zip(train["text"], train["completion"])]
    assert sum(expect_trunc) >= 1
    total_trunc = sum(
        len(tok(build_prompt(t, cfg) + c)["input_ids"]) > 96 for s in dd for t, c in zip(dd[s]["text"], dd[s]["completion"])
    )
    assert m["truncated"] == total_trunc
    assert m["tokens_max"] == max(len(x) for s in dd for x in dd[s]["input_ids"])
    for row in train:
        unmasked = [x for x in row["labels"] if x != IGNORE_INDEX]
        assert tok.decode(unmasked) == row["completion"]
        assert row["input_ids"][-len(unmasked):] == unmasked


def test_tokenize_is_deterministic_and_handles_an_empty_split(tmp_path, cfg):
    curated = _curated_dir(tmp_path, {"train": 3, "validation": 0, "test": 1})
    a = tokenize(curated, tmp_path / "a", cfg)
    b = tokenize(curated, tmp_path / "b", cfg)
    assert a.manifest()["rows"] == {"train": 3, "validation": 0, "test": 1}
    assert a.manifest()["files"] == b.manifest()["files"]
    assert a.sha256 == b.sha256


def test_tokenize_rejects_a_non_curated_dir(tmp_path, cfg):
    d = tmp_path / "x"
    d.mkdir()
    write_manifest(d, {"kind": "raw"})
    with pytest.raises(PricefitError, match="not a curated one"):
        tokenize(d, tmp_path / "out", cfg)
    curated = _curated_dir(tmp_path, {"train": 1, "validation": 1, "test": 1})
    (curated / "test.parquet").unlink()
    with pytest.raises(PricefitError, match="test.parquet does not exist"):
        tokenize(curated, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture
def cli_home(home, monkeypatch):
    monkeypatch.setenv("PRICEFIT_HOME", str(home))
    return home


def _run(args):
    from typer.testing import CliRunner

    from pricefit.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_tokenize_cli_json(tmp_path, cli_home):
    curated = _curated_dir(tmp_path, {"train": 4, "validation": 1, "test": 2})
    cfg = tmp_path / "tok.yaml"
    cfg.write_text("tokenize:\n  max_length: 90\n  batch_size: 2\n")
    out = tmp_path / "tok"
    r = _run(
        ["tokenize", "--curated", str(curated), "--out", str(out), "--base-model", "tiny-random",
         "--config", str(cfg), "--set", "tokenize.max_length=80", "--no-contracts", "--json"]
    )
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)  # exactly one JSON object on stdout
    assert body["ok"] is True
    assert body["rows"] == {"train": 4, "validation": 1, "test": 2}
    assert body["base_model"] == "tiny-random"
    assert body["max_length"] == 80 and body["max_tokens"] <= 80
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["batch_size"] == 2 and m["config"]["max_length"] == 80  # file + --set applied
    assert body["truncated"] == m["truncated"] == sum(s["truncated"] for s in body["splits"].values())
    assert body["sha256"] == sha256_file(out / "manifest.json")
    assert body["contracts"].startswith("skipped")


def test_tokenize_cli_errors_are_clear(tmp_path, cli_home):
    r = _run(["tokenize", "--curated", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--base-model", "tiny-random"])
    assert r.exit_code == 2
    assert "no such file or directory" in r.stderr
    curated = _curated_dir(tmp_path, {"train": 1, "validation": 1, "test": 1})
    r = _run(["tokenize", "--curated", str(curated), "--out", str(tmp_path / "o"), "--set", "max_length=oops"])
    assert r.exit_code == 2 and "max_length" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_tokenize_cli_output_passes_the_tokenized_contract(tmp_path, cli_home):
    curated = _curated_dir(tmp_path, {"train": 6, "validation": 2, "test": 2})
    r = _run(["tokenize", "--curated", str(curated), "--out", str(tmp_path / "tok"), "--base-model", "tiny-random", "--json"])
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["contracts"] == "tokenized passed"
    report = json.loads((tmp_path / "tok" / "contracts" / "tokenized.json").read_text())
    assert report["skipped"] == 0


def test_model_cli_describes_a_builtin(cli_home):
    r = _run(["model", "tiny-random", "--json"])
    assert r.exit_code == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["architecture"] == "LlamaForCausalLM"
    assert body["path"] == str(cli_home / "models" / "tiny-random")
    assert body["tokenizer_sha256"] == sha256_file(cli_home / "models" / "tiny-random" / "tokenizer.json")
