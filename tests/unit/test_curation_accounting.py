"""Every input row ends in exactly one place, on every source kind; and the `pricefit curate` command."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from pricefit.config import CurateConfig
from pricefit.curation import curate, ingest

from test_curation import listing  # noqa: E402  (tests/unit is on sys.path: rootdir import mode)
from test_sources import broken_jsonl_bytes, write_amazon_products


def run(source: str, tmp_path, tok, **cfg):
    c = CurateConfig(**cfg)
    raw = ingest(source, tmp_path / "raw", c)
    ref = curate(raw.dir, tmp_path / "cur", c, tokenizer=tok)
    return raw.manifest(), ref.manifest(), ref.dir


def assert_accounted(m: dict, out) -> None:
    """rows_read == kept + dropped + quarantined, and each count matches its file."""
    assert m["rows_read"] == sum(m["kept"].values()) + sum(m["dropped"].values()) + m["quarantined"]
    for split, n in m["kept"].items():
        assert pl.read_parquet(out / f"{split}.parquet").height == n
    dropped = pl.read_parquet(out / "dropped.parquet")
    assert dict(dropped["reason"].value_counts().iter_rows()) == m["dropped"]
    lines = (out / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == m["quarantined"]
    # one place per input row: (file, line) never repeats across splits, dropped and quarantine
    places = [(r["source_file"], r["source_line"]) for r in map(json.loads, lines)]
    for name in ("train", "validation", "test", "dropped"):
        places += pl.read_parquet(out / f"{name}.parquet").select("source_file", "source_line").rows()
    assert len(places) == len(set(places)) == m["rows_read"]


def test_accounting_demo(tmp_path, word_tokenizer):
    raw_m, m, out = run("demo:300", tmp_path, word_tokenizer, max_items=250)
    assert raw_m["rows_read"] == m["rows_read"] == 300 and m["quarantined"] == 0 and m["synthetic"] is True
    assert m["dropped"]["over_max_items"] == 300 - m["dropped"].get("duplicate", 0) - 250
    assert_accounted(m, out)


def test_accounting_jsonl_with_broken_lines(tmp_path, word_tokenizer):
    path = tmp_path / "mixed.jsonl.gz"
    good = b"".join(json.dumps(listing(i, price=p)).encode() + b"\n" for i, p in enumerate([12.0, "None", 5000, 30.0]))
    path.write_bytes(gzip.compress(good + broken_jsonl_bytes()))
    raw_m, m, out = run(str(path), tmp_path, word_tokenizer, validation_fraction=0.0, test_fraction=0.0)
    # 4 good rows + the 6-line broken block: 2 parsed, 3 quarantined, 1 blank (not a row)
    assert raw_m["rows_read"] == m["rows_read"] == 9 and raw_m["parsed"] == 6 and m["quarantined"] == 3
    assert m["kept"] == {"train": 2, "validation": 0, "test": 0}
    assert m["dropped"] == {"price_missing": 1, "price_out_of_range": 1, "text_too_short": 2}
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["source_line"], q["reason"]) for q in quarantine] == [(6, "invalid_json"), (7, "invalid_utf8"), (8, "not_an_object")]
    assert_accounted(m, out)


def test_accounting_parquet(tmp_path, word_tokenizer):
    rows = [listing(i, price=10.0 + i) for i in range(20)] + [listing(20, title=None), listing(21, price="$3 - $4")]
    frame = pl.DataFrame([{**r, "details": json.dumps(r["details"])} for r in rows])
    frame.write_parquet(tmp_path / "meta.parquet")
    _, m, out = run(str(tmp_path / "meta.parquet"), tmp_path, word_tokenizer)
    assert m["rows_read"] == 22 and m["kept"] == {"train": 17, "validation": 1, "test": 2}  # hash-based splits
    assert m["dropped"] == {"price_unparseable": 1, "title_missing": 1}
    assert_accounted(m, out)


def test_accounting_csv_catalog(tmp_path, word_tokenizer):
    p = write_amazon_products(tmp_path)
    # titles only: with min_chars=10 the two priced rows survive, the $0 row has no price
    _, m, out = run(f"csv:{p}", tmp_path, word_tokenizer, min_chars=10, validation_fraction=0.0, test_fraction=0.0)
    assert m["rows_read"] == 4 and m["quarantined"] == 1
    assert m["kept"]["train"] == 2 and m["dropped"] == {"price_missing": 1}
    train = pl.read_parquet(out / "train.parquet").sort("item_id")
    assert train["category"].to_list() == ["Luggage", "Unknown"]
    assert_accounted(m, out)


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, word_tokenizer):
    d = tmp_path_factory.mktemp("tok")
    word_tokenizer.save_pretrained(d)
    (d / "config.json").write_text('{"model_type": "llama"}')  # models.resolve_model wants a model dir
    return d


def test_cli_curate_json(tmp_path, tokenizer_dir):
    from typer.testing import CliRunner

    from pricefit.cli import app

    out = tmp_path / "cur"
    res = CliRunner().invoke(
        app,
        ["curate", "--source", "demo:80", "--out", str(out), "--set", f"tokenizer={tokenizer_dir}",
         "--set", "curate.max_items=50", "--no-contracts", "--json"],
    )
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["rows_read"] == 80 and result["synthetic"] is True and result["quarantined"] == 0
    assert sum(result["kept"].values()) == 50
    assert result["rows_read"] == 50 + sum(result["dropped"].values())
    assert result["out"] == str(out.resolve())
    assert (out / "raw" / "raw.parquet").exists() and (out / "raw" / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # staging removed


def test_cli_curate_bad_source_exits_2_with_hint(tmp_path):
    from typer.testing import CliRunner

    from pricefit.cli import app

    res = CliRunner().invoke(app, ["curate", "--source", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "hint:" in res.output


def test_saved_demo_records_stay_labelled_synthetic(tmp_path):
    from pricefit.sources import iter_records

    path = tmp_path / "demo.jsonl"
    path.write_text("".join(json.dumps(r.data) + "\n" for r in iter_records("demo:5")))
    raw = ingest(str(path), tmp_path / "raw", CurateConfig())
    assert raw.manifest()["synthetic"] is True


# ---------------------------------------------------------------------------------------------- fallback ids (issue 10, finding 5)


def _no_asin_listings(d, names: list[str], per_file: int) -> list:
    paths, n = [], 0
    for name in names:
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(json.dumps(listing(n + k, parent_asin=None)) + "\n" for k in range(per_file)))
        paths.append(p)
        n += per_file
    return paths


def test_listings_without_id_in_same_named_files_are_not_duplicates(tmp_path, word_tokenizer):
    _no_asin_listings(tmp_path / "data", ["a/listings.jsonl", "b/listings.jsonl"], 50)
    raw_m, m, out = run(str(tmp_path / "data" / "*" / "listings.jsonl"), tmp_path, word_tokenizer)
    assert raw_m["parsed"] == 100 and m["dropped"] == {} and sum(m["kept"].values()) == 100
    ids = pl.concat([pl.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")])["item_id"]
    assert ids.n_unique() == 100
    assert sorted(ids.to_list())[:2] == ["a/listings.jsonl:1", "a/listings.jsonl:10"]
    assert_accounted(m, out)


def test_fallback_ids_are_stable_across_reruns_and_a_growing_glob(tmp_path):
    import pricefit.curation as curation

    _no_asin_listings(tmp_path / "data", ["a/listings.jsonl", "b/listings.jsonl"], 3)
    spec = str(tmp_path / "data" / "*" / "listings.jsonl")
    first, _, _ = curation.read_source(spec, CurateConfig())
    again, _, _ = curation.read_source(spec, CurateConfig())
    assert first["item_id"].to_list() == again["item_id"].to_list() == [
        "a/listings.jsonl:1", "a/listings.jsonl:2", "a/listings.jsonl:3",
        "b/listings.jsonl:1", "b/listings.jsonl:2", "b/listings.jsonl:3",
    ]
    (tmp_path / "data" / "c").mkdir()
    (tmp_path / "data" / "c" / "listings.jsonl").write_text(json.dumps(listing(99, parent_asin=None)) + "\n")
    grown, _, _ = curation.read_source(spec, CurateConfig())
    assert grown["item_id"].to_list() == first["item_id"].to_list() + ["c/listings.jsonl:1"]
    # a comma list of same-named files: ids relative to the files' common folder
    listed, _, _ = curation.read_source(
        f"{tmp_path / 'data/a/listings.jsonl'},{tmp_path / 'data/b/listings.jsonl'}", CurateConfig()
    )
    assert listed["item_id"].to_list() == first["item_id"].to_list()
    # one file: its name
    single, _, _ = curation.read_source(str(tmp_path / "data/a/listings.jsonl"), CurateConfig())
    assert single["item_id"].to_list() == ["listings.jsonl:1", "listings.jsonl:2", "listings.jsonl:3"]
