"""A progress bar on a terminal, silence elsewhere (pipes, --json, cron)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(
        self,
        *,
        total: int | None,
        unit: str,
        desc: str,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        unit_scale: bool = False,
    ) -> None:
        stream = stream or sys.stderr
        if enabled is None:
            enabled = stream.isatty()
        # A terminal that reports no size (a pseudo-terminal nobody sized) gets nothing from tqdm:
        # an empty bar, or none at all beyond its 0 rows. Draw 80 columns on the first row there.
        sized = _terminal_columns(stream) > 0
        self._bar = tqdm(
            total=total,
            unit=unit,
            desc=desc,
            disable=not enabled,
            file=stream,
            unit_scale=unit_scale,
            dynamic_ncols=sized,
            ncols=None if sized else 80,
            nrows=None if sized else 24,
            leave=False,
        )
        self._position = 0
        self._stream = stream

    def moved_to(self, position: int) -> None:
        if position > self._position:
            self._bar.update(position - self._position)
            self._position = position

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)
        self._position += n

    def note(self, message: str) -> None:
        """A line for the user above the bar (which stays intact), or on the stream when no bar
        is shown: a note is worth seeing even under --json or in a pipe."""
        if self._bar.disable:
            print(message, file=self._stream, flush=True)
        else:
            self._bar.write(message, file=self._stream)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _terminal_columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to; -1 when it is no terminal."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return -1
