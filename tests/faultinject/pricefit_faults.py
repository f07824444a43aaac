"""A test-only fault switch, so a test can make one step fail and then "fix" it.

``PRICEFIT_FAULT_FILE`` names a file; while it exists and lists a step name (one per line), that
step's task raises :class:`InjectedFault` before doing any work. Deleting the file (or the line)
is the fix. A file rather than a plain variable because a retried flow run (``prefect flow-run
retry``) runs in a worker process with the same environment: the test needs a switch it can flip
between the failing run and the retry.

Nothing of this is in the project's code: :func:`install` wraps the function of every Prefect task
in ``tasks.*`` (tests/flows/conftest.py calls it in the test process); for processes a test starts
(``pricefit serve`` and the flow runs it spawns) ``sitecustomize.py`` beside this file does the same
when this folder is on PYTHONPATH and the variable is set.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
from pathlib import Path
from typing import Any

ENV = "PRICEFIT_FAULT_FILE"


class InjectedFault(RuntimeError):
    """Raised by a step named in the fault file (tests only)."""


def maybe_fail(step: str) -> None:
    path = os.environ.get(ENV)
    if not path or not Path(path).exists():
        return
    steps = {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}
    if step in steps:
        raise InjectedFault(f"injected fault in step {step!r} ({ENV}={path}); delete the file to fix")


def _wrap(task: Any) -> None:
    fn = task.fn
    if getattr(fn, "_pricefit_fault", False):
        return
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def with_fault(*args: Any, **kwargs: Any) -> Any:
        step = task.name
        if step == "contract":  # one task, three steps: contract_raw, contract_curated, contract_tokenized
            step = f"contract_{sig.bind(*args, **kwargs).arguments['stage']}"
        maybe_fail(step)
        return fn(*args, **kwargs)

    with_fault._pricefit_fault = True  # type: ignore[attr-defined]
    task.fn = with_fault


def wrap_module(module: Any) -> None:
    """Wrap every Prefect task defined in ``module``."""
    from prefect.tasks import Task

    for value in list(vars(module).values()):
        if isinstance(value, Task) and getattr(value.fn, "__module__", None) == module.__name__:
            _wrap(value)


def install() -> None:
    """Import every ``tasks.*`` module and wrap its tasks (idempotent)."""
    import tasks

    for info in pkgutil.iter_modules(tasks.__path__):
        wrap_module(importlib.import_module(f"tasks.{info.name}"))


class _WrapOnImport:
    """A meta path finder: each ``tasks.*`` module gets its tasks wrapped right after it loads."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if not name.startswith("tasks."):
            return None
        import sys
        from importlib.util import find_spec

        sys.meta_path.remove(self)
        try:
            spec = find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            loader_exec(module)
            wrap_module(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install_on_import() -> None:
    import sys

    if not any(isinstance(f, _WrapOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())
