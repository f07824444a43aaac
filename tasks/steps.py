"""The step registry: one declaration per step of the retrain DAG, in DAG order.

Every entry names the steps whose outputs it takes (``inputs``): the edges of the DAG. A data
contract (``gate=True``) checks its input step's output, and every step that takes that output
waits for it. The flows run a target and its ancestors from
them (``flows.common.Steps.run_to``), and ``--refresh STEP`` reruns STEP and its descendants
(:func:`descendants`), never a step that does not depend on it.

A step whose entry names no task (``task=None``) is run by the one generic task
(``tasks.generic:step_task``) that calls its library function ``fn(*inputs, out_dir, cfg)``, and
the flows run it as soon as the steps named in its ``inputs`` are done (``flows.common.Steps``):
adding such a step is its library function, this entry and its test (docs/ARCHITECTURE.md).

Tasks are named by "module:function" and imported when a flow runs them: `pricefit --help` reads
this registry (the --refresh choices) and must not import Prefect and every stage to do so.

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
    inputs: tuple[str, ...] = ()  # the steps whose outputs it takes (a generic step: in argument order)
    gate: bool = False  # a data contract: the steps that take its input's output wait until it passes
    track: str | None = None  # the pricefit.tracking function that logs its result to MLflow (None: nothing)

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


def _contract(stage: str, of: str) -> Step:
    return Step(f"contract_{stage}", "tasks.contract:contract", "data_contracts", None, "publish_contract", refreshable=False,
                inputs=(of,), gate=True)


REGISTRY: tuple[Step, ...] = (
    Step("ingest", "tasks.ingest:ingest", "pricefit.curation", "curate", "publish_accounting"),
    _contract("raw", "ingest"),
    Step("curate", "tasks.curate:curate", "pricefit.curation", "curate", "publish_accounting", inputs=("ingest",)),
    _contract("curated", "curate"),
    Step("tokenize", "tasks.tokenize_data:tokenize", "pricefit.tokenization", "tokenize", None, inputs=("curate",)),
    _contract("tokenized", "tokenize"),
    Step("train", "tasks.train:train", "pricefit.training", "train", "publish_train", inputs=("tokenize",), track="log_train"),
    Step("evaluate", "tasks.evaluation:evaluate", "pricefit.evaluation", "evaluate", "publish_evaluation",
         inputs=("train", "tokenize"), track="log_evaluation"),
    # the champion's adapter re-scored on the challenger's items; the challenger (train) tells whether
    # there is another champion to judge
    Step("champion", "tasks.evaluation:champion", "pricefit.evaluation", "evaluate", None, inputs=("train", "tokenize")),
    Step("baselines", "tasks.baselines:baselines", "pricefit.baselines", "baselines", None, inputs=("curate",)),
    Step("compare", "tasks.compare:compare", "pricefit.compare", "promote", "publish_comparison",
         inputs=("evaluate", "baselines", "champion"), track="register_champion"),
    Step("report", "tasks.report:report", "pricefit.report", None, "publish_report",
         inputs=("compare", "curate", "train", "evaluate", "baselines")),
)

BY_NAME: dict[str, Step] = {s.name: s for s in REGISTRY}
NAMES: tuple[str, ...] = tuple(BY_NAME)
REFRESHABLE: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.refreshable)

REFRESH_HELP = (f"Recompute STEP and every step that depends on it even when cached (steps that do not depend on it "
                f"stay cached): {', '.join(REFRESHABLE)}.")


def upstream(step: Step) -> tuple[str, ...]:
    """The steps ``step`` waits for: those it takes outputs from, then the contracts of those outputs."""
    if step.gate:
        return step.inputs
    gates = tuple(g.name for g in REGISTRY if g.gate and set(g.inputs) & set(step.inputs))
    return step.inputs + gates


def descendants(name: str) -> set[str]:
    """``name`` and every step that depends on it, directly or through others (what --refresh reruns)."""
    out = {name}
    for s in REGISTRY:  # DAG order: a step's upstream steps come before it
        if out & set(upstream(s)):
            out.add(s.name)
    return out


def ancestors(names: Iterable[str], given: Iterable[str] = ()) -> list[str]:
    """``names`` and every step they need, in DAG order; a step in ``given`` is taken as done
    (its output is supplied), so nothing upstream of it is needed for its sake."""
    given = set(given)
    need: set[str] = set()
    todo = [n for n in names]
    while todo:
        n = todo.pop()
        if n in need:
            continue
        need.add(n)
        if n not in given:  # a supplied output counts as checked: its contract does not run for it
            todo.extend(u for u in upstream(BY_NAME[n]) if not (BY_NAME[u].gate and set(BY_NAME[u].inputs) <= given))
    return [s.name for s in REGISTRY if s.name in need]


def check_dag(registry: Iterable[Step]) -> None:
    """Every edge names a step declared before it (so DAG order is the registry's order)."""
    seen: set[str] = set()
    for s in registry:
        missing = [u for u in s.inputs if u not in seen]
        if missing:
            raise ValueError(f"step {s.name!r} depends on {missing}, which are not declared before it in tasks/steps.py")
        seen.add(s.name)


check_dag(REGISTRY)


def ready(done: Iterable[str]) -> list[Step]:
    """Generic steps not yet in ``done`` whose ``inputs`` all are, in DAG order (what a flow runs next)."""
    done = set(done)
    return [s for s in REGISTRY if s.task is None and s.inputs and s.name not in done and set(s.inputs) <= done]
