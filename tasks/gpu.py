"""The accelerator slot: a Prefect global concurrency limit held for the whole step.

Each accelerator has one limit of ``CAPACITY`` slots. A step that runs alone (``pricefit run``,
``pricefit train``) occupies all of them; a sweep trial that shares its accelerator with ``k - 1``
others occupies ``CAPACITY // k`` (see :func:`sharing`), so ``k`` trials fit at once and a solo
training waits for them (and they for it). ``CAPACITY`` is 5040, so ``k`` up to 64 fits exactly.

``concurrency(name, strict=False)`` on a limit that does not exist only logs a warning and runs
unguarded, so the limit is created (``CAPACITY`` slots) the first time a step asks for it; a limit
of another size (an older pricefit made them with 1 slot) is resized. Against the ephemeral API
(``pricefit run`` without PREFECT_API_URL) or the test harness the limit lives in that process's
database and guards only runs that share it; with a real server it guards every worker. The
slots are taken by :func:`tasks.slots.hold`: a holder killed while it held them (whose lease died
with its temporary server) is freed by the next run, and a waiting step logs who holds the slot.

Slot names: ``cpu-train`` on CPU (two CPU trainings on a 2-core box would only slow each other
down, unless a sweep asks for it), ``gpu`` for physical GPU 0 and ``gpu:N`` for physical GPU N.
A sweep worker process is pinned to one GPU by :func:`pin_worker` (CUDA_VISIBLE_DEVICES set and
CUDA initialized before any task runs), so inside it ``cuda`` means that GPU.

Test hook (read only when set): ``PRICEFIT_SLOT_BARRIER=DIR:N[:TIMEOUT]``
makes every step that takes a slot wait, once inside it, until N holders have entered (a file
each in DIR), or raise after TIMEOUT seconds (default 300). A test uses it to prove that N
trials hold their slots at the same time; it never enters a cache key.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from pricefit import devices

from . import slots

log = logging.getLogger("pricefit.tasks")

#: Slots of one accelerator's limit (7!: divisible by 1..10, 12, 14, 15, 16, ...).
CAPACITY = 5040
MAX_SHARE = 64

BARRIER_ENV = "PRICEFIT_SLOT_BARRIER"

_share: contextvars.ContextVar[int] = contextvars.ContextVar("pricefit_slot_share", default=1)
_physical_device: str | None = None  # set in a sweep worker process by pin_worker

# (flow run id) -> [(slot name, start, end)] of the slots held by steps of that flow run, in this process
_holds: dict[str, list[tuple[str, float, float]]] = {}
_holds_lock = threading.Lock()


def resolve_device(device: str) -> str:
    """The device a step will use (pricefit.devices); ``cuda`` unchecked: the step itself refuses it."""
    return devices.resolve_device(device, check=False)


def physical_device() -> str:
    """The physical index of the GPU that ``cuda`` means in this process."""
    if _physical_device is not None:
        return _physical_device
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def slot_name(device: str) -> str:
    if resolve_device(device) != "cuda":
        return "cpu-train"
    phys = physical_device()
    return "gpu" if phys == "0" else f"gpu:{phys}"


def occupy_for(share: int) -> int:
    """Slots one of ``share`` concurrent holders occupies (``share`` of them fit, not one more)."""
    share = max(1, min(int(share), MAX_SHARE))
    return CAPACITY // share


@contextlib.contextmanager
def sharing(share: int) -> Iterator[None]:
    """Steps started inside this block share their accelerator with ``share - 1`` others."""
    token = _share.set(max(1, min(int(share), MAX_SHARE)))
    try:
        yield
    finally:
        _share.reset(token)


def pin_worker(physical: str | None) -> None:
    """ProcessPoolTaskRunner initializer: this worker process uses only GPU ``physical``.

    CUDA reads CUDA_VISIBLE_DEVICES once, when it initializes; Prefect sets the parent's
    environment around every task it runs in the worker, so CUDA is initialized here, first.
    """
    global _physical_device
    if physical is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = physical
    _physical_device = physical
    import torch

    torch.cuda.init()


def ensure_limit(name: str, limit: int = CAPACITY) -> Any:
    """Create (or resize) the limit ``name``; returns its id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                created = client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
                log.info("created global concurrency limit %r with %d slot(s)", name, limit)
                return created
            except ObjectAlreadyExists:  # another run created it first
                return client.read_global_concurrency_limit_by_name(name).id
        if found.limit != limit:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit))
            log.info("resized global concurrency limit %r from %d to %d slots", name, found.limit, limit)
        return found.id


def holds(flow_run_id: str) -> list[tuple[str, float, float]]:
    """(slot, start, end) wall-clock windows in which steps of ``flow_run_id`` held a slot here."""
    with _holds_lock:
        return list(_holds.get(str(flow_run_id), []))


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None


def _flow_run_name() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.name) if ctx is not None and ctx.flow_run is not None else None


def _step_name() -> str | None:
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return ctx.task.name if ctx is not None else None


def _barrier() -> None:
    spec = os.environ.get(BARRIER_ENV)
    if not spec:
        return
    parts = spec.rsplit(":", 2) if spec.count(":") >= 2 else spec.rsplit(":", 1) + ["300"]
    folder, n, timeout = Path(parts[0]), int(parts[1]), float(parts[2])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}-{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{BARRIER_ENV}: {len(list(folder.iterdir()))} of {n} slot holders arrived in {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def slot(device: str) -> Iterator[str]:
    """Hold this accelerator's concurrency slots while the block runs; yields the slot name."""
    name = slot_name(device)
    limit_id = ensure_limit(name)
    run_id = _flow_run_id()
    with slots.hold(name, occupy_for(_share.get()), limit_id, _step_name(), (run_id, _flow_run_name())):
        start = time.time()
        try:
            _barrier()
            yield name
        finally:
            if run_id is not None:
                with _holds_lock:
                    _holds.setdefault(run_id, []).append((name, start, time.time()))
