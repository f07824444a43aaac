"""The step registry: one declaration per step of the retrain DAG, in DAG order.

A step whose entry names no task (``task=None``) is run by the one generic task
(``tasks.generic:step_task``) that calls its library function ``fn(*inputs, out_dir, cfg)``, and
the flows run it as soon as the steps named in its ``inputs`` are done (``flows.common.Steps``):
adding such a step is its library function, this entry and its test (docs/ARCHITECTURE.md).

Everything that lists steps derives from :data:`REGISTRY`: the flow order and ``--refresh``
choices (``tasks.cache.STEPS``/``REFRESHABLE``, ``flows.common.RefreshStep``, the ``--refresh``
help), the code a step's cache key hashes (``tasks.cache.STEP_ENTRY``: its task module and its
library module, imports followed from there), the task ``flows.common.Steps.run`` runs, and the
UI artifacts ``tasks.ui.publish`` creates. Imports nothing heavy (``pricefit --help`` reads it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Step:
    name: str
    task: str | None  # "tasks.module:function", the Prefect task that runs the step (None: GENERIC_TASK)
    library: str  # the pricefit (or data_contracts) module of the function the task calls;
    #               "module:function" for a step the generic task runs (the function it calls)
    config: str | None  # the RunConfig section the step reads (None: none)
    publish: str | None  # the tasks.ui function that shows its result in the Prefect UI (None: nothing)
    refreshable: bool = True  # may be named in --refresh (a contract follows its step)
    inputs: tuple[str, ...] = ()  # generic step: the steps whose outputs it takes, in argument order

    @property
    def task_module(self) -> str:
        return (self.task or GENERIC_TASK).split(":", 1)[0]

    @property
    def library_module(self) -> str:
        return self.library.split(":", 1)[0]

    def load_task(self) -> Any:
        module, attr = (self.task or GENERIC_TASK).split(":", 1)
        task = getattr(importlib.import_module(module), attr)
        return task if self.task else task.with_options(name=self.name, task_run_name=self.name)

    def load_library(self) -> Any:
        """The library function of a generic step (``library`` = "module:function")."""
        module, _, attr = self.library.partition(":")
        return getattr(importlib.import_module(module), attr)


#: The task that runs a step whose entry names none: calls its library function (tasks/generic.py).
GENERIC_TASK = "tasks.generic:step_task"


def library_step(name: str, function: str, config: str | None = None, inputs: tuple[str, ...] = (),
                 publish: str | None = None) -> Step:
    """A step the generic task runs: ``function`` ("pricefit.module:fn") called as
    ``fn(*<outputs of inputs>, out_dir, cfg)`` (``cfg`` = RunConfig section ``config``; without
    one, ``fn(*inputs, out_dir)``), in every flow once all of ``inputs`` are done."""
    if ":" not in function:
        raise ValueError(f"step {name!r}: function must be 'module:function', got {function!r}")
    if not inputs:
        raise ValueError(f"step {name!r}: a library step needs the steps whose outputs it takes (inputs=...)")
    return Step(name, None, function, config, publish, inputs=tuple(inputs))


def _contract(stage: str) -> Step:
    return Step(f"contract_{stage}", "tasks.contract:contract", "data_contracts", None, "publish_contract", refreshable=False)


REGISTRY: tuple[Step, ...] = (
    Step("ingest", "tasks.ingest:ingest", "pricefit.curation", "curate", "publish_accounting"),
    _contract("raw"),
    Step("curate", "tasks.curate:curate", "pricefit.curation", "curate", "publish_accounting"),
    _contract("curated"),
    Step("tokenize", "tasks.tokenize_data:tokenize", "pricefit.tokenization", "tokenize", None),
    _contract("tokenized"),
    Step("train", "tasks.train:train", "pricefit.training", "train", "publish_train"),
    Step("evaluate", "tasks.evaluation:evaluate", "pricefit.evaluation", "evaluate", "publish_evaluation"),
    Step("champion", "tasks.evaluation:champion", "pricefit.evaluation", "evaluate", None),
    Step("baselines", "tasks.baselines:baselines", "pricefit.baselines", "baselines", None),
    Step("compare", "tasks.compare:compare", "pricefit.compare", "promote", "publish_comparison"),
    Step("report", "tasks.report:report", "pricefit.report", None, "publish_report"),
)

BY_NAME: dict[str, Step] = {s.name: s for s in REGISTRY}
NAMES: tuple[str, ...] = tuple(BY_NAME)
REFRESHABLE: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.refreshable)

REFRESH_HELP = f"Recompute STEP and every step after it even when cached: {', '.join(REFRESHABLE)}."


def ready(done: Iterable[str]) -> list[Step]:
    """Generic steps not yet in ``done`` whose ``inputs`` all are, in DAG order (what a flow runs next)."""
    done = set(done)
    return [s for s in REGISTRY if s.task is None and s.inputs and s.name not in done and set(s.inputs) <= done]
