"""A test-only fault switch, so a test can make one step fail and then "fix" it.

``PRICEFIT_FAULT_FILE`` names a file; while it exists and lists a step name (one per line), that
step raises :class:`InjectedFault` before doing any work. Deleting the file (or the line) is the
fix. A file rather than a plain variable because a retried flow run (``prefect flow-run retry``)
runs in a worker process with the same environment: the test needs a switch it can flip between
the failing run and the retry. Nothing reads it unless the variable is set; it never enters a
cache key.
"""

from __future__ import annotations

import os
from pathlib import Path

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
