"""Small builders for Shodan-format banners in tests."""

from __future__ import annotations

import gzip
import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path


def banner(
    ip: str = "192.0.2.10",
    port: int = 80,
    *,
    transport: str = "tcp",
    data: str = "HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n",
    timestamp: str = "2026-01-01T00:00:00.000000",
    **extra: object,
) -> dict:
    record: dict = {
        "ip": int(ipaddress.ip_address(ip)) if ipaddress.ip_address(ip).version == 4 else None,
        "ip_str": ip,
        "port": port,
        "transport": transport,
        "data": data,
        "timestamp": timestamp,
        "hostnames": [],
        "org": "Example Org",
        "isp": "Example ISP",
        "asn": "AS64496",
        "location": {"country_code": "NL"},
        "_shodan": {"module": "http"},
    }
    if record["ip"] is None:
        del record["ip"]
    record.update(extra)
    return record


def line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


def write_lines(path: Path, lines: Iterable[bytes], *, gz: bool = False) -> Path:
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        for item in lines:
            fh.write(item)
    return path


def many(n: int, *, start: str = "198.51.0.0", port: int = 80, timestamp: str = "2026-01-01T00:00:00") -> list[dict]:
    base = int(ipaddress.ip_address(start))
    return [
        banner(str(ipaddress.ip_address(base + i)), port, data=f"HTTP/1.1 200 OK\r\nX-Id: {i}\r\n", timestamp=timestamp)
        for i in range(n)
    ]


def minimal_banner(ip: str, port: int, data: str, *, timestamp: str, **extra: object) -> dict:
    """A banner with only what ingest needs, the module Shodan would name for the port, and extras."""
    return {
        "ip_str": ip,
        "port": port,
        "transport": "tcp",
        "data": data,
        "timestamp": timestamp,
        "_shodan": {"module": "dicom" if port == 104 else "http"},
        "location": {"country_code": "NL"},
        **extra,
    }
