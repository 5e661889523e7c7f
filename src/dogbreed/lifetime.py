"""Worker processes that end with the process that started them.

``dogbreed tune --parallel N`` and ``dogbreed serve --workers N`` start worker processes; if the
command is killed outright (``kill -9``, the OOM killer), nothing runs in it to stop them, and
they would go on training or holding the port. Each worker calls :func:`end_with_parent` first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

PARENT_ENV = "DOGBREED_PARENT_PID"  # how a worker started by another program (uvicorn) learns its parent
_PR_SET_PDEATHSIG = 1


def end_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have ``sig`` sent to this process when ``parent_pid`` dies: on Linux by the kernel
    (``prctl(PR_SET_PDEATHSIG)``), elsewhere by a thread that checks once a second. A parent that
    is already gone ends this process now."""
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        armed = False
    if not armed:
        threading.Thread(target=_watch, args=(parent_pid, sig), name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # it died before the signal was armed
        os.kill(os.getpid(), sig)


def _watch(parent_pid: int, sig: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), sig)
