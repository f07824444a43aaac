"""`pricefit run`, `pricefit sweep` (and `pricefit serve`, flows/serve.py): the orchestration commands.

They live above the library: pyproject.toml names this module in the ``pricefit.commands`` entry
point group, and ``pricefit.cli`` imports every module of that group, whose commands register on
the same typer app as the stage commands. Prefect is imported inside the commands (``pricefit
--help`` stays fast). Without PREFECT_API_URL the flow runs against Prefect's ephemeral API (a
temporary local server on the default database, so a later `prefect server start` shows the
runs); with it, against that server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from pricefit.cli import JSON_OPTION_HELP, app, check_input, command, emit, profile_names
from pricefit.errors import ContractError, PricefitError
from tasks import steps



def _step_states(flow_run_id: Any) -> dict[str, str]:
    """Final state of every step task of one flow run (from the Prefect API, so a failed run has them too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    found: dict[str, tuple[Any, str]] = {}
    for tr in runs:
        step = next((t.split(":", 1)[1] for t in tr.tags if t.startswith("step:")), None)
        if step and tr.state is not None:
            started = tr.start_time or tr.expected_start_time
            prev = found.get(step)
            if prev is None or (started and prev[0] and started > prev[0]):
                found[step] = (started, tr.state.name)
    order = {s: i for i, s in enumerate(steps.NAMES)}  # the DAG order of the step registry
    return {s: found[s][1] for s in sorted(found, key=lambda s: order.get(s, 99))}


DEFAULT_SERVER = "http://127.0.0.1:4200"


def _server_answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=1.0) as r:
            return r.status == 200
    except OSError:
        return False


def ui_location(flow_run_id: Any = None) -> str:
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        try:  # `prefect config set PREFECT_API_URL=...` (a Prefect profile) counts as set
            from prefect.settings import PREFECT_API_URL

            api = PREFECT_API_URL.value()
        except Exception:  # noqa: BLE001 - no setting: as unset
            api = None
    if not api:
        if _server_answers(DEFAULT_SERVER):
            return (f"PREFECT_API_URL is not set, so this run used a temporary Prefect API, not the server running at "
                    f"{DEFAULT_SERVER}: export PREFECT_API_URL={DEFAULT_SERVER}/api to see runs there")
        return (
            "PREFECT_API_URL is not set and no Prefect server answers at " + DEFAULT_SERVER + ": the run used a temporary "
            "Prefect API and is recorded in the local Prefect database; `prefect server start` shows it at " + DEFAULT_SERVER
        )
    ui = os.environ.get("PREFECT_UI_URL") or api.rstrip("/").removesuffix("/api")
    return f"{ui}/runs/flow-run/{flow_run_id}" if flow_run_id else ui


def _finish(state: Any, as_json: bool, human) -> dict[str, Any]:
    """Turn a flow's final state into the command's output (and exit code on failure)."""
    flow_run_id = state.state_details.flow_run_id
    states = _step_states(flow_run_id)
    if state.is_completed():
        result = state.result()
        out = {"ok": True, "flow_run_id": str(flow_run_id), "state": state.name, **result, "states": states, "ui": ui_location(flow_run_id)}
        emit(out, as_json, human)
        return out
    exc = state.result(raise_on_failure=False)
    out = {"ok": False, "flow_run_id": str(flow_run_id), "state": state.name, "states": states, "ui": ui_location(flow_run_id)}
    if isinstance(exc, BaseException):
        out["error"] = getattr(exc, "message", None) or str(exc)
        out["hint"] = getattr(exc, "hint", None)
    else:
        out["error"] = state.message
    emit(out, as_json, human)
    code = 3 if isinstance(exc, ContractError) else 2 if isinstance(exc, PricefitError) else 1
    raise typer.Exit(code)


def _state_table(states: dict[str, str]) -> str:
    return "\n".join(f"  {step:<20} {state}" for step, state in states.items())


def _human_run(out: dict[str, Any]) -> str:
    lines = [f"flow run {out['flow_run_id']}: {out['state']}", "", "steps:", _state_table(out["states"])]
    if not out["ok"]:
        lines += ["", f"error: {out.get('error')}"]
        if out.get("hint"):
            lines.append(f"  hint: {out['hint']}")
        lines += ["", "fix the cause and run the same command again: finished steps come back Cached."]
    else:
        comparison = Path(out["comparison"])
        if comparison.exists():  # aligned columns on a terminal; the file (and the UI) keep the Markdown
            from pricefit.terminal import markdown_to_text

            lines += ["", markdown_to_text(comparison.read_text().rstrip())]
        verdict = "promoted to champion" if out.get("promoted") else "not promoted"
        lines += ["", f"promotion: {verdict} ({out.get('promotion_reason')})", f"report: {out['report']}"]
    lines += [f"UI: {out['ui']}"]
    return "\n".join(lines)


def _prefect_env() -> None:
    """Defaults for the in-process run (an explicit setting in the environment wins)."""
    # a loaded 2-core machine needs more than Prefect's default 20 s to start the ephemeral API
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # the machines this runs on are often offline: no telemetry attempts (and no error lines about them)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.common import prefect_logging_env

    prefect_logging_env()  # pricefit's log lines reach the run's Prefect logs (UI)


def _run_flow(fn, params: Any, as_json: bool) -> Any:
    """Run a flow to its final state; with --json, stray prints of libraries go to stderr, not stdout."""
    import contextlib
    import sys

    guard_temporary_server()
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        return fn(params, return_state=True)


class _GuardedSubprocess:
    """Stands in for ``subprocess`` inside Prefect's server module: the temporary API server's
    ``python -m uvicorn ...`` runs under flows/server_guard.py, so it dies with this process."""

    def __getattr__(self, name: str) -> Any:
        import subprocess

        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: Any, *a: Any, **kw: Any) -> Any:  # noqa: N802 - subprocess's name
        import subprocess

        if isinstance(args, list) and args[1:3] == ["-m", "uvicorn"]:
            args = [args[0], "-m", "flows.server_guard", "--parent", str(os.getpid()), *args[1:]]
        return subprocess.Popen(args, *a, **kw)


def guard_temporary_server() -> None:
    """Without PREFECT_API_URL, Prefect starts a temporary server process that outlived a killed
    run; under the guard it exits when this process is gone."""
    if os.environ.get("PREFECT_API_URL"):
        return
    import prefect.server.api.server as server_mod

    server_mod.subprocess = _GuardedSubprocess()


def _params(profile: str, overrides: list[str] | None, source: str | None, workdir: str | None, refresh: str | None, **extra: Any):
    from flows.common import resolve_config
    from tasks.cache import refresh_set

    refresh_set(refresh)  # a bad step name fails here, before Prefect starts
    cls = extra.pop("cls")
    params = cls(profile=profile, overrides=list(overrides or []), source=source, workdir=workdir, refresh=refresh or "none", **extra)
    resolve_config(params)  # validate the profile + overrides once, with readable errors
    return params


PROFILE_HELP = (f"Profile name in deployments/profiles, or in $PRICEFIT_PROFILES when set ({', '.join(profile_names())}), "
                "or a path to a profile YAML.")
SET_HELP = "Override a setting: --set train.learning_rate=2e-4 (repeatable)."
REFRESH_HELP = steps.REFRESH_HELP  # the refreshable steps of the registry (tasks/steps.py)


@app.command(
    "run",
    help=(
        "Run the retrain flow (ingest, contracts, curate, tokenize, train, evaluate, baselines, compare and "
        "promote, report) as cached Prefect tasks: a rerun repeats only what changed or failed.\n\n"
        "Example: pricefit run --profile demo --set train.max_steps=20"
    ),
)
@command
def run_cmd(
    profile: str = typer.Option("demo", "--profile", "-p", help=PROFILE_HELP),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),  # no -s: the stage commands use it for --source
    source: Optional[str] = typer.Option(None, "--source", help="Listings source (overrides the profile's)."),
    workdir: Optional[str] = typer.Option(None, "--workdir", help="Root of artifacts and caches (default: the profile's, runs/)."),
    refresh: Optional[str] = typer.Option(None, "--refresh", metavar="STEP", help=REFRESH_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    _prefect_env()  # before anything imports prefect: its settings are read at import
    from flows.common import RetrainParams

    params = _params(profile, overrides, source, workdir, refresh, cls=RetrainParams)
    from flows.retrain import retrain

    state = _run_flow(retrain, params, as_json)
    _finish(state, as_json, _human_run)


def _human_sweep(out: dict[str, Any]) -> str:
    lines = [f"sweep flow run {out['flow_run_id']}: {out['state']}", "", "data steps:", _state_table(out["states"])]
    if out["ok"]:
        metric = out["metric"]
        lines += ["", f"{'':2}{'trial':<48} {metric:>10}"]
        for r in out["rows"]:
            value = r.get(metric)
            shown = f"{value:10.2f}" if value is not None else f"{'-':>10}"
            lines.append(f"{r['best'] or ' ':2}{r['trial']:<48} {shown}" + (f"  {r.get('state')}: {r['error']}" if r.get("error") else ""))
        lines += ["", f"best: {out['best']}"]
        if out.get("failed"):
            lines.append(f"failed trials ({len(out['failed'])}): rerun the same command; finished trials come back Cached.")
    else:
        lines += ["", f"error: {out.get('error')}"]
    lines.append(f"UI: {out['ui']}")
    return "\n".join(lines)


@app.command(
    "sweep",
    help=(
        "Run a hyperparameter sweep: the cached data steps once, then one train+evaluate subflow per trial, "
        "gathered in one comparison table (best marked).\n\n"
        "The grid file holds either `grid: {train.learning_rate: [1e-4, 3e-4], train.lora_r: [8, 16]}` (cross "
        "product) or `trials: [{train.lora_r: 8}, ...]`."
    ),
)
@command
def sweep_cmd(
    grid: Path = typer.Option(..., "--grid", "-g", help="YAML file with a 'grid' mapping or a 'trials' list of train.* overrides."),
    profile: str = typer.Option("demo", "--profile", "-p", help=PROFILE_HELP),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),  # no -s: the stage commands use it for --source
    source: Optional[str] = typer.Option(None, "--source", help="Listings source (overrides the profile's)."),
    workdir: Optional[str] = typer.Option(None, "--workdir", help="Root of artifacts and caches."),
    refresh: Optional[str] = typer.Option(None, "--refresh", metavar="STEP", help=REFRESH_HELP),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", "-j", min=1,
        help="Trials at once in all (default: 1 on CPU; on CUDA --trials-per-gpu on every visible GPU)."),
    trials_per_gpu: Optional[int] = typer.Option(
        None, "--trials-per-gpu", min=1, max=64,
        help="Trials sharing one GPU at once (default: as many as fit in 80% of its memory, at most 8)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP),
) -> None:
    check_input(grid, "--grid", file=True)
    _prefect_env()
    from flows.sweep import SweepParams, load_grid

    trials = load_grid(str(grid))
    params = _params(profile, overrides, source, workdir, refresh, cls=SweepParams, trials=trials,
                     concurrency=concurrency, trials_per_gpu=trials_per_gpu)
    from flows.sweep import sweep

    state = _run_flow(sweep, params, as_json)
    out = _finish(state, as_json, _human_sweep)
    if out.get("failed"):  # the table is out; the exit status says not every trial finished
        raise typer.Exit(1)


from flows import serve as _serve  # noqa: E402,F401 - registers `pricefit serve` after run and sweep
