"""Issue 21 #1: the temporary Prefect server of a killed `pricefit run` must not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# stands in for `pricefit run`: starts a long-lived server under the guard, as Prefect's command would run
PARENT = """
import subprocess, sys, time
import os
child = subprocess.Popen([sys.executable, "-m", "flows.server_guard", "--parent", str(os.getpid()), "-m", "http.server", "0", "--bind", "127.0.0.1"],
                         cwd={root!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_temporary_server_dies_with_a_killed_run():
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _alive(child)
    if alive:
        Path(f"/proc/{child}").exists() and subprocess.run(["kill", "-9", str(child)])
    assert not alive, f"the server process {child} outlived the killed run"


def test_prefects_temporary_server_command_runs_under_the_guard(monkeypatch):
    """Prefect builds ``python -m uvicorn ...`` for its temporary server; without PREFECT_API_URL
    `pricefit run` makes that ``python -m flows.server_guard -m uvicorn ...``; a real server is left alone."""
    import prefect.server.api.server as server_mod

    from flows import commands

    seen = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: seen.append(args))
    monkeypatch.setattr(server_mod, "subprocess", subprocess)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    commands.guard_temporary_server()
    assert server_mod.subprocess is subprocess  # a real server: nothing to guard
    monkeypatch.delenv("PREFECT_API_URL")
    commands.guard_temporary_server()
    server_mod.subprocess.Popen([sys.executable, "-m", "uvicorn", "--port", "8001"], env={})
    server_mod.subprocess.Popen([sys.executable, "-m", "other"])
    assert seen == [[sys.executable, "-m", "flows.server_guard", "--parent", str(os.getpid()), "-m", "uvicorn", "--port", "8001"],
                    [sys.executable, "-m", "other"]]
    assert server_mod.subprocess.PIPE == subprocess.PIPE
