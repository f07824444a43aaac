"""The cache policy inside real Prefect runs (test harness), on two toy steps of our own."""

from __future__ import annotations

import shutil

import pytest
from prefect import flow, task

from pricefit.artifacts import ArtifactRef, atomic_dir, ref_for, verify, write_manifest
from tasks import cache

pytestmark = pytest.mark.usefixtures("prefect_harness")
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _toy_code(monkeypatch):
    # the toy steps call no library code: key them on a fixed code hash, so that edits to
    # pricefit/ made while the test runs cannot change their keys
    monkeypatch.setattr(cache, "code_hash", lambda modules: "toy-code")


@task
def make(n: int, workdir: str) -> ArtifactRef:
    CALLS.append("make")
    out = cache.out_dir(workdir, "ingest", cache.current_key("ingest", dict(n=n, workdir=workdir)))
    with atomic_dir(out) as tmp:
        (tmp / "n.txt").write_text(str(n))
        write_manifest(tmp, {"kind": "raw"})
    return ref_for(out, "raw", rows=n)


@task
def double(ref: ArtifactRef, workdir: str) -> ArtifactRef:
    CALLS.append("double")
    out = cache.out_dir(workdir, "curate", cache.current_key("curate", dict(ref=ref, workdir=workdir)))
    with atomic_dir(out) as tmp:
        (tmp / "n.txt").write_text(str(2 * ref.rows))
        write_manifest(tmp, {"kind": "curated"})
    return ref_for(out, "curated", rows=2 * ref.rows)


@flow
def toy(n: int, workdir: str, refresh_first: bool = False) -> list:
    a = cache.configured(make, "ingest", workdir, refresh=refresh_first)(n, workdir, return_state=True)
    b = cache.configured(double, "curate", workdir)(a.result(), workdir, return_state=True)
    return [a.name, b.name, b.result()]


def test_second_run_is_cached_and_results_are_json_refs(tmp_path):
    CALLS.clear()
    first = toy(3, str(tmp_path))
    assert first[:2] == ["Completed", "Completed"] and first[2].rows == 6
    second = toy(3, str(tmp_path))
    assert second[:2] == ["Cached", "Cached"] and second[2] == first[2]
    assert CALLS == ["make", "double"]
    # persisted as small JSON records, one per step key
    records = sorted((tmp_path / ".prefect-results").iterdir())
    assert len(records) == 2 and all(r.stat().st_size < 4000 for r in records)
    assert all("pricefit.artifacts.ArtifactRef" in r.read_text() for r in records)


def test_a_changed_input_reruns_that_step_and_what_follows(tmp_path):
    toy(3, str(tmp_path))
    CALLS.clear()
    names = toy(4, str(tmp_path))[:2]
    assert names == ["Completed", "Completed"] and CALLS == ["make", "double"]


def test_a_deleted_artifact_is_rebuilt_not_served(tmp_path):
    first = toy(5, str(tmp_path))
    shutil.rmtree(first[2].dir)
    CALLS.clear()
    again = toy(5, str(tmp_path))
    assert again[:2] == ["Cached", "Completed"] and CALLS == ["double"]
    assert (again[2].dir / "n.txt").read_text() == "10" and verify(again[2], hashes=False)


def test_refresh_recomputes_even_a_byte_identical_step(tmp_path):
    toy(6, str(tmp_path))
    CALLS.clear()
    names = toy(6, str(tmp_path), refresh_first=True)[:2]
    # same output bytes -> same ref -> the next step's key is unchanged: that is why
    # `--refresh STEP` also refreshes every step after STEP (tasks.cache.refresh_set)
    assert names == ["Completed", "Cached"] and CALLS == ["make"]


def test_training_slot_limit_is_created_with_the_shared_capacity():
    """One accelerator, one limit of gpu.CAPACITY slots; a solo holder takes them all and frees them."""
    from prefect.client.orchestration import get_client

    from tasks import gpu

    @flow
    def hold() -> str:
        with gpu.slot("cpu") as name:
            return name

    assert hold() == "cpu-train"
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("cpu-train")
    assert (limit.limit, limit.active, limit.active_slots) == (gpu.CAPACITY, True, 0)


def _curated_ref(root, texts: list[str]) -> ArtifactRef:
    import polars as pl

    out = root / "curated"
    n = len(texts)
    frame = pl.DataFrame(
        {"item_id": [f"i{i}" for i in range(n)], "category": ["X"] * n, "title": ["t"] * n, "text": texts,
         "price": [10.0 + i for i in range(n)]}
    )
    with atomic_dir(out) as tmp:
        for split in ("train", "validation", "test"):
            frame.write_parquet(tmp / f"{split}.parquet")
        write_manifest(tmp, {"kind": "curated"})
    return ref_for(out, "curated", rows=n)


def test_baselines_rerun_once_a_key_is_set_and_a_failed_request_is_never_cached(tmp_path, monkeypatch):
    """Issue 10 finding 4: a run without a key cached the frontier "skipped", and setting the key
    and the endpoint served it again; items whose request failed were cached as $0."""
    import json
    import sys
    from pathlib import Path

    from pricefit.config import BaselinesConfig, FrontierConfig
    from tasks.baselines import baselines

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
    from openai_server import FakeOpenAI

    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path / "home"))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    workdir = str(tmp_path / "work")
    curated = _curated_ref(tmp_path, ["x [[fail:503x3]] [[price:7]]", "y [[price:2]]"])
    # the endpoint is not in the config: it comes from OPENAI_BASE_URL, an input from outside
    cfg = BaselinesConfig(
        include=["constant", "frontier"],
        frontier=FrontierConfig(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0),
    )
    once = baselines.with_options(retries=0)
    import tasks.baselines as task_mod

    monkeypatch.setattr(task_mod, "OUTAGE_RETRY_DELAYS", ())  # no outage retry: item x's 3 failed attempts fail the step

    @flow
    def run_baselines(workdir: str) -> list:
        state = cache.configured(once, "baselines", workdir)(curated, cfg, workdir, return_state=True)
        return [state.name, state.result() if state.is_completed() else None]

    def frontier_status(ref: ArtifactRef) -> str:
        return json.loads((ref.dir / "summary.json").read_text())["baselines"]["frontier"]["status"]

    name, ref = run_baselines(workdir)
    assert name == "Completed" and frontier_status(ref) == "skipped: no API key in OPENAI_API_KEY"
    assert run_baselines(workdir)[0] == "Cached"

    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-flow-key")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        # the key is set: not the cached "skipped"; item x gets no answer in 3 attempts: the step fails
        assert run_baselines(workdir) == ["Failed", None]
        assert server.requests == 3 + 1
        server.reset_counts()
        name, ref = run_baselines(workdir)  # the endpoint answers x now; y comes from the reply cache
        assert name == "Completed" and frontier_status(ref) == "ok" and server.requests == 1
        import polars as pl

        assert pl.read_parquet(ref.dir / "frontier" / "predictions.parquet")["prediction"].to_list() == [7.0, 2.0]
        assert run_baselines(workdir)[0] == "Cached"
    with FakeOpenAI() as other:  # another endpoint: the step runs again, not Cached (and x fails there too)
        monkeypatch.setenv("OPENAI_BASE_URL", other.base_url)
        assert run_baselines(workdir) == ["Failed", None] and other.requests == 3 + 1
