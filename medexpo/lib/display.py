"""Text written by strangers (banners, hostnames, RDAP answers) as the admin shows it: escaped by
Django, and with every control, bidi or invisible character replaced by a visible form, so what
staff read is what the data holds."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

PRE_STYLE = (
    "white-space: pre-wrap; overflow-wrap: anywhere; max-height: 40em; overflow: auto; "
    "margin: 0; padding: 6px; background: var(--darkened-bg); color: var(--body-fg)"
)

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


def text_block(text: str, *, limit: int, total: int | None = None) -> SafeString:
    """Hostile text as an escaped <pre>, controls marked, cut at `limit` with a note of the full size."""
    total = len(text) if total is None else total
    shown = text[:limit]
    body = format_html_join(
        "",
        "{}",
        (
            (format_html('<span class="medexpo-ctl" style="color: var(--error-fg)">{}</span>', s) if ctl else s,)
            for s, ctl in visible_segments(shown)
        ),
    )
    note = ""
    if total > len(shown):
        note = format_html(
            '<p class="help medexpo-cut">Showing the first {} of {} characters.</p>',
            f"{len(shown):,}",
            f"{total:,}",
        )
    return format_html('<pre class="medexpo-text" style="{}">{}</pre>{}', PRE_STYLE, body, note)


def text_column(field: str, description: str | None = None) -> Callable[[admin.ModelAdmin, Any], str]:
    """A column or read-only field showing a model's text field with controls made visible
    (bidi overrides, zero-width characters): the field alone would show them as they are."""

    @admin.display(description=description or field, ordering=field)
    def column(self: admin.ModelAdmin, obj: Any) -> str:
        return visible_text(getattr(obj, field) or "")

    column.__name__ = f"{field}_text"
    return column
