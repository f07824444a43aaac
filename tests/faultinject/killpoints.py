"""Named kill points for the fault-injection suite (tests/reliability): a real SIGKILL at the n-th one.

Nothing of this is in the project's code. :func:`install` wraps, in the process it runs in, the
calls where a kill is most telling:

- ``write``    each atomic file write through ``pricefit.artifacts`` (``write_json_atomic``, a
               manifest, ...), before it starts; the name is the file's
- ``replace``  each rename ``pricefit.artifacts`` makes (``os.replace``: a file into place, a stage
               directory swapped in, the old one moved aside), before it happens
- ``fsync``    each file ``pricefit.training.checkpoints`` fsyncs while writing a checkpoint (some
               files saved)
- ``batch``    each training micro-batch of the eager loop (``pricefit.training.loop``; mid
               optimizer step, between checkpoints)
- ``append``   each record appended to a log (``pricefit.promotion._append_jsonl``: promotions.jsonl)
- ``rmtree``   each directory tree ``pricefit.training.checkpoints`` removes (old checkpoints; the
               checkpoint folder after success)

Every call made to one of them counts as one event, in order, across all kinds. With
``PRICEFIT_KILL_TRACE=<file>`` each event is appended there as ``<n> <kind> <name>`` (an
uninterrupted run lists the points a test may choose from); with ``PRICEFIT_KILL_AT=<n>`` the
process sends itself SIGKILL at event ``n`` (1-based), before the call: no ``finally``, no
``atexit``, no flush: what a power cut or the OOM killer leaves.
"""

from __future__ import annotations

import functools
import os
import signal
import types
from pathlib import Path
from typing import Any, Callable

KILL_ENV = "PRICEFIT_KILL_AT"
TRACE_ENV = "PRICEFIT_KILL_TRACE"

_count = 0


def reset() -> None:
    global _count
    _count = 0


def hit(kind: str, name: Any = "") -> None:
    """One event: trace it, and die here when it is the chosen one."""
    global _count
    _count += 1
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as f:
            f.write(f"{_count} {kind} {Path(str(name)).name if name else '-'}\n")
    at = os.environ.get(KILL_ENV)
    if at and int(at) == _count:
        os.kill(os.getpid(), signal.SIGKILL)


def _before(kind: str, fn: Callable, name_arg: int | None = 0) -> Callable:
    if getattr(fn, "_killpoint", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hit(kind, args[name_arg] if name_arg is not None and len(args) > name_arg else "")
        return fn(*args, **kwargs)

    wrapper._killpoint = True  # type: ignore[attr-defined]
    return wrapper


class _OsWithKillPoints(types.ModuleType):
    """``os`` as ``pricefit.artifacts`` sees it: the same module, but ``replace`` is a kill point."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__("os")
        self._real = real
        self.replace = _before("replace", real.replace, 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def install() -> None:
    """Wrap the kill points in this process (idempotent). Imports only light pricefit modules."""
    import shutil

    from pricefit import artifacts, promotion
    from pricefit.training import checkpoints, loop

    if not isinstance(artifacts.os, _OsWithKillPoints):
        artifacts.os = _OsWithKillPoints(artifacts.os)  # type: ignore[assignment]
    artifacts.write_bytes_atomic = _before("write", artifacts.write_bytes_atomic)
    promotion._append_jsonl = _before("append", promotion._append_jsonl)
    # each patched where it is looked up when called: the module that calls it, not the package
    checkpoints._fsync = _before("fsync", checkpoints._fsync)
    loop.micro_batch_indices = _before("batch", loop.micro_batch_indices)
    if not isinstance(checkpoints.shutil, types.SimpleNamespace):
        checkpoints.shutil = types.SimpleNamespace(  # type: ignore[assignment]
            **{k: getattr(shutil, k) for k in dir(shutil) if not k.startswith("__")})
        checkpoints.shutil.rmtree = _before("rmtree", shutil.rmtree)


def read_trace(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    out = []
    for line in Path(path).read_text().splitlines():
        n, kind, name = line.split(" ", 2)
        out.append((int(n), kind, name))
    return out
