"""Command-line plumbing the scripts share: one-line errors, registry names, the device.

Nothing here imports torch at module level, so `script.py --help` answers at once.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import json
import os
import signal
import sys
import threading
import traceback
import typing
from dataclasses import MISSING, field, fields
from enum import Enum
from typing import Annotated, Any

import typer


class UserError(Exception):
    """A mistake in the user's input: reported as one line, no traceback."""


class Interrupted(Exception):
    """Ctrl-C, with a line that says how to carry on (exit code 130)."""


def fail(message: str, code: int = 2):
    """Print one clear line and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def make_app() -> typer.Typer:
    """One command per script; plain help (no boxes) that reads at 80 columns and in a log."""
    return typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def one_line_errors(main):
    """A script's main(): the user's mistakes end in one line and exit 2, Ctrl-C in one line and exit 130."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            with watching_ctrl_c():
                return main(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except (Interrupted, KeyboardInterrupt) as e:
            fail(str(e) if isinstance(e, Interrupted) else "interrupted", code=130)
    return wrapper


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
    (Ctrl-C); the main process says what happened, so that one is not printed."""
    child_process()
    default = sys.excepthook
    sharer = os.path.join("multiprocessing", "resource_sharer.py")

    def hook(kind, value, tb):
        if not any(f.filename.endswith(sharer) for f in traceback.extract_tb(tb)):
            default(kind, value, tb)

    sys.excepthook = hook


def result(summary: dict) -> None:
    """The script's result: one JSON object, the last line on stdout."""
    print(json.dumps(summary))


def choose(value: str, valid, option: str) -> str:
    """A registry name, or one clear line with the valid names and the closest one."""
    if value in valid:
        return value
    close = difflib.get_close_matches(value, list(valid), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(f"{option} {value}: unknown; choose from {', '.join(valid)}{hint}")


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def resolve_device(device: Device) -> str:
    """auto -> cuda when present; asking for cuda without one is the user's mistake."""
    import torch

    if device == Device.cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return "cuda" if device != Device.cpu and torch.cuda.is_available() else "cpu"


def arg(help: str, default=MISSING) -> Any:
    """A positional argument of a script's options dataclass (required unless given a default)."""
    return field(default=default, metadata={"cli": typer.Argument(help=help)})


def opt(default, help: str, *flags: str, run: bool = False) -> Any:
    """An option of a script's options dataclass (`...`: required). `flags` name it where its field
    name would not (`--amp/--no-amp`, `-o`); `run` marks what changes what a model learns (train.py)."""
    return field(default=MISSING if default is ... else default,
                 metadata={"cli": typer.Option(*flags, help=help), "run": run})


def command(app: typer.Typer, options: type):
    """Register `main(o: Options)` as the script's command: every field of the frozen dataclass
    `options` becomes a command-line parameter, and main receives them as one object, which is also
    the record of what ran."""
    hints = typing.get_type_hints(options)

    def register(body):
        params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                    default=inspect.Parameter.empty if f.default is MISSING else f.default,
                                    annotation=Annotated[hints[f.name], f.metadata["cli"]])
                  for f in fields(options)]

        def main(**values):
            return body(options(**values))

        main.__signature__ = inspect.Signature(params)
        main.__doc__ = body.__doc__
        app.command()(one_line_errors(main))
        return body

    return register
