"""`pricefit curate` with its data contracts on a source with a few bad rows (issue 10, findings 1 and 9).

A few bad rows are quarantined and the run goes on; many stop it, with the report, Data Docs and
quarantine at the paths the message prints; a rerun on the same data writes byte-identical
manifests; a curated artifact whose contract did not pass (or never ran) is refused downstream.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from pricefit import curation
from pricefit.cli import app
from pricefit.config import CurateConfig
from pricefit.errors import ContractError, PricefitError

from test_curation import listing  # noqa: E402  (tests/unit is on sys.path: rootdir import mode)

PRICE = "expect_column_values_to_be_between(price)"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, word_tokenizer):
    d = tmp_path_factory.mktemp("tok")
    word_tokenizer.save_pretrained(d)
    (d / "config.json").write_text('{"model_type": "llama"}')  # models.resolve_model wants a model dir
    return d


def _listings(path, n: int, bad: set[int]) -> str:
    rows = [listing(i, price=1e12 if i in bad else 10.0 + i % 50) for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"title": "a broken line\n')
    return str(path)


def _curate(source: str, out, tokenizer_dir, *extra: str):
    args = ["curate", "--source", source, "--out", str(out), "--set", f"tokenizer={tokenizer_dir}", *extra]
    return CliRunner().invoke(app, args)


def test_a_few_bad_rows_are_quarantined_and_the_run_goes_on(tmp_path, tokenizer_dir):
    src = _listings(tmp_path / "listings.jsonl", 600, bad={5, 250, 599})  # 3 of 600: 0.5%
    out = tmp_path / "cur"
    res = _curate(src, out, tokenizer_dir, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["rows_read"] == 601 and r["quarantined"] == 4  # 3 priced 1e12 + the broken line
    assert r["rows_read"] == sum(r["kept"].values()) + sum(r["dropped"].values()) + r["quarantined"]
    lines = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((q["source_line"], q["reason"]) for q in lines) == [
        (6, PRICE), (251, PRICE), (600, PRICE), (601, "invalid_json")
    ]
    m = json.loads((out / "manifest.json").read_text())
    assert m["contract"]["success"] is True and m["contract"]["stage"] == "curated"
    raw_m = json.loads((out / "raw" / "manifest.json").read_text())
    assert raw_m["contract"]["removed_rows"] == {PRICE: 3} and raw_m["parsed"] == 597
    assert (out / "raw" / "contracts" / "raw.json").exists() and (out / "contracts" / "curated.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_many_bad_rows_stop_the_run_and_the_printed_paths_exist(tmp_path, tokenizer_dir):
    src = _listings(tmp_path / "listings.jsonl", 100, bad=set(range(0, 100, 10)))  # 10%
    out = tmp_path / "cur"
    res = _curate(src, out, tokenizer_dir)
    assert res.exit_code == 3, res.output
    assert "raw contract failed" in res.output and "10 of 100 rows" in res.output
    printed = dict(re.findall(r"^\s+(report|data docs|quarantine): (\S+)$", res.output, flags=re.M))
    assert printed == {
        "report": str(out / "raw" / "contracts" / "raw.json"),
        "data docs": str(out / "raw" / "data_docs" / "index.html"),
        "quarantine": str(out / "raw" / "quarantine.jsonl"),
    }
    report = json.loads((out / "raw" / "contracts" / "raw.json").read_text())
    assert report["success"] is False and report["report_path"] == printed["report"]
    assert "raw.raw" in (out / "raw" / "data_docs" / "index.html").read_text()
    assert (out / "raw" / "quarantine.jsonl").read_text().count('"invalid_json"') == 1
    assert json.loads((out / "raw" / "manifest.json").read_text())["contract"]["success"] is False
    # OUT is no curated artifact: nothing downstream can read it
    with pytest.raises(PricefitError):
        curation.read_split(out, "train")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_rerun_on_the_same_data_writes_byte_identical_manifests(tmp_path, tokenizer_dir):
    src = _listings(tmp_path / "listings.jsonl", 150, bad=set())
    out = tmp_path / "cur"
    assert _curate(src, out, tokenizer_dir).exit_code == 0
    first = {p: (out / p).read_bytes() for p in ("manifest.json", "raw/manifest.json")}
    assert _curate(src, out, tokenizer_dir).exit_code == 0
    assert {p: (out / p).read_bytes() for p in first} == first


def test_a_run_killed_before_the_curated_contract_leaves_nothing_tokenize_accepts(tmp_path, tokenizer_dir, monkeypatch):
    import data_contracts

    real = data_contracts.check

    def killed(stage, *a, **kw):
        if stage == "curated":
            raise KeyboardInterrupt  # the process dies here (SIGINT, OOM kill, a node going away)
        return real(stage, *a, **kw)

    monkeypatch.setattr(data_contracts, "check", killed)
    src = _listings(tmp_path / "listings.jsonl", 150, bad=set())
    out = tmp_path / "cur"
    res = _curate(src, out, tokenizer_dir)
    assert res.exit_code != 0
    with pytest.raises(PricefitError, match="rerun|re-run"):
        curation.read_split(out, "train")


def test_read_split_refuses_a_curated_artifact_whose_contract_failed(tmp_path, word_tokenizer):
    src = _listings(tmp_path / "listings.jsonl", 40, bad=set())
    cfg = CurateConfig()
    raw = curation.ingest(src, tmp_path / "raw", cfg)

    def failing(building, final):
        err = ContractError("curated contract failed: 1 of 40 checks failed", report={"failed": 1})
        err.summary = {"stage": "curated", "success": False, "failed": 1}
        raise err

    with pytest.raises(ContractError):
        curation.curate(raw.dir, tmp_path / "cur", cfg, tokenizer=word_tokenizer, contract=failing)
    m = json.loads((tmp_path / "cur" / "manifest.json").read_text())
    assert m["contract"] == {"stage": "curated", "success": False, "failed": 1}
    with pytest.raises(PricefitError, match="contract did not pass") as err:
        curation.read_split(tmp_path / "cur", "train")
    assert "re-run `pricefit curate`" in err.value.hint
