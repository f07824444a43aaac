"""A REAL local Prefect server for the end-to-end tests (session-scoped).

``prefect server start`` runs on a free loopback port with its own PREFECT_HOME and SQLite database
in a temp dir, so it never touches the developer's ~/.prefect. Tests talk to it over its REST API
(the same endpoints the UI calls) with httpx, and start served deployments as subprocesses with
:func:`PrefectServer.env` so they register against this server and nothing else.

At the end the server and every child it started are stopped (the whole process group); when a test
failed, the server log is printed so the failure can be read without re-running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = float(os.environ.get("PRICEFIT_E2E_SERVER_TIMEOUT", "180"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can tell a failed test at teardown."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(api_url: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for any process (server, served flows, CLI) that must use only this server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_UI_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            # results and their cache records live beside the database, never in ~/.prefect
            "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if extra:
        env.update(extra)
    return env


@dataclass
class ManagedProcess:
    """A child started in its own session; :meth:`stop` ends it and everything it spawned."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session=True: the child leads its own process group
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # children that outlived the leader (same group) go too
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_process(name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO_ROOT) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    fh = open(log_path, "wb")
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    fh.close()  # the child holds its own descriptor
    return ManagedProcess(name, proc, log_path)


@dataclass
class PrefectServer:
    url: str  # UI root, e.g. http://127.0.0.1:PORT
    api_url: str  # http://127.0.0.1:PORT/api
    home: Path
    process: ManagedProcess
    start_seconds: float
    children: list[ManagedProcess] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return prefect_env(self.api_url, self.home, extra)

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> ManagedProcess:
        """Start a child process wired to this server; it is stopped with the server at the latest."""
        child = start_process(name, argv, self.env(extra_env), self.home)
        self.children.append(child)
        return child


def _wait_healthy(api_url: str, proc: ManagedProcess, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"prefect server exited with code {proc.proc.returncode}:\n{proc.log_tail()}")
        try:
            r = httpx.get(f"{api_url}/health", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout_s:.0f} s (last: {last}):\n{proc.log_tail()}")


def _prefect_bin() -> str:
    exe = Path(sys.executable).with_name("prefect")
    return str(exe) if exe.exists() else "prefect"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[PrefectServer]:
    """A real ``prefect server start`` on a free loopback port, SQLite in a temp dir."""
    pytest.importorskip("prefect", reason="prefect is not installed (pip install -e '.[test]')")
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(api_url, home)
    t0 = time.monotonic()
    proc = start_process(
        "prefect-server",
        [_prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off", "--no-background"],
        env,
        home,
    )
    try:
        _wait_healthy(api_url, proc, SERVER_START_TIMEOUT_S)
    except Exception:
        proc.stop()
        raise
    server = PrefectServer(f"http://127.0.0.1:{port}", api_url, home, proc, time.monotonic() - t0)
    sys.stderr.write(f"\n[e2e] prefect server at {server.url} healthy after {server.start_seconds:.1f} s (home {home})\n")
    failed_before = request.session.testsfailed
    try:
        yield server
    finally:
        for child in reversed(server.children):
            child.stop()
        proc.stop()
        if request.session.testsfailed > failed_before:
            sys.stderr.write(f"\n===== prefect server log (tail) =====\n{proc.log_tail()}\n")
            for child in server.children:
                sys.stderr.write(f"\n===== {child.name} log (tail) =====\n{child.log_tail()}\n")


TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class PrefectAPI:
    """The REST calls the Prefect UI makes, over httpx (no Prefect client, no settings context)."""

    def __init__(self, client):
        self.http = client

    def _json(self, method: str, path: str, **kw):
        # SQLite under load answers 503 ("database is locked") now and then; Prefect's own client
        # retries those, and so does this one
        for attempt in range(8):
            r = self.http.request(method, path, **kw)
            if r.status_code not in (429, 502, 503):
                break
            time.sleep(min(0.5 * 2**attempt, 8.0))
        if r.status_code >= 400:
            raise AssertionError(f"{method} {path} -> HTTP {r.status_code}: {r.text[:2000]}")
        return r.json() if r.content else None

    def deployment(self, flow_name: str, name: str) -> dict | None:
        r = self.http.get(f"deployments/name/{flow_name}/{name}")
        return r.json() if r.status_code == 200 else None

    def wait_for_deployments(self, flow_name: str, names: list[str], proc: ManagedProcess, timeout_s: float = 180) -> dict[str, dict]:
        """Poll until ``proc`` (a serving process) has registered every deployment in ``names``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited with code {proc.proc.returncode}:\n{proc.log_tail()}")
            found = {n: self.deployment(flow_name, n) for n in names}
            if all(found.values()):
                return found  # type: ignore[return-value]
            time.sleep(1.0)
        raise AssertionError(f"deployments {names} not registered after {timeout_s:.0f} s:\n{proc.log_tail()}")

    def create_flow_run(self, deployment_id: str, parameters: dict | None = None, name: str | None = None) -> dict:
        """What the UI's Run / Quick run button posts."""
        body: dict = {"state": {"type": "SCHEDULED", "name": "Scheduled"}}
        if parameters is not None:
            body["parameters"] = parameters
        if name:
            body["name"] = name
        return self._json("POST", f"deployments/{deployment_id}/create_flow_run", json=body)

    def flow_run(self, flow_run_id: str) -> dict:
        return self._json("GET", f"flow_runs/{flow_run_id}")

    def wait_terminal(self, flow_run_id: str, proc: ManagedProcess | None = None, timeout_s: float = 300, after: str | None = None) -> dict:
        """Poll a flow run until it is terminal (and, with ``after``, its state id differs from that one)."""
        deadline = time.monotonic() + timeout_s
        fr = self.flow_run(flow_run_id)
        while time.monotonic() < deadline:
            fr = self.flow_run(flow_run_id)
            state = fr.get("state") or {}
            if state.get("type") in TERMINAL and state.get("id") != after:
                return fr
            if proc is not None and not proc.alive():
                raise AssertionError(f"{proc.name} exited with code {proc.proc.returncode}:\n{proc.log_tail()}")
            time.sleep(1.0)
        tail = proc.log_tail() if proc else ""
        raise AssertionError(f"flow run {flow_run_id} not finished after {timeout_s:.0f} s (state {fr.get('state')}):\n{tail}")

    def flow_runs_named(self, name: str) -> list[dict]:
        return self._json("POST", "flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}})

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self._json(
            "POST", "task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        )

    def artifacts(self, flow_run_id: str) -> list[dict]:
        return self._json("POST", "artifacts/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})

    def logs(self, flow_run_id: str, limit: int = 200) -> str:
        rows = self._json("POST", "logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": limit})
        return "\n".join(f"{r.get('name')}: {r.get('message')}" for r in rows or [])

    def retry(self, flow_run_id: str) -> dict:
        """Retry a finished flow run as the UI's Retry button / `prefect flow-run retry` do: force it back
        to a scheduled state (AwaitingRetry) so the process serving its deployment runs it again."""
        return self._json(
            "POST",
            f"flow_runs/{flow_run_id}/set_state",
            json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the e2e test"}, "force": True},
        )


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServer) -> Iterator[PrefectAPI]:
    """REST access to the server, the way the UI talks to it."""
    import httpx

    with httpx.Client(base_url=prefect_server.api_url + "/", timeout=30.0) as client:
        yield PrefectAPI(client)


# ------------------------------------------------------------------------------------------------
# `pricefit serve` against the session's server

FLOW = "retrain"
SERVED = ["retrain-nightly", "retrain-manual"]
# PRICEFIT_E2E_TOY=1: a seconds-long stand-in flow with the same step names (tests/e2e/toy_project)
TOY = os.environ.get("PRICEFIT_E2E_TOY") == "1"
PREFECT_FILE = (Path(__file__).parent / "toy_project" / "prefect.yaml") if TOY else REPO_ROOT / "deployments" / "prefect.yaml"

# a test-sized profile (the same sizes as tests/flows): tiny random Llama, 80 synthetic listings,
# 2 training steps of a price head blended with TF-IDF, 4 held-out items; a Quick run in the UI takes these defaults
TINY_PROFILE = {
    "profile": "e2e-tiny",
    "source": "demo:80",
    "curate": {"tokenizer": "tiny-random", "max_text_tokens": 32, "min_chars": 40},
    "tokenize": {"base_model": "tiny-random", "max_length": 64},
    "train": {
        "base_model": "tiny-random",
        "device": "cpu",
        "quantization": "none",
        "lora_r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "batch_size": 4,
        "max_steps": 2,
        "save_steps": 50,
        # the champion's kind of model (a price head blended with TF-IDF): the UI must name the blend
        "head": "regression",
        "blend": "tfidf",
    },
    "evaluate": {"split": "test", "max_items": 4, "batch_size": 4, "device": "cpu"},
    "baselines": {"include": ["constant", "linear"], "base_model": "tiny-random", "split": "test", "max_items": 4},
}


def write_tiny_profile(path: Path) -> Path:
    """TINY_PROFILE as a profile file (RetrainParams.profile takes a path)."""
    import yaml

    from pricefit.config import load_run_config

    path.write_text(yaml.safe_dump(TINY_PROFILE, sort_keys=False))
    load_run_config(str(path))  # fail here on a stale key, not inside a flow run
    return path


def _serve_argv(profile: Path | None) -> list[str]:
    exe = Path(sys.executable).with_name("pricefit")
    argv = [str(exe) if exe.exists() else "pricefit", "serve", "--file", str(PREFECT_FILE)]
    if profile is not None:
        argv += ["--profile", str(profile)]
    for name in SERVED:
        argv += ["--only", name]
    return argv


FAULTINJECT = str(Path(__file__).resolve().parents[1] / "faultinject")


class Served:
    """The `pricefit serve` process of the session (restartable with another environment)."""

    def __init__(self, server: PrefectServer, api: PrefectAPI, workdir: Path):
        self.server, self.api, self.workdir = server, api, workdir
        self.toy = TOY
        self.profile = None if TOY else write_tiny_profile(workdir / "e2e-tiny.yaml")
        self.fault_file = workdir / "fault-steps.txt"  # tests/faultinject/pricefit_faults.py: PRICEFIT_FAULT_FILE
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self, extra_env: dict[str, str] | None = None) -> dict[str, dict]:
        self.stop()
        # tests/faultinject on PYTHONPATH: its sitecustomize wraps the step tasks of the served flow runs in the fault switch
        pythonpath = os.pathsep.join(filter(None, [FAULTINJECT, os.environ.get("PYTHONPATH")]))
        env = {"PRICEFIT_WORKDIR": str(self.workdir / "runs"), "PRICEFIT_FAULT_FILE": str(self.fault_file),
               "PYTHONPATH": pythonpath, "PRICEFIT_DOCS_PORT": "0", **(extra_env or {})}  # Data Docs server: a free port
        self.starts += 1
        self.proc = self.server.spawn(f"pricefit-serve-{self.starts}", _serve_argv(self.profile), env)
        return self.api.wait_for_deployments(FLOW, SERVED, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture(scope="session")
def served(prefect_server: PrefectServer, prefect_api: PrefectAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`pricefit serve` serving retrain-nightly and retrain-manual (test-sized profile) on the server."""
    s = Served(prefect_server, prefect_api, tmp_path_factory.mktemp("served"))
    s.start()
    yield s
    s.stop()
