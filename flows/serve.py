"""`pricefit serve`: serve every deployment of deployments/prefect.yaml from one process.

This is the quick path: one long-running process registers the deployments (with the nightly cron
schedule) on the Prefect server named by PREFECT_API_URL and runs whatever is scheduled or
triggered from the UI as a subprocess. The production path reads the same file:
``prefect deploy --all --prefect-file deployments/prefect.yaml`` plus
``prefect worker start --pool pricefit-process`` (docs/ORCHESTRATION.md).

deployments/prefect.yaml is the one source of truth for names, entrypoints, parameters, tags and
schedules; this command reads it the way ``prefect deploy`` does (``{{ $ENV }}`` placeholders
filled from the environment) and ignores what only a worker needs (work pool, pull steps).

Prefect is imported inside the functions: ``pricefit --help`` stays fast. Registered on the
``pricefit`` app by flows/commands.py (the ``pricefit.commands`` entry point).
"""

from __future__ import annotations

import inspect
import logging
import os
import typing
from pathlib import Path
from typing import Any, Iterable

import typer

from pricefit.cli import JSON_OPTION_HELP, app, check_input, command, emit
from pricefit.errors import PricefitError

log = logging.getLogger("pricefit.serve")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREFECT_FILE = PROJECT_ROOT / "deployments" / "prefect.yaml"


def load_deployment_specs(prefect_file: Path) -> list[dict[str, Any]]:
    """The ``deployments:`` list of a prefect.yaml, with ``{{ $ENV }}`` placeholders filled."""
    from pricefit.config import load_yaml

    data = load_yaml(prefect_file)
    specs = data.get("deployments")
    if not isinstance(specs, list) or not specs:
        raise PricefitError(
            f"{prefect_file} has no 'deployments:' list",
            hint="see deployments/prefect.yaml in the pricefit repository for the expected layout",
        )
    try:  # the same templating `prefect deploy` applies first
        from prefect.utilities.templating import apply_values

        specs = apply_values(specs, dict(os.environ), remove_notset=False)
    except ImportError:  # pragma: no cover - prefect is a dependency
        pass
    for i, spec in enumerate(specs):
        for key in ("name", "entrypoint"):
            if not isinstance(spec, dict) or not spec.get(key):
                raise PricefitError(f"{prefect_file}: deployment #{i + 1} has no {key!r}")
    return specs


def _schedules(spec: dict[str, Any], timezone: str | None) -> list[Any]:
    from prefect.schedules import Cron, Interval, RRule

    out = []
    for s in spec.get("schedules") or []:
        tz = timezone or s.get("timezone") or "UTC"
        common = {"timezone": tz, "active": bool(s.get("active", True))}
        if s.get("parameters"):
            common["parameters"] = s["parameters"]
        if s.get("cron"):
            out.append(Cron(s["cron"], day_or=bool(s.get("day_or", True)), **common))
        elif s.get("interval"):
            out.append(Interval(float(s["interval"]), **common))
        elif s.get("rrule"):
            out.append(RRule(s["rrule"], **common))
        else:
            raise PricefitError(f"deployment {spec['name']!r}: a schedule needs cron, interval or rrule")
    return out


def _with_profile(flow: Any, parameters: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """Point the deployment's default parameters at ``profile`` wherever the flow takes one."""
    if not profile:
        return parameters
    params = dict(parameters)
    sig = inspect.signature(flow.fn)
    if "profile" in sig.parameters:
        params["profile"] = profile
        return params
    try:
        hints = typing.get_type_hints(flow.fn)  # resolves `from __future__ import annotations` strings
    except Exception:  # noqa: BLE001 - an unresolvable annotation: fall back to the raw ones
        hints = {n: p.annotation for n, p in sig.parameters.items()}
    for name in sig.parameters:  # one pydantic model parameter with a `profile` field
        fields = getattr(hints.get(name), "model_fields", None)
        if fields and "profile" in fields:
            params[name] = {**(params.get(name) or {}), "profile": profile}
            return params
    return params


def build_deployments(
    prefect_file: Path = DEFAULT_PREFECT_FILE,
    profile: str | None = None,
    timezone: str | None = None,
    only: list[str] | None = None,
) -> list[Any]:
    """RunnerDeployments for every entry of ``prefect_file`` (entrypoints relative to its project root)."""
    from prefect.flows import load_flow_from_entrypoint

    prefect_file = Path(prefect_file).resolve()
    root = prefect_file.parent.parent if prefect_file.parent.name == "deployments" else prefect_file.parent
    specs = load_deployment_specs(prefect_file)
    names = [s["name"] for s in specs]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise PricefitError(f"no deployment named {', '.join(unknown)} in {prefect_file}", hint=f"choose from {', '.join(names)}")
        specs = [s for s in specs if s["name"] in only]
    cwd = Path.cwd()
    os.chdir(root)  # entrypoints are relative to the project root, as for `prefect deploy`
    try:
        out = []
        for spec in specs:
            try:
                flow = load_flow_from_entrypoint(spec["entrypoint"], use_placeholder_flow=False)
            except Exception as e:  # noqa: BLE001 - any import error of user code
                raise PricefitError(
                    f"deployment {spec['name']!r}: cannot load flow {spec['entrypoint']!r}: {type(e).__name__}: {e}",
                    hint="entrypoints are path/to/file.py:function relative to the project root",
                ) from e
            out.append(
                flow.to_deployment(
                    name=spec["name"],
                    description=spec.get("description"),
                    tags=spec.get("tags"),
                    version=spec.get("version"),
                    parameters=_with_profile(flow, spec.get("parameters") or {}, profile),
                    schedules=_schedules(spec, timezone),
                    concurrency_limit=spec.get("concurrency_limit"),
                )
            )
        return out
    finally:
        os.chdir(cwd)


def describe(deployments: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for d in deployments:
        sched = []
        for s in d.schedules or []:
            inner = s.schedule
            sched.append(
                {
                    "cron": getattr(inner, "cron", None),
                    "interval_s": inner.interval.total_seconds() if getattr(inner, "interval", None) else None,
                    "timezone": getattr(inner, "timezone", None),
                    "active": s.active,
                }
            )
        rows.append(
            {
                "name": f"{d.flow_name}/{d.name}",
                "entrypoint": d.entrypoint,
                "tags": list(d.tags or []),
                "parameters": d.parameters,
                "schedules": sched,
            }
        )
    return rows


def api_and_ui_url() -> tuple[str, str]:
    """PREFECT_API_URL and the UI address derived from it; a clear error when there is no server."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    api = settings.api.url
    if not api:
        raise PricefitError(
            "PREFECT_API_URL is not set, so there is no Prefect server to serve the deployments to",
            hint="start one with `prefect server start` and run "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` (see docs/ORCHESTRATION.md)",
        )
    ui = settings.ui_url or api.rstrip("/").removesuffix("/api")
    return api, ui


def _check_server(api: str) -> None:
    import httpx

    try:
        r = httpx.get(api.rstrip("/") + "/health", timeout=10.0)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise PricefitError(
            f"the Prefect server at {api} does not answer ({type(e).__name__}: {e})",
            hint="start it with `prefect server start`, or point PREFECT_API_URL at a running one",
        ) from None


# ------------------------------------------------------------------------------------------------
# Data Docs over http: the contract artifacts link here (tasks/ui.py: PRICEFIT_DOCS_URL), since a
# file:// link does nothing in a browser

DOCS_DIR_NAME = "data_docs"  # data_contracts.runner.DOCS_DIR
DEFAULT_DOCS_PORT = 4210


def _inside(target: Path, roots: Iterable[Path]) -> bool:
    for root in roots:
        try:
            rel = target.relative_to(root)
        except ValueError:
            continue
        if DOCS_DIR_NAME in (root.name, *rel.parent.parts):
            return True
    return False


def docs_file(url_path: str, roots: Iterable[str | os.PathLike]) -> Path | None:
    """The file a Data Docs URL path names (``/data-docs/<absolute path>``), or None when it is not one to serve.

    Only regular files inside a ``data_docs`` folder under one of ``roots`` (the runs' own docs
    roots: the served workdir and the docs folders runs linked) are served, after symlinks and
    ``..`` are resolved (in the roots too); a folder serves its index.html. A ``data_docs`` folder
    elsewhere on disk is not served.
    """
    from urllib.parse import unquote, urlsplit

    from tasks.ui import DOCS_PREFIX

    path = unquote(urlsplit(url_path).path)
    if not path.startswith(DOCS_PREFIX + "/"):
        return None
    try:
        target = Path(path[len(DOCS_PREFIX):]).resolve()
        resolved = [Path(r).resolve() for r in roots]
    except (OSError, RuntimeError):
        return None
    if target.is_dir():
        target = target / "index.html"
    if DOCS_DIR_NAME not in target.parent.parts or not _inside(target, resolved) or not target.is_file():
        return None
    return target


class DocsRoots:
    """The folders the Data Docs server may serve from: fixed ones (the served workdir) plus the docs
    folders runs linked, one a line in ``registry`` (tasks/ui.py: ``PRICEFIT_DOCS_ROOTS_FILE``)."""

    def __init__(self, fixed: Iterable[str | os.PathLike] = (), registry: str | os.PathLike | None = None):
        self.fixed = [Path(r) for r in fixed]
        self.registry = Path(registry) if registry else None

    def __iter__(self):
        yield from self.fixed
        if self.registry is not None:
            try:
                lines = self.registry.read_text(encoding="utf-8").splitlines()
            except OSError:
                lines = []
            yield from (Path(x) for x in dict.fromkeys(lines) if x.strip() and Path(x).is_absolute())


def allowed_hosts(host: str) -> set[str]:
    """Host header names the docs server answers: loopback names and the bound host (DNS rebinding:
    a page of evil.example resolved to 127.0.0.1 sends ``Host: evil.example`` and gets 403)."""
    names = {"localhost", "127.0.0.1", "::1"}
    if host and host not in ("0.0.0.0", "::"):
        names.add(host.strip("[]").lower())
    return names


def host_allowed(header: str | None, names: set[str]) -> bool:
    if not header:
        return False
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:4210
        name = value[1:value.find("]")] if "]" in value else value
    else:
        name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name in names


def start_docs_server(host: str = "127.0.0.1", port: int = DEFAULT_DOCS_PORT,
                      roots: Iterable[str | os.PathLike] = ()) -> tuple[Any, str]:
    """Serve Data Docs read-only on ``host:port`` from a daemon thread; returns (server, base URL).

    Serves only files under ``data_docs`` folders inside ``roots`` (:func:`docs_file`; re-read on
    every request, so a :class:`DocsRoots` picks up the folders runs link later), and only to
    requests whose Host header is a loopback name or ``host`` (else 403).
    Port 0, or a port in use, takes a free one (said in a warning). Requests are not logged.
    """
    import http.server
    import mimetypes
    import threading

    hosts = allowed_hosts(host)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._answer(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(body=False)

        def _plain(self, status: int, msg: bytes, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            if body:
                self.wfile.write(msg)

        def _answer(self, body: bool) -> None:
            if not host_allowed(self.headers.get("Host"), hosts):
                self._plain(403, b"pricefit Data Docs server: wrong Host header (open it as localhost or 127.0.0.1)\n", body)
                return
            target = docs_file(self.path, roots)
            if target is None:
                self._plain(404, b"pricefit Data Docs server: open a contract artifact's Data Docs link in the Prefect UI "
                            b"(only the runs' own data_docs/ folders are served)\n", body)
                return
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no line per request
            log.debug("docs server: " + format, *args)

    try:
        server = http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        if port == 0:
            raise
        server = http.server.ThreadingHTTPServer((host, 0), Handler)
        log.warning("port %d for the Data Docs server is not free (%s): serving them on port %d instead",
                    port, e.strerror or e, server.server_address[1])
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="pricefit-data-docs", daemon=True).start()
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return server, f"http://{shown}:{server.server_address[1]}"


def served_docs_roots(prefect_file: str | os.PathLike, profile: str | None) -> DocsRoots:
    """The served runs' docs roots: the profile's workdir (resolved from the project root, where the
    served runs start) and a registry file, private to this process, of the docs folders runs link."""
    import atexit
    import tempfile

    from pricefit.config import load_run_config

    root = Path(prefect_file).resolve().parent
    project = root.parent if root.name == "deployments" else root
    workdir = Path(os.path.expanduser(os.path.expandvars(load_run_config(profile).workdir)))
    fd, registry = tempfile.mkstemp(prefix="pricefit-docs-roots-", suffix=".txt")  # mode 0600
    os.close(fd)
    atexit.register(lambda: os.path.exists(registry) and os.unlink(registry))
    return DocsRoots([workdir if workdir.is_absolute() else project / workdir], registry)


def _docs_prefix() -> str:
    from tasks.ui import DOCS_PREFIX

    return DOCS_PREFIX


def _human(r: dict[str, Any]) -> str:
    lines = [f"serving {len(r['deployments'])} deployments from {r['prefect_file']} (profile {r['profile'] or 'from the file'}):"]
    for d in r["deployments"]:
        sched = ", ".join(f"cron {s['cron']} ({s['timezone']})" for s in d["schedules"] if s["cron"]) or "no schedule"
        lines.append(f"  {d['name']:<40} {sched}")
    if r.get("ui"):
        lines.append(f"Prefect UI: {r['ui']}/deployments   (API {r['api']})")
        lines.append("trigger a run: the Run button in the UI, or  prefect deployment run 'retrain/retrain-manual'")
    if r.get("data_docs"):
        lines.append(f"Data Docs of the runs: {r['data_docs']}{_docs_prefix()}/...  (linked from each contract artifact)")
    return "\n".join(lines)


@app.command("serve")
@command
def serve(
    profile: str = typer.Option(
        None, "--profile", "-p", help="Run profile (deployments/profiles/NAME.yaml or a path) the deployments default to."
    ),
    prefect_file: Path = typer.Option(DEFAULT_PREFECT_FILE, "--file", "-f", help="The prefect.yaml to serve."),
    timezone: str = typer.Option(
        None, "--timezone", envvar="PRICEFIT_TIMEZONE", help="IANA timezone of the schedules (default: the file's, UTC)."
    ),
    only: list[str] = typer.Option(None, "--only", help="Serve only this deployment (repeatable)."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many flow runs at once."),
    docs: bool = typer.Option(True, "--docs/--no-docs", help="Serve the runs' Data Docs over http (linked from the contract artifacts)."),
    docs_port: int = typer.Option(
        DEFAULT_DOCS_PORT, "--docs-port", envvar="PRICEFIT_DOCS_PORT", min=0, max=65535,
        help="Port of the Data Docs server on 127.0.0.1 (0: any free port; a busy port: another one).",
    ),
    check: bool = typer.Option(False, "--check", help="Build and print the deployments, then exit without serving."),
    as_json: bool = typer.Option(False, "--json", help=JSON_OPTION_HELP + " Printed once, before serving starts."),
) -> None:
    """Serve retrain-nightly (cron 0 2 * * *), retrain-manual, evaluate and frontier-baseline from one process.

    Needs a running Prefect server (`prefect server start`; PREFECT_API_URL=http://127.0.0.1:4200/api).
    Trigger runs from the UI or with `prefect deployment run 'retrain/retrain-manual'`; stop with Ctrl-C
    (schedules are paused on shutdown). Production: `prefect deploy --all --prefect-file
    deployments/prefect.yaml` and `prefect worker start --pool pricefit-process`.
    The runs' Data Docs are served on http://127.0.0.1:4210 (--docs-port) and linked from their
    contract artifacts in the UI.
    """
    check_input(prefect_file, "--file", file=True)
    from flows.common import prefect_logging_env

    prefect_logging_env()  # before Prefect is imported: served flow runs inherit it
    if timezone:
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(timezone)
        except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError
            raise PricefitError(f"unknown timezone {timezone!r}", hint="use an IANA name such as UTC or Europe/Berlin") from None
    if profile:
        from pricefit.config import load_run_config

        load_run_config(profile)  # fail here, not in the first scheduled run
    api = ui = None
    if not check:
        api, ui = api_and_ui_url()
        _check_server(api)
    deployments = build_deployments(prefect_file, profile, timezone, only)
    result = {
        "prefect_file": str(Path(prefect_file).resolve()),
        "profile": profile,
        "api": api,
        "ui": ui,
        "deployments": describe(deployments),
        "serving": not check,
        "data_docs": None,
    }
    if not check and docs:
        from tasks.ui import DOCS_ROOTS_ENV, DOCS_URL_ENV

        roots = served_docs_roots(prefect_file, profile)
        _, result["data_docs"] = start_docs_server("127.0.0.1", docs_port, roots=roots)
        os.environ[DOCS_URL_ENV] = result["data_docs"]  # the served flow runs (subprocesses) link there
        os.environ[DOCS_ROOTS_ENV] = str(roots.registry)  # ... and name the docs folders they link
    emit(result, as_json, _human)
    if check:
        return
    from prefect import serve as prefect_serve

    root = Path(prefect_file).resolve().parent
    os.chdir(root.parent if root.name == "deployments" else root)
    prefect_serve(*deployments, limit=limit, print_starting_message=False)
