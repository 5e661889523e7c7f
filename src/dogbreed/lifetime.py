"""Worker processes that end with the process that started them.

``dogbreed tune --parallel N`` and ``dogbreed serve --workers N`` start worker processes; if the
command is killed outright (``kill -9``, the OOM killer), nothing runs in it to stop them, and
they would go on training or holding the port. Each worker calls :func:`end_with_parent` first, and
every DataLoader's workers run :func:`loader_worker_init` (the workers of a worker, as deep as it goes).

Stopped in order (Ctrl-C), a command's workers finish what must not be cut in two first:
:func:`deaf_to_ctrl_c` keeps the terminal's SIGINT from reaching them directly, and
:class:`StopRequest` turns the request the command then sends them into one KeyboardInterrupt,
which waits for the end of a block that must finish (:meth:`StopRequest.held`, :func:`uninterrupted`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

PARENT_ENV = "DOGBREED_PARENT_PID"  # how a worker started by another program (uvicorn) learns its parent
_PR_SET_PDEATHSIG = 1
_installed: list["StopRequest"] = []  # the stop requests installed now, innermost last (main thread only)


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


def loader_worker_init(parent_pid: int) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that ends each loader worker with ``parent_pid``, the process
    iterating the loader.

    torch's workers watch their parent themselves, by comparing ``os.getppid()`` with the pid they
    read when their loop starts. A spawned worker (a tuning worker's loader starts its workers with
    ``spawn``) first imports torch for seconds; if its parent dies meanwhile, it reads pid 1, the
    comparison always holds, and it lives for good. ``worker_init_fn`` is the first code of ours a
    worker runs, before torch's loop reads its parent: here the kernel is asked to kill the worker
    when its parent dies (``PR_SET_PDEATHSIG``: nothing to poll, and it works while the worker is
    blocked), and a parent already gone (``getppid()`` is no longer the pid it was given) ends it
    now. A process group would not do: a command killed outright signals nobody, and a session's
    processes outlive its leader. SIGKILL: a loader worker holds nothing to save. The worker also
    stays quiet when the process taking a batch leaves mid-handoff (:func:`_quiet_when_the_taker_left`).

    The kernel ties the signal to the thread that started the worker: dogbreed's loaders start
    their workers on the thread that trains, which ends them (``Batches.close``) before it ends."""
    return functools.partial(_end_with, parent_pid)


def _end_with(parent_pid: int, worker_id: int) -> None:  # module level: spawned workers unpickle it
    end_with_parent(parent_pid, signal.SIGKILL)
    sys.excepthook = functools.partial(_quiet_when_the_taker_left, sys.excepthook)


PEER_GONE = (ConnectionResetError, BrokenPipeError, EOFError)


def _quiet_when_the_taker_left(default, kind, value, traceback) -> None:
    """A loader worker's uncaught errors, less those of a batch's taker gone mid-handoff. A spawned
    worker hands each batch's tensors over by file descriptor from a thread of multiprocessing's
    ``resource_sharer``, which prints any failure through ``sys.excepthook``; when Ctrl-C stops the
    process iterating the loader while it takes one, the connection resets and the worker printed a
    traceback for a stop that is in order (the worker is ended next)."""
    if not issubclass(kind, PEER_GONE):
        default(kind, value, traceback)


@contextmanager
def deaf_to_ctrl_c() -> Iterator[None]:
    """Processes started in the block ignore SIGINT, and so do the processes they start: an ignored
    signal stays ignored through ``exec``, and Python then installs no KeyboardInterrupt. A Ctrl-C
    reaches the terminal's whole process group; this way it interrupts the command alone, which then
    stops its workers in order, rather than every worker and DataLoader worker at once, wherever each
    is (a spawned one halfway through importing torch prints a traceback). A Ctrl-C within the
    block itself (the few milliseconds of starting processes) is lost. No-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def uninterrupted() -> AbstractContextManager:
    """The block is not cut in two by the :class:`StopRequest` installed now, if any: a request
    arriving in it is raised when the block ends. For what an interrupt would leave half built, such
    as a DataLoader starting its worker processes: interrupted there, torch's half-made iterator
    prints a traceback when it is collected, and a worker spawned halfway reads an empty pipe."""
    return _installed[-1].held() if _installed else nullcontext()


class StopRequest:
    """While installed (``with``), ``signals`` are a request to stop: one KeyboardInterrupt, raised
    on the main thread where it is, or, inside a :meth:`held` block, when the block ends (what it
    does, such as claiming a trial in a database, then finishes, and the interrupt never leaves it
    half done). Later requests are ignored: the clean-up the first one started is not cut short
    (a sender that cannot wait has SIGKILL). No-op off the main thread, where Python sets no handler."""

    def __init__(self, *signals: signal.Signals):
        self.signals = signals
        self.requested = False
        self._held = 0
        self._pending = False
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.signals}
            _installed.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        if self in _installed:
            _installed.remove(self)

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            return
        self.requested = True
        if self._held:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self._pending and not self._held:
            self._pending = False
            raise KeyboardInterrupt
