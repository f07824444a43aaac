"""The data contract a stage runs on the directory it builds, before the rename puts it in place.

Ingest, curate and tokenize each take a :data:`ContractHook` (``data_contracts.stage_contract``)
and call :func:`check_before_commit` inside their ``artifacts.atomic_dir``, so the verdict is in the
manifest before the artifact is where anyone can read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from . import artifacts
from .errors import ContractError

#: a stage's data contract: (directory being built, its final path) -> verdict for the manifest
ContractHook = Callable[[Path, Path], dict[str, Any]]


def check_before_commit(tmp: Path, final: str | Path, contract: ContractHook | None) -> dict[str, Any]:
    """Run the stage's data contract on the directory being built, before it is moved into place.

    ``contract(tmp, final)`` (e.g. ``data_contracts.stage_contract("raw")``) may move bad rows
    out (quarantine / dropped, updating the manifest) and returns a summary; it is recorded as the
    manifest's ``contract``, so no artifact is ever in place without its verdict. On
    ContractError the verdict (``success: false``) is recorded and the error propagates: the
    caller's ``atomic_dir(commit_on=ContractError)`` still moves the directory into place, so the
    report, Data Docs and quarantine stay at the paths the message names, and
    :func:`pricefit.curation.read_split` refuses the artifact. Returns the final manifest.
    """
    if contract is None:
        return artifacts.read_manifest(tmp)
    try:
        verdict = contract(tmp, Path(final))
    except ContractError as e:
        verdict = dict(getattr(e, "summary", None) or {"success": False})
        verdict["success"] = False
        _record_contract(tmp, verdict)
        raise
    return _record_contract(tmp, verdict)


def _record_contract(directory: Path, verdict: dict[str, Any]) -> dict[str, Any]:
    manifest = {k: v for k, v in artifacts.read_manifest(directory).items() if k != "files"}
    manifest["contract"] = verdict
    artifacts.write_manifest(directory, manifest)
    return manifest
