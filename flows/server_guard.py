"""Runs a Python module (Prefect's temporary API server) so that it dies with the process that started it.

``python -m flows.server_guard --parent PID -m MODULE ARGS...`` runs ``python -m MODULE ARGS...`` in this process
after starting a thread that watches the parent: when the parent is gone (``kill -9`` of
``pricefit run`` included: the child is then re-parented), it sends itself SIGTERM (uvicorn shuts
down cleanly) and exits after ``GRACE_S`` seconds at the latest. Without it the temporary server
of a killed run kept running (and writing the Prefect database) for good.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

GRACE_S = 10.0
POLL_S = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


def main(argv: list[str]) -> None:
    parent = os.getppid()
    if len(argv) >= 2 and argv[0] == "--parent":  # the starter's pid: it may be gone before this line runs
        parent, argv = int(argv[1]), argv[2:]
    if len(argv) < 2 or argv[0] != "-m":
        raise SystemExit("usage: python -m flows.server_guard [--parent PID] -m MODULE [ARGS...]")
    threading.Thread(target=_watch, args=(parent,), name="pricefit-parent-watch", daemon=True).start()
    module = argv[1]
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
