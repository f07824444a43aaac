"""Content-addressed, atomically written artifacts.

Every stage writes a directory with a ``manifest.json``. Between stages (and between Prefect
tasks) only an :class:`ArtifactRef` travels: a small frozen record of the directory, the sha256
of its manifest, the row count and the schema version. Hashing a ref is cheap and exact.

Atomicity: files are written to a temporary name in the same directory and ``os.replace``-d into
place; stage directories are built under a temporary name and renamed, so a killed run never
leaves a half-written artifact that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict

MANIFEST = "manifest.json"


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


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
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
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place on success.

    An existing ``final`` is replaced only once the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".tmp-")
    }
    body = dict(manifest)
    body["files"] = files
    return write_json_atomic(d / MANIFEST, body)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    p = Path(directory) / MANIFEST
    if not p.exists():
        from .errors import PricefitError

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


def verify(ref: ArtifactRef) -> bool:
    """True when the directory still holds exactly what the manifest lists."""
    d = ref.dir
    if not (d / MANIFEST).exists() or sha256_file(d / MANIFEST) != ref.sha256:
        return False
    files = read_manifest(d).get("files", {})
    return all((d / rel).exists() and sha256_file(d / rel) == h for rel, h in files.items())
