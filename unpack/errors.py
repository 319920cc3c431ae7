"""Errors that mean "the input is wrong": they name the input and the fix.

The CLI prints them as one line and exits with status 2; anything else is a bug
and keeps its traceback."""


class InputError(ValueError):
    """Bad input (text, target, root, model, file). The message names it and the fix."""
