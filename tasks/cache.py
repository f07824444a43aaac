"""The one cache policy every pricefit task uses.

Why not Prefect's INPUTS + TASK_SOURCE: TASK_SOURCE hashes only the task's own lines, and the tasks
are thin wrappers, so an edit to ``pricefit/curation.py`` would keep serving yesterday's result.
Here a step's key is

    sha256( step name
          + source hash of the project modules the step runs (step_code_modules): from its task
            wrapper and its library function's module (STEP_ENTRY), every ``import`` and
            ``from ... import`` (module level and function-local, read with ``ast``, never
            imported) followed transitively within pricefit, tasks, flows and data_contracts
          + its inputs: ArtifactRefs by (path, sha256), stage configs by model_dump JSON less
            the settings that change only speed (``speed_only``), plain values as JSON
          + what it reads from outside (outside_inputs): every file a string in its inputs names
            (source files, slice id files, ...), by content hash (tasks/outside.py), and what
            its settings' ``key_outside()`` names (the frontier model's endpoint, model and
            whether an API key is set, never the key) )

and nothing else: no run id, no flow parameters, no timestamps, so results carry across runs,
the nightly included. A changed parameter changes that step's key; its output artifact (and so
its ArtifactRef) changes, and that changes every downstream key: "re-run that step and what
follows, nothing before it" falls out of the data flow. The import walk over-approximates (a
function-local import counts even where this step never calls that function), never the other
way round; third-party packages (torch, transformers) are not hashed.

Failures are not results: a step that raises is not cached, and the steps raise rather than
return a partial result (the frontier baseline raises when any request failed, after the
answered items are saved in its per-item reply cache, so the retry sends only the failed ones).

Results are persisted as small JSON records (an ArtifactRef) in ``<workdir>/.prefect-results``;
DataFrames and models never travel. On a lookup the policy also checks that the artifact a record
points at is still there, every file with the sha256 its manifest recorded (hashed once per file
per process while it is unchanged: ``pricefit.artifacts.damage``); a record whose artifact was
deleted, rewritten or corrupted is dropped, so the step recomputes instead of handing out a bad
reference. A step checks its input artifacts the same way before it computes anything
(``check_inputs``, from ``current_key``): a damaged input fails the step, so no result computed
from it is ever cached.

Two runs at once: outputs go to ``<workdir>/artifacts/<step>/<key[:16]>`` built with
``pricefit.artifacts.atomic_dir``, and the transaction is SERIALIZABLE with a file lock per key
(``<workdir>/.prefect-locks``): a second run that needs the same key waits for the first one to
commit and then reads its record instead of rebuilding the same directory underneath it. A lock
left by a killed process is cleared (Prefect's own file locks never expire).

``--refresh STEP`` sets ``refresh_cache`` on STEP and on every step that depends on it (its
descendants in the DAG of tasks/steps.py; a step beside it, such as the baselines beside train,
stays cached). Downstream keys
change by themselves when STEP's output changes, but a refreshed step whose output is byte-identical
yields the same ArtifactRef and so the same downstream keys: "refresh STEP and what follows" has to
say so explicitly (tests/flows/test_cache_flow.py shows the difference).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from pricefit.artifacts import ArtifactRef, canonical_json, damage, pid_alive, sha256_dir, sha256_file
from pricefit.errors import PricefitError

from . import outside, steps

log = logging.getLogger("pricefit.tasks")

#: Steps in DAG order, what ``--refresh`` may name, and where each step's code starts (its task
#: module and its library module; everything else it runs is found by following their imports):
#: all from the step registry (tasks/steps.py). ``configured`` refuses a project task bound to a
#: step whose task module is not the registered one.
STEPS: tuple[str, ...] = steps.NAMES
REFRESHABLE: tuple[str, ...] = steps.REFRESHABLE
STEP_ENTRY: dict[str, tuple[str, ...]] = {s.name: (s.task_module, s.library_module) for s in steps.REGISTRY}

#: The project's own top-level packages: imports into these are followed, all others (the standard
#: library, third-party packages) are not.
PROJECT_PACKAGES: tuple[str, ...] = ("pricefit", "tasks", "flows", "data_contracts")

_DYNAMIC_IMPORTS = {"import_module", "__import__"}

#: Declarations, not code a step runs: the registry (a step's entry is in its key through
#: STEP_ENTRY's modules; editing another step's entry must not invalidate this one).
NOT_STEP_CODE = frozenset({"tasks.steps"})


def _package_dir(top: str) -> Path | None:
    """Directory (or file, for a single-module top level) of a top-level name, without importing it."""
    mod = sys.modules.get(top)
    if mod is not None:
        locs = list(getattr(getattr(mod, "__spec__", None), "submodule_search_locations", None) or [])
        if locs:
            return Path(locs[0])
        origin = getattr(mod, "__file__", None)
        return Path(origin) if origin else None
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: searched on sys.path, never imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin and os.path.exists(spec.origin) else None


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` (a package's ``__init__.py``), or None when there is none."""
    top, *rest = name.split(".")
    base = _package_dir(top)
    if base is None:
        return None
    if base.is_file():
        return base if not rest else None
    stem = base.joinpath(*rest)
    for candidate in (stem / "__init__.py", stem.with_name(stem.name + ".py") if rest else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _package_modules(package: str) -> list[str]:
    """Every module under ``package`` (for an import whose target is computed at run time)."""
    f = module_file(package)
    if f is None or f.name != "__init__.py":
        return [package]
    root = f.parent
    out = []
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        rel = p.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append(".".join((package, *parts)))
    return out


_PARSED: dict[str, tuple[tuple[str, ...], bool]] = {}  # sha256(name, bytes) -> (imports, dynamic)


def _parse_imports(name: str, path: Path) -> tuple[tuple[str, ...], bool]:
    """(the module names ``name``'s source names in import statements, whether it imports by a
    computed name). Memoized on the file's bytes, so an edit is always seen."""
    data = path.read_bytes()
    memo = hashlib.sha256(name.encode() + b"\0" + data).hexdigest()
    if memo in _PARSED:
        return _PARSED[memo]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    dynamic = False
    for node in ast.walk(ast.parse(data, filename=str(path))):  # every statement, function bodies included
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is the module's own package, 2 its parent, ...
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names if a.name != "*")  # maybe submodules
        elif isinstance(node, ast.Call):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
            if fname in _DYNAMIC_IMPORTS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    found.add(arg.value)
                else:
                    dynamic = True
    _PARSED[memo] = (tuple(sorted(found)), dynamic)
    return _PARSED[memo]


def imported_modules(name: str, path: Path) -> tuple[str, ...]:
    """Every module ``name`` (source at ``path``) may import: top-level and function-local
    ``import``/``from ... import`` statements, relative ones resolved; for
    ``importlib.import_module``/``__import__`` the named module when it is a literal, else every
    module of the caller's package (the conservative answer: ``data_contracts.check`` imports its
    stage module by name)."""
    found, dynamic = _parse_imports(name, path)
    if dynamic:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        return tuple(sorted(set(found) | set(_package_modules(package or name))))
    return found


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' ``__init__``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def dependency_closure(entries: Iterable[str]) -> tuple[str, ...]:
    """The project modules reachable from ``entries`` through imports, transitively (sorted names)."""
    seen: set[str] = set()
    todo = [p for e in entries for p in _with_parents(e)]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in PROJECT_PACKAGES or name in NOT_STEP_CODE:
            continue
        path = module_file(name)
        if path is None:  # an attribute (``from pkg import function``) or a module that is not there
            continue
        seen.add(name)
        for dep in imported_modules(name, path):
            todo.extend(p for p in _with_parents(dep) if p not in seen)
    return tuple(sorted(seen))


def step_code_modules(step: str) -> tuple[str, ...]:
    """The project modules the step runs: its wrapper, its library function and all they import."""
    return dependency_closure(STEP_ENTRY[step])


def code_hash(modules: Iterable[str]) -> str:
    """sha256 over the source of ``modules`` (name, file name and bytes; an absent module hashes as absent)."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        f = module_file(name)
        h.update(f"{name}:{f.name if f else '-'}:{sha256_file(f) if f else 'absent'}\n".encode())
    return h.hexdigest()


def _key_dump(model: BaseModel) -> dict[str, Any]:
    """``model_dump(mode="json")`` without the settings' ``speed_only`` fields (pricefit.settings.base.Stage:
    they change how fast a step runs, never what it writes), nested models included."""
    skip = getattr(type(model), "speed_only", ())
    out = model.model_dump(mode="json", exclude=set(skip))
    for name in out:
        inner = getattr(model, name, None)
        if isinstance(inner, BaseModel):
            out[name] = _key_dump(inner)
    return out


def fingerprint(value: Any) -> Any:
    """The part of a task input that goes into the key (settings without their ``speed_only`` fields)."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.kind, "path": value.path, "sha256": value.sha256}
    if isinstance(value, BaseModel):
        return _key_dump(value)
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cache key: cannot fingerprint a {type(value).__name__}; pass refs, configs or plain values")


def outside_inputs(step: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a step reads from outside its arguments and that changes its result.

    Every file a string in the inputs names (the ingest source, however it is written: a path, a
    comma list, a ``**`` glob, ``~/``; a slice's ``ids_file``; any setting that names a file), by
    path and content hash (tasks/outside.py); and what its settings say they read besides
    (``key_outside()`` of its settings class: the baselines' frontier endpoint, model and whether
    an API key is set, never the key).
    """
    out: dict[str, Any] = {}
    files = outside.named_files({k: fingerprint(v) for k, v in inputs.items()})
    if files:
        out["files"] = files
    cfg = inputs.get("cfg")
    if isinstance(cfg, BaseModel) and callable(getattr(cfg, "key_outside", None)):
        out.update(cfg.key_outside())
    return out


def step_key(step: str, inputs: dict[str, Any]) -> str:
    """The cache key of ``step`` on ``inputs``: what the policy hands Prefect (see the module doc)."""
    body: dict[str, Any] = {
        "step": step,
        "code": code_hash(step_code_modules(step)),
        "inputs": {k: fingerprint(v) for k, v in sorted(inputs.items())},
        "outside": outside_inputs(step, inputs),
    }
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
    for ref in refs_in(result):
        problem = damage(ref)  # every file's recorded sha256 (once per file per process while it is unchanged)
        if problem:
            log.warning("cache record %s… points at a damaged artifact (%s); recomputing", key[:12], problem)
            record.unlink(missing_ok=True)
            return


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
            if info.get("host") == socket.gethostname() and not pid_alive(info.get("pid")):
                log.warning("removing the lock of dead process %s on step key %s…", info.get("pid"), key[:12])
                path.unlink(missing_ok=True)
                self._locks.pop(key, None)
                return False
            return super().is_locked(key, use_cache=use_cache)

    return ProcessFileLockManager


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


def producer_of(path: str | os.PathLike) -> str:
    """The step that wrote an artifact directory (``<workdir>/artifacts/<step>/<key>``), or its path."""
    p = Path(path)
    return p.parent.name if p.parent.parent.name == "artifacts" and p.parent.name in STEPS else str(p)


def input_refs(inputs: dict[str, Any]) -> list[ArtifactRef]:
    """The artifacts a step reads: every ArtifactRef in its inputs (their sha256: the manifest's)."""
    return refs_in(list(inputs.values()))


def input_pairs(inputs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(kind, path, sha256)`` of each ``X_path``/``X_sha256`` pair in a step's inputs: the champion's
    adapter, whose sha256 is that of its whole directory (what champion.json records)."""
    pairs = []
    for name, value in inputs.items():
        if name.endswith("_path") and isinstance(value, str):
            sha = inputs.get(name[: -len("_path")] + "_sha256")
            if isinstance(sha, str):
                pairs.append((name[: -len("_path")], value, sha))
    return pairs


def _pair_damage(path: str, dir_sha: str) -> str | None:
    if not Path(path).is_dir():
        return f"{path} is missing"
    got = sha256_dir(path)
    return None if got == dir_sha else (f"its files no longer hash to the sha256 recorded for it ({got[:12]}…, "
                                        f"recorded {dir_sha[:12]}…)")


def check_inputs(step: str, inputs: dict[str, Any]) -> None:
    """Refuse to run ``step`` on an artifact whose files no longer have their recorded hashes: a
    result computed from it would be wrong, and cached under the same key as the right one."""
    checks = [(r.kind, r.path, damage(r)) for r in input_refs(inputs)]
    checks += [(kind, path, _pair_damage(path, sha)) for kind, path, sha in input_pairs(inputs)]
    for kind, path, problem in checks:
        if problem:
            producer = producer_of(path)
            again = (
                f"run again: the {producer} step sees the damage at its cache lookup and recomputes it "
                f"(or `--refresh {producer}`)" if producer in STEPS else "rebuild that artifact"
            )
            raise PricefitError(
                f"step {step}: its input {kind} artifact {path} is damaged: {problem}; nothing was computed or cached",
                hint=again,
            )


def current_key(step: str, inputs: dict[str, Any]) -> str:
    """The key of the running task (the transaction's), or the same key computed from ``inputs``;
    first checks every input artifact's recorded hashes (:func:`check_inputs`)."""
    from prefect.transactions import get_transaction

    check_inputs(step, inputs)
    txn = get_transaction()
    if txn is not None and txn.key:
        return txn.key
    return step_key(step, inputs)


def configured(task: Any, step: str, workdir: str | os.PathLike, refresh: bool = False, tags: Iterable[str] = ()) -> Any:
    """``task`` bound to this workdir's result store, cache policy and lock directory."""
    from prefect.serializers import JSONSerializer

    module = getattr(getattr(task, "fn", None), "__module__", "") or ""
    if module.split(".")[0] == "tasks" and step in STEP_ENTRY and module != STEP_ENTRY[step][0]:
        raise PricefitError(
            f"step {step!r} runs a task from {module}, but its cache key hashes the code of {STEP_ENTRY[step][0]}",
            hint=f"register the task of step {step!r} in tasks/steps.py",
        )
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
    """The steps a ``--refresh STEP`` recomputes: the step and its descendants in the DAG (tasks/steps.py)."""
    if not step or step == "none":
        return set()
    if step not in REFRESHABLE:
        raise PricefitError(f"--refresh {step!r} is not a step", hint=f"choose one of: {', '.join(REFRESHABLE)}")
    return steps.descendants(step)
