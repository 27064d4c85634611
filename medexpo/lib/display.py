"""Text written by strangers (banners, hostnames, RDAP answers) as the admin shows it: escaped by
Django, and with every control, bidi or invisible character replaced by a visible form, so what
staff read is what the data holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from medexpo.lib.text import visible_segments, visible_text

__all__ = ["PRE_STYLE", "text_block", "text_column", "visible_text"]

PRE_STYLE = (
    "white-space: pre-wrap; overflow-wrap: anywhere; max-height: 40em; overflow: auto; "
    "margin: 0; padding: 6px; background: var(--darkened-bg); color: var(--body-fg)"
)


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
