"""The fork server of killrun.py (tests only): import once, then fork one child per command.

Protocol on stdin/stdout, one JSON object a line: a request ``{"args", "env", "cwd", "log"}`` is
answered with ``{"pid"}`` when the child starts and ``{"rc"}`` when it ends (``-9``: SIGKILL).
The child replaces its environment with ``env``, runs ``pricefit ARGS`` in ``cwd`` with stdout
and stderr in ``log``, its kill-point counter at zero.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import killrun_preload  # noqa: E402,F401


def _child(req: dict) -> None:
    import killpoints

    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdin.close()
    killpoints.reset()
    from pricefit.cli import app

    sys.argv = ["pricefit", *req["args"]]
    code = 0
    try:
        app(args=req["args"], prog_name="pricefit")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
