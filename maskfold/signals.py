"""Ctrl-C and worker processes: remembered when a finalizer swallows it, left to the main process by
workers, and never a traceback from the handover of a batch."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback

_ctrl_c = threading.Event()


@contextlib.contextmanager
def watching_ctrl_c():
    """Ctrl-C is remembered as well as raised: Python only prints a KeyboardInterrupt that lands in a finalizer
    (a progress bar's __del__) and carries on, so the long loops ask stop_if_interrupted() once a batch."""
    # Left as it is in a thread, and where Ctrl-C is ignored (`cmd &` in a script) or handled by someone else.
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_ctrl_c(signum, frame):
        _ctrl_c.set()
        raise KeyboardInterrupt

    def unraisable(u):  # the swallowed Ctrl-C is not printed either: the loop raises it again
        if not issubclass(u.exc_type, KeyboardInterrupt):
            default_unraisable(u)

    default_unraisable = sys.unraisablehook
    signal.signal(signal.SIGINT, on_ctrl_c)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = default_unraisable
        _ctrl_c.clear()


def stop_if_interrupted() -> None:
    """Raise the Ctrl-C that a finalizer swallowed, if there was one."""
    if _ctrl_c.is_set():
        raise KeyboardInterrupt


def child_process() -> None:
    """A worker process's start: Ctrl-C is the parent's to handle (a terminal sends it to the whole group), and
    on Linux the worker dies with its parent, even a SIGKILLed one (PR_SET_PDEATHSIG)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def loader_worker(worker_id: int) -> None:
    """A data loader worker's start (worker_init_fn). Its batches reach the main process through
    multiprocessing's fd sharer, whose thread prints a traceback when the main process stops mid-handover
    (Ctrl-C); the main process says what happened, so that one is not printed. OpenCV (albumentations' steps)
    computes with one thread in a worker: the workers are the parallelism, and more threads would spin on the
    model's cores."""
    child_process()
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    default = sys.excepthook
    sharer = os.path.join("multiprocessing", "resource_sharer.py")

    def hook(kind, value, tb):
        if not any(f.filename.endswith(sharer) for f in traceback.extract_tb(tb)):
            default(kind, value, tb)

    sys.excepthook = hook
