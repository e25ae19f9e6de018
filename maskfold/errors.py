"""The two ways a script ends early on purpose, below every module that raises them (maskfold.cli, which
reports them, re-exports both)."""


class UserError(Exception):
    """A mistake in the user's input: reported as one line, no traceback."""


class Interrupted(Exception):
    """Ctrl-C, with a line that says how to carry on (exit code 130)."""
