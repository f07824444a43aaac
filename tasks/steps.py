"""The step registry: one declaration per step of the retrain DAG, in DAG order.

Everything that lists steps derives from :data:`REGISTRY`: the flow order and ``--refresh``
choices (``tasks.cache.STEPS``/``REFRESHABLE``, ``flows.common.RefreshStep``, the ``--refresh``
help), the code a step's cache key hashes (``tasks.cache.STEP_ENTRY``: its task module and its
library module, imports followed from there), the task ``flows.common.Steps.run`` runs, and the
UI artifacts ``tasks.ui.publish`` creates. Imports nothing heavy (``pricefit --help`` reads it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str
    task: str  # "tasks.module:function", the Prefect task that runs the step
    library: str  # the pricefit (or data_contracts) module of the function the task calls
    config: str | None  # the RunConfig section the step reads (None: none)
    publish: str | None  # the tasks.ui function that shows its result in the Prefect UI (None: nothing)
    refreshable: bool = True  # may be named in --refresh (a contract follows its step)

    @property
    def task_module(self) -> str:
        return self.task.split(":", 1)[0]

    def load_task(self) -> Any:
        module, attr = self.task.split(":", 1)
        return getattr(importlib.import_module(module), attr)


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
