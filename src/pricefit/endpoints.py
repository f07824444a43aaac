"""Where the frontier baseline sends its requests, resolved once for the client and the cache key.

Its own small module (not part of ``pricefit.baselines``) because the orchestration's cache key
reads it for every run: a step's key hashes the source of every project module the key code
imports, and this one imports no other project module.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# query parameters that may carry a credential (Azure's api-key, signed URLs): never in a key
_SECRET_PARAMS = ("key", "token", "secret", "password", "sig", "auth")


def resolve_endpoint(cfg: Any) -> tuple[str, str | None]:
    """(base URL, API key or None) from the config, else the environment."""
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    key = os.environ.get(cfg.api_key_env) or None
    return base_url.rstrip("/"), key


def endpoint_host(base_url: str) -> str:
    """Host[:port] of the endpoint, without any user:password part (for cache keys and reports)."""
    parts = urlsplit(base_url)
    host = parts.hostname or base_url
    return f"{host}:{parts.port}" if parts.port else host


def public_endpoint(base_url: str) -> str:
    """The endpoint URL without credentials: no user:password, no query parameter named like a secret."""
    parts = urlsplit(base_url)
    netloc = endpoint_host(base_url) if parts.hostname else parts.netloc
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not any(s in k.lower() for s in _SECRET_PARAMS)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def key_inputs(cfg: Any) -> dict[str, Any]:
    """What the frontier baseline's result depends on outside its config: the endpoint it calls,
    the model, and whether a key is set (a boolean; the key itself never enters a cache key)."""
    base_url, key = resolve_endpoint(cfg)
    return {"endpoint": public_endpoint(base_url), "model": cfg.model, "api_key_set": key is not None}
