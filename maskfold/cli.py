"""Command-line plumbing the scripts share: options dataclasses as commands, one-line errors, results.

Nothing here imports torch at module level, so `script.py --help` answers at once.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
import signal
import sys
import typing
from dataclasses import MISSING, field, fields
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from maskfold.errors import Interrupted, UserError  # the scripts and the package take them from here too
from maskfold.signals import watching_ctrl_c


class Choice(str, Enum):
    """A fixed choice of an option: the command line checks it and --help lists its values; in code, records and
    messages it is its value (`f"{Vote.mean}"` is 'mean')."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def fail(message: str, code: int = 2):
    """Print one clear line and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class Script(typer.Typer):
    """A script's app: before the command line is parsed, an option of several numbers given with commas
    (`--img-size 96,72`) is one line that shows the right form."""

    pairs: tuple[str, ...] = ()  # the options that take several numbers, as --kebab-case

    def __call__(self, *args, **kwargs):
        check_pairs(sys.argv[1:], self.pairs)
        parse_error, abort = click_errors()
        try:
            return typer.main.get_command(self).main(*args, standalone_mode=False, **kwargs)
        except parse_error as e:  # an unknown option, a bad choice, a missing argument: one line
            fail(f"{e.format_message()} (see --help)")
        except abort:
            fail("interrupted", code=130)
        except SystemExit as e:
            if e.code == 130:
                die_of_ctrl_c()
            raise


def click_errors() -> tuple[type, type]:
    """The command-line parser's errors: typer's own copy of click's where it has one, else click's."""
    try:
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort
    except ImportError:
        from click.exceptions import Abort, ClickException
    return ClickException, Abort


def die_of_ctrl_c() -> None:
    """End the process by SIGINT itself, after its one line: a shell loop (`for k in 0 1 2; do python train.py
    ...; done`) stops at a child that died of Ctrl-C, and goes on after one that merely exited 130."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def check_pairs(argv: list[str], pairs: tuple[str, ...]) -> None:
    for flag, value in zip(argv, argv[1:] + [""]):
        name, _, inline = flag.partition("=")
        given = inline or value
        if name in pairs and "," in given:
            fail(f"{name} {given}: give the numbers separated by a space, e.g. {name} {' '.join(given.split(','))}")


def make_app() -> Script:
    """One command per script; plain help (no boxes) that reads at 80 columns and in a log."""
    return Script(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


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
            # a second Ctrl-C while the line is printed or threads wind down must not end in a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            fail(str(e) if isinstance(e, Interrupted) else "interrupted", code=130)
    return wrapper


def result(summary: dict) -> None:
    """The script's result: one JSON object, the last line on stdout."""
    from maskfold.files import json_safe

    # paths as they are named, not as \uXXXX escapes; no NaN or Infinity, which JSON has not
    print(json.dumps(json_safe(summary), ensure_ascii=False, allow_nan=False))


def choose(value: str, valid, option: str) -> str:
    """A registry name, or one clear line with the valid names and the closest one."""
    if value in valid:
        return value
    same = [v for v in valid if v.lower() == value.lower()]  # adamW -> adamw, not adam
    close = same or difflib.get_close_matches(value, list(valid), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UserError(f"{option} {value}: unknown; choose from {', '.join(valid)}{hint}")


def arg(help: str, default=MISSING) -> Any:
    """A positional argument of a script's options dataclass (required unless given a default)."""
    return field(default=default, metadata={"cli": typer.Argument(help=help)})


def opt(default, help: str, *flags: str, run: bool = False, metavar: str | None = None, hidden: bool = False) -> Any:
    """An option of a script's options dataclass (`...`: required). `flags` name it where its field
    name would not (`--amp/--no-amp`, `-o`); `run` marks what changes what a model learns (train.py);
    `metavar` is how the help shows its value (`H W` for two numbers)."""
    return field(default=MISSING if default is ... else default,
                 metadata={"cli": typer.Option(*flags, help=help, metavar=metavar, hidden=hidden), "run": run})


def command(app: typer.Typer, options: type, check=None):
    """Register `main(o: Options)` as the script's command: every field of the frozen dataclass
    `options` becomes a command-line parameter, and main receives them as one object, which is also
    the record of what ran. `check(o)`, the script's one place for the rules between its options, runs
    first: a main never validates its options itself."""
    hints = typing.get_type_hints(options)

    def register(body):
        params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                    default=inspect.Parameter.empty if f.default is MISSING else f.default,
                                    annotation=Annotated[hints[f.name], f.metadata["cli"]])
                  for f in fields(options)]
        renamed = getattr(options, "RENAMED", {})  # old flag -> field: the old spelling works for one release
        params += [inspect.Parameter(f"old_{name}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[Optional[hints[name]], typer.Option(old, hidden=True)])
                   for old, name in renamed.items()]

        def main(**values):
            for old, name in renamed.items():
                given = values.pop(f"old_{name}")
                if given is not None:
                    flag = "--" + name.replace("_", "-")
                    print(f"note: {old} is now {flag}; the old spelling goes in the next release", file=sys.stderr)
                    values[name] = given
            o = options(**values)
            if check is not None:
                check(o)
            return body(o)

        main.__signature__ = inspect.Signature(params)
        main.__doc__ = body.__doc__
        app.command()(one_line_errors(main))
        if isinstance(app, Script):
            app.pairs = tuple("--" + f.name.replace("_", "-") for f in fields(options)
                              if typing.get_origin(hints[f.name]) is tuple)
        return body

    return register
