"""Stream Shodan files line by line with bounded memory, as events for the ingest driver.

Events are tuples:
  ("record", line, BannerRecord)           a valid banner, by line number
  ("reject", position, reason, detail)     a bad record, counted and skipped
  ("error", position, reason, detail)      a problem with the file itself (reported, not a record)
  ("line", line, offset)                   a safe point to resume from: the line number and the
                                           byte offset (in the decoded stream) after it
Per-line events are plain tuples: at 100,000 lines a second every object counts.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from io import BufferedIOBase
from pathlib import Path

from harvest.records import MAX_RECORD_BYTES, Reason, RecordError, record_from_line, records_from_host_line

GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 256 * 1024

ProgressFn = Callable[[int], None]


class _TooLarge:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime": int(stat.st_mtime)}


def _open(path: Path) -> tuple[BufferedIOBase, BufferedIOBase]:
    """The decoded stream and the underlying file (whose position measures progress)."""
    raw: BufferedIOBase = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        decoded: BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb")
        return decoded, raw
    raw.seek(0)
    return raw, raw


def _lines(stream: BufferedIOBase, offset: int) -> Iterator[tuple[bytes | _TooLarge, int]]:
    """(line without its newline, offset after it); a line over the limit is skipped without being
    held in memory. Reads with read1(): a truncated gzip stream then still yields every line
    before the damage, and splitting blocks is far cheaper than readline() per line."""
    rest = b""
    skipped = 0  # > 0 while inside an over-long line: its bytes so far
    while True:
        block = stream.read1(READ_CHUNK)
        if not block:
            break
        if skipped:
            end = block.find(b"\n")
            if end < 0:
                skipped += len(block)
                continue
            skipped += end + 1
            offset += skipped
            yield _TooLarge(skipped), offset
            skipped = 0
            block = block[end + 1 :]
        lines = (rest + block if rest else block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            offset += len(line) + 1
            if len(line) >= MAX_RECORD_BYTES:
                yield _TooLarge(len(line) + 1), offset
            else:
                yield line, offset
        if len(rest) > MAX_RECORD_BYTES:
            skipped, rest = len(rest), b""
    if skipped:
        yield _TooLarge(skipped), offset + skipped
    elif rest:  # a last line without a newline; the loop above keeps it within the limit
        yield rest, offset + len(rest)


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
                yield ("line", line_no, end)
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
        yield ("record", line_no, record_from_line(line))
    except RecordError as exc:
        yield ("reject", f"line {line_no}", exc.reason, exc.detail)


def _host_line_events(line: bytes, line_no: int) -> Iterator:
    try:
        good, bad = records_from_host_line(line)
    except RecordError as exc:
        yield ("reject", f"line {line_no}", exc.reason, exc.detail)
        return
    for record in good:
        yield ("record", line_no, record)
    for index, error in bad:
        yield ("reject", f"line {line_no} data[{index}]", error.reason, error.detail)


def file_size(path: Path | str) -> int:
    return os.path.getsize(path)
