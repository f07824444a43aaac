"""Run a ``pricefit`` stage command in a child process that a test can SIGKILL (tests only).

Two ways, both a real process killed with SIGKILL:

- :class:`ForkServer`: the command runs in a child forked from a server process
  (``killrun_server.py``) that imported pricefit, torch, transformers, peft, datasets and polars once (and ran nothing),
  with the kill points of ``killpoints.py`` installed. A child starts in a fraction of a second
  instead of the ~6 s a fresh interpreter needs, so the suite can afford many kill points. The
  child sees the environment the test gives it, its own working directory, stdout/stderr in a log
  file; the kill point it dies at is chosen through ``PRICEFIT_KILL_AT``.
- :func:`run_cli_killed_after`: the installed ``pricefit`` entry point in a fresh interpreter,
  SIGKILLed from outside after a delay (where it dies is up to the clock).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]



@dataclass
class Result:
    rc: int  # the exit code, or -9 for a SIGKILL
    log: str

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL


class ForkServer:
    """A python process (``killrun_server.py``) that imported the heavy modules once; each
    :meth:`run` forks one child from it for one command and reports how it ended."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "killrun_server.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"kill-run fork server did not start: {ready!r}")

    def run(self, args: list, env: dict[str, str], cwd: Path, log_path: Path, timeout: float = 300) -> Result:
        req = {"args": [str(a) for a in args], "env": env, "cwd": str(cwd), "log": str(log_path)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        pid = int(json.loads(self.proc.stdout.readline())["pid"])
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            self.proc.stdout.readline()
            raise TimeoutError(f"pricefit {' '.join(req['args'])} still running after {timeout} s; log: {log_path}")
        rc = int(json.loads(self.proc.stdout.readline())["rc"])
        return Result(rc, Path(log_path).read_text() if Path(log_path).exists() else "")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pricefit_exe() -> str:
    return str(Path(sys.executable).with_name("pricefit"))


def run_cli_killed_after(args: list[str], env: dict[str, str], cwd: Path, log_path: Path, delay: float | None,
                         timeout: float = 300) -> Result:
    """The real ``pricefit`` entry point; SIGKILL it after ``delay`` seconds (None: let it finish)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([pricefit_exe(), *map(str, args)], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if delay is not None:
                try:
                    proc.wait(delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            rc = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Result(rc, Path(log_path).read_text())


def wall(fn, *a, **kw):
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t0
