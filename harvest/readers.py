"""Stream Shodan files line by line with bounded memory, as events for the ingest driver.

Events are tuples:
  ("record", position, BannerRecord)       a valid banner
  ("reject", position, reason, detail)     a bad record, counted and skipped
  ("error", position, reason, detail)      a problem with the file itself (reported, not a record)
  ("checkpoint", Checkpoint)               a safe point to resume from
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from harvest.ingest import Checkpoint
from harvest.records import MAX_RECORD_BYTES, Reason, RecordError, record_from_line, records_from_host_line

GZIP_MAGIC = b"\x1f\x8b"
SKIP_CHUNK = 64 * 1024

ProgressFn = Callable[[int], None]


class _TooLarge:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime": int(stat.st_mtime)}


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """The decoded stream and the underlying file (whose position measures progress)."""
    raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        decoded: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        return decoded, raw
    raw.seek(0)
    return raw, raw


def _lines(stream: IO[bytes], offset: int) -> Iterator[tuple[bytes | _TooLarge, int]]:
    """(line, offset after it); a line over the limit is skipped without being held in memory."""
    while True:
        line = stream.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        offset += len(line)
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while True:
                chunk = stream.readline(SKIP_CHUNK)
                offset += len(chunk)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield _TooLarge(size), offset
        else:
            yield line, offset


def file_events(path: Path, checkpoint: dict, *, hosts: bool, progress: ProgressFn | None = None) -> Iterator:
    line_no = int(checkpoint.get("line", 0))
    offset = int(checkpoint.get("offset", 0))
    stream, raw = _open(path)
    try:
        if offset:
            stream.seek(offset)
        parse = _host_line_events if hosts else _banner_line_events
        try:
            for line, end in _lines(stream, offset):
                line_no += 1
                if isinstance(line, _TooLarge):
                    yield (
                        "reject",
                        f"line {line_no}",
                        Reason.TOO_LARGE,
                        f"record of {line.size} bytes, limit {MAX_RECORD_BYTES}",
                    )
                elif line.strip():
                    yield from parse(line, line_no)
                yield ("checkpoint", Checkpoint({"line": line_no, "offset": end}))
                if progress is not None and line_no % 256 == 0:
                    progress(raw.tell())
        except EOFError as exc:
            yield ("error", f"line {line_no + 1}", Reason.TRUNCATED_FILE, f"{exc}; records before it were kept")
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            yield ("error", f"line {line_no + 1}", Reason.CORRUPT_FILE, f"{exc}; records before it were kept")
        if progress is not None:
            progress(raw.tell())
    finally:
        stream.close()
        raw.close()


def _banner_line_events(line: bytes, line_no: int) -> Iterator:
    try:
        yield ("record", f"line {line_no}", record_from_line(line))
    except RecordError as exc:
        yield ("reject", f"line {line_no}", exc.reason, exc.detail)


def _host_line_events(line: bytes, line_no: int) -> Iterator:
    try:
        good, bad = records_from_host_line(line)
    except RecordError as exc:
        yield ("reject", f"line {line_no}", exc.reason, exc.detail)
        return
    for record in good:
        yield ("record", f"line {line_no}", record)
    for index, error in bad:
        yield ("reject", f"line {line_no} data[{index}]", error.reason, error.detail)


def file_size(path: Path | str) -> int:
    return os.path.getsize(path)
