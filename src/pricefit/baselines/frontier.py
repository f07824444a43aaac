"""The frontier-model baseline: any OpenAI-compatible Chat Completions endpoint.

Prompt (the reference product pricer, ``messages_for`` in its frontier notebook, checked against
the course code): the system message ``"You estimate prices of items. Reply only with the price,
no explanation"``, the user message ``"How much does this cost?\\n\\n{text}"`` (its training prompt
without "to the nearest dollar" and without the trailing "Price is $"), and an assistant message
``"Price is $"`` as a prefill; ``seed=42``, ``max_tokens=5``. The reply is read with
:func:`pricefit.parsing.parse_price_output` (first number, clipped to a sane range), so a reply
that a listing tries to steer ("ignore previous instructions... price is 0") is parsed like any
other and clipped.

Operational rules:
- bounded concurrency (``asyncio.Semaphore(cfg.concurrency)`` around each request);
- retries by tenacity (the SDK's are switched off so they can be counted): 408/409/429/5xx,
  timeouts and connection errors, up to ``cfg.max_retries`` per request, exponential backoff with
  jitter, ``Retry-After`` honoured (capped at ``cfg.backoff_max_s``); 401/403 stop the run at once
  with a hint; an endpoint that answers nothing raises :class:`FrontierUnavailable` early;
- a per-item cache on disk, ``cache_home()/frontier/<model>/<sha256>.json``, keyed by model, the
  endpoint's host and the exact request (messages, max_tokens, seed); written atomically; only
  well-formed replies are cached, so a rerun retries the malformed ones and costs nothing else;
- failures are not results: when any request got no answer after its retries (timeouts,
  connection errors, HTTP errors), the run raises :class:`FrontierIncomplete` once every other
  item is answered and saved in that cache, so the baselines step fails (and is not cached), and
  its retry (Prefect's, or a rerun) sends only the failed items. The alternative, recording them
  as failed in a finished result, would need the step cache to know that result is partial;
- the API key is never written anywhere: it is redacted from reply text, error messages, cached
  files and (during the run) from the log records of openai/httpx; redaction decodes escapes
  first (JSON, URL, HTML), runs on the whole text before any cut to length, and covers Bearer
  tokens and every piece of the key of 6+ characters; the reply cache keeps only the answer's
  text and token counts, never the reply as received;
- malformed replies (body not JSON, no choices, no number) are counted as unparsed, never a crash:
  the endpoint answered, the answer is scored (as $0, like an unparsed reply of any model).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import tenacity

from ..artifacts import canonical_json, write_json_atomic
from ..endpoints import DEFAULT_BASE_URL, endpoint_host, key_inputs, resolve_endpoint  # noqa: F401 (re-exported)
from ..errors import PricefitError
from ..parsing import parse_price_output
from ..paths import cache_home
from ..settings.baselines import FrontierConfig
from .redact import REDACTED, Redactor, _quiet_http_logs, _scrubbed_logs  # noqa: F401 (REDACTED re-exported)

log = logging.getLogger("pricefit.baselines.frontier")

SYSTEM_PROMPT = "You estimate prices of items. Reply only with the price, no explanation"
USER_TEMPLATE = "How much does this cost?\n\n{text}"
PREFILL = "Price is $"
RETRYABLE_STATUS = {408, 409, 429}
RAW_MAX_CHARS = 200  # of a malformed reply kept in the raw column (cut after redaction)
# loggers that see requests; a record they emit is scrubbed of the key during a run


def messages_for(text: str) -> list[dict[str, str]]:
    """The reference prompt for one item's text."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(text=text)},
        {"role": "assistant", "content": PREFILL},
    ]


def skip_reason(cfg: FrontierConfig) -> str | None:
    """Why the frontier baseline cannot run, or None when it can."""
    if not cfg.enabled:
        return "skipped: disabled in configuration (baselines.frontier.enabled)"
    if not resolve_endpoint(cfg)[1]:
        return f"skipped: no API key in {cfg.api_key_env}"
    return None


# ---------------------------------------------------------------------------------------------- cache


def _safe_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model) or "model"


def cache_dir_for(cfg: FrontierConfig, root: Path | None = None) -> Path:
    return (root or cache_home() / "frontier") / _safe_name(cfg.model)


def request_body(cfg: FrontierConfig, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": cfg.model, "messages": messages_for(text), "max_tokens": cfg.max_tokens}
    if cfg.seed is not None:
        body["seed"] = cfg.seed
    return body


def cache_key(cfg: FrontierConfig, host: str, text: str) -> str:
    return hashlib.sha256(canonical_json({"host": host, **request_body(cfg, text)}).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- results


class FrontierUnavailable(PricefitError):
    """The endpoint failed several items in a row without one answer (down or unreachable)."""


class FrontierIncomplete(PricefitError):
    """Some requests got no answer after their retries; ``run`` holds every item (the failed ones
    with ``status="failed"``). Raised after the others are answered and saved in the reply cache."""

    def __init__(self, message: str, hint: str | None = None, run: "FrontierRun | None" = None):
        super().__init__(message, hint)
        self.run = run


@dataclass
class ItemResult:
    prediction: float | None = None
    raw: str = ""
    status: str = "pending"  # ok | no_number | malformed | empty_choices | failed
    cached: bool = False  # answered from the disk cache (no request sent)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def parsed(self) -> bool:
        return self.prediction is not None


@dataclass
class FrontierRun:
    items: list[ItemResult]
    usage: dict[str, Any] = field(default_factory=dict)


def _retry_after_s(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    val = headers.get("retry-after")
    if not val:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(val))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(val)
        return max(0.0, when.timestamp() - time.time())
    return None


def _count(v: Any) -> int:
    """A token count from a reply that may be missing or malformed (then 0)."""
    try:
        return max(0, int(v))
    except (TypeError, ValueError):
        return 0


def _parse_body(text: str, redact: Redactor, price_range: tuple[float, float]) -> ItemResult:
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return ItemResult(status="malformed", raw=redact(text)[:RAW_MAX_CHARS], error="response body is not JSON")
    if not isinstance(body, dict):
        return ItemResult(status="malformed", raw=redact(text)[:RAW_MAX_CHARS], error="response body is not a JSON object")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    pt, ct = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    choices = body.get("choices")
    if not choices or not isinstance(choices, list):
        return ItemResult(status="empty_choices", prompt_tokens=pt, completion_tokens=ct, error="no choices in reply")
    msg = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = (msg or {}).get("content") if isinstance(msg, dict) else ""
    return _reply_result(redact(content if isinstance(content, str) else ""), pt, ct, price_range)


def _reply_result(content: str, prompt_tokens: Any, completion_tokens: Any, price_range: tuple[float, float]) -> ItemResult:
    """The scored result of one answer's (already redacted) text."""
    pred = parse_price_output(content, *price_range)
    return ItemResult(
        prediction=pred,
        raw=content,
        status="ok" if pred is not None else "no_number",
        prompt_tokens=_count(prompt_tokens),
        completion_tokens=_count(completion_tokens),
    )


class _Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.answered = 0  # items that got any reply (even a malformed one)
        self.failed_in_a_row = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class _Retryable(Exception):
    """One attempt that may succeed when repeated (408/409/429/5xx, a timeout, a connection error)."""

    def __init__(self, error: str, retry_after: float | None = None):
        super().__init__(error)
        self.error, self.retry_after = error, retry_after


class _Refused(Exception):
    """One attempt the endpoint refused for good (another 4xx): the item fails without a retry."""

    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


async def _attempt(client: Any, body: dict[str, Any], cfg: FrontierConfig, sem: asyncio.Semaphore, stats: _Stats,
                   redact: Redactor, host: str) -> str:
    """One request (the SDK's own retries are off: tenacity repeats this); the reply body as text."""
    import openai  # deferred: the SDK (and httpx) load only when the frontier model is called

    async with sem:
        stats.requests += 1
        try:
            raw = await client.chat.completions.with_raw_response.create(**body)
            return raw.text
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise PricefitError(
                f"the endpoint {host} rejected the API key (HTTP {e.status_code}): {redact(e.message)}",
                hint=f"check {cfg.api_key_env} and baselines.frontier.base_url / OPENAI_BASE_URL",
            ) from None
        except openai.APIStatusError as e:
            code = e.status_code
            stats.error(f"http_{code}")
            error = f"HTTP {code}: {redact(e.message)}"
            if code not in RETRYABLE_STATUS and code < 500:
                raise _Refused(error) from None
            raise _Retryable(error, _retry_after_s(e.response.headers)) from None
        except openai.APITimeoutError:
            stats.error("timeout")
            raise _Retryable(f"timeout after {cfg.timeout_s} s") from None
        except openai.APIConnectionError as e:
            stats.error("connection")
            raise _Retryable(f"connection error: {redact(e.message)}") from None


def _wait(cfg: FrontierConfig) -> Any:
    """tenacity's wait: the server's ``Retry-After`` when it sent one (capped at backoff_max_s), else
    exponential backoff with "equal jitter": uniform(ceiling/2, ceiling), ceiling = base * 2**retry
    capped at backoff_max_s (spreads clients apart and keeps the growth)."""
    half = dict(multiplier=cfg.backoff_base_s / 2, max=cfg.backoff_max_s / 2)
    exponential = tenacity.wait_exponential(**half) + tenacity.wait_random_exponential(**half)

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        return min(retry_after, cfg.backoff_max_s) if retry_after is not None else exponential(state)

    return wait


def _backoff_s(cfg: FrontierConfig, attempt: int, retry_after: float | None) -> float:
    """The delay before retry ``attempt + 1`` (``attempt``: 0 for the first retry), as :func:`_wait` gives it."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = attempt + 1
    state.set_exception((_Retryable, _Retryable("", retry_after), None))
    return _wait(cfg)(state)


async def _price_one(
    client: Any,
    text: str,
    cfg: FrontierConfig,
    sem: asyncio.Semaphore,
    stats: _Stats,
    redact: Redactor,
    price_range: tuple[float, float],
    cache_file: Path | None,
    host: str,
) -> ItemResult:
    if cache_file is not None and cache_file.exists():
        try:
            cached = json.loads(cache_file.read_text())
            if "response" in cached:  # an older cache file: the whole reply
                res = _parse_body(json.dumps(cached["response"]), redact, price_range)
            else:
                res = _reply_result(redact(cached["content"]), cached.get("prompt_tokens"),
                                    cached.get("completion_tokens"), price_range)
            res.cached = True
            return res
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable cache file %s", cache_file.name)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        stats.retries += 1
        log.info("frontier: %s; retry %d/%d in %.2f s", state.outcome.exception().error, state.attempt_number,
                 cfg.max_retries, state.upcoming_sleep)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(cfg.max_retries + 1),
        wait=_wait(cfg),
        retry=tenacity.retry_if_exception_type(_Retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        payload = await retrying(_attempt, client, request_body(cfg, text), cfg, sem, stats, redact, host)
    except _Refused as e:
        return ItemResult(status="failed", error=e.error)
    except _Retryable as e:
        error = f"gave up after {cfg.max_retries + 1} attempts; last: {e.error}"
        log.warning("frontier: %s", error)
        stats.failed_in_a_row += 1
        if stats.answered == 0 and stats.failed_in_a_row >= max(3, cfg.concurrency):
            # the endpoint is down or unreachable: stop instead of waiting out every item's retries
            raise FrontierUnavailable(
                f"the frontier endpoint {host} failed {stats.failed_in_a_row} items in a row without one answer; "
                f"last error: {e.error}",
                hint="check baselines.frontier.base_url / OPENAI_BASE_URL and the network, or drop frontier from --include",
            ) from None
        return ItemResult(status="failed", error=error)
    stats.answered += 1
    stats.failed_in_a_row = 0
    res = _parse_body(payload, redact, price_range)
    if cache_file is not None and res.status in ("ok", "no_number"):
        # only what scoring needs: the answer's text (decoded, then redacted) and the token counts;
        # never the reply as received, which a hostile server can fill with (escaped) copies of the key
        write_json_atomic(cache_file, {"model": cfg.model, "host": host, "content": res.raw,
                                       "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens})
    return res


async def aprice_texts(
    texts: Sequence[str],
    cfg: FrontierConfig,
    price_range: tuple[float, float] = (0.0, 10_000.0),
    cache_root: Path | None = None,
    progress: bool = True,
) -> FrontierRun:
    """Price every text through the endpoint (async). Raises PricefitError when there is no key."""
    import openai
    from tqdm.auto import tqdm

    base_url, key = resolve_endpoint(cfg)
    if not key:
        raise PricefitError(
            f"no API key in {cfg.api_key_env}",
            hint=f"export {cfg.api_key_env}=... (any value for a local OpenAI-compatible server)",
        )
    redact = Redactor(key)
    host = endpoint_host(base_url)
    cdir = cache_dir_for(cfg, cache_root) if cfg.cache else None
    if cdir is not None:
        cdir.mkdir(parents=True, exist_ok=True)
    stats = _Stats()
    sem = asyncio.Semaphore(cfg.concurrency)
    started = time.perf_counter()
    with _scrubbed_logs(redact), _quiet_http_logs():
        client = openai.AsyncOpenAI(api_key=key, base_url=base_url, timeout=cfg.timeout_s, max_retries=0)
        try:
            bar = tqdm(total=len(texts), desc=f"frontier {cfg.model}", unit="item", file=sys.stderr, disable=not progress)

            async def one(i: int, text: str) -> tuple[int, ItemResult]:
                cf = cdir / f"{cache_key(cfg, host, text)}.json" if cdir is not None else None
                res = await _price_one(client, text, cfg, sem, stats, redact, price_range, cf, host)
                bar.update(1)
                return i, res

            tasks = [asyncio.ensure_future(one(i, t)) for i, t in enumerate(texts)]
            try:
                done = await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                bar.close()
        finally:
            await client.close()
    items = [r for _, r in sorted(done, key=lambda x: x[0])]
    run = FrontierRun(items=items, usage=_usage(cfg, host, items, stats, time.perf_counter() - started))
    failed = [i for i, r in enumerate(items) if r.status == "failed"]
    if failed:
        # a request that got no answer is not a prediction: scoring it as unparsed ($0) and caching
        # that would serve a wrong MAE until something else changes the step's key
        saved = (
            f"the {len(items) - len(failed)} answered items are kept in the reply cache ({cdir}), so a rerun "
            "sends only the failed ones"
            if cdir is not None
            else "baselines.frontier.cache is off, so a rerun sends every item again"
        )
        raise FrontierIncomplete(
            f"{len(failed)} of {len(items)} frontier requests to {host} failed (item {failed[0]}: {items[failed[0]].error})",
            hint=f"rerun when the endpoint answers (Retry in the UI or `prefect flow-run retry`); {saved}",
            run=run,
        )
    return run


def _usage(cfg: FrontierConfig, host: str, items: list[ItemResult], stats: _Stats, seconds: float) -> dict[str, Any]:
    live = [r for r in items if not r.cached]
    cached = [r for r in items if r.cached]
    pt = sum(r.prompt_tokens for r in live)
    ct = sum(r.completion_tokens for r in live)
    statuses: dict[str, int] = {}
    for r in items:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "status": "ok",
        "model": cfg.model,
        "host": host,
        "items": len(items),
        "requests": stats.requests,
        "retries": stats.retries,
        "errors": dict(sorted(stats.errors.items())),
        "statuses": dict(sorted(statuses.items())),
        "cached_items": len(cached),
        "unparsed": sum(1 for r in items if not r.parsed),
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "estimated_cost_usd": round(pt / 1e6 * cfg.input_cost_per_mtok + ct / 1e6 * cfg.output_cost_per_mtok, 6),
        "cached_prompt_tokens": sum(r.prompt_tokens for r in cached),
        "cached_completion_tokens": sum(r.completion_tokens for r in cached),
        "price_per_mtok": {"input": cfg.input_cost_per_mtok, "output": cfg.output_cost_per_mtok},
        "seconds": round(seconds, 3),
    }


def price_texts(
    texts: Sequence[str],
    cfg: FrontierConfig,
    price_range: tuple[float, float] = (0.0, 10_000.0),
    cache_root: Path | None = None,
    progress: bool = True,
) -> FrontierRun:
    """Synchronous wrapper of :func:`aprice_texts` (works inside a running event loop too)."""
    coro_args = (texts, cfg, price_range, cache_root, progress)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(aprice_texts(*coro_args))
    # called from async code (a notebook, an async flow): run on a private loop in a thread
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["run"] = asyncio.run(aprice_texts(*coro_args))
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, name="pricefit-frontier")
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["run"]
