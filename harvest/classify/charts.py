"""Charts of the exposure report (matplotlib, Agg backend): PNG and SVG bytes from report data.

Labels come from banners and registries written by strangers, so mathtext is off: a `$` in a
module or organisation name is text, not a formula to parse.
"""

from __future__ import annotations

import io
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medexpo.lib.text import shorten, visible_text  # noqa: E402

CLASS_COLOURS = {"medical": "#c0392b", "non_medical": "#2e86c1", "unknown": "#95a5a6", "unclassified": "#d5d8dc"}
MAX_LABEL = 40
STYLE: dict[str, Any] = {"text.parse_math": False, "svg.fonttype": "none", "svg.hashsalt": "medexpo", "font.size": 9}


# What XML 1.0 forbids and visible_text leaves alone (the noncharacters U+FFFE and U+FFFF):
# the SVG must stay a well-formed document whatever a module name holds.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _label(text: object) -> str:
    text = str(text) if text not in (None, "") else "(none)"
    text = _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", visible_text(text))
    return shorten(text, MAX_LABEL)


def _classes(report: dict) -> Figure:
    counts = report["classes"]
    names = [n for n in counts if counts[n]] or list(counts)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(
        [_label(n) for n in names], [counts[n] for n in names], color=[CLASS_COLOURS.get(n, "#888") for n in names]
    )
    ax.bar_label(bars, labels=[f"{counts[n]} ({report['class_share'].get(n, 0):.2%})" for n in names])
    ax.margins(y=0.15)  # room for the labels above the bars
    ax.set_title("Services per class (study Figure 8)")
    ax.set_ylabel("services")
    return fig


def _top_services(report: dict) -> Figure:
    rows = list(reversed(report["top_services"]))
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(rows), 3) + 1))
    # By position, not by label: labels cut alike would share one category and one bar hide another.
    ax.barh(range(len(rows)), [r["count"] for r in rows], color="#2e86c1")
    ax.set_yticks(range(len(rows)), [_label(r["service"]) for r in rows])
    ax.set_title("Top services, non-blank banners (study Figure 10)")
    ax.set_xlabel("services")
    return fig


def _medical_ports(report: dict) -> Figure:
    rows = report["medical_ports"]
    labels = [str(r["port"]) for r in rows]
    blank = [r["blank"] for r in rows]
    non_blank = [r["non_blank"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar(labels, non_blank, label="non-blank", color="#2e86c1")
    ax.bar(labels, blank, bottom=non_blank, label="blank", color="#d5d8dc")
    ax.set_title("Banners on medical ports, blank and non-blank (study Figure 12)")
    ax.set_xlabel("port")
    ax.set_ylabel("banners")
    ax.tick_params(axis="x", labelrotation=60)
    ax.legend()
    return fig


def _segments(report: dict) -> Figure:
    rows = report["segments"]
    labels = [_label(r["segment"] or "(none)") for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bottom = [0] * len(rows)
    for cls in ("medical", "non_medical", "unknown"):
        values = [r[cls] for r in rows]
        ax.bar(labels, values, bottom=bottom, label=cls, color=CLASS_COLOURS[cls])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("Services per segment and class")
    ax.set_ylabel("services")
    ax.legend()
    return fig


CHARTS = {
    "classes": _classes,
    "top_services": _top_services,
    "medical_ports": _medical_ports,
    "segments": _segments,
}


def render_charts(report: dict, formats: tuple[str, ...] = ("png", "svg")) -> dict[str, dict[str, bytes]]:
    """{chart name: {format: bytes}} for every chart of the report."""
    out: dict[str, dict[str, bytes]] = {}
    with plt.rc_context(STYLE):  # type: ignore[arg-type]  # the stubs list keys as literals
        for name, draw in CHARTS.items():
            fig = draw(report)
            try:
                fig.tight_layout()
                out[name] = {}
                for fmt in formats:
                    buffer = io.BytesIO()
                    fig.savefig(buffer, format=fmt, dpi=120, metadata=_metadata(fmt))
                    out[name][fmt] = buffer.getvalue()
            finally:
                plt.close(fig)
    return out


def _metadata(fmt: str) -> dict:
    # No creation date: the same data gives the same files.
    if fmt == "png":
        return {"Software": None}
    if fmt == "svg":
        return {"Date": None}
    return {}
