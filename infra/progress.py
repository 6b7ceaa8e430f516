"""Progress for people: a tqdm bar on a terminal; elsewhere (a log file, a pipe, a CI job) a plain
log line every few seconds, so that captured logs hold no cursor-moving escape sequences.

:func:`progress` takes the tqdm arguments the project uses and returns an object with tqdm's
``update``, ``set_postfix_str``, ``close`` and iteration, whichever kind it is.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# Seconds between two plain progress lines.
PLAIN_EVERY_SECONDS = 5.0


class PlainProgress:
    """tqdm's interface, written as a log line at most every ``every`` seconds (default
    :data:`PLAIN_EVERY_SECONDS`) and at the end."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: float | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        every: float | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
        self.every, self.postfix = PLAIN_EVERY_SECONDS if every is None else every, ""
        self._start = self._last = time.monotonic()
        self._start_n, self._closed, self._due = initial, False, False
        self._logged: tuple[int, str] | None = None  # (count, postfix) of the last line

    def line(self) -> str:
        """The progress as one line, e.g. ``FIFO: 12/40 it (30%), 2.10 it/s, frames 3/10``."""
        known = self.total is not None and math.isfinite(self.total) and self.total > 0
        done = (
            f"{self.n}/{int(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"
            if known
            else (f"{self.n} {self.unit}")
        )
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {done}" if self.desc else done, f"{rate:.2f} {self.unit}/s"]
        return ", ".join([*parts, self.postfix] if self.postfix else parts)

    def _log(self) -> None:
        self._last, self._logged, self._due = time.monotonic(), (self.n, self.postfix), False
        logger.info("%s", self.line())

    def update(self, n: int = 1) -> None:
        if self._due:  # no postfix came after the last due update: log it as it was
            self._log()
        self.n += n
        # Due now; logged when the caller sets the postfix that goes with this step (or at the next
        # update, or at the end), so that a line never pairs a count with the step before's postfix.
        self._due = time.monotonic() - self._last >= self.every

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text
        if self._due:
            self._log()

    def close(self) -> None:
        if not self._closed and self.n != self._start_n and self._logged != (self.n, self.postfix):
            self._log()
        self._closed = True

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable: Iterable | None = None, *, disable: bool = False, stream: TextIO | None = None, **kwargs: Any
) -> tqdm | PlainProgress:
    """A tqdm bar when ``stream`` (default: stderr) is a terminal, else :class:`PlainProgress`;
    ``disable`` hides either. ``kwargs``: tqdm's ``total``, ``initial``, ``desc``, ``unit``."""
    stream = sys.stderr if stream is None else stream
    if disable or _is_terminal(stream):
        return tqdm(iterable, disable=disable, file=stream, **kwargs)
    return PlainProgress(iterable, **kwargs)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False
