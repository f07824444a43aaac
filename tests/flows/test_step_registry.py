"""One declaration per step (tasks/steps.py): the step lists, cache entries, --refresh choices and UI
publishers all derive from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from tasks import cache, steps, ui

ROOT = Path(__file__).resolve().parents[2]


def test_every_step_list_derives_from_the_registry():
    from flows.commands import REFRESH_HELP
    from flows.common import RefreshStep

    names = tuple(s.name for s in steps.REGISTRY)
    assert cache.STEPS == names and cache.REFRESHABLE == steps.REFRESHABLE
    assert cache.STEP_ENTRY == {s.name: (s.task_module, s.library_module) for s in steps.REGISTRY}
    assert typing.get_args(RefreshStep) == ("none", *steps.REFRESHABLE)
    assert REFRESH_HELP.endswith("ingest, curate, tokenize, train, evaluate, champion, baselines, compare, report.")


def test_every_entry_names_a_real_task_config_section_and_publisher():
    from pricefit.config import RunConfig

    for s in steps.REGISTRY:
        task = s.load_task()
        assert task.fn.__module__ == s.task_module
        assert s.config is None or s.config in RunConfig.model_fields
        assert s.publish is None or callable(getattr(ui, s.publish))


def test_publish_dispatches_through_the_registry(monkeypatch):
    seen = []
    monkeypatch.setattr(ui, "publish_contract", lambda step, result: seen.append((step, result)))
    ui.publish("contract_raw", {"x": 1})
    ui.publish("baselines", object())  # no publisher: nothing
    assert seen == [("contract_raw", {"x": 1})]


def test_editing_the_registry_changes_no_step_code():
    assert not any("tasks.steps" in cache.step_code_modules(s) for s in cache.STEPS)


# adding a step = its library function, its registry entry, its test (docs/ARCHITECTURE.md) -----

_DERIVED = textwrap.dedent("""
    import importlib.util, json, sys, typing
    import tasks
    src = open("tasks/steps.py").read()
    entry = '    library_step("dedupe", "pricefit.curation:curate", "curate", inputs=("curate",)),\\n'
    anchor = '    _contract("curated", "curate"),\\n'
    assert src.count(anchor) == 1
    spec = importlib.util.spec_from_loader("tasks.steps", loader=None, origin="tasks/steps.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tasks.steps"] = mod
    tasks.steps = mod
    exec(compile(src.replace(anchor, anchor + entry), "tasks/steps.py", "exec"), mod.__dict__)
    from tasks import cache
    from flows.common import RefreshStep
    from flows.commands import REFRESH_HELP
    print(json.dumps({"order": list(cache.STEPS), "entry": cache.STEP_ENTRY.get("dedupe"),
                      "refresh": list(typing.get_args(RefreshStep)), "help": REFRESH_HELP,
                      "after_curate": sorted(cache.refresh_set("curate")), "task": mod.BY_NAME["dedupe"].load_task().name,
                      "ready": [s.name for s in mod.ready({"ingest", "contract_raw", "curate"})]}))
""")


def test_a_registry_entry_alone_yields_the_flow_order_cache_entry_and_refresh_choice():
    """One line added to tasks/steps.py (and nothing else edited) is a step everywhere."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _DERIVED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["order"] == ["ingest", "contract_raw", "curate", "contract_curated", "dedupe", "tokenize", "contract_tokenized",
                            "train", "evaluate", "champion", "baselines", "compare", "report"]
    assert got["entry"] == ["tasks.generic", "pricefit.curation"]  # the generic task + the library module
    assert got["refresh"] == ["none", "ingest", "curate", "dedupe", "tokenize", "train", "evaluate", "champion",
                              "baselines", "compare", "report"]
    assert "curate, dedupe, tokenize" in got["help"]
    assert "dedupe" in got["after_curate"] and got["task"] == "dedupe" and got["ready"] == ["dedupe"]


def test_a_library_step_needs_a_function_and_its_inputs():
    with pytest.raises(ValueError, match="module:function"):
        steps.library_step("x", "pricefit.curation")
    with pytest.raises(ValueError, match="inputs"):
        steps.library_step("x", "pricefit.curation:curate")


_TOY_LIB = """
from pathlib import Path
from pricefit.artifacts import atomic_dir, ref_for, write_manifest

CALLS = []

def make(out_dir):
    CALLS.append("make")
    with atomic_dir(out_dir) as tmp:
        (tmp / "n.txt").write_text("3")
        write_manifest(tmp, {"kind": "toy"})
    return ref_for(out_dir, "toy", rows=3)

def double(src, out_dir, cfg):
    CALLS.append(("double", type(cfg).__name__))
    n = int((Path(src) / "n.txt").read_text())
    with atomic_dir(out_dir) as tmp:
        (tmp / "n.txt").write_text(str(2 * n))
        write_manifest(tmp, {"kind": "toy"})
    return ref_for(out_dir, "toy", rows=2 * n)
"""


@pytest.mark.usefixtures("prefect_harness")
def test_a_registered_library_step_runs_in_the_flow_once_its_input_is_done(tmp_path, monkeypatch):
    """The generic task runs a registry-only step after its input, cached like every step."""
    from prefect import flow

    from flows.common import Steps
    from pricefit.config import load_run_config

    (tmp_path / "toy_steps_lib.py").write_text(_TOY_LIB)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_steps_lib

    registry = (steps.Step("toy_make", None, "toy_steps_lib:make", None, None),
                steps.library_step("toy_double", "toy_steps_lib:double", "curate", inputs=("toy_make",)))
    monkeypatch.setattr(steps, "REGISTRY", steps.REGISTRY + registry)
    monkeypatch.setattr(steps, "BY_NAME", {s.name: s for s in steps.REGISTRY})
    for s in registry:
        monkeypatch.setitem(cache.STEP_ENTRY, s.name, (s.task_module, s.library_module))
    monkeypatch.setattr(cache, "code_hash", lambda modules: "toy-code")  # edits made meanwhile change no key
    cfg = load_run_config("demo", overrides=[f"workdir={tmp_path / 'wd'}"])

    @flow
    def toy_flow() -> tuple[dict[str, str], int]:
        s = Steps(cfg)
        s.run("toy_make", "toy_make", [], None, cfg.workdir)  # toy_double is not called: the registry runs it
        return dict(s.states), s.outputs["toy_double"].rows

    assert toy_flow() == ({"toy_make": "Completed", "toy_double": "Completed"}, 6)
    assert toy_steps_lib.CALLS == ["make", ("double", "CurateConfig")]
    assert toy_flow() == ({"toy_make": "Cached", "toy_double": "Cached"}, 6)
    assert len(toy_steps_lib.CALLS) == 2
