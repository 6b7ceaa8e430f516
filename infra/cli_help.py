"""Help text for the command lines: each option's default, said only when it tells something."""

from __future__ import annotations

import argparse

__all__ = ["DefaultsHelpFormatter", "RawDescriptionDefaultsHelpFormatter"]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help, unless the help already speaks of its
    default, or X is unset (None), a switch (bool) or suppressed: those are said in words.
    A list default is written as words ("all" when it is every choice), not a Python list."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is argparse.SUPPRESS or isinstance(default, bool):
            return text
        if isinstance(default, (list, tuple)):
            every = action.choices is not None and list(default) == list(action.choices)
            words = "all" if every else " ".join(map(str, default))
            # A literal '%' in the words would be read as a format directive by argparse.
            return f"{text} (default: {words.replace('%', '%%')})"
        return f"{text} (default: %(default)s)"


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """As DefaultsHelpFormatter, with the description and epilog printed as written."""
