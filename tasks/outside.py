"""The files a step reads from outside its arguments, by content, for its cache key.

A step's key must change when any file it reads changes. Its ArtifactRefs carry their own hash;
everything else it reads is named by a string somewhere in its inputs: the ``source`` of ingest
(a file, a comma list, a glob with ``*``/``**``, ``~/``, ``${VAR}``, ``csv:``), a slice's
``ids_file``, ``curate.csv_categories``, any other setting that names a file. So every string in a
step's inputs (configs walked field by field) that names existing files after ``${VAR}`` and ``~``
expansion contributes ``(absolute path, sha256 of its bytes)`` of each: an in-place edit that keeps
size and mtime changes the key, and a file added to (or gone from) a glob or a comma list changes it.

Cheap: each file's hash is computed once per process for one (device, inode, size, mtime_ns,
ctime_ns); ctime moves on every write and cannot be set back by the writer, so an edit is always
seen. Folders are not hashed (a local base model's weights are the model's business, and the
workdir is one); ``ArtifactRef`` paths are already in the key by their manifest hash.
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from typing import Any, Iterable

from pricefit.artifacts import sha256_file

_MEMO: dict[tuple[str, int, int, int, int, int], str] = {}
_MEMO_LOCK = threading.Lock()

#: Strings this long or longer are not paths (a prompt, a description); nothing is looked up.
_MAX_PATH_CHARS = 4096


def content_hash(path: str) -> str:
    """sha256 of a file's bytes, memoized on its stat signature (ctime included)."""
    st = os.stat(path)
    sig = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _MEMO_LOCK:
        found = _MEMO.get(sig)
    if found is not None:
        return found
    digest = sha256_file(path)
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        with _MEMO_LOCK:  # memoize only a hash of a file that did not change while it was read
            _MEMO[sig] = digest
    return digest


def _expand(text: str) -> str:
    return os.path.expanduser(os.path.expandvars(text.strip()))


def files_named(text: str) -> list[str] | None:
    """The regular files ``text`` names (a path, a glob, a comma list of them, ``csv:``-prefixed),
    absolute and sorted; None when ``text`` does not look like it names files at all."""
    if not text or len(text) > _MAX_PATH_CHARS or "\n" in text:
        return None
    spec = text[4:] if text.startswith("csv:") else text
    parts = [p for p in (_expand(p) for p in spec.split(",")) if p]
    found: set[str] = set()
    looked = False
    for part in parts:
        if glob.has_magic(part):
            looked = True
            found.update(m for m in glob.glob(part, recursive=True) if os.path.isfile(m))
        elif os.path.isfile(part):
            looked = True
            found.add(part)
    if not looked:
        return None
    return sorted(os.path.abspath(f) for f in found)


def _strings(value: Any) -> Iterable[tuple[str, str]]:
    """(where, string) for every string in a fingerprinted input, keys of mappings excluded."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            yield where, v
        elif isinstance(v, dict):
            stack.extend((f"{where}.{k}", x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))


def named_files(fingerprinted_inputs: dict[str, Any]) -> list[list[Any]]:
    """``[where, [[path, sha256], ...]]`` for every string in the inputs that names files, sorted."""
    out = []
    for where, text in _strings(fingerprinted_inputs):
        if where.endswith(".path") or where.endswith(".sha256"):  # an ArtifactRef: keyed by its hash already
            continue
        files = files_named(text)
        if not files:  # names no file (a folder, a name, a path that is gone: the step itself says so)
            continue
        out.append([where, [[f, content_hash(f)] for f in files]])
    return sorted(out)
