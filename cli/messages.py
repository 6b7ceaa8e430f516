"""A user error's message in the command line's words: the options that :mod:`fifo` names by
their Python names in backquotes (`` `zigzag_length` ``, `` `guidance` ``) spelled as the flags
that set them (``--zigzag_length``, ``--unconditional_guidance_scale``)."""

from __future__ import annotations

from functools import cache

from cli.parser import build_parser, parser_flags, quoted_as_flags


@cache
def option_flags() -> dict[str, str]:
    """:func:`cli.parser.parser_flags` of the command line's parser."""
    return parser_flags(build_parser())


def flag_of(option: str) -> str:
    """The flag that sets the option named ``option`` (its Python name); ``option`` itself if
    no flag sets it."""
    return option_flags().get(option, option)


def cli_text(text: str) -> str:
    """``text`` with every option quoted in it that a flag sets written as the flag."""
    return quoted_as_flags(text, option_flags())


def cli_message(err: Exception) -> str:
    """``err``'s message with each option it quotes written as its flag (an option of
    ``err.options`` that no flag sets loses its backquotes)."""
    text = cli_text(str(err))
    for option in getattr(err, "options", ()):
        text = text.replace(f"`{option}`", option)
    return text
