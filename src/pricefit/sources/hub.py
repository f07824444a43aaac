"""Amazon Reviews 2023 item metadata from the Hugging Face hub, by category (``hf:Appliances,Electronics``).

The dataset's loading script does not run under ``datasets`` 4+, so the raw JSONL files
(``raw/meta_categories/meta_<Category>.jsonl``) are streamed with the ``text`` builder and every line
is parsed here, exactly like a local file: a broken line is quarantined, not fatal.

Offline, this fails at once: ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` set, or no TCP connection to
the hub within a few seconds, raises a :class:`PricefitError` that says how to use local files.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Iterator
from urllib.parse import urlparse

from ..errors import PricefitError
from . import Quarantined, Record, Source
from .amazon_meta import parse_line

REPO = "McAuley-Lab/Amazon-Reviews-2023"
FILE_TEMPLATE = "hf://datasets/" + REPO + "/raw/meta_categories/meta_{category}.jsonl"
CONNECT_TIMEOUT_S = 3.0
_CATEGORY = re.compile(r"^[A-Za-z0-9_]+$")

OFFLINE_HINT = (
    "download the files once where the hub is reachable (e.g. "
    "https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/tree/main/raw/meta_categories) "
    "and point at them: --source 'path/meta_Appliances.jsonl,path/meta_*.jsonl.gz'"
)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def check_reachable(timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise PricefitError at once when the hub cannot be used (offline mode or no connection)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            raise PricefitError(f"the Hugging Face hub is unreachable: {var} is set (offline mode)", hint=OFFLINE_HINT)
    url = urlparse(hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise PricefitError(
            f"the Hugging Face hub is unreachable: no connection to {host}:{port} within {timeout_s:g}s ({e})",
            hint=OFFLINE_HINT,
        ) from None


def parse_categories(spec: str) -> list[str]:
    cats = [c.strip() for c in spec[len("hf:"):].split(",") if c.strip()]
    if not cats:
        raise PricefitError("hf: source names no category", hint="write e.g. --source hf:Appliances,Electronics")
    bad = [c for c in cats if not _CATEGORY.match(c)]
    if bad:
        raise PricefitError(
            f"invalid hub category name(s): {', '.join(bad)}",
            hint="use the file names' categories, e.g. Appliances, Tools_and_Home_Improvement, Video_Games",
        )
    return cats


def source(spec: str) -> Source:
    cats = parse_categories(spec)
    check_reachable()
    files = [FILE_TEMPLATE.format(category=c) for c in cats]
    return Source(spec=spec, files=files, synthetic=False, _iter=lambda: _iter_hub(files))


def _iter_hub(files: list[str]) -> Iterator[Record | Quarantined]:
    import datasets

    for url in files:
        try:
            # one dataset per file so that line numbers restart with each file
            ds = datasets.load_dataset(
                "text", data_files={"train": [url]}, split="train", streaming=True, encoding_errors="surrogateescape"
            )
            for line_no, row in enumerate(ds, start=1):
                raw = row["text"].encode("utf-8", errors="surrogateescape")
                item = parse_line(raw, url, line_no)
                if item is not None:
                    yield item
        except PricefitError:
            raise
        except Exception as e:  # network errors, missing file, auth
            raise PricefitError(
                f"cannot read {url} from the hub: {type(e).__name__}: {e}",
                hint="check the category name and the connection, or " + OFFLINE_HINT,
            ) from None
