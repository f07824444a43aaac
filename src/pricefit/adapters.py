"""Where an adapter lives and what it was trained from: its PEFT folder, base model and prompt lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import PricefitError


def find_adapter(adapter_dir: str | Path) -> Path:
    """The PEFT directory: ``adapter_dir`` itself or ``<train_out>/adapter``."""
    d = Path(adapter_dir)
    for cand in (d, d / "adapter"):
        if (cand / "adapter_config.json").exists():
            return cand
    raise PricefitError(
        f"no PEFT adapter at {d} (looked for adapter_config.json there and in {d / 'adapter'})",
        hint="pass the output directory of `pricefit train` or its adapter/ folder",
    )


def _train_manifests(adapter_dir: str | Path) -> list[dict[str, Any]]:
    """The readable manifests of an adapter directory and of the train output above it."""
    d = Path(adapter_dir)
    out = []
    for man in (d / "manifest.json", d.parent / "manifest.json"):
        if man.exists():
            try:
                out.append(json.loads(man.read_text()))
            except ValueError:
                continue
    return out


def base_model_of(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on: from the train manifest, else adapter_config.json."""
    for m in _train_manifests(adapter_dir):
        name = m.get("base_model") or (m.get("config") or {}).get("base_model")
        if name:
            return str(name)
    try:
        cfg = json.loads((find_adapter(adapter_dir) / "adapter_config.json").read_text())
        return cfg.get("base_model_name_or_path") or None
    except (PricefitError, ValueError):
        return None


def lineage_of(adapter_dir: str | Path) -> dict[str, Any]:
    """How an adapter's prompts were built: ``tokenize_config`` and ``curate_config`` from its train manifest."""
    for m in _train_manifests(adapter_dir):
        if m.get("kind") == "adapter":
            return {k: m.get(k) for k in ("tokenize_config", "curate_config", "head") if m.get(k) is not None}
    return {}
