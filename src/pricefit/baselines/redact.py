"""Keeping the frontier model's API key out of everything pricefit writes.

:class:`Redactor` removes the key from any text: Bearer tokens and every piece of the key of
``PIECE_MIN`` or more characters, after decoding the escapes (JSON, URL, HTML, repeatedly) that a
server or a layer in between may wrap it in. :func:`_scrubbed_logs` applies it to the log
records of the HTTP libraries during a run; :func:`_quiet_http_logs` keeps their request lines
out of the output.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator

REDACTED = "[REDACTED]"
_SCRUBBED_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "pricefit")

_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]+")
#: A piece of the key this long (or longer), anywhere in a text, is redacted: a prefix, a suffix, a
#: middle piece, after any escaping is decoded (see :meth:`Redactor.decode`).
PIECE_MIN = 6
# escapes a server (or a JSON/URL/HTML layer in between) may wrap the key in; decoded before matching
_ESCAPES = re.compile(
    r"\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|\\x([0-9a-fA-F]{2})|%([0-9a-fA-F]{2})"
    r"|&#[xX]([0-9a-fA-F]{1,6});|&#([0-9]{1,7});|\\([\\/\"'])"
)


def _unescape_one(m: re.Match[str]) -> str:
    hexa = m.group(1) or m.group(2) or m.group(3) or m.group(4) or m.group(5)
    try:
        if hexa:
            return chr(int(hexa, 16))
        if m.group(6):
            return chr(int(m.group(6)))
    except (ValueError, OverflowError):
        return m.group(0)
    return m.group(7)


class Redactor:
    """Scrubs the API key from text: any piece of it of ``PIECE_MIN`` (6) or more characters,
    wherever it sits (the whole key, a cut-off copy, the key without its first characters, a middle
    piece), and any Bearer token. The text is decoded first (JSON ``\\uXXXX``, ``\\xXX``, URL
    ``%XX`` and HTML ``&#...;`` escapes, repeatedly), so an escaped copy that a later ``json.loads``
    would turn back into the key is caught; what comes back is the decoded, redacted text.

    Always redact the whole text, then cut it to length: cutting first can split the key and
    leave a piece that no longer matches it.
    """

    def __init__(self, secret: str | None):
        self.secret = secret or None
        s = self.secret or ""
        n = min(PIECE_MIN, len(s))
        self._pieces = {s[i : i + n] for i in range(len(s) - n + 1)} if s else set()
        self._n = n

    @staticmethod
    def decode(text: str) -> str:
        """``text`` with escapes decoded until nothing changes (nested escaping too; bounded)."""
        for _ in range(8):
            decoded = _ESCAPES.sub(_unescape_one, text)
            if decoded == text:
                break
            text = decoded
        return text

    def _scrub_pieces(self, s: str) -> str:
        n = self._n
        if not self._pieces or len(s) < n:
            return s
        covered = bytearray(len(s))
        pieces = self._pieces
        for i in range(len(s) - n + 1):
            if s[i : i + n] in pieces:
                covered[i : i + n] = b"\x01" * n
        if not any(covered):
            return s
        out, i = [], 0
        while i < len(s):
            if covered[i]:
                while i < len(s) and covered[i]:
                    i += 1
                out.append(REDACTED)
            else:
                out.append(s[i])
                i += 1
        return "".join(out)

    def __call__(self, text: Any) -> str:
        s = "" if text is None else str(text)
        if self.secret:
            s = self._scrub_pieces(self.decode(s))
        return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", s)

    def clean(self, value: Any) -> Any:
        """A JSON value (dict/list/str/...) with every string, keys included, redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(k): self.clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.clean(v) for v in value]
        return value


class _ScrubFilter(logging.Filter):
    def __init__(self, redact: Redactor):
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


@contextlib.contextmanager
def _scrubbed_logs(redact: Redactor) -> Iterator[None]:
    if not redact.secret:
        yield
        return
    flt = _ScrubFilter(redact)
    names = set(_SCRUBBED_LOGGERS) | {
        n for n in logging.root.manager.loggerDict if n.split(".")[0] in {x.split(".")[0] for x in _SCRUBBED_LOGGERS}
    }
    loggers = [logging.getLogger(n) for n in sorted(names)]
    handlers = list(logging.getLogger().handlers)
    for obj in [*loggers, *handlers]:
        obj.addFilter(flt)
    try:
        yield
    finally:
        for obj in [*loggers, *handlers]:
            obj.removeFilter(flt)


@contextlib.contextmanager
def _quiet_http_logs() -> Iterator[None]:
    """httpx logs every request at INFO (hundreds of lines); keep them unless debugging."""
    saved = []
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpx2"):
            lg = logging.getLogger(name)
            saved.append((lg, lg.level))
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
