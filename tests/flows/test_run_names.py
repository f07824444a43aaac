"""Flow run names: a name the user gave a run is kept, Prefect's made-up name is replaced, a retry renames nothing."""

from __future__ import annotations

import re

import pytest
from prefect import flow

from flows import common
from flows.common import run_name

NAMED = re.compile(r"named-demo-\d{8}-\d{6}")


@flow(flow_run_name=lambda: run_name("named"))
def named(params: dict) -> str:
    from prefect.runtime import flow_run

    return flow_run.name


def test_prefects_generated_names_are_told_from_typed_ones():
    from prefect.utilities.names import generate_slug

    assert all(common.is_generated_name(generate_slug(2)) for _ in range(500))
    assert common.is_generated_name(None) and common.is_generated_name("")
    # names a user types, and the ones this project gives
    for name in ("my-ui-run", "lr-sweep", "nightly", "Crimson-Fox", "retrain-demo-20261201-101010", "crimson fox"):
        assert not common.is_generated_name(name), name


def _run(client, flow_run_id):
    from prefect.flow_engine import run_flow

    fr = client.read_flow_run(flow_run_id)
    state = run_flow(named, flow_run=fr, parameters=fr.parameters, return_type="state")
    assert state.is_completed(), state
    return client.read_flow_run(flow_run_id).name


def _retry(client, flow_run_id):
    """What the UI's Retry button does: force the finished run back to a scheduled state."""
    from prefect.states import AwaitingRetry

    client.set_flow_run_state(flow_run_id, AwaitingRetry(), force=True)
    return _run(client, flow_run_id)


@pytest.mark.usefixtures("prefect_harness")
def test_a_typed_name_is_kept_and_a_retry_keeps_the_first_name():
    from prefect import get_client

    params = {"params": {"profile": "demo"}}
    with get_client(sync_client=True) as client:
        typed = client.create_flow_run(named, name="my-ui-run", parameters=params)
        assert _run(client, typed.id) == "my-ui-run"
        assert _retry(client, typed.id) == "my-ui-run"

        made_up = client.create_flow_run(named, parameters=params)  # no name: Prefect makes one up
        assert re.fullmatch(r"[a-z]+-[a-z]+", made_up.name), made_up.name
        first = _run(client, made_up.id)
        assert NAMED.fullmatch(first), first
        assert _retry(client, made_up.id) == first  # not renamed to a new timestamp
