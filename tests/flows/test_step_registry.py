"""One declaration per step (tasks/steps.py): the step lists, cache entries, --refresh choices and UI
publishers all derive from it."""

from __future__ import annotations

import typing

from tasks import cache, steps, ui


def test_every_step_list_derives_from_the_registry():
    from flows.commands import REFRESH_HELP
    from flows.common import RefreshStep

    names = tuple(s.name for s in steps.REGISTRY)
    assert cache.STEPS == names and cache.REFRESHABLE == steps.REFRESHABLE
    assert cache.STEP_ENTRY == {s.name: (s.task_module, s.library) for s in steps.REGISTRY}
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
