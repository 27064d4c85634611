"""Files that appear whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def replaced_whole(path: Path, *, text: bool = False) -> Iterator[IO]:
    """A file written beside `path` that replaces it only when the block ends without an error,
    and is removed otherwise: a reader never sees half a file, and a failed run leaves the
    previous one. Readable by its owner alone (as mkstemp makes it): what we write lists exposed
    systems."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
