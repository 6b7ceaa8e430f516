"""The error of a bad ``--mode`` or trick parameter, and the one range check the options use.

Kept apart from :mod:`fifo.options` so that the modules that define a trick's options
(:mod:`fifo.miga_options`) and the mode grammar that gathers them share it without importing
each other.
"""

from __future__ import annotations

from infra.errors import UserError


class ModeError(UserError, ValueError):
    """An invalid ``--mode`` string or trick parameter. The message names the part or the flag
    (a user's mistake: ``error: ...``, exit 2)."""


def check_option(ok: bool, message: str) -> None:
    """Raise :class:`ModeError` with ``message`` unless ``ok`` (NaN fails every comparison, so a
    NaN parameter is rejected too)."""
    if not ok:
        raise ModeError(message)
