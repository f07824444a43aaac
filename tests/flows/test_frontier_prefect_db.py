"""Issue 21 #2 (gap): the frontier baseline run through a real Prefect flow leaves no piece of the
API key in Prefect's own database (logs, artifacts, task and flow run records), whatever the
server sends back."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest
from prefect import flow

from pricefit.artifacts import ArtifactRef, ref_for
from pricefit.config import BaselinesConfig, FrontierConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from openai_server import FakeOpenAI  # noqa: E402
from test_frontier import KEY, _curated, _pieces  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _database_text() -> str:
    """Every text and blob cell of every table of the Prefect database the harness runs on."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    url = str(url.get_secret_value() if hasattr(url, "get_secret_value") else url)  # a SecretStr in prefect 3
    assert url.startswith("sqlite"), f"this test reads a sqlite Prefect database, not {url}"
    path = url.split(":///", 1)[1]
    con = sqlite3.connect(path)
    try:
        cells = []
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        assert {"log", "artifact", "task_run", "flow_run"} <= set(tables)
        for table in tables:
            for row in con.execute(f'select * from "{table}"'):
                cells += [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in row if isinstance(c, (str, bytes))]
        return "\n".join(cells)
    finally:
        con.close()


@pytest.mark.parametrize("form", ["tail", "json"])
def test_a_hostile_server_leaks_no_piece_of_the_key_into_the_prefect_database(tmp_path, monkeypatch, form):
    from prefect import get_run_logger
    from prefect.logging.handlers import APILogWorker

    from tasks import baselines as task_mod

    monkeypatch.setenv("PRICEFIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setattr(task_mod, "OUTAGE_RETRY_DELAYS", (0.0, 0.0))
    marker = f"prefect-db-marker-{form}"
    with FakeOpenAI(echo_auth_in_errors=True) as server:
        curated_dir = _curated(tmp_path / "data", [f"a [[leak:{form}]]", "b [[fail:500x1]] [[price:9]]"])
        curated: ArtifactRef = ref_for(curated_dir, "curated", rows=2)
        frontier = FrontierConfig(base_url=server.base_url, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0)
        cfg = BaselinesConfig(include=["constant", "frontier"], frontier=frontier)

        @flow(name=f"frontier-db-{form}")
        def one_step() -> ArtifactRef:
            get_run_logger().info(marker)  # proves the logs reached the database
            return task_mod.baselines(curated, cfg, str(tmp_path / "wd"))

        one_step()
        assert server.auth_headers.count(f"Bearer {KEY}") >= 2  # the key was really sent
    APILogWorker.drain_all()  # the run's logs are sent in batches: all of them in the database now
    text = _database_text()
    assert marker in text and "frontier" in text
    assert [p for p in _pieces(KEY) if p in text] == []
