"""One training per accelerator: a Prefect global concurrency limit held for the whole step.

``concurrency(name, strict=False)`` on a limit that does not exist only logs a warning and runs
unguarded, so the limit is created (1 slot) the first time a step asks for it. Against the
ephemeral API (``pricefit run`` without PREFECT_API_URL) or the test harness the limit lives in
that process's database and guards only runs that share it; with a real server it guards every
worker. The slot name is ``gpu`` on CUDA and ``cpu-train`` on CPU (two CPU trainings on a
2-core box would only slow each other down).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

log = logging.getLogger("pricefit.tasks")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def ensure_limit(name: str, limit: int = 1) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
                log.info("created global concurrency limit %r with %d slot(s)", name, limit)
            except ObjectAlreadyExists:  # another run created it first
                pass


@contextlib.contextmanager
def slot(device: str) -> Iterator[str]:
    """Hold the accelerator's concurrency slot while the block runs; yields the slot name."""
    from prefect.concurrency.sync import concurrency

    name = "gpu" if resolve_device(device) == "cuda" else "cpu-train"
    ensure_limit(name)
    with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        yield name
