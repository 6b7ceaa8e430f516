"""The project's error types for a user's mistake.

Every command line catches :class:`UserError` alone: it prints ``error: <message>`` and exits with
code 2, without a traceback. Any other exception is a bug and keeps its traceback (a ``ValueError``
raised inside the generator is not the user's doing, even though a bad value raised it).

Each subclass below also derives from the built-in type it replaced (``ValueError`` or
``RuntimeError``), so code that caught the built-in keeps working.
"""

from __future__ import annotations

import re

_QUOTED = re.compile(r"`([a-z_][a-z0-9_]*)`")  # an option named in a message: `zigzag_length`


class UserError(Exception):
    """A mistake in the command line, its inputs or the files it reads; the message names the
    problem and the fix. Printed as ``error: ...``, exit code 2.

    ``options``: the Python names of the options the message names (a field of the checked
    options, or an argument of the Python API, such as ``zigzag_length``); the message spells
    them so, in backquotes, and a front end that calls them otherwise (the command line's
    ``--zigzag_length``) rewrites them when it prints the message. Not given: the names the
    message quotes.
    """

    def __init__(self, *args: object, options: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        quoted = _QUOTED.findall(args[0]) if args and isinstance(args[0], str) else []
        self.options = tuple(options) or tuple(dict.fromkeys(quoted))


class UsageError(UserError, ValueError):
    """A mistake in the command line or its inputs: printed as ``error: ...``, exit code 2."""


class SettingsError(UserError, ValueError):
    """A value, or a combination of values, that cannot work (a mode part that does not fit the
    model, a size the U-Net cannot take, a length out of range, a file type nothing writes)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist, or holds nothing to work on."""
