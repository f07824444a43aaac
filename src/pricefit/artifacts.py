"""Content-addressed, atomically written artifacts.

Every stage writes a directory with a ``manifest.json``. Between stages (and between Prefect
tasks) only an :class:`ArtifactRef` travels: a small frozen record of the directory, the sha256
of its manifest, the row count and the schema version. Hashing a ref is cheap and exact.

Atomicity: files are written to a temporary name in the same directory and ``os.replace``-d into
place; stage directories are built under a temporary name and renamed, so a killed run never
leaves a half-written artifact that a later run would trust. Temporary names carry the writer's
PID (``.tmp-<name>-<pid>-<8 hex>``); the next write of the same target removes the ones whose
process is gone (:func:`clean_stale`), so a killed run leaves no garbage for long.

Reports about an artifact (``contracts/``, ``data_docs/``: they carry timestamps) are not part of
its content: ``write_manifest`` leaves them out of the ``files`` map, so identical inputs give a
byte-identical manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict

from .errors import PricefitError

MANIFEST = "manifest.json"
#: Directories of reports *about* an artifact (contract results, GX Data Docs): kept beside the
#: data, never hashed into its manifest (they carry timestamps and would make every rerun differ).
REPORT_DIRS = ("contracts", "data_docs")


class ArtifactRef(BaseModel):
    """Reference to a stage output directory (what tasks pass to each other)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    path: str
    sha256: str
    rows: int | None = None
    schema_version: int = 1

    @property
    def dir(self) -> Path:
        return Path(self.path)

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | os.PathLike, exclude: tuple[str, ...] = ()) -> str:
    """Hash of every file under ``path`` (relative names and contents), order independent."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel in exclude or any(part.startswith(".tmp-") for part in p.parts):
            continue
        h.update(rel.encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
        h.update(b"\n")
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host still runs (not an int, or cannot tell: assume it does)."""
    if not isinstance(pid, int) or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # cannot tell: keep it
    return True


def clean_stale(final: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of ``final`` left by processes that no longer run.

    Only names this module makes for ``final`` (``.tmp-<final.name>-<pid>-<8 hex>``) are touched,
    and only when no process with that PID is alive (a live one may be writing it right now).
    Returns what was removed.
    """
    final = Path(final)
    pattern = re.compile(rf"^\.tmp-{re.escape(final.name)}-(\d+)-[0-9a-f]{{8}}$")
    removed: list[Path] = []
    try:
        siblings = list(final.parent.iterdir())
    except FileNotFoundError:
        return removed
    for p in siblings:
        m = pattern.match(p.name)
        if not m or pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


@contextlib.contextmanager
def scratch_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory named for ``final`` (stale ones of dead runs cleaned first), removed on exit."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = _tmp_name(final)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = _tmp_name(final)
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, commit_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place on success.

    An existing ``final`` is replaced only once the new one is complete. Temporary siblings left
    by killed runs are removed first (:func:`clean_stale`). ``commit_on``: exception types after
    which the directory is still swapped in before the exception propagates (a stage whose data
    contract failed keeps its report where the message says; its manifest says it failed).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = _tmp_name(final)
    tmp.mkdir()
    try:
        yield tmp
    except commit_on:
        _swap_in(tmp, final)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, final)


def _swap_in(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = _tmp_name(final)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` with a ``files`` map of sha256 for every other file in ``directory``."""
    d = Path(directory)
    files = {
        p.relative_to(d).as_posix(): sha256_file(p)
        for p in sorted(d.rglob("*"))
        if p.is_file()
        and p.name != MANIFEST
        and not any(part.startswith(".tmp-") for part in p.relative_to(d).parts)
        and not any(part in REPORT_DIRS for part in p.relative_to(d).parts[:-1])
    }
    body = dict(manifest)
    body["files"] = files
    return write_json_atomic(d / MANIFEST, body)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    p = Path(directory) / MANIFEST
    if not p.exists():
        raise PricefitError(
            f"{directory} has no {MANIFEST}: it is not a finished pricefit artifact",
            hint="point at the output directory of a completed stage, or rerun that stage",
        )
    return json.loads(p.read_text())


def ref_for(directory: str | os.PathLike, kind: str, rows: int | None = None, schema_version: int = 1) -> ArtifactRef:
    """Reference to a finished stage directory: its identity is the hash of its manifest."""
    d = Path(directory).resolve()
    return ArtifactRef(
        kind=kind,
        path=str(d),
        sha256=sha256_file(d / MANIFEST),
        rows=rows,
        schema_version=schema_version,
    )


def verify(ref: ArtifactRef, *, hashes: bool = True) -> bool:
    """True when the directory still holds exactly what the manifest lists (its hash is the ref's).

    ``hashes=False``: the files only need to exist (the cache's cheap check on every lookup).
    """
    d = ref.dir
    if not (d / MANIFEST).exists() or sha256_file(d / MANIFEST) != ref.sha256:
        return False
    files = read_manifest(d).get("files", {})
    return all((d / rel).exists() and (not hashes or sha256_file(d / rel) == h) for rel, h in files.items())


# (directory, manifest sha256, each listed file's stat signature) -> what damage() found; a file
# rewritten in place moves its ctime (which a writer cannot set back), so a change is always re-hashed
_CHECKED: dict[tuple[Any, ...], str | None] = {}


def _stat_sig(path: Path) -> tuple[int, int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def damage(ref: ArtifactRef) -> str | None:
    """What is wrong with the artifact ``ref`` points at, or None when every file still has the
    sha256 its manifest recorded (and the manifest the ref's hash).

    Every listed file is hashed, once per process for an unchanged file (memoized on its stat
    signature, ctime included): the check a stage makes of the artifacts it reads, and the cache
    makes of a record's artifact before serving it.
    """
    d = ref.dir
    manifest = d / MANIFEST
    msig = _stat_sig(manifest)
    if msig is None:
        return f"{manifest} is missing"
    try:
        body = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return f"{manifest} is unreadable"
    files = body.get("files", {}) if isinstance(body, dict) else {}
    sig = (str(d), ref.sha256, msig, tuple(sorted((rel, _stat_sig(d / rel)) for rel in files)))
    if sig in _CHECKED:
        return _CHECKED[sig]
    found: str | None = None
    if sha256_file(manifest) != ref.sha256:
        found = f"{manifest} is not the manifest this reference was made from (sha256 differs)"
    else:
        for rel, want in sorted(files.items()):
            if sig[3] and dict(sig[3]).get(rel) is None:
                found = f"{d / rel} is missing"
                break
            got = sha256_file(d / rel)
            if got != want:
                found = f"{d / rel} changed after it was written (sha256 {got[:12]}…, recorded {want[:12]}…)"
                break
    _CHECKED[sig] = found
    return found
