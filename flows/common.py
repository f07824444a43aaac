"""What every flow shares: the parameter model, config resolution, and the step runner."""

from __future__ import annotations

import functools
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from pricefit import logs, tracking
from pricefit.config import RunConfig, list_profiles, load_run_config
from pricefit.errors import PricefitError
from pricefit.promotion import champion_sha256, champion_to_rescore
from tasks import steps

# ------------------------------------------------------------------------------------------------
# logging: pricefit's own records reach the run's Prefect logs (the UI's Logs tab,
# `prefect flow-run logs ID`), through Prefect's documented "extra loggers" setting


def prefect_logging_env() -> None:
    """Environment defaults for a process that runs or serves flows; call before Prefect is imported.

    PREFECT_LOGGING_EXTRA_LOGGERS gets ``pricefit`` (kept beside any the user listed), so Prefect's
    logging setup gives the ``pricefit`` logger its API handler; served flow runs (subprocesses)
    inherit it. PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore: a pricefit line logged outside a
    flow run (config checks before the run starts) goes to stderr only, without a warning.
    """
    names = [n.strip() for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n.strip()]
    if "pricefit" not in names:
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join([*names, "pricefit"])
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def setup_run_logging() -> None:
    """In a flow run: pricefit records at INFO to the console and to the run's Prefect logs.

    Covers a process whose Prefect was set up without :func:`prefect_logging_env` (a worker running
    the deployment, `python flows/retrain.py`): the ``pricefit`` logger gets the handlers of
    Prefect's ``prefect.extra`` logger, as PREFECT_LOGGING_EXTRA_LOGGERS would have done. Idempotent.
    """
    prefect_logging_env()
    logs.setup(logs.verbosity())
    logger = logging.getLogger("pricefit")
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in logger.handlers and not any(type(h) is type(handler) for h in logger.handlers):
            logger.addHandler(handler)


# Optional text in the run form: a plain string whose empty default means "not given" (``str | None``
# is an anyOf with null in the schema, which the Prefect UI form shows as 'Property is type "None"');
# None (`pricefit run` without the option, a run created with null) reads as "".
OptionalText = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]

RefreshStep = Literal[("none", *steps.REFRESHABLE)]  # the step registry's refreshable steps (tasks/steps.py)


class RetrainParams(BaseModel):
    """One retrain run: a named profile plus overrides (the Prefect UI renders this as a form)."""

    profile: str = Field(
        "demo",
        # listed from the profiles folder when this module loads, so a new profile is named in the form
        description=f"Profile name in deployments/profiles ({', '.join(list_profiles())}) or a path to a profile YAML.",
    )
    overrides: list[str] = Field(
        default_factory=list,
        description="key.sub=value overrides applied on top of the profile, e.g. train.learning_rate=2e-4.",
    )
    source: OptionalText = Field(
        "", description="Listings source (demo:N, a JSONL/parquet path or glob, hf:..., csv:...); empty: the profile's."
    )
    workdir: OptionalText = Field("", description="Root of artifacts and caches; empty: the profile's (runs/).")
    refresh: RefreshStep = Field(
        "none", description="Recompute this step and every step after it even when cached ('none': use the cache)."
    )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str) -> str:
    """Expand ``${VAR}`` in a source string; an unset variable is an error that names it."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            hint = (
                "export PRICEFIT_SHARED_DATA=/path/to/shared/data (the Makefile sets it to ../shared/data)"
                if name == "PRICEFIT_SHARED_DATA"
                else f"export {name}=... or pass --set source=..."
            )
            raise PricefitError(f"the source {value!r} needs the environment variable {name}, which is not set", hint=hint)
        return os.environ[name]

    return _ENV_REF.sub(sub, value)


def resolve_config(params: RetrainParams) -> RunConfig:
    """Profile + overrides -> a validated RunConfig with the source expanded and the workdir absolute."""
    overrides = list(params.overrides)
    if params.source:
        overrides.append(("source", params.source, f"source {params.source}"))
    if params.workdir:
        overrides.append(("workdir", params.workdir, f"workdir {params.workdir}"))
    cfg = load_run_config(params.profile, overrides=overrides)
    cfg = cfg.model_copy(update={"source": expand_env(cfg.source), "workdir": str(Path(os.path.expandvars(cfg.workdir)).resolve())})
    return cfg


_GENERATED = re.compile(r"[a-z]+-[a-z]+")


@functools.lru_cache(maxsize=1)
def _slug_words() -> frozenset[str] | None:
    """The words Prefect's generated run names are made of (coolname, a Prefect dependency)."""
    try:
        from coolname.data import config
    except Exception:  # noqa: BLE001 - another coolname layout: fall back to the shape alone
        return None
    words: set[str] = set()
    for spec in config.values():
        if isinstance(spec, dict):
            words.update(w for w in spec.get("words") or [] if isinstance(w, str))
    return frozenset(words)


def is_generated_name(name: str | None) -> bool:
    """True for a name Prefect made up (``generate_slug(2)``: two coolname words, e.g. 'crimson-fox').

    A run created without a name (Quick run, a schedule, `prefect deployment run`, a direct call)
    gets one of these; a name the user typed (Custom run, ``--flow-run-name``) or the one this flow
    gave the run on its first attempt is anything else.
    """
    if not name:
        return True  # no name yet: name it
    if not _GENERATED.fullmatch(name):
        return False
    words = _slug_words()
    return words is None or all(w in words for w in name.split("-"))


def run_name(prefix: str) -> str:
    """Flow run name: <prefix>-<profile>-<UTC timestamp> (read from the run's own parameters).

    Only a run with Prefect's generated name is named so; a name the user gave the run (the UI's
    Custom run, `prefect deployment run --flow-run-name`) is kept, and a retried run keeps the name
    of its first attempt (Prefect calls ``flow_run_name`` again on every attempt: the current name
    is returned, so nothing is renamed).
    """
    from prefect.runtime import flow_run

    current = flow_run.name
    if current and not is_generated_name(current):
        return current
    params = flow_run.parameters.get("params") or {}
    profile = params.get("profile") if isinstance(params, dict) else getattr(params, "profile", None)
    profile = Path(str(profile or "default")).stem
    return f"{prefix}-{profile}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


class Steps:
    """Runs one step task bound to the run's workdir/cache, records its state, publishes its UI artifacts."""

    def __init__(self, cfg: RunConfig, refresh: str | None = None):
        from tasks import cache  # deferred: imports prefect, which must come after prefect_logging_env()

        setup_run_logging()
        self.cfg = cfg
        self.workdir = cfg.workdir
        self.refresh = cache.refresh_set(refresh)
        self.tags = {f"profile:{cfg.profile}", f"model:{cfg.train.base_model}"}
        self.states: dict[str, str] = {}
        self.outputs: dict[str, Any] = {}  # step -> its result, what a registered library step takes
        self.tracking = tracking.target(cfg.tracking, cfg.workdir)  # None: off (README "Experiment tracking")
        tracking.check(self.tracking)

    def run(self, step: str, *args: Any) -> Any:
        """Run the registered task of ``step`` (tasks/steps.py) on ``args``, cached; publish its UI artifacts."""
        from tasks import cache, ui  # deferred: imports prefect, which must come after prefect_logging_env()

        task = steps.BY_NAME[step].load_task()
        bound = cache.configured(task, step, self.workdir, refresh=step in self.refresh, tags=self.tags)
        state = bound(*args, return_state=True)
        self.states[step] = state.name
        result = state.result()  # raises the step's error: the flow run fails at this step
        ui.publish(step, result)
        self.outputs[step] = result
        self.run_ready()
        return result

    def run_ready(self) -> None:
        """Run every registered library step (tasks/steps.py ``library_step``) whose inputs are done."""
        for s in steps.ready(self.outputs):
            if s.name not in self.outputs:  # an earlier one in this loop may have run it already
                self.run(s.name, *self.args_for(s.name))

    def track(self, log_fn: Any, result: Any) -> Any:
        """Log a step's output to MLflow when tracking is on (a cached step too: logged once)."""
        if self.tracking is not None:
            from prefect.runtime import flow_run

            tags = {"pricefit.profile": self.cfg.profile, "prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
            log_fn(result if isinstance(result, dict) else result.path, self.tracking, tags=tags)
        return result

    def run_to(self, *targets: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``targets`` and every step they need (tasks/steps.py: the DAG), in DAG order.

        ``given``: outputs supplied instead of computed (the evaluate flow's adapter stands for
        train), so nothing upstream of them runs for their sake. Returns every step's output.
        """
        given = dict(given or {})
        self.outputs.update(given)
        for name in steps.ancestors(targets, given=given):
            if name not in self.outputs:
                self.run_step(name)
        return self.outputs

    def run_step(self, name: str) -> Any:
        """Run one built-in step on the outputs of its inputs (which must be done); track its result."""
        entry = steps.BY_NAME[name]
        result = self.run(name, *self.args_for(name))
        if entry.track:
            self.track(getattr(tracking, entry.track), result["decision"] if name == "compare" else result)
        return result

    def args_for(self, name: str) -> tuple[Any, ...]:
        """The task arguments of a built-in step: its inputs' outputs and the run's settings."""
        o, cfg, wd = self.outputs, self.cfg, self.workdir
        if name.startswith("contract_"):
            (of,) = steps.BY_NAME[name].inputs
            return name.removeprefix("contract_"), o[of]
        if name == "ingest":
            from tasks.ingest import ingest_options  # deferred: imports prefect, which must come after prefect_logging_env()

            return cfg.source, ingest_options(cfg.curate), wd
        if name == "curate":
            return o["ingest"], cfg.curate, wd
        if name == "tokenize":
            return o["curate"], cfg.tokenize, wd
        if name == "train":  # only the slices train.oversample names reach train: the others are not in its key
            return o["tokenize"], cfg.train, wd, [s for s in cfg.slices if s.name in cfg.train.oversample]
        if name == "evaluate":
            return o["train"], o["tokenize"], cfg.evaluate, wd, cfg.slices
        if name == "champion":  # the current champion's adapter, unless the challenger is the champion
            adapter, sha = champion_to_rescore(wd, o["train"].path) or (None, None)
            return adapter, sha, o["tokenize"], cfg.evaluate, wd, cfg.slices
        if name == "baselines":
            return o["curate"], cfg.baselines, wd, cfg.slices
        if name == "compare":
            return o["evaluate"], o["baselines"], cfg.promote, wd, o.get("champion"), champion_sha256(wd)
        if name == "report":
            refs = dict(curated=o["curate"], adapter=o["train"], evaluation=o["evaluate"], baselines=o["baselines"],
                        comparison=o["compare"]["comparison"])
            return refs, o["compare"]["decision"], wd
        entry = steps.BY_NAME[name]  # a library step (tasks/steps.py library_step): the generic task
        return name, [o[i] for i in entry.inputs], getattr(cfg, entry.config) if entry.config else None, wd
