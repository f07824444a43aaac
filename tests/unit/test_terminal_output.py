"""Issue 22, item 6: what `compare` and `promote` print on a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from pricefit.cli import app
from pricefit.terminal import markdown_to_text

IDS = ["a", "b", "c", "d"]


def _m(mae: float) -> dict:
    return {"n": 4, "n_unparsed": 0, "mae": mae, "rmsle": 0.5, "hit_rate": 0.5, "mdape": 20.0}


def _eval_dir(d: Path, mae: float, kind: str = "evaluation") -> Path:
    d.mkdir(parents=True)
    pl.DataFrame({"item_id": IDS, "category": ["X"] * 4, "price": [1.0] * 4, "prediction": [1.0] * 4,
                  "raw": ["1"] * 4, "parsed": [True] * 4}).write_parquet(d / "predictions.parquet")
    (d / "metrics.json").write_text(json.dumps(_m(mae)))
    (d / "manifest.json").write_text(json.dumps({"kind": kind, "adapter": str(d), "adapter_sha256": d.name}))
    return d


def _baselines(root: Path) -> Path:
    bl = root / "bl"
    _eval_dir(bl / "tfidf", 141.48623)
    (bl / "summary.json").write_text(json.dumps({"baselines": {"tfidf": {"status": "ok"}}}))
    (bl / "manifest.json").write_text(json.dumps({"kind": "baselines"}))
    return bl


def test_markdown_tables_become_aligned_columns():
    md = "# Model comparison\n\nRanked by **mae**.\n\n| rank | model | MAE |\n|---:|---|---:|\n| 1 | **fine_tuned** | $9.50 |\n| 2 | tfidf | $141.49 |\n"
    assert markdown_to_text(md) == ("Model comparison\n\nRanked by mae.\n\n"
                                    "rank  model           MAE\n"
                                    "   1  fine_tuned    $9.50\n"
                                    "   2  tfidf       $141.49")


def test_compare_prints_a_table_not_markdown(tmp_path):
    ev, bl = _eval_dir(tmp_path / "ev", 150.0), _baselines(tmp_path)
    res = CliRunner().invoke(app, ["compare", "-e", str(ev), "-b", str(bl), "-o", str(tmp_path / "cmp")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "|" not in res.stdout and "**" not in res.stdout
    assert "   1  tfidf       4         0  $141.49" in res.stdout
    assert res.stdout.rstrip().endswith(f"-> {tmp_path / 'cmp' / 'comparison.md'}")
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("| **fine_tuned** |") == 1  # the file keeps its Markdown


def test_promote_says_its_decision_once_in_dollars_and_names_the_flag(tmp_path):
    ev, bl = _eval_dir(tmp_path / "ev", 150.0), _baselines(tmp_path)
    res = CliRunner().invoke(app, ["promote", "-e", str(ev), "-b", str(bl), "-w", str(tmp_path / "w")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert res.output.count("does not beat") == 1
    assert res.stdout.strip() == ("not promoted: challenger mae $150.00 on all items does not beat the best classical "
                                  "baseline, tfidf $141.49: a model no better than tfidf is never promoted")
    res = CliRunner().invoke(app, ["promote", "-e", str(ev), "-w", str(tmp_path / "w")], catch_exceptions=False)
    assert "--no-baseline-guard" in res.stdout


def test_curate_names_the_quarantine_file_and_tokenize_says_what_truncated_means():
    from pricefit.commands.curate import _human as curate_human
    from pricefit.commands.tokenize import _human as tokenize_human

    r = {"source": "x.jsonl", "synthetic": False, "out": "/runs/c", "rows_read": 3, "kept": {"train": 2}, "dropped": {},
         "quarantined": 1, "contracts": "raw, curated passed", "sha256": "ab" * 32}
    assert "  quarantined                      1  -> /runs/c/quarantine.jsonl (file, line, reason)" in curate_human(r)
    assert "quarantine.jsonl" not in curate_human({**r, "quarantined": 0})
    t = {"curated": "/runs/c", "base_model": "smollm2-135m", "out": "/runs/t", "rows": {"train": 2},
         "splits": {"train": {"max_tokens": 96, "mean_tokens": 90.0, "truncated": 450}}, "max_length": 96, "max_tokens": 96,
         "mean_tokens": 90.0, "truncated": 450, "contracts": "tokenized passed", "sha256": "cd" * 32}
    assert ("  truncated: 450 items whose item text lost its end to fit 96 tokens (the prompt template and the price "
            "completion are never cut; tokenize.max_length raises the budget)") in tokenize_human(t)


def test_the_run_report_writes_counts_not_python_dicts(tmp_path):
    from types import SimpleNamespace

    from pricefit.report import render_run_report

    curated = SimpleNamespace(path=str(tmp_path), dir=tmp_path, manifest=lambda: {
        "rows_read": 400, "source": "demo:400", "kept": {"train": 310, "validation": 33, "test": 51},
        "dropped": {"duplicate": 6}, "quarantined": 0})
    md = render_run_report({"curated": curated})
    assert ("Data: 400 rows read from `demo:400`; kept 310 train, 33 validation, 51 test; dropped 6 duplicate; "
            "quarantined 0.") in md
    assert "{" not in md


def test_the_gguf_conversion_bar_shows_only_with_verbose(monkeypatch):
    import transformers.modeling_gguf_pytorch_utils as gguf

    from pricefit import logs
    from pricefit.models import _gguf_bar_off

    original = gguf.tqdm
    monkeypatch.setitem(logs._state, "verbose", 0)
    with _gguf_bar_off():
        assert gguf.tqdm(range(2)).disable is True
    assert gguf.tqdm is original
    monkeypatch.setitem(logs._state, "verbose", 1)
    with _gguf_bar_off():
        assert gguf.tqdm is original


def test_evaluate_names_the_model_and_each_component_alone():
    from pricefit.commands.evaluate import _human_eval

    model = {"label": "fine-tuned head x 0.45 + tfidf x 0.55", "fine_tuned_weight": 0.45,
             "components": [{"name": "head", "weight": 0.45, "metrics": {"mae": 61.28}},
                            {"name": "tfidf", "weight": 0.55, "metrics": {"mae": 62.68}}]}
    r = {"n": 40, "out": "/e", "mae": 57.28, "rmsle": 0.5, "hit_rate": 0.5, "mdape": 20.0, "n_unparsed": 0, "report": "/e/report.md",
         "model": model}
    text = _human_eval(r)
    assert ("evaluated 40 items -> /e\n  model   fine-tuned head x 0.45 + tfidf x 0.55\n  head alone: MAE $61.28\n"
            "  tfidf alone: MAE $62.68\n  MAE     $57.28\n") in text


def test_prefect_run_records_name_their_task_or_flow_run():
    import logging

    from pricefit import logs

    fmt = logs._Format("%(levelname)s %(name)s: %(message)s")

    def line(**extra) -> str:
        return fmt.format(logging.makeLogRecord({"name": "prefect.task_runs", "levelname": "INFO", "levelno": 20,
                                                 "msg": "Finished in state Completed()", **extra}))

    assert line(task_run_name="ingest demo:80") == "INFO Task run 'ingest demo:80': Finished in state Completed()"
    assert line(flow_run_name="retrain-demo-1") == "INFO Flow run 'retrain-demo-1': Finished in state Completed()"
    assert line() == "INFO prefect.task_runs: Finished in state Completed()"  # no run: as before
