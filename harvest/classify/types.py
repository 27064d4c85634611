"""The small types the classification engine reads and returns.

`Banner` is what the engine sees of one service, `Verdict` what it decides. Both are plain frozen
dataclasses so the engine stays pure and its results can be stored, compared and reproduced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medexpo.lib.text import ascii_digits

CLASSES = ("medical", "non_medical", "unknown")
CATEGORIES = (
    "dicom",
    "hl7",
    "pacs_web",
    "ehr_web",
    "pump_server",
    "medical_device",
    "hospital_infra",
    "known_service",
    "blank",
    "unparseable",
)
SEGMENTS = ("hospital_organisation", "software", "medical_port", "")
# The category each class allows: a medical category never comes with a non-medical class.
CLASS_OF_CATEGORY = {
    "dicom": "medical",
    "hl7": "medical",
    "pacs_web": "medical",
    "ehr_web": "medical",
    "pump_server": "medical",
    "medical_device": "medical",
    "hospital_infra": "non_medical",
    "known_service": "non_medical",
    "blank": "unknown",
    "unparseable": "unknown",
}

MAX_EXCERPT = 200
MAX_HTML = 64 * 1024  # the HTML excerpt kept on a Banner
MAX_SHORT = 1024  # titles, server headers, org names, certificate subjects
MAX_NAMES = 64  # hostnames and certificate names


@dataclass(frozen=True, slots=True)
class Banner:
    """What the engine sees of one service; build it with banner_from_shodan()."""

    port: int
    transport: str = "tcp"
    data: str = ""  # Shodan's `data`, binary bytes as U+0000..U+00FF characters, NULs intact
    module: str = ""  # Shodan `_shodan.module`
    product: str = ""
    version: str = ""
    org: str = ""
    isp: str = ""
    asn: int | None = None
    hostnames: tuple[str, ...] = ()
    http_title: str = ""
    http_server: str = ""
    http_html: str = ""  # bounded excerpt
    ssl_subject: str = ""  # certificate subject CN / O
    ssl_names: tuple[str, ...] = ()  # subjectAltName DNS names
    host_modules: tuple[str, ...] = ()  # modules/ports of the host's other services (honeypot context)


@dataclass(frozen=True, slots=True)
class Evidence:
    rule: str  # rule id, e.g. "dicom.associate_ac" or "software.orthanc"
    field: str  # "data", "http_title", "hostnames", "org", "port", ...
    excerpt: str  # the matched text, at most 200 characters, as found (escaping is the presenter's job)


@dataclass(frozen=True, slots=True)
class Verdict:
    cls: str  # "medical" | "non_medical" | "unknown"
    category: str  # one of CATEGORIES
    segment: str  # "hospital_organisation" | "software" | "medical_port" | ""
    evidence: tuple[Evidence, ...]
    confidence: float  # 0..1
    honeypot: bool
    honeypot_evidence: tuple[Evidence, ...]
    product: str  # identified product/software, e.g. "DCMTK 3.6.7", "Orthanc", "Mirth Connect", or ""
    details: dict = field(hash=False)  # decoder output as JSON-able data
    rules_version: str


def excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    return text if len(text) <= limit else text[:limit]


def _text(value: object, limit: int) -> str:
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)[:limit]
    if isinstance(value, list):  # Shodan sometimes gives a certificate field as a list of values
        return " ".join(v for v in value if isinstance(v, str))[:limit]
    return ""


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(v[:MAX_SHORT] for v in value[:MAX_NAMES] if isinstance(v, str) and v)


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list | tuple:
    return value if isinstance(value, list | tuple) else ()


def _port(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value <= 65535 else 0
    if isinstance(value, str) and ascii_digits(value) and len(value) <= 5:
        return min(int(value), 65535)
    return 0


_ASN = re.compile(r"(?ai)^\s*(?:AS)?(\d{1,10})\s*$")  # ASCII digits: \d also matches "٣"


def _asn(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        m = _ASN.match(value[:32])
        return int(m.group(1)) if m else None
    return None


# DNS names inside a DER-encoded subjectAltName extension, bytes as characters.
_DNS_NAME = re.compile(r"\x82[\x01-\x7f]([A-Za-z0-9*][A-Za-z0-9.*-]{0,252})")
# Shodan shows an extension's value as the text of a Python bytes literal, escapes and all
# ("0\\x1e\\x82\\x0fwww.example.com"); a value with a real 0x82 character is bytes already.
_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|(.))", re.DOTALL)
_ESCAPED = {"n": "\n", "r": "\r", "t": "\t"}


def _der_bytes(text: str) -> str:
    if "\\" not in text or "\x82" in text:
        return text
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)) if m.group(1) else _ESCAPED.get(m.group(2), m.group(2)), text)


def service_name(module: str, port: object, transport: str) -> str:
    """How a service is counted among its host's protocols (the honeypot test): its Shodan module,
    else port/transport."""
    if module:
        return module
    return f"{port}/{transport}" if isinstance(port, int) and transport else ""


def san_dns_names(data: object, limit: int = 8192) -> list[str]:
    """The DNS names of a subjectAltName extension's value as Shodan shows it (either form above)."""
    return [m.group(1) for m in _DNS_NAME.finditer(_der_bytes(_text(data, limit)))]


def _ssl_fields(ssl: dict) -> tuple[str, tuple[str, ...]]:
    cert = _dict(ssl.get("cert"))
    subject = _dict(cert.get("subject"))
    parts = [_text(subject.get(k), MAX_SHORT) for k in ("CN", "O", "OU")]
    names: list[str] = []
    for ext in _list(cert.get("extensions")):
        if isinstance(ext, dict) and ext.get("name") == "subjectAltName":
            names.extend(san_dns_names(ext.get("data")))
    return " ".join(p for p in parts if p)[:MAX_SHORT], tuple(names[:MAX_NAMES])


def banner_from_shodan(obj: dict, host_modules: tuple[str, ...] = ()) -> Banner:
    """A Banner from a parsed Shodan JSON object (Service.raw). Lenient: odd types become empty."""
    obj = _dict(obj)
    http = _dict(obj.get("http"))
    ssl_subject, ssl_names = _ssl_fields(_dict(obj.get("ssl")))
    transport = _text(obj.get("transport"), 8).lower() or "tcp"
    return Banner(
        port=_port(obj.get("port")),
        transport=transport if transport in ("tcp", "udp") else "tcp",
        data=data if isinstance(data := obj.get("data"), str) else "",
        module=_text(_dict(obj.get("_shodan")).get("module"), 64),
        product=_text(obj.get("product"), MAX_SHORT),
        version=_text(obj.get("version"), MAX_SHORT),
        org=_text(obj.get("org"), MAX_SHORT),
        isp=_text(obj.get("isp"), MAX_SHORT),
        asn=_asn(obj.get("asn")),
        hostnames=_names(obj.get("hostnames")) + _names(obj.get("domains")),
        http_title=_text(http.get("title"), MAX_SHORT),
        http_server=_text(http.get("server"), MAX_SHORT),
        http_html=_text(http.get("html"), MAX_HTML),
        ssl_subject=ssl_subject,
        ssl_names=ssl_names,
        host_modules=tuple(host_modules),
    )
