"""A progress bar on a terminal, silence elsewhere (pipes, --json, cron)."""

from __future__ import annotations

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
        self._bar = tqdm(
            total=total,
            unit=unit,
            desc=desc,
            disable=not enabled,
            file=stream,
            unit_scale=unit_scale,
            dynamic_ncols=True,
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
