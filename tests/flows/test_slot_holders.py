"""Issue 21 #1 and issue 22 #2: a run killed while it held the training slot never blocks the next
one, and a step that waits for the slot says so, and by whom, instead of looking hung."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pricefit.errors import PricefitError

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from tasks import gpu
with gpu.slot("cpu"):
    print("held", flush=True)
    time.sleep(600)
"""


def _active_slots(name: str = "cpu-train") -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def _start_holder() -> subprocess.Popen:
    """Another process that takes the cpu-train slot from the same Prefect server and keeps it."""
    from prefect.settings import get_current_settings

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT))], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _take_in_thread(result: dict) -> threading.Thread:
    from tasks import gpu

    def take() -> None:
        try:
            with gpu.slot("cpu") as name:
                result["name"] = name
                result["held_while_inside"] = _active_slots()
        except BaseException as e:  # reported to the test
            result["error"] = e

    th = threading.Thread(target=take, daemon=True)
    th.start()
    return th


def test_a_holder_killed_while_it_held_the_slot_does_not_block_the_next_run(caplog):
    from tasks import gpu, slots

    caplog.set_level(logging.INFO, logger="pricefit")
    proc = _start_holder()
    assert _active_slots() == gpu.CAPACITY
    holders = slots.read_holders(slots.holders_dir(gpu.ensure_limit("cpu-train")))
    assert [(h["pid"], h["slots"]) for h in holders] == [(proc.pid, gpu.CAPACITY)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _active_slots() == gpu.CAPACITY  # the dead holder's slots are still taken in the database
    result: dict = {}
    th = _take_in_thread(result)
    th.join(300)  # a hang guard, not a timing assertion: before the fix this waited forever
    assert not th.is_alive(), "the next run is still waiting for the dead holder's slot"
    assert "error" not in result, result.get("error")
    assert (result["name"], result["held_while_inside"]) == ("cpu-train", gpu.CAPACITY)
    assert _active_slots() == 0
    assert f"freeing {gpu.CAPACITY} cpu-train slot(s) of flow run outside a flow run (step ?, pid {proc.pid})" in caplog.text
    assert slots.read_holders(slots.holders_dir(gpu.ensure_limit("cpu-train"))) == []


def test_a_wait_for_a_live_holder_is_logged_with_who_holds_it_and_can_time_out(caplog, monkeypatch):
    from tasks import gpu

    caplog.set_level(logging.INFO, logger="pricefit")
    monkeypatch.setenv("PRICEFIT_SLOT_TIMEOUT_S", "3")
    proc = _start_holder()
    try:
        with pytest.raises(PricefitError) as err:
            with gpu.slot("cpu"):
                pass
    finally:
        proc.kill()
        proc.wait()
    who = f"flow run outside a flow run (step ?, pid {proc.pid}) since "
    assert f"waiting for the cpu-train slot (one CPU training at a time), held by {who}" in caplog.text
    assert "for the cpu-train slot (one CPU training at a time), held by " + who in err.value.message
    assert err.value.hint.startswith("wait for that run to finish or cancel it")
    with gpu.slot("cpu"):  # the killed holder is freed by the next taker
        assert _active_slots() == gpu.CAPACITY
    assert _active_slots() == 0


def test_against_a_temporary_server_slots_no_live_run_holds_are_freed(monkeypatch, caplog):
    """The killed run's lease lived in its temporary server: the next run's server has no lease and
    no record for the taken slots, and only runs sharing this database could hold them."""
    from prefect.client.orchestration import get_client

    from tasks import gpu, slots

    caplog.set_level(logging.INFO, logger="pricefit")
    gpu.ensure_limit("cpu-train")
    with get_client(sync_client=True) as client:  # taken without a lease or a holder record
        client.increment_concurrency_slots(names=["cpu-train"], slots=gpu.CAPACITY, mode="concurrency")
    assert _active_slots() == gpu.CAPACITY
    monkeypatch.setattr(slots, "_ephemeral", lambda: True)
    result: dict = {}
    th = _take_in_thread(result)
    th.join(300)  # a hang guard
    assert not th.is_alive() and "error" not in result, result.get("error")
    assert result["held_while_inside"] == gpu.CAPACITY
    assert _active_slots() == 0
    assert f"freeing {gpu.CAPACITY} cpu-train slot(s) that no running pricefit holds" in caplog.text


def test_orphaned_slots_on_a_shared_server_end_in_a_clear_error(monkeypatch):
    from prefect.client.orchestration import get_client

    from tasks import gpu

    gpu.ensure_limit("cpu-train")
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots(names=["cpu-train"], slots=gpu.CAPACITY, mode="concurrency")
    monkeypatch.setenv("PRICEFIT_SLOT_ORPHAN_TIMEOUT_S", "2")
    try:
        with pytest.raises(PricefitError) as err:
            with gpu.slot("cpu"):
                pass
        assert "by no running pricefit this machine knows of, so waiting would not end" in err.value.message
        assert err.value.hint.startswith("if no run is training on cpu-train, free it with `prefect gcl update cpu-train --active-slots 0`")
    finally:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots(names=["cpu-train"], slots=gpu.CAPACITY, occupancy_seconds=1.0)
