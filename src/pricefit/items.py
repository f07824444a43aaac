"""The identity of a set of held-out items: what the baselines record and compare checks, so that
models are put side by side only when they were scored on the same items."""

from __future__ import annotations

import hashlib
from typing import Iterable


def item_set_sha256(item_ids: Iterable[str]) -> str:
    """Identity of a set of items (order-independent)."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in item_ids)).encode()).hexdigest()
