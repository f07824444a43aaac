"""The retrain DAG end to end under the Prefect test harness, with the tiny random Llama.

One workdir, five runs in a row (each builds on the last, so the whole story costs one cold run):
  1. cold: every step Completed
  2. same parameters: every step Cached
  3. a changed train parameter: train and what depends on it re-run; ingest..tokenize Cached
  4. evaluation's code "changes" and the new code fails (injected fault): the run fails in
     evaluate; ingest..train Cached
  5. the fix (fault removed, code changed again): evaluate and what follows Completed; ingest..train Cached
"""

from __future__ import annotations

import json
import textwrap

import pytest

from flows.common import RetrainParams
from flows.commands import _step_states
import pricefit_faults as faults
from tasks import cache

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

DATA = ["ingest", "contract_raw", "curate", "contract_curated", "tokenize", "contract_tokenized"]

TINY_PROFILE = """
# pytest tests/flows/test_retrain_flow.py   (the tiny-random profile of the flow tests)
profile: tiny
source: "demo:80"
curate: {tokenizer: tiny-random, max_text_tokens: 32, min_chars: 40}
tokenize: {base_model: tiny-random, max_length: 64}
train: {base_model: tiny-random, device: cpu, quantization: none, lora_r: 4, lora_alpha: 8,
        target_modules: [q_proj, v_proj], batch_size: 4, max_steps: 2, save_steps: 50}
evaluate: {split: test, max_items: 4, batch_size: 4, device: cpu}
baselines: {include: [constant, linear], base_model: tiny-random, split: test, max_items: 4}
promote: {require_beat_baselines: false}   # a 2-step random model beats no baseline; the guard has its own tests
"""


def _run(profile, workdir, overrides=()):
    from flows.retrain import retrain

    state = retrain(RetrainParams(profile=str(profile), workdir=str(workdir), overrides=list(overrides)), return_state=True)
    return state, _step_states(state.state_details.flow_run_id)


def _cli(args):
    from typer.testing import CliRunner

    from pricefit.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _pin_code(monkeypatch) -> None:
    """Freeze each step's code hash at its first value, so that edits other people make to the
    working tree while this test runs do not count as library changes (test_cache.py covers
    code_hash itself); the test then "edits" code only through _salt_code."""
    real, seen = cache.code_hash, {}

    def pinned(modules):
        key = tuple(sorted(modules))
        if key not in seen:
            seen[key] = real(key)
        return seen[key]

    monkeypatch.setattr(cache, "code_hash", pinned)
    cache.code_hash.__wrapped__ = pinned


def _salt_code(monkeypatch, module: str, salt: str) -> None:
    """Simulate an edit of ``module``'s source (the key hashes the library code a step calls)."""
    pinned = cache.code_hash.__wrapped__

    def salted(modules):
        return pinned(modules) + (salt if module in tuple(modules) else "")

    salted.__wrapped__ = pinned
    monkeypatch.setattr(cache, "code_hash", salted)


def test_retrain_cache_story(tmp_path, monkeypatch):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(textwrap.dedent(TINY_PROFILE))
    workdir = tmp_path / "work"
    _pin_code(monkeypatch)

    # 1. cold run
    state, steps = _run(profile, workdir)
    assert state.is_completed(), state.message
    assert list(steps) == list(cache.STEPS) and set(steps.values()) == {"Completed"}
    summary = state.result()
    assert summary["metrics"]["n"] == 4 and summary["promoted"] is True
    assert summary["model"] == "fine-tuned model, digits generated greedily"  # what "fine_tuned" is (issue 22)
    assert json.loads((workdir / "champion.json").read_text())["evaluation"].startswith(str(workdir / "artifacts" / "evaluate"))

    # 2. nothing changed but the champion: the decision is taken again against the new champion
    #    (it is the challenger itself) instead of replaying "no champion yet"; every other step Cached
    out = _cli(["run", "--profile", str(profile), "--workdir", str(workdir), "--json"])
    assert out["ok"] is True and out["state"] == "Completed"
    assert {s: v for s, v in out["states"].items() if s not in ("compare", "report")} == dict.fromkeys(
        [s for s in cache.STEPS if s not in ("compare", "report")], "Cached")
    assert out["promoted"] is False and out["promotion_reason"] == "this adapter is already the champion"
    # 2a. nothing changed at all: everything Cached, same report (through the CLI, as `make demo` runs it)
    again = _cli(["run", "--profile", str(profile), "--workdir", str(workdir), "--json"])
    assert set(again["states"]) == set(cache.STEPS) and set(again["states"].values()) == {"Cached"}  # JSON keys are sorted
    assert again["report"] == out["report"] and again["metrics"] == summary["metrics"]
    assert again["promotion_reason"] == "this adapter is already the champion"

    # 2b. --refresh baselines: that step and what follows recompute, nothing before it
    out = _cli(["run", "--profile", str(profile), "--workdir", str(workdir), "--refresh", "baselines", "--json"])
    before = [s for s in cache.STEPS if s not in ("baselines", "compare", "report")]
    assert {s: out["states"][s] for s in before} == dict.fromkeys(before, "Cached")
    assert [out["states"][s] for s in ("baselines", "compare", "report")] == ["Completed"] * 3

    # 3. a train parameter: train and its dependents re-run, the data steps and the baselines do not
    state, steps = _run(profile, workdir, ["train.learning_rate=5e-4"])
    assert state.is_completed(), state.message
    assert {s: steps[s] for s in DATA + ["baselines"]} == dict.fromkeys(DATA + ["baselines"], "Cached")
    assert [steps[s] for s in ("train", "evaluate", "champion", "compare", "report")] == ["Completed"] * 5
    # the champion of run 1 was re-scored on the same items and the decision compares with that score
    last = json.loads((workdir / "promotions.jsonl").read_text().splitlines()[-1])
    assert last["champion_rescored"] is not None and last["champion_rescored"]["evaluation"].startswith(
        str(workdir / "artifacts" / "champion"))
    assert "the champion re-scored on the same 4 items" in last["reason"]

    # 3b. --refresh train (issue 23): train and what depends on it rerun; the baselines, beside it in
    #     the DAG, and the data steps stay cached (the old list order reran the baselines too)
    out = _cli(["run", "--profile", str(profile), "--workdir", str(workdir), "--refresh", "train", "--json"])
    assert {s: out["states"][s] for s in DATA + ["baselines"]} == dict.fromkeys(DATA + ["baselines"], "Cached")
    assert [out["states"][s] for s in ("train", "evaluate", "champion", "compare", "report")] == ["Completed"] * 5

    # 4. evaluation's code changes and the new code fails
    fault = tmp_path / "fault"
    fault.write_text("evaluate\n")
    monkeypatch.setenv(faults.ENV, str(fault))
    _salt_code(monkeypatch, "pricefit.evaluation", "-broken-edit")
    state, steps = _run(profile, workdir, ["train.learning_rate=5e-4"])
    assert state.is_failed()
    assert {s: steps[s] for s in DATA + ["train"]} == dict.fromkeys(DATA + ["train"], "Cached")
    assert steps["evaluate"] == "Failed" and "compare" not in steps and "report" not in steps

    # 5. the fix: evaluate and what follows run; everything before comes back Cached
    fault.unlink()
    _salt_code(monkeypatch, "pricefit.evaluation", "-fixed-edit")
    state, steps = _run(profile, workdir, ["train.learning_rate=5e-4"])
    assert state.is_completed(), state.message
    assert {s: steps[s] for s in DATA + ["train"]} == dict.fromkeys(DATA + ["train"], "Cached")
    # baselines read the held-out items through pricefit.evaluation (one reader for every model),
    # so an edit there reruns them too, beside evaluate and what follows
    assert [steps[s] for s in ("evaluate", "baselines", "compare", "report")] == ["Completed"] * 4

    # 6. a sweep over the learning rate reuses the data steps and the trial trained in step 3
    from flows.sweep import SweepParams, sweep

    trials = [{"train.learning_rate": 5e-4}, {"train.learning_rate": 1e-3}]
    state = sweep(SweepParams(profile=str(profile), workdir=str(workdir), trials=trials), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert set(result["states"].values()) == {"Cached"} and list(result["states"]) == DATA
    assert [r["train"] for r in result["rows"]] == ["Cached", "Completed"]
    assert [r["trial"] for r in result["rows"]] == ["train.learning_rate=0.0005", "train.learning_rate=0.001"]
    best = [r for r in result["rows"] if r["best"] == "*"]
    assert len(best) == 1 and best[0]["mae"] == min(r["mae"] for r in result["rows"])
