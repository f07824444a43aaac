"""The one cache policy every pricefit task uses.

Why not Prefect's INPUTS + TASK_SOURCE: TASK_SOURCE hashes only the task's own lines, and the tasks
are thin wrappers, so an edit to ``pricefit/curation.py`` would keep serving yesterday's result.
Here a step's key is

    sha256( step name
          + source hash of the library modules the step calls (STEP_CODE below)
          + its inputs: ArtifactRefs by (path, sha256), stage configs by model_dump JSON,
            plain values as JSON; for ``ingest`` also (size, mtime) of the source files )

and nothing else: no run id, no flow parameters, no timestamps, so results carry across runs,
the nightly included. A changed parameter changes that step's key; its output artifact (and so
its ArtifactRef) changes, and that changes every downstream key: "re-run that step and what
follows, nothing before it" falls out of the data flow.

Results are persisted as small JSON records (an ArtifactRef) in ``<workdir>/.prefect-results``;
DataFrames and models never travel. On a lookup the policy also checks that the artifact a record
points at is still there with the same manifest hash; a record whose artifact was deleted or
rewritten is dropped, so the step recomputes instead of handing out a dangling reference.

Two runs at once: outputs go to ``<workdir>/artifacts/<step>/<key[:16]>`` built with
``pricefit.artifacts.atomic_dir``, and the transaction is SERIALIZABLE with a file lock per key
(``<workdir>/.prefect-locks``): a second run that needs the same key waits for the first one to
commit and then reads its record instead of rebuilding the same directory underneath it. A lock
left by a killed process is cleared (Prefect's own file locks never expire).

``--refresh STEP`` sets ``refresh_cache`` on STEP and on every step after it. Downstream keys
change by themselves when STEP's output changes, but a refreshed step whose output is byte-identical
yields the same ArtifactRef and so the same downstream keys: "refresh STEP and what follows" has to
say so explicitly (tests/flows/test_cache_flow.py shows the difference).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel

from prefect.cache_policies import CachePolicy

from pricefit.artifacts import MANIFEST, ArtifactRef, canonical_json, sha256_file

log = logging.getLogger("pricefit.tasks")

#: Steps in DAG order; ``--refresh STEP`` refreshes the step and everything after it.
STEPS: tuple[str, ...] = (
    "ingest",
    "contract_raw",
    "curate",
    "contract_curated",
    "tokenize",
    "contract_tokenized",
    "train",
    "evaluate",
    "champion",
    "baselines",
    "compare",
    "report",
)
#: What a user may name in ``--refresh`` (contracts follow their step).
REFRESHABLE: tuple[str, ...] = tuple(s for s in STEPS if not s.startswith("contract_"))

#: The library code each step calls. A change to any of these files changes the step's key.
STEP_CODE: dict[str, tuple[str, ...]] = {
    # ingest and curate run their data contract before the rename (bad rows are moved out there)
    "ingest": ("pricefit.curation", "pricefit.sources", "pricefit.prices", "pricefit.artifacts", "data_contracts"),
    "contract": ("data_contracts",),
    "curate": ("pricefit.curation", "pricefit.prices", "pricefit.models", "pricefit.artifacts", "data_contracts"),
    "tokenize": ("pricefit.tokenization", "pricefit.models", "pricefit.artifacts"),
    "train": ("pricefit.training", "pricefit.quant", "pricefit.memory", "pricefit.models", "pricefit.artifacts"),
    "evaluate": (
        "pricefit.evaluation",
        "pricefit.inference",
        "pricefit.parsing",
        "pricefit.metrics",
        "pricefit.plots",
        "pricefit.models",
    ),
    "champion": ("pricefit.evaluation", "pricefit.inference", "pricefit.heads", "pricefit.parsing", "pricefit.metrics",
                 "pricefit.plots", "pricefit.models", "pricefit.slices", "pricefit.report", "pricefit.tokenization"),
    "baselines": ("pricefit.baselines", "pricefit.inference", "pricefit.parsing", "pricefit.metrics", "pricefit.models"),
    "compare": ("pricefit.compare", "pricefit.metrics"),
    "report": ("tasks.report",),  # the run report is rendered by the task module itself
}


def step_code_modules(step: str) -> tuple[str, ...]:
    return STEP_CODE["contract" if step.startswith("contract") else step]


def _module_files(name: str) -> list[Path]:
    """Source files of a module or package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py"))
    return [Path(spec.origin)] if spec.origin and os.path.exists(spec.origin) else []


def code_hash(modules: Iterable[str]) -> str:
    """sha256 over the source of ``modules`` (names and contents; an absent module hashes as absent)."""
    h = hashlib.sha256()
    for name in sorted(modules):
        files = _module_files(name)
        h.update(f"{name}:{len(files)}\n".encode())
        for f in files:
            h.update(f.name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _source_state(source: str) -> list[Any]:
    """(name, size, mtime_ns) of the files a path/glob source names; [] for demo/hub sources."""
    spec = source.split(":", 1)[1] if source.startswith("csv:") else source
    files = sorted(glob.glob(os.path.expandvars(spec))) if any(c in spec for c in "/*.") else []
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return out


def fingerprint(value: Any) -> Any:
    """The part of a task input that goes into the key."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.kind, "path": value.path, "sha256": value.sha256}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cache key: cannot fingerprint a {type(value).__name__}; pass refs, configs or plain values")


def step_key(step: str, inputs: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "step": step,
        "code": code_hash(step_code_modules(step)),
        "inputs": {k: fingerprint(v) for k, v in sorted(inputs.items())},
    }
    if step == "ingest" and isinstance(inputs.get("source"), str):
        body["source_files"] = _source_state(inputs["source"])
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def out_dir(workdir: str | os.PathLike, step: str, key: str) -> Path:
    """Content-addressed output directory of one step."""
    return Path(workdir).resolve() / "artifacts" / step / key[:16]


def refs_in(value: Any) -> list[ArtifactRef]:
    if isinstance(value, ArtifactRef):
        return [value]
    if isinstance(value, dict):
        if {"kind", "path", "sha256"} <= set(value):
            try:
                return [ArtifactRef.model_validate(value)]
            except Exception:
                return []
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs_in(v)]
    return []


def intact(ref: ArtifactRef) -> bool:
    """Cheap check that a cached reference still points at the same finished artifact."""
    m = ref.dir / MANIFEST
    if not m.exists() or sha256_file(m) != ref.sha256:
        return False
    files = json.loads(m.read_text()).get("files", {})
    return all((ref.dir / rel).exists() for rel in files)


def _drop_stale_record(records_dir: str | None, key: str) -> None:
    """Delete the cache record of ``key`` when an artifact it references is gone or was replaced."""
    if not records_dir:
        return
    record = Path(records_dir) / key
    if not record.exists():
        return
    try:
        payload = json.loads(record.read_text())
        result = payload.get("result")
        if isinstance(result, str):  # the json serializer stores the result as text
            result = json.loads(result)
    except (OSError, ValueError):
        return  # Prefect treats an unreadable record as a miss already
    stale = [r for r in refs_in(result) if not intact(r)]
    if stale:
        log.warning("cache record %s… points at a missing or changed artifact (%s); recomputing", key[:12], stale[0].path)
        record.unlink(missing_ok=True)


@dataclass
class ArtifactCachePolicy(CachePolicy):
    """Key = step + library source hash + upstream refs/configs; validated against the artifact store."""

    step: str = ""
    records_dir: str | None = None

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        key = step_key(self.step, inputs)
        _drop_stale_record(self.records_dir, key)
        return key


def _lock_manager_class():
    from prefect.locking.filesystem import FileSystemLockManager

    class ProcessFileLockManager(FileSystemLockManager):
        """Prefect's file locks, plus: a lock whose process died on this host is free.

        Prefect's transaction locks never expire (no hold timeout), so a run killed while holding
        one (kill -9, OOM) would make every later run of that step wait forever. The lock file
        here also records pid and host; ``is_locked`` clears a lock whose process is gone.
        """

        def acquire_lock(self, key, holder, acquire_timeout=None, hold_timeout=None):
            ok = super().acquire_lock(key, holder, acquire_timeout, hold_timeout)
            if ok:
                path = self._lock_path_for_key(key)
                info = json.loads(path.read_text() or "{}")
                info |= {"pid": os.getpid(), "host": socket.gethostname()}
                path.write_text(json.dumps(info))
            return ok

        def is_locked(self, key, use_cache=False):
            path = self._lock_path_for_key(key)
            try:
                info = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                info = {}
            if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
                log.warning("removing the lock of dead process %s on step key %s…", info.get("pid"), key[:12])
                path.unlink(missing_ok=True)
                self._locks.pop(key, None)
                return False
            return super().is_locked(key, use_cache=use_cache)

    return ProcessFileLockManager


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: assume alive (the conservative answer)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_manager(workdir: str | os.PathLike) -> Any:
    return _lock_manager_class()(lock_files_directory=Path(workdir).resolve() / ".prefect-locks")


def policy_for(step: str, workdir: str | os.PathLike) -> ArtifactCachePolicy:
    root = Path(workdir).resolve()
    records = root / ".prefect-results"
    return ArtifactCachePolicy(
        step=step,
        records_dir=str(records),
        lock_manager=lock_manager(root),
        isolation_level="SERIALIZABLE",
    )


def current_key(step: str, inputs: dict[str, Any]) -> str:
    """The key of the running task (the transaction's), or the same key computed from ``inputs``."""
    from prefect.transactions import get_transaction

    txn = get_transaction()
    if txn is not None and txn.key:
        return txn.key
    return step_key(step, inputs)


def configured(task: Any, step: str, workdir: str | os.PathLike, refresh: bool = False, tags: Iterable[str] = ()) -> Any:
    """``task`` bound to this workdir's result store, cache policy and lock directory."""
    from prefect.serializers import JSONSerializer

    root = Path(workdir).resolve()
    (root / ".prefect-results").mkdir(parents=True, exist_ok=True)
    return task.with_options(
        cache_policy=policy_for(step, root),
        result_storage=root / ".prefect-results",  # a Path: a local store that needs no saved block
        result_serializer=JSONSerializer(),
        persist_result=True,
        refresh_cache=refresh or None,
        tags=set(task.tags) | set(tags) | {f"step:{step}"},
    )


def refresh_set(step: str | None) -> set[str]:
    """The steps a ``--refresh STEP`` recomputes: the step and every step after it."""
    if not step or step == "none":
        return set()
    if step not in REFRESHABLE:
        from pricefit.errors import PricefitError

        raise PricefitError(f"--refresh {step!r} is not a step", hint=f"choose one of: {', '.join(REFRESHABLE)}")
    return set(STEPS[STEPS.index(step) :])
