"""Text written by strangers made visible: every control, bidi or invisible character replaced by
a readable escape, so that what staff read is what the data holds. Pure functions (no Django), so
models can use them in __str__, which the admin shows in titles, history and "Recent actions"."""

from __future__ import annotations

import re
from collections.abc import Iterator

# One character class (plus a lookahead for a lone CR), so matching stays linear in the input.
# C0 controls except TAB and LF, DEL and C1 controls, lone surrogates, and the invisible format
# characters that can reorder or hide text (bidi overrides, zero-width spaces, tag characters).
_INVISIBLE = re.compile(
    "\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u2064\u2066-\u206f\u2400\ud800-\udfff\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)


# Ingest stores NUL as U+2400 (PostgreSQL text cannot hold NUL); it is shown as the NUL it was.
_NAMED = {"\u2400": "\\x00", "\r": "\\r"}


def _show_char(char: str) -> str:
    """An escape in Python notation: readable in any font, unlike the U+2400 control pictures."""
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible_segments(text: str) -> Iterator[tuple[str, bool]]:
    """Split text into (segment, is_control) pairs, controls replaced by a visible form.

    CR LF stays a line break (banners are mostly CRLF protocols); the exact bytes are in the
    raw record. The ␀ that ingest stores for NUL is shown as \\x00 like the other controls.
    """
    start = 0
    for match in _INVISIBLE.finditer(text):
        if match.start() > start:
            yield text[start : match.start()], False
        yield _show_char(match.group()), True
        start = match.end()
    if start < len(text):
        yield text[start:], False


def visible_text(text: str) -> str:
    """The text with every control or invisible character replaced by a visible form."""
    return "".join(segment for segment, _ in visible_segments(text))


def one_line(text: str) -> str:
    """Text that a stranger wrote (error bodies, rejection details, file names) for one line of a
    terminal or log: visible_text(), and CR and LF (which it keeps, for banners) as \\r and \\n,
    so that a line break in it cannot fake a line of ours."""
    return visible_text(text).replace("\r", "\\r").replace("\n", "\\n")


def json_escape_invisible(json_text: str) -> str:
    """JSON text with every control, bidi or invisible character that JSON leaves as it is (DEL,
    C1 controls, U+2028, U+202E, ...) written as a \\u escape instead: every JSON reader reads the
    same value, and a terminal or a line reader sees only printable text."""
    return _INVISIBLE.sub(_json_escape, json_text)


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code > 0xFFFF:  # JSON escapes a character beyond the BMP as its UTF-16 surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def ascii_digits(text: str) -> bool:
    """Only ASCII digits: str.isdigit() is also true of "²" and "٣", which int() refuses or reads
    as another number."""
    return text.isascii() and text.isdigit()


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, the last one "…" when anything was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
