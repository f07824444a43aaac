"""Progress of long work: a tqdm bar on a terminal, steady progress lines everywhere else.

Under cron, nohup, a Prefect worker or ``make demo > log``, stderr is not a terminal and a tqdm bar
either prints nothing or a wall of carriage returns. There :func:`progress_bar` returns a
:class:`LineProgress`: one line at the start, one every ``interval_s`` seconds (default 30,
PRICEFIT_PROGRESS_INTERVAL overrides) and one at the end, e.g.::

    train: 40/200 steps (20%), loss 1.2345, 5120 tokens/s, 0.53 steps/s, elapsed 1:15, ETA 5:02

The lines are records of the ``pricefit.progress`` logger (so a flow run shows them in its Prefect
logs); with no logging configured at all they are written to the stream directly. Both kinds of bar
have tqdm's ``update``, ``set_postfix``, ``close`` and context-manager interface.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable

DEFAULT_INTERVAL_S = 30.0
log = logging.getLogger("pricefit.progress")

# postfix keys the training loop sets, shown with a readable unit
POSTFIX_LABELS = {"tok_s": "tokens/s"}


def _clock_str(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def default_interval() -> float:
    try:
        return float(os.environ.get("PRICEFIT_PROGRESS_INTERVAL") or DEFAULT_INTERVAL_S)
    except ValueError:
        return DEFAULT_INTERVAL_S


class LineProgress:
    """Progress lines at a steady pace: at the start, every ``interval_s`` seconds, at the end."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
        file: Any = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.interval_s = default_interval() if interval_s is None else interval_s
        self.clock = clock
        self.t0 = self.last = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False
        self._pending = self._uses_postfix = False
        self._file = file
        self._emit = emit or self._log
        what = f"resuming at {self._count()}" if initial else f"starting, {self._count()}"
        self._emit(f"{desc}: {what}")

    def _log(self, line: str) -> None:
        if log.isEnabledFor(logging.INFO) and log.hasHandlers():
            log.info(line)
        elif not log.hasHandlers():  # nothing configured logging: do not lose the line
            stream = self._file or sys.stderr
            stream.write(line + "\n")
            stream.flush()

    def _count(self) -> str:
        units = f"{self.unit}s" if not self.unit.endswith("s") else self.unit
        if not self.total:
            return f"{self.n} {units}"
        return f"{self.n}/{self.total} {units} ({100 * self.n / self.total:.0f}%)"

    def _details(self, now: float, final: bool) -> list[str]:
        parts = []
        for key, value in self.postfix.items():
            label = POSTFIX_LABELS.get(key)
            parts.append(f"{value} {label}" if label else f"{key} {value}")
        elapsed = now - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else None
        if rate:
            parts.append(f"{rate:.2f} {self.unit}s/s" if rate < 10 else f"{rate:.0f} {self.unit}s/s")
        parts.append(f"elapsed {_clock_str(elapsed)}")
        if not final and rate and self.total:
            parts.append(f"ETA {_clock_str((self.total - self.n) / rate)}")
        return parts

    def line(self, final: bool = False) -> str:
        now = self.clock()
        head = self._count()
        if final:
            head = ("done, " if self.total is None or self.n >= self.total else "stopped at ") + head
        return f"{self.desc}: " + ", ".join([head, *self._details(now, final)])

    def update(self, n: int = 1) -> None:
        if self._pending:  # the caller did not follow the last update with set_postfix
            self._flush()
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval_s and (self.total is None or self.n < self.total):
            self.last = now
            # a loop that calls set_postfix after update (the training loop) gets this step's loss in the line
            self._pending = True
            if not self._uses_postfix:
                self._flush()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self._uses_postfix = True
        self.postfix.update(ordered_dict or {})
        self.postfix.update(kwargs)
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        self._pending = False
        self._emit(self.line())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pending = False
            self._emit(self.line(final=True))

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(
    total: int | None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    file: Any = None,
    enabled: bool = True,
    interval_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
):
    """tqdm on a terminal, :class:`LineProgress` elsewhere, nothing when ``enabled`` is False."""
    if not enabled:
        return _NoProgress()
    stream = file if file is not None else sys.stderr
    if _is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit=unit, initial=initial, interval_s=interval_s, clock=clock, file=stream)
