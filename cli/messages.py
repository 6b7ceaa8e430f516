"""A user error's message in the command line's words: the options that :mod:`fifo` names by
their Python names (``zigzag_length``, ``guidance``) spelled as the flags that set them
(``--zigzag_length``, ``--unconditional_guidance_scale``)."""

from __future__ import annotations

import re
from functools import cache

# The Python names whose flag's destination is spelled otherwise (every other option is the
# flag's destination itself).
FLAG_DESTINATIONS = {"guidance": "unconditional_guidance_scale", "lookahead": "lookahead_denoising"}


@cache
def option_flags() -> dict[str, str]:
    """Each flag's destination → its long spelling (``--<dest>``), read from the parser."""
    from cli.parser import build_parser

    flags: dict[str, str] = {}
    for action in build_parser()._actions:
        long = [s for s in action.option_strings if s.startswith("--")]
        if long:
            flags[action.dest] = f"--{action.dest}" if f"--{action.dest}" in long else long[0]
    return flags


def flag_of(option: str) -> str:
    """The flag that sets the option named ``option`` (its Python name); ``option`` itself if
    no flag sets it."""
    return option_flags().get(FLAG_DESTINATIONS.get(option, option), option)


def cli_message(err: Exception) -> str:
    """``err``'s message with each option it names (`` `name` ``) written as its flag: those of
    ``err.options``, and any other option in backquotes that a flag sets (a message that quotes
    another's, such as a seed model's check naming ``seed_config`` in its source)."""
    text = str(err)
    options = tuple(getattr(err, "options", ()))
    for option in set(options) | set(_QUOTED.findall(text)):
        if option in options or flag_of(option) != option:
            text = text.replace(f"`{option}`", flag_of(option))
    return text


_QUOTED = re.compile(r"`([a-z_][a-z0-9_]*)`")
