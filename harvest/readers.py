"""Stream Shodan files line by line with bounded memory, as events for the ingest driver.

Events are tuples:
  ("record", line, BannerRecord)           a valid banner, by line number (a banner of a host
                                           lookup: "line N data[i]", its position in reports)
  ("reject", position, reason, detail)     a bad record, counted and skipped; damage that ends the
                                           file's reading (a truncated or corrupt gzip) too: it
                                           spoils the record being read, so that record is read
                                           and rejected (seen = accepted + rejected)
  ("line", line, offset)                   a safe point to resume from: the line number and the
                                           byte offset (in the decoded stream) after it
  ("checkpoint", Checkpoint)               a safe point inside a host lookup too long for memory:
                                           its line, and how many of its banners were read; or,
                                           after an error, the end of what can be read ("end")
Per-line events are plain tuples: at 100,000 lines a second every object counts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator
from io import BufferedIOBase
from pathlib import Path
from typing import IO

from harvest.ingest import Checkpoint
from harvest.records import (
    BANNER_NOT_HOST,
    HOST_FIELDS,
    MAX_HOST_LINE_BYTES,
    MAX_RECORD_BYTES,
    UTF8_BOM,
    Reason,
    RecordError,
    host_from_line,
    parse_json,
    record_from_host_item,
    record_from_line,
    record_size,
)

GZIP_MAGIC = b"\x1f\x8b"
_LONE_CR = re.compile(rb"\r(?!\n)")
# What JSON allows between values. bytes.strip() without it also takes vertical tabs and form
# feeds away, and a line of them would vanish uncounted instead of being rejected as not JSON.
JSON_BLANKS = b" \t\r\n"
READ_CHUNK = 256 * 1024

ProgressFn = Callable[[int], None]


class _TooLarge:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size  # without the line ending


class _Spooled:
    """A line too long to hold in memory (a large host lookup), copied to a temporary file."""

    __slots__ = ("file",)

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file


class _LongLine:
    """A line over MAX_RECORD_BYTES as it is read: copied to a temporary file while within `limit`
    (host lookups), only counted otherwise."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.last = b""
        self.file: IO[bytes] | None = tempfile.TemporaryFile() if limit > MAX_RECORD_BYTES else None  # noqa: SIM115

    def add(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        self.last = data[-1:]
        if self.file is None:
            return
        if self.size > self.limit + 1:  # + 1: room for the "\r" of a "\r\n" ending
            self.file.close()
            self.file = None
        else:
            self.file.write(data)

    def finish(self) -> _Spooled | _TooLarge:
        size = self.size - (self.last == b"\r")
        if self.file is not None and size <= self.limit:
            self.file.seek(0)
            return _Spooled(self.file)
        if self.file is not None:
            self.file.close()
        return _TooLarge(size)


# A file's identity hashes this many pieces of it, spread from its first byte to its last.
IDENTITY_PIECES = 16
IDENTITY_PIECE_BYTES = 64 * 1024


def file_identity(path: Path) -> dict:
    """What a resumed run compares to tell that its file was not changed in between: a rewrite
    of the same size changes the modification time (to the nanosecond; seconds would miss a
    rewrite within the same second), and another file given the same size and time (cp -p,
    rsync -t, an unpacked archive) differs in the sampled content. The sample is 1 MiB at most,
    whatever the file's size; a gzip's last piece holds its CRC of the whole content."""
    stat = path.stat()
    return {
        "size": stat.st_size,
        "mtime": int(stat.st_mtime),
        "mtime_ns": stat.st_mtime_ns,
        "sample": _sample_hash(path, stat.st_size),
    }


def _sample_hash(path: Path, size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        if size <= IDENTITY_PIECES * IDENTITY_PIECE_BYTES:
            digest.update(file.read(size))
        else:
            last = size - IDENTITY_PIECE_BYTES
            for piece in range(IDENTITY_PIECES):
                file.seek(last * piece // (IDENTITY_PIECES - 1))
                digest.update(file.read(IDENTITY_PIECE_BYTES))
    return digest.hexdigest()


def _open(path: Path) -> tuple[BufferedIOBase, BufferedIOBase]:
    """The decoded stream and the underlying file (whose position measures progress)."""
    raw: BufferedIOBase = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if raw.read(2) == GZIP_MAGIC:
        raw.seek(0)
        decoded: BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb")
        return decoded, raw
    raw.seek(0)
    return raw, raw


_Line = bytes | _TooLarge | _Spooled


class _Damaged(Exception):
    """The stream could not be read further: `cause`, and the unfinished last line read before
    it (`rest`, ending at `end`), which is a whole record when only its newline was missing."""

    def __init__(self, cause: BaseException, rest: bytes, end: int) -> None:
        super().__init__(str(cause))
        self.cause, self.rest, self.end = cause, rest, end


def _lines(stream: BufferedIOBase, offset: int, limit: int) -> Iterator[tuple[_Line, int]]:
    """(line without its newline, offset after it). A line over `limit` (not counting its ending)
    is skipped; one over MAX_RECORD_BYTES is never held in memory whole: within `limit` it is
    copied to a temporary file. Reads with read1(): a truncated gzip stream then still yields every
    line before the damage, and splitting blocks is far cheaper than readline() per line."""
    rest = b""
    carry = b""  # a "\r" that ended the last block: the next byte tells whether it ends a line
    long: _LongLine | None = None  # inside a line too long for memory
    try:
        while True:
            try:
                block = stream.read1(READ_CHUNK)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # not other OSErrors: see file_events
                cut = b"" if long is not None else rest + carry
                raise _Damaged(exc, cut, offset + len(cut)) from exc
            if not block:
                if not carry:
                    break
                block, carry = b"\n", b""  # the file's last byte, a lone "\r": a line's ending
            elif carry or b"\r" in block:
                block, carry = _lone_crs_as_newlines(carry + block)
            if long is not None:
                end = block.find(b"\n")
                if end < 0:
                    long.add(block)
                    continue
                long.add(block[:end])
                offset += long.size + 1
                done, long = long.finish(), None
                yield done, offset
                block = block[end + 1 :]
            lines = (rest + block if rest else block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                offset += len(line) + 1
                if len(line) > limit and record_size(line) > limit:
                    yield _TooLarge(record_size(line)), offset
                else:
                    yield line, offset
            if len(rest) > MAX_RECORD_BYTES + 1:  # + 1: room for the "\r" of a "\r\n" ending
                long = _LongLine(limit)
                long.add(rest)
                rest = b""
        if long is not None:
            size = long.size
            done, long = long.finish(), None
            yield done, offset + size
        elif rest:  # a last line without a newline, held to the same limit
            yield (rest if record_size(rest) <= limit else _TooLarge(record_size(rest))), offset + len(rest)
    finally:
        if long is not None and long.file is not None:  # a damaged stream ended it mid-line
            long.file.close()


def _lone_crs_as_newlines(block: bytes) -> tuple[bytes, bytes]:
    """Old Mac files end their lines with "\r" alone. No valid JSON line holds a raw CR but as a
    blank between values (inside a string it is escaped), so a lone one ends a line too: it
    becomes "\n", byte for byte, and offsets stay those of the file. A "\r" at the block's end
    is kept back (the carry) until the next byte shows whether a "\n" follows it."""
    carry = b""
    if block.endswith(b"\r"):
        block, carry = block[:-1], b"\r"
    return _LONE_CR.sub(b"\n", block), carry


def _end_of_file(line_no: int, offset: int) -> tuple:
    """The damage ends what can be read: a run resumed from here reads (and reports) it no more."""
    return ("checkpoint", Checkpoint({"line": line_no, "offset": offset, "end": True}))


def file_events(path: Path, checkpoint: dict, *, hosts: bool, progress: ProgressFn | None = None) -> Iterator:
    if checkpoint.get("end"):
        return
    line_no = int(checkpoint.get("line", 0))
    offset = int(checkpoint.get("offset", 0))
    stream, raw = _open(path)
    try:
        if offset:
            stream.seek(offset)
        limit, what = (MAX_HOST_LINE_BYTES, "host lookup") if hosts else (MAX_RECORD_BYTES, "record")
        skip = int(checkpoint.get("item", 0))  # banners of a long host lookup stored before a stop
        try:
            for line, end in _lines(stream, offset, limit):
                line_no += 1
                if isinstance(line, _TooLarge):
                    yield ("reject", f"line {line_no}", Reason.TOO_LARGE, f"{what} of {line.size} bytes, limit {limit}")
                elif hosts:
                    yield from _host_line_events(line, line_no, offset, skip)
                elif isinstance(line, bytes) and line.strip(JSON_BLANKS):  # a file of banners spools no line
                    yield from _banner_line_events(line, line_no)
                skip = 0
                offset = end
                yield ("line", line_no, end)
                if progress is not None and line_no % 256 == 0:
                    progress(raw.tell())
        except _Damaged as damage:
            if _is_whole(damage.rest, limit):
                line_no += 1
                if hosts:
                    yield from _host_line_events(damage.rest, line_no, offset, skip)
                else:
                    yield from _banner_line_events(damage.rest, line_no)
                offset = damage.end
                yield ("line", line_no, offset)
            reason = Reason.TRUNCATED_FILE if isinstance(damage.cause, EOFError) else Reason.CORRUPT_FILE
            yield ("reject", f"line {line_no + 1}", reason, f"{damage.cause}; records before it were kept")
            yield _end_of_file(line_no, offset)
        # Any other OSError (a full disk under the temporary file of a long line, a read error of
        # the disk or a network mount) is no damage of the file: it fails the run, which resumes
        # from its last checkpoint once the cause is fixed, instead of ending its reading for good.
        if progress is not None:
            progress(raw.tell())
    finally:
        stream.close()
        raw.close()


def _is_whole(rest: bytes, limit: int) -> bool:
    """Whether an unfinished last line cut off by damage is a whole JSON value: then only its
    newline was missing. One cut inside a record is not read (the damage is reported at it)."""
    if not rest.strip(JSON_BLANKS) or record_size(rest) > limit:
        return False
    try:
        parse_json(rest)
    except (RecordError, ValueError):
        return False
    return True


def _banner_line_events(line: bytes, line_no: int) -> Iterator:
    try:
        yield ("record", line_no, record_from_line(line))
    except RecordError as exc:
        yield ("reject", f"line {line_no}", exc.reason, exc.detail)


def _host_line_events(line: bytes | _Spooled, line_no: int, start: int, skip: int) -> Iterator:
    """The banners of one host lookup. `start`: the offset of the line; `skip`: how many of its
    banners a run that stopped inside it has stored already."""
    if isinstance(line, bytes) and record_size(line) <= MAX_RECORD_BYTES:
        if line.strip(JSON_BLANKS):
            yield from _short_host_events(line, line_no, skip)
        return
    file = io.BytesIO(line) if isinstance(line, bytes) else line.file
    try:
        yield from _long_host_events(file, line_no, start, skip)
    finally:
        file.close()


def _short_host_events(line: bytes, line_no: int, skip: int) -> Iterator:
    try:
        inherited, banners = host_from_line(line)
    except RecordError as exc:
        yield ("reject", f"line {line_no}", exc.reason, exc.detail)
        return
    for index in range(skip, len(banners)):
        try:
            yield ("record", f"line {line_no} data[{index}]", record_from_host_item(banners[index], index, inherited))
        except RecordError as exc:
            yield ("reject", f"line {line_no} data[{index}]", exc.reason, exc.detail)


def _long_host_events(file: IO[bytes], line_no: int, start: int, skip: int) -> Iterator:
    """A host lookup over MAX_RECORD_BYTES, in two passes over its copy: the first checks its
    structure and reads the host fields (Shodan writes some, ip_str among them, after data[]),
    the second parses one banner at a time. After each banner a checkpoint: a run stopped here
    resumes with the next one, and a batch need not hold the whole host."""
    at = len(UTF8_BOM) if file.read(len(UTF8_BOM)) == UTF8_BOM else 0
    try:
        inherited, data_at = _host_outline(_Scanner(file, at))
    except RecordError as exc:
        yield ("reject", f"line {line_no}", exc.reason, exc.detail)
        return
    if data_at is None:  # a line of blanks
        return
    scanner = _Scanner(file, data_at)
    for index, (begin, end) in enumerate(_array_items(scanner)):
        if index < skip:
            continue
        try:
            if end - begin > MAX_RECORD_BYTES:
                raise RecordError(Reason.TOO_LARGE, f"banner of {end - begin} bytes, limit {MAX_RECORD_BYTES}")
            item = parse_json(scanner.read(begin, end))
            yield ("record", f"line {line_no} data[{index}]", record_from_host_item(item, index, inherited))
        except RecordError as exc:
            yield ("reject", f"line {line_no} data[{index}]", exc.reason, exc.detail)
        yield ("checkpoint", Checkpoint({"line": line_no - 1, "offset": start, "item": index + 1}))


def _host_outline(scanner: _Scanner) -> tuple[dict, int | None]:
    """The fields a host's banners inherit and where its data[] begins (None for a blank line),
    or RecordError for the whole line. Host fields over MAX_RECORD_BYTES are left out."""
    first = scanner.peek()
    if first is None:
        return {}, None
    if first != _LBRACE:
        scanner.skip_value()
        if first in b'["' and scanner.peek() is None:
            raise RecordError(Reason.NOT_OBJECT)
        raise RecordError(Reason.NOT_JSON, "a line that is not a JSON object")
    scanner.expect(_LBRACE)
    fields: dict = {}
    data_at: int | None = None
    text_data = has_port = False  # a banner given for a host lookup
    if not scanner.take(_RBRACE):
        while True:
            key = _key(scanner)
            scanner.expect(_COLON)
            has_port = has_port or key == "port"
            if key == "data" and scanner.peek() == _LBRACKET:
                data_at, text_data = scanner.offset, False
                for _ in _array_items(scanner):  # checks what separates the banners, parses none
                    pass
            else:
                if key == "data":
                    text_data = scanner.peek() == _QUOTE
                begin, end = scanner.skip_value()
                if key == "data":
                    data_at = None  # as for a short line, the last "data" counts
                elif end - begin <= MAX_RECORD_BYTES:
                    # Every other field is parsed too, as a whole-line parse would: invalid JSON,
                    # UTF-8 or a NUL anywhere outside data[] rejects the line.
                    value = parse_json(scanner.read(begin, end))
                    if key in HOST_FIELDS:
                        fields[key] = value
            if scanner.take(_RBRACE):
                break
            scanner.expect(_COMMA)
    if scanner.peek() is not None:
        raise scanner.error("the end of the line")
    if data_at is None:
        raise RecordError(Reason.NO_BANNERS, *([BANNER_NOT_HOST] if text_data and has_port else []))
    # In host_from_line's order: a banner's stored record holds what it inherits, and must not
    # depend on whether its line was read whole or banner by banner.
    return {k: fields[k] for k in HOST_FIELDS if k in fields}, data_at


def _key(scanner: _Scanner) -> object:
    if scanner.peek() != _QUOTE:
        raise scanner.error("a key")
    begin, end = scanner.skip_value()
    # Parsed like a value, whatever its length: a whole-line parse checks every key too.
    return parse_json(scanner.read(begin, end)) if end - begin <= MAX_RECORD_BYTES else None


def _array_items(scanner: _Scanner) -> Iterator[tuple[int, int]]:
    """Where each value of the array at the scanner begins and ends."""
    scanner.expect(_LBRACKET)
    if scanner.take(_RBRACKET):
        return
    while True:
        yield scanner.skip_value()
        if scanner.take(_RBRACKET):
            return
        scanner.expect(_COMMA)


_QUOTE, _COMMA, _COLON, _LBRACKET, _RBRACKET, _LBRACE, _RBRACE = b'",:[]{}'
_CLOSES = {_RBRACKET: _LBRACKET, _RBRACE: _LBRACE}
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
# Up to the next bracket, passing over whole strings; group 1 is that bracket, or the quote of a
# string that runs past the block, or empty at the block's end. One match per bracket, not per
# string: a banner has about ten strings for each bracket.
_TO_BRACKET = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+([\[\]{}"]?)', re.DOTALL)
_IN_STRING = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)  # up to the closing quote
_SCALAR = re.compile(rb'[^\s,:\[\]{}"]*+')


class _Scanner:
    """Finds where JSON values begin and end in a seekable file of one line, holding a block of it
    at a time, so that a value of any size is passed over in bounded memory. It checks only what
    delimits values (strings, brackets, commas, colons): each value used is parsed on its own."""

    def __init__(self, file: IO[bytes], offset: int = 0) -> None:
        self.file = file
        self.buf = b""
        self.base = offset  # the file offset of buf[0]
        self.pos = 0  # the next byte to scan, in buf

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def read(self, begin: int, end: int) -> bytes:
        self.file.seek(begin)
        return self.file.read(end - begin)

    def error(self, expected: str) -> RecordError:
        return RecordError(Reason.NOT_JSON, f"expected {expected} at byte {self.offset} of the line")

    def peek(self) -> int | None:
        """The next byte that is not a blank, or None at the end of the line."""
        while True:
            found = _NOT_SPACE.search(self.buf, self.pos)
            if found is not None:
                self.pos = found.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self._more():
                return None

    def take(self, char: int) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def expect(self, char: int) -> None:
        if not self.take(char):
            raise self.error(repr(chr(char)))

    def skip_value(self) -> tuple[int, int]:
        """Pass over the next value; its (begin, end) offsets in the file."""
        first = self.peek()
        begin = self.offset
        if first == _QUOTE:
            self.pos += 1
            self._skip_string()
        elif first == _LBRACKET or first == _LBRACE:
            self._skip_nested()
        else:
            self._skip_scalar()
            if self.offset == begin:
                raise self.error("a value")
        return begin, self.offset

    def _more(self) -> bool:
        """Drop what has been scanned and read the next block."""
        self.file.seek(self.base + len(self.buf))
        block = self.file.read(READ_CHUNK)
        if not block:
            return False
        self.buf = self.buf[self.pos :] + block
        self.base += self.pos
        self.pos = 0
        return True

    def _skip_string(self) -> None:
        while True:  # from inside the string: the match stops at its closing quote, or at the block's end
            found = _IN_STRING.match(self.buf, self.pos)
            assert found is not None  # the pattern matches ""
            end = found.end()
            if end < len(self.buf) and self.buf[end] == _QUOTE:
                self.pos = end + 1
                return
            self.pos = end  # a backslash at the very end is kept for the next block
            if not self._more():
                raise self.error("the end of a string")

    def _skip_nested(self) -> None:
        stack = bytearray()
        while True:
            found = _TO_BRACKET.match(self.buf, self.pos)
            assert found is not None  # the pattern matches ""
            self.pos = found.end()
            char = found.group(1)
            if not char:
                if not self._more():
                    raise self.error("a closing bracket")
            elif char == b'"':
                self._skip_string()
            elif char in b"[{":
                stack.append(char[0])
            elif stack.pop() != _CLOSES[char[0]]:
                raise self.error("a matching bracket")
            elif not stack:
                return

    def _skip_scalar(self) -> None:
        while True:
            found = _SCALAR.match(self.buf, self.pos)
            assert found is not None  # the pattern matches ""
            self.pos = found.end()
            if self.pos < len(self.buf) or not self._more():
                return


def file_size(path: Path | str) -> int:
    return os.path.getsize(path)
