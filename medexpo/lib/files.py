"""Files that appear whole or not at all."""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

_PART = ".part"
# What tempfile.mkstemp puts between prefix and suffix: 8 of these characters.
_RANDOM_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@contextmanager
def replaced_whole(path: Path, *, text: bool = False) -> Iterator[IO]:
    """A file written beside `path` that replaces it only when the block ends without an error,
    and is removed otherwise: a reader never sees half a file, and a failed run leaves the
    previous one. Readable by its owner alone (as mkstemp makes it): what we write lists exposed
    systems.

    A process killed while it writes cannot remove its file (`.NAME.xxxxxxxx.part`): the next one
    writing `path` does. Each such file is locked while its writer lives, so one that is still
    being written is left alone."""
    _remove_dead_writers_files(path)
    fd, temporary = _locked_temporary(path)
    lock = os.dup(fd)  # the lock lasts until the rename: closing the file alone would give it up
    try:
        with os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        os.close(lock)


def _locked_temporary(path: Path) -> tuple[int, str]:
    while True:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PART)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd, temporary
        # Another writer of `path` found it unlocked, in the instant before the lock, and removed it.
        os.close(fd)


def _remove_dead_writers_files(path: Path) -> None:
    """Remove the temporary files of earlier writers of `path` that died: this process's own
    names (tempfile's 8 characters between `.NAME.` and `.part`), its user's regular files, and
    no one's lock on them. Anything else in the folder stays."""
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return  # writing the file itself says what is wrong with the folder
    for entry in entries:
        middle = entry.name[len(prefix) : -len(_PART)]
        if not (entry.name.startswith(prefix) and entry.name.endswith(_PART)):
            continue
        if len(middle) != 8 or not set(middle) <= _RANDOM_CHARACTERS:
            continue
        with suppress(OSError):  # gone already, or not ours to remove: the export goes on
            _remove_if_dead(entry.path)


def _remove_if_dead(name: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode) or held.st_uid != os.getuid() or not os.path.samestat(held, os.lstat(name)):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # its writer is alive
        os.unlink(name)
    finally:
        os.close(fd)
