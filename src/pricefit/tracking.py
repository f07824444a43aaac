"""Experiment tracking in MLflow, beside the Prefect UI (optional: ``pip install 'pricefit[mlflow]'``).

On when ``MLFLOW_TRACKING_URI`` is set, or when a profile says ``tracking: mlflow`` (then, with no
URI set, a SQLite store in the run's workdir: ``sqlite:///<workdir>/mlflow.db``); ``tracking: off``
turns it off whatever the environment says. When off, nothing here imports mlflow.

Everything is read back from the artifacts a step wrote, so one function call per step is enough and
a step that came back Cached is logged as well as a fresh one:

- :func:`log_train`: one MLflow run per adapter: params (the train config of its manifest), metrics
  per optimizer step (``loss``, ``lr``, ``tokens_per_s``, from loss.csv) and totals, ``loss.png``,
  and the whole adapter directory under ``adapter/`` (a ``merged/`` model is left out: it is a full
  copy of the base model). ``mlflow artifacts download -u runs:/<id>/adapter`` gives back a
  directory ``pricefit evaluate --adapter`` takes.
- :func:`log_evaluation`: one run per evaluation: params (the evaluate config, base model, adapter),
  the metrics of metrics.json (headline, ``band/<band>/<metric>``, ``category/<name>/<metric>``),
  and the evaluation directory (report.md, metrics.json, plots, predictions).
- :func:`register_champion`: when a promotion promoted, the adapter's train run becomes a new version
  of the registered model (``pricefit``) with the alias ``champion`` and the evaluation metrics as
  version tags.

Each run is tagged with the artifact's path and manifest hash; logging the same artifact again finds
that run and adds nothing (a cached rerun adds no duplicate run and no duplicate model version).
Secrets never become params: config keys that name a secret are left out, and so is any value equal
to an environment variable whose name says it holds one. Failing to reach the tracking server after
the work is done is a warning, never a failed step; :func:`check`, called before the work, fails at
once when tracking is on but mlflow is missing or the server does not answer.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .artifacts import sha256_file
from .errors import PricefitError

log = logging.getLogger("pricefit.tracking")

REGISTERED_MODEL = "pricefit"
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "pricefit"
TAG_STEP, TAG_OUTPUT, TAG_SHA = "pricefit.step", "pricefit.output", "pricefit.sha256"
INSTALL_HINT = "pip install 'pricefit[mlflow]' (or unset MLFLOW_TRACKING_URI / set tracking: off)"

# config keys and environment variable names that hold (or name) credentials
_SECRET_NAME = re.compile(r"(api_?key|secret|passw(or)?d|credential|token$|auth)", re.IGNORECASE)
_METRIC_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")
_PARAM_MAX = 6000  # MLflow's limit on a param value


@dataclass(frozen=True)
class Target:
    """Where to log: a tracking URI (also the registry URI), an experiment, and (for a store in a
    workdir) where that experiment keeps its artifacts."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    artifact_location: str | None = None

    def public_uri(self) -> str:
        """The URI without a user:password part (for messages)."""
        parts = urllib.parse.urlsplit(self.uri)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return self.uri


def target(setting: str | None = None, workdir: str | os.PathLike | None = None) -> Target | None:
    """The tracking target, or None when tracking is off.

    ``setting`` is a profile's ``tracking`` ("auto", "mlflow", "off"; None = "auto"): "auto" tracks
    when ``MLFLOW_TRACKING_URI`` is set; "mlflow" tracks there, or in ``<workdir>/mlflow.db``.
    """
    if setting == "off":
        return None
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT
    if uri:
        return Target(uri, experiment)
    if setting == "mlflow":
        if workdir is None:
            raise PricefitError("tracking: mlflow needs a tracking URI or a workdir", hint="export MLFLOW_TRACKING_URI=http://HOST:5000")
        wd = Path(workdir).resolve()
        return Target(f"sqlite:///{wd / 'mlflow.db'}", experiment, (wd / "mlartifacts").as_uri())
    return None


def _mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow import MlflowClient
    except ImportError:
        raise PricefitError("experiment tracking is on but mlflow is not installed", hint=INSTALL_HINT) from None
    return MlflowClient


def check(tgt: Target | None) -> None:
    """Before the work: fail now (not after hours of training) when tracking cannot work."""
    if tgt is None:
        return
    _mlflow()
    if tgt.uri.startswith(("http://", "https://")):
        url = tgt.uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - the user's own server
                r.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise PricefitError(
                f"the MLflow tracking server at {tgt.public_uri()} does not answer ({reason})",
                hint="start it (mlflow server --host 127.0.0.1 --port 5000), fix MLFLOW_TRACKING_URI, or unset it",
            ) from None


# ----------------------------------------------------------------------------------------------
# what gets logged


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``a.b`` keys (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in (obj or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _secret_values() -> set[str]:
    return {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}


def params_of(config: dict[str, Any]) -> dict[str, str]:
    """A config as MLflow params: flattened, JSON for lists and None, never a secret."""
    secrets = _secret_values()
    out: dict[str, str] = {}
    for k, v in flatten(config).items():
        if _SECRET_NAME.search(k.rsplit(".", 1)[-1]):
            continue
        text = v if isinstance(v, str) else json.dumps(v)
        if any(s in text for s in secrets):
            continue
        out[k] = text[:_PARAM_MAX]
    return out


def metric_name(*parts: str) -> str:
    return "/".join(_METRIC_BAD.sub("_", str(p)) for p in parts)


def evaluation_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json -> flat numeric MLflow metrics (headline, per price band, per category)."""
    out: dict[str, float] = {}

    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for k, v in metrics.items():
        if num(v):
            out[metric_name(k)] = float(v)
    for group, prefix in (("by_band", "band"), ("by_category", "category")):
        for name, vals in (metrics.get(group) or {}).items():
            for k, v in (vals or {}).items():
                if num(v):
                    out[metric_name(prefix, name, k)] = float(v)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _history(loss_csv: Path) -> list[dict[str, float]]:
    if not loss_csv.exists():
        return []
    rows = list(csv.DictReader(io.StringIO(loss_csv.read_text())))
    return [{k: float(v) for k, v in r.items() if v not in (None, "")} for r in rows]


# ----------------------------------------------------------------------------------------------
# the MLflow side


class _Session:
    """One MlflowClient bound to a target's experiment."""

    def __init__(self, tgt: Target):
        self.tgt = tgt
        self.client = _mlflow()(tracking_uri=tgt.uri, registry_uri=tgt.uri)
        exp = self.client.get_experiment_by_name(tgt.experiment)
        if exp is None:
            try:  # a model-training experiment: the MLflow UI shows it in its machine-learning view, not GenAI's
                self.client.create_experiment(tgt.experiment, artifact_location=tgt.artifact_location,
                                              tags={"mlflow.experimentKind": "custom_model_development"})
            except Exception:  # created meanwhile by another process
                pass
            exp = self.client.get_experiment_by_name(tgt.experiment)
        self.experiment_id = exp.experiment_id

    def find_run(self, step: str, output: str, sha256: str | None = None):
        """The finished run that logged this artifact (same path, same manifest hash), or None."""
        query = f"tags.`{TAG_STEP}` = '{step}' and tags.`{TAG_OUTPUT}` = '{_quote(output)}' and attributes.status = 'FINISHED'"
        if sha256:
            query += f" and tags.`{TAG_SHA}` = '{sha256}'"
        runs = self.client.search_runs([self.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    @contextlib.contextmanager
    def run(self, run_name: str, tags: dict[str, str]) -> Iterator[str]:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        try:
            yield run_id
        except BaseException:
            self._terminate(run_id, "FAILED")
            raise
        self._terminate(run_id, "FINISHED")
        log.info("MLflow: logged %s (run %s) to %s", run_name, run_id, self.tgt.public_uri())

    def _terminate(self, run_id: str, status: str) -> None:
        # MlflowClient prints "View run ... at" to stdout; stdout belongs to `--json` output
        with contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(run_id, status)

    def log(self, run_id: str, params: dict[str, str] | None = None, metrics: list[tuple[str, float, int]] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ps = [Param(k, v) for k, v in (params or {}).items()]
        ms = [Metric(k, v, now, step) for k, v, step in (metrics or [])]
        for i in range(0, len(ps), 100):  # MLflow's per-request limits
            self.client.log_batch(run_id, params=ps[i:i + 100])
        for i in range(0, len(ms), 1000):
            self.client.log_batch(run_id, metrics=ms[i:i + 1000])


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _warn(what: str, tgt: Target, e: Exception) -> None:
    log.warning("could not log %s to MLflow at %s: %s: %s", what, tgt.public_uri(), type(e).__name__, e)


def _adapter_root(path: str | os.PathLike) -> Path:
    """The train output directory, given it or its adapter/ folder."""
    d = Path(path).resolve()
    if not (d / "manifest.json").exists() and (d.parent / "manifest.json").exists() and d.name == "adapter":
        return d.parent
    return d


def _sha(directory: Path) -> str | None:
    m = directory / "manifest.json"
    return sha256_file(m) if m.exists() else None


def _train_run(s: _Session, adapter_dir: str | os.PathLike, tags: dict[str, str] | None,
               logged_as: str | os.PathLike | None = None) -> str:
    """The train run that logged this adapter (found by its manifest's hash, under ``logged_as``
    first: the train output a champion's kept copy came from), else a new one."""
    d = _adapter_root(adapter_dir)
    sha = _sha(d)
    for where in ([_adapter_root(logged_as)] if logged_as else []) + [d]:
        found = s.find_run("train", str(where), sha)
        if found is not None:
            return found.info.run_id
    manifest = _read_json(d / "manifest.json")
    if manifest.get("kind") != "adapter":
        raise PricefitError(f"{d} is not a `pricefit train` output (manifest kind {manifest.get('kind')!r})")
    cfg = manifest.get("config") or {}
    summary = _read_json(d / "train_summary.json")
    history = _history(d / "loss.csv")
    name = f"train {cfg.get('base_model')} r={cfg.get('lora_r')} lr={cfg.get('learning_rate')}"
    run_tags = {TAG_STEP: "train", TAG_OUTPUT: str(d), TAG_SHA: sha or "", "pricefit.base_model": str(cfg.get("base_model")),
                "pricefit.tokenized_sha256": str(manifest.get("tokenized_sha256")), **(tags or {})}
    with s.run(name, run_tags) as run_id:
        metrics = [(k, row[k], int(row["step"])) for row in history for k in ("loss", "lr", "tokens_per_s") if k in row]
        for k in ("final_loss", "first_loss", "runtime_s", "tokens_per_s", "peak_mem_gib", "train_items", "steps", "trainable_params"):
            if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool):
                metrics.append(("mean_tokens_per_s" if k == "tokens_per_s" else k, float(summary[k]), int(summary.get("steps") or 0)))
        s.log(run_id, params_of(cfg), metrics)
        if (d / "loss.png").exists():
            s.client.log_artifact(run_id, str(d / "loss.png"))
        for p in sorted(d.iterdir()):
            if p.name == "merged":
                continue
            if p.is_dir():
                s.client.log_artifacts(run_id, str(p), artifact_path=f"adapter/{p.name}")
            else:
                s.client.log_artifact(run_id, str(p), artifact_path="adapter")
    return run_id


def log_train(adapter_dir: str | os.PathLike, tgt: Target | None = None, tags: dict[str, str] | None = None) -> str | None:
    """Log a `pricefit train` output as an MLflow run (once); its run id, or None when tracking is off.

    ``tgt`` None: from the environment (``MLFLOW_TRACKING_URI``).
    """
    tgt = tgt if tgt is not None else target()
    if tgt is None:
        return None
    try:
        return _train_run(_Session(tgt), adapter_dir, tags)
    except PricefitError:
        raise
    except Exception as e:
        _warn(f"the training run {adapter_dir}", tgt, e)
        return None


def log_evaluation(eval_dir: str | os.PathLike, tgt: Target | None = None, tags: dict[str, str] | None = None) -> str | None:
    """Log a `pricefit evaluate` output as an MLflow run (once); its run id, or None when tracking is off."""
    tgt = tgt if tgt is not None else target()
    if tgt is None:
        return None
    try:
        s = _Session(tgt)
        d = Path(eval_dir).resolve()
        sha = _sha(d)
        found = s.find_run("evaluate", str(d), sha)
        if found is not None:
            return found.info.run_id
        manifest = _read_json(d / "manifest.json")
        metrics = _read_json(d / "metrics.json")
        adapter = manifest.get("adapter")
        run_tags = {TAG_STEP: "evaluate", TAG_OUTPUT: str(d), TAG_SHA: sha or "", **(tags or {})}
        if adapter:
            train = s.find_run("train", str(_adapter_root(adapter)))
            run_tags["pricefit.adapter"] = str(_adapter_root(adapter))
            if train is not None:
                run_tags["pricefit.train_run_id"] = train.info.run_id
        params = params_of(manifest.get("config") or {})
        params.update(params_of({"base_model": manifest.get("base_model"), "adapter": str(adapter), "data": (manifest.get("inputs") or {}).get("path") or (manifest.get("inputs") or {}).get("source")}))
        split = (manifest.get("inputs") or {}).get("split") or (manifest.get("config") or {}).get("split")
        with s.run(f"evaluate {Path(str(adapter)).name if adapter else manifest.get('base_model')} on {split}", run_tags) as run_id:
            s.log(run_id, params, [(k, v, 0) for k, v in evaluation_metrics(metrics).items()])
            s.client.log_artifacts(run_id, str(d))
        return run_id
    except PricefitError:
        raise
    except Exception as e:
        _warn(f"the evaluation {eval_dir}", tgt, e)
        return None


def register_champion(decision: dict[str, Any], tgt: Target | None = None, name: str = REGISTERED_MODEL,
                      tags: dict[str, str] | None = None) -> str | None:
    """A promotion that promoted: register the challenger's adapter as a new model version (alias
    ``champion``, evaluation metrics as tags). A decision that kept the champion registers that
    champion when the registry does not have it yet (tracking switched on after it was promoted, as
    after `make demo`). Returns the version, or None (off, or no champion)."""
    tgt = tgt if tgt is not None else target()
    if tgt is None:
        return None
    if decision.get("promoted"):
        ch, when, why = decision.get("challenger") or {}, decision.get("time"), decision.get("reason")
    else:
        ch = decision.get("champion_before") or {}
        if not ch.get("evaluation") or not Path(str(ch.get("adapter"))).exists() or not Path(ch["evaluation"]).exists():
            return None  # no champion, or one whose files are gone: nothing to register
        when, why = ch.get("promoted_at"), f"the champion promoted at {ch.get('promoted_at')}, registered when tracking first saw it"
    try:
        s = _Session(tgt)
        if not ch.get("adapter"):
            log.warning("MLflow: the champion %s scored no adapter; nothing to register", ch.get("evaluation"))
            return None
        evaluation = str(Path(ch["evaluation"]).resolve())
        from mlflow.exceptions import MlflowException

        try:
            s.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created meanwhile
                s.client.create_registered_model(name, description="pricefit champions: each version an adapter that won a promotion")
        for mv in s.client.search_model_versions(f"name = '{_quote(name)}'"):
            if mv.tags.get("pricefit.evaluation") == evaluation:
                return str(mv.version)  # this promotion is already registered (a cached rerun)
        run_id = _train_run(s, ch["adapter"], tags, logged_as=ch.get("trained_adapter"))
        eval_run = log_evaluation(evaluation, tgt, tags)
        vtags = {k: str(v) for k, v in (ch.get("metrics") or {}).items() if v is not None}
        vtags.update({"pricefit.evaluation": evaluation, "pricefit.adapter": str(_adapter_root(ch["adapter"])),
                      "pricefit.metric": str(ch.get("metric") or decision.get("metric")), "pricefit.promoted_at": str(when),
                      "pricefit.evaluation_run_id": str(eval_run)})
        if (ch.get("model") or {}).get("label"):
            vtags["pricefit.model"] = str(ch["model"]["label"])  # what the model is: a blend names its weights
        mv = s.client.create_model_version(name, f"runs:/{run_id}/adapter", run_id=run_id, tags=vtags,
                                           description=str(why))
        s.client.set_registered_model_alias(name, CHAMPION_ALIAS, mv.version)
        log.info("MLflow: registered %s version %s (alias %s)", name, mv.version, CHAMPION_ALIAS)
        return str(mv.version)
    except PricefitError:
        raise
    except Exception as e:
        _warn(f"the champion {ch.get('adapter')}", tgt, e)
        return None
