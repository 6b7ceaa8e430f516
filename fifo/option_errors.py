"""The error of a bad mode string or trick parameter, and the one range check the options use.

Kept apart from :mod:`fifo.options` so that the modules that define a trick's options
(:mod:`fifo.miga_options`) and the mode grammar that gathers them share it without importing
each other.
"""

from __future__ import annotations

from infra.errors import UserError


class ModeError(UserError, ValueError):
    """An invalid mode string or trick parameter. The message names the part, or the parameter
    by its Python name (in ``options``; a user's mistake: ``error: ...``, exit 2)."""


def check_option(ok: bool, message: str, *options: str) -> None:
    """Raise :class:`ModeError` with ``message``, naming ``options``, unless ``ok`` (NaN fails
    every comparison, so a NaN parameter is rejected too)."""
    if not ok:
        raise ModeError(message, options=options)
