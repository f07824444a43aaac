"""Taking an accelerator's concurrency slots so that a killed run never blocks the next one.

Prefect keeps a global concurrency limit's ``active_slots`` in its database, and the lease that
would give them back when their holder dies in the API server's memory. ``pricefit run`` without
PREFECT_API_URL talks to a temporary server that dies with the run: a run killed while training
(kill -9, OOM) left its slots taken for good, and every later run waited forever, silently.

So every holder is also recorded here, one JSON file per holder beside the Prefect database
(``$PREFECT_HOME/pricefit-slots/<limit id>/``, the limit's id being unique to that database):
flow run, step, pid, host, slots, lease id, since. While a step waits for its slots it

- frees the slots of recorded holders whose process is gone (same host): by their lease when the
  server still knows it, else by decrementing the limit;
- against the temporary server, also frees taken slots that no live recorded holder accounts for
  (only runs sharing this database can hold them, and each of those is recorded);
- logs at once and every ``WAIT_LOG_S`` seconds who holds the slot ("waiting for the cpu-train
  slot (one CPU training at a time), held by flow run NAME (step train, pid P) since ...");
- gives up with an error that says what to do when nothing it can see will free the slot
  (``PRICEFIT_SLOT_ORPHAN_TIMEOUT_S``, default two lease lengths: a holder on another machine whose
  lease never expires), or after ``PRICEFIT_SLOT_TIMEOUT_S`` seconds in all (default: no limit
  while a live holder is known: a training can take hours).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pricefit.artifacts import pid_alive
from pricefit.errors import PricefitError

log = logging.getLogger("pricefit.tasks")

LEASE_S = 300.0  # Prefect's default lease; renewed every LEASE_S / 4 while the step runs
POLL_S = 1.0
WAIT_LOG_S = 30.0
TIMEOUT_ENV = "PRICEFIT_SLOT_TIMEOUT_S"
ORPHAN_TIMEOUT_ENV = "PRICEFIT_SLOT_ORPHAN_TIMEOUT_S"

MEANING = {
    "cpu-train": "one CPU training at a time",
}


def meaning(name: str) -> str:
    return MEANING.get(name, f"the GPU {name.partition(':')[2] or '0'}")


def holders_dir(limit_id: Any) -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / "pricefit-slots" / str(limit_id)


def read_holders(folder: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            rec["_file"] = str(p)
            out.append(rec)
    return out


def _dead(rec: dict[str, Any]) -> bool:
    return rec.get("host") == socket.gethostname() and not pid_alive(rec.get("pid"))


def _ephemeral() -> bool:
    """True when this process talks to a temporary API server that no other host can share."""
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


def describe(rec: dict[str, Any]) -> str:
    run = rec.get("flow_run_name") or rec.get("flow_run_id") or "outside a flow run"
    where = f"pid {rec.get('pid')}" + ("" if rec.get("host") == socket.gethostname() else f" on {rec.get('host')}")
    return f"flow run {run} (step {rec.get('step') or '?'}, {where}) since {rec.get('since', '?')}"


def _release(client: Any, name: str, rec: dict[str, Any] | None, slots: int) -> None:
    """Give back ``slots`` of limit ``name``: through the lease when the server knows it (so it is not
    given back twice when the lease expires), else by decrementing the limit."""
    import httpx

    lease = (rec or {}).get("lease_id")
    if lease:
        try:
            client.release_concurrency_slots_with_lease(lease_id=uuid.UUID(lease))
            return
        except httpx.HTTPStatusError as e:
            if e.response.status_code != 404:
                raise
    if slots > 0:
        client.release_concurrency_slots(names=[name], slots=slots, occupancy_seconds=1.0)


def reap(client: Any, name: str, folder: Path, state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Free the slots of dead holders (and, against the temporary server, of no known holder);
    return the live holders.

    Slots no record accounts for are freed only when two looks (``state`` carries the first) saw
    the same shortfall and the same records: a holder writes its record right after it takes its
    slots, so a shortfall that lasts a poll is not one in that instant."""
    records = read_holders(folder)
    live = []
    for rec in records:
        if _dead(rec):
            log.warning("freeing %d %s slot(s) of %s: its process is gone (killed while it held them)",
                        rec.get("slots", 0), name, describe(rec))
            _release(client, name, rec, int(rec.get("slots") or 0))
            Path(rec["_file"]).unlink(missing_ok=True)
        else:
            live.append(rec)
    if _ephemeral():
        limit = client.read_global_concurrency_limit_by_name(name)
        unknown = int(limit.active_slots) - sum(int(r.get("slots") or 0) for r in live)
        seen = (unknown, tuple(sorted(r["_file"] for r in live)))
        first_look = state is not None and state.get("unknown") != seen
        if state is not None:
            state["unknown"] = seen
        if unknown > 0 and not first_look:
            log.warning("freeing %d %s slot(s) that no running pricefit holds (a run killed while it held them, "
                        "whose temporary Prefect server is gone)", unknown, name)
            _release(client, name, None, unknown)
    return live


def _env_seconds(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise PricefitError(f"{name}={raw!r} is not a number of seconds", hint=f"set {name} to e.g. 600, or unset it") from None


def _renew(lease_id: str, stop: threading.Event) -> None:
    from prefect.client.orchestration import get_client

    while not stop.wait(LEASE_S / 4):
        try:
            with get_client(sync_client=True) as client:
                client.renew_concurrency_lease(lease_id=uuid.UUID(lease_id), lease_duration=LEASE_S)
        except Exception as e:  # a transient API error: the next renewal tries again
            log.debug("renewing the slot lease failed: %s", e)


@contextlib.contextmanager
def hold(name: str, occupy: int, limit_id: Any, step: str | None, run: tuple[str | None, str | None]) -> Iterator[None]:
    """Hold ``occupy`` slots of limit ``name`` while the block runs (see the module doc)."""
    import httpx
    from prefect.client.orchestration import get_client

    folder = holders_dir(limit_id)
    folder.mkdir(parents=True, exist_ok=True)
    timeout = _env_seconds(TIMEOUT_ENV, None)
    orphan_timeout = _env_seconds(ORPHAN_TIMEOUT_ENV, 2 * LEASE_S)
    started = time.monotonic()
    next_log = started
    unexplained_since: float | None = None
    lease_id = None
    state: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while True:
            live = reap(client, name, folder, state)
            try:
                resp = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=occupy, mode="concurrency", lease_duration=LEASE_S
                )
                lease_id = str(resp.json()["lease_id"])
                break
            except httpx.HTTPStatusError as e:
                if e.response.status_code != 423:
                    raise
            now = time.monotonic()
            waited = now - started
            unexplained_since = None if live else (unexplained_since or now)
            if now >= next_log:
                who = "; ".join(describe(r) for r in live) or (
                    "no running pricefit that this machine knows of (a run on another machine, or one killed "
                    f"less than {LEASE_S:.0f} s ago whose lease the Prefect server will expire)"
                )
                log.info("waiting for the %s slot (%s), held by %s; waited %.0f s", name, meaning(name), who, waited)
                next_log = now + WAIT_LOG_S
            if unexplained_since is not None and orphan_timeout is not None and now - unexplained_since > orphan_timeout:
                raise PricefitError(
                    f"the {name} slot ({meaning(name)}) has been taken for {now - unexplained_since:.0f} s by no "
                    "running pricefit this machine knows of, so waiting would not end",
                    hint=f"if no run is training on {name}, free it with `prefect gcl update {name} --active-slots 0` "
                    f"(same PREFECT_API_URL); {ORPHAN_TIMEOUT_ENV} sets how long to wait first",
                )
            if timeout is not None and waited > timeout:
                raise PricefitError(
                    f"gave up after {waited:.0f} s waiting for the {name} slot ({meaning(name)}), held by "
                    + ("; ".join(describe(r) for r in live) or "no known run"),
                    hint=f"wait for that run to finish or cancel it (Prefect UI); {TIMEOUT_ENV} sets this wait",
                )
            time.sleep(POLL_S)
    record = folder / f"{lease_id}.json"
    record.write_text(json.dumps({
        "lease_id": lease_id, "slots": occupy, "pid": os.getpid(), "host": socket.gethostname(),
        "flow_run_id": run[0], "flow_run_name": run[1], "step": step,
        "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }))
    if time.monotonic() - started > POLL_S:
        log.info("took the %s slot after waiting %.0f s", name, time.monotonic() - started)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease_id, stop), name="pricefit-slot-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        try:
            with get_client(sync_client=True) as client:
                _release(client, name, {"lease_id": lease_id}, 0)
        finally:
            record.unlink(missing_ok=True)
