"""HTTP responses in a banner: status line, a few headers, and the page title.

Pure and bounded: reads at most the first MAX_HEAD characters of the headers and MAX_BODY of the
body, never raises. Body markers of PACS viewers and EHR logins are rules, not code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_HEADERS = 100
KEPT_HEADERS = ("server", "location", "www-authenticate", "x-powered-by", "set-cookie", "content-type")

# ASCII digits: \d (and int()) would take Arabic-Indic and other digits too.
_STATUS = re.compile(r"\AHTTP/([0-9])(?:\.([0-9]))? ([0-9]{3})(?: ([^\r\n]{0,200}))?")
_TITLE = re.compile(r"(?i)<title[^>]{0,64}>([^<]{0,1024})")


@dataclass(slots=True)
class HttpResponse:
    valid: bool
    version: str = ""
    status: int = 0
    reason: str = ""
    headers: dict | None = None
    title: str = ""

    def as_dict(self) -> dict:
        return {
            "valid": self.valid,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "headers": self.headers or {},
            "title": self.title,
        }


def looks_like_http(data: str) -> bool:
    return data.startswith("HTTP/")


def decode_response(data: str, html: str = "") -> HttpResponse | None:
    """The status line and headers of `data`; None if it is not an HTTP response."""
    if not looks_like_http(data):
        return None
    m = _STATUS.match(data[:512])
    if not m:
        return HttpResponse(valid=False)
    version = m.group(1) + ("." + m.group(2) if m.group(2) else "")
    resp = HttpResponse(valid=True, version=version, status=int(m.group(3)), reason=(m.group(4) or "").strip())
    resp.headers = _headers(data[m.end() : MAX_HEAD])
    resp.title = page_title(html) if html else ""
    return resp


def _headers(block: str) -> dict:
    end = block.find("\r\n\r\n")
    if end < 0:
        end = block.find("\n\n")
    # HTTP lines end at LF (CRLF, or a bare LF); str.splitlines() would also break at 0x85, 0x0b,
    # 0x0c and 0x1c-0x1e, which are ordinary bytes inside a header value.
    lines = (block if end < 0 else block[:end]).split("\n", MAX_HEADERS + 1)[: MAX_HEADERS + 1]
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.removesuffix("\r").partition(":")
        name = name.strip().lower()
        if sep and name in KEPT_HEADERS and name not in out:
            out[name] = value.strip()[:512]
    return out


def page_title(html: str) -> str:
    m = _TITLE.search(html[:MAX_BODY])
    return " ".join(m.group(1).split())[:1024] if m else ""
