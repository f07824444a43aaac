"""A local OpenAI-compatible Chat Completions server for tests (127.0.0.1, free port, one thread).

No network beyond loopback. What it answers is decided by markers in the last user message, so
tests stay deterministic under concurrency (each prompt keeps its own attempt counter):

``[[price:12.5]]``      answer ``"12.5"`` (default: the number of characters of the user message)
``[[reply:TEXT]]``      answer TEXT verbatim (a steering attempt, prose without a number, ...)
``[[fail:429x2]]``      the first 2 attempts of this prompt get HTTP 429 (``Retry-After: 0``);
                        any status works (``500x1``, ``503x3``); afterwards a normal answer
``[[slow:0.5x1]]``      sleep 0.5 s before the first attempt's answer (``slow:0.2`` = every attempt)
``[[malformed]]``       HTTP 200 with a body that is not JSON
``[[empty]]``           HTTP 200 with ``"choices": []``
``[[echo:PAD]]``        HTTP 200, a plain-text body that is not JSON and echoes every request
                        header (``Authorization`` first) after PAD characters of filler, as a
                        misconfigured proxy's error page might; PAD places the key where a
                        client that cuts the text before redacting it would split the key

``[[leak:FORM]]``       HTTP 200 whose answer (and a response header, and an extra JSON field)
                        carries the Bearer key of the request in a FORM a hostile server might
                        choose (see :func:`leak`): ``tail`` (without its first 3 characters),
                        ``middle`` (characters 5..12), ``json`` (every character ``\\uXXXX``-escaped
                        in the JSON body, which ``json.loads`` turns back into the key), ``url``
                        (%XX-escaped), ``html`` (&#NN; escaped), ``double`` (JSON-escaped twice)
``[[leakerr:FORM]]``    HTTP 400 (not retried) whose error message carries the key in FORM

Server-wide knobs: ``delay_s`` (sleep before every answer, to measure concurrency) and
``echo_auth_in_errors`` (error bodies repeat the Authorization header, as a hostile or buggy proxy
might, so tests can check the client redacts the key from everything it writes).

Counters: ``requests`` (all POSTs to /v1/chat/completions), ``by_status``, ``max_in_flight``,
``auth_headers`` (what each request carried), ``bodies`` (the parsed request bodies).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_MARK = re.compile(r"\[\[(\w+)(?::([^\]]*))?\]\]")


class FakeOpenAI:
    def __init__(self, delay_s: float = 0.0, echo_auth_in_errors: bool = False):
        self.delay_s = delay_s
        self.echo_auth_in_errors = echo_auth_in_errors
        self.lock = threading.Lock()
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = defaultdict(int)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self.lock:
            self.requests = 0
            self.by_status.clear()
            self.max_in_flight = 0
            self.auth_headers.clear()
            self.bodies.clear()

    # ------------------------------------------------------------------ handling
    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        with self.lock:
            self.by_status[status] += 1
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        if not h.path.rstrip("/").endswith("/chat/completions"):
            self._send(h, 404, b'{"error": {"message": "not found"}}')
            return
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            auth = h.headers.get("Authorization", "")
            self.auth_headers.append(auth)
        try:
            body = json.loads(raw or b"{}")
            with self.lock:
                self.bodies.append(body)
            user = next((m.get("content", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
            marks = {m.group(1): (m.group(2) or "") for m in _MARK.finditer(user)}
            key = json.dumps(body.get("messages", []), sort_keys=True)
            with self.lock:
                self._attempts[key] += 1
                attempt = self._attempts[key]
            if self.delay_s:
                time.sleep(self.delay_s)
            if "slow" in marks:
                secs, _, times = marks["slow"].partition("x")
                if not times or attempt <= int(times):
                    time.sleep(float(secs))
            if "fail" in marks:
                status, _, times = marks["fail"].partition("x")
                if attempt <= int(times or 1):
                    msg = f"simulated {status}"
                    if self.echo_auth_in_errors:
                        msg += f" (you sent {auth})"
                    self._send(
                        h,
                        int(status),
                        json.dumps({"error": {"message": msg, "type": "fake"}}).encode(),
                        {"Retry-After": "0"} if int(status) == 429 else None,
                    )
                    return
            if "leak" in marks or "leakerr" in marks:
                secret = auth.removeprefix("Bearer ")
                form = marks.get("leak") or marks.get("leakerr")
                piece = leak(secret, form)
                if "leakerr" in marks:
                    # the piece goes into the raw JSON text unescaped by json.dumps (it is already escaped)
                    body_text = '{"error": {"message": "bad request from ' + piece + '", "type": "fake"}}'
                    self._send(h, 400, body_text.encode())
                    return
                reply = json.dumps(_completion(body, "12 PLACEHOLDER", 3))
                reply = reply.replace("PLACEHOLDER", piece)
                reply = reply[:-1] + ', "debug": "' + piece + '"}'
                self._send(h, 200, reply.encode(), {"X-Debug-Key": leak(secret, "tail")})
                return
            if "echo" in marks:
                pad = int(marks["echo"] or 0)
                filler = ("proxy error: upstream unavailable. " * (pad // 36 + 1))[:pad]
                headers = [f"Authorization: {auth}"] + [f"{k}: {v}" for k, v in h.headers.items() if k.lower() != "authorization"]
                self._send(h, 200, (filler + "\n".join(headers)).encode(), content_type="text/plain")
                return
            if "malformed" in marks:
                self._send(h, 200, b'{"id": "x", "choices": [ this is not json')
                return
            if "empty" in marks:
                self._send(h, 200, json.dumps(_completion(body, None)).encode())
                return
            if "reply" in marks:
                content = marks["reply"]
            elif "price" in marks:
                content = marks["price"]
            else:
                content = str(len(user))
            self._send(h, 200, json.dumps(_completion(body, content, len(user.split()))).encode())
        finally:
            with self.lock:
                self.in_flight -= 1


def _completion(body: dict[str, Any], content: str | None, prompt_words: int = 0) -> dict[str, Any]:
    choices = [] if content is None else [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": None}
    ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake"),
        "choices": choices,
        "usage": {"prompt_tokens": prompt_words + 20, "completion_tokens": 2, "total_tokens": prompt_words + 22},
    }


def leak(secret: str, form: str) -> str:
    """``secret`` as a hostile server might hide it in JSON text (already escaped for a JSON string)."""
    if form == "tail":
        return secret[3:]
    if form == "middle":
        return secret[5:13]
    if form == "json":
        return "".join(f"\\u{ord(c):04x}" for c in secret)
    if form == "double":  # escaped twice: a JSON string inside a JSON string
        return "".join(f"\\\\u{ord(c):04x}" for c in secret)
    if form == "url":
        return "".join(f"%{ord(c):02X}" for c in secret)
    if form == "html":
        return "".join(f"&#{ord(c)};" for c in secret)
    raise ValueError(f"unknown leak form {form!r}")
