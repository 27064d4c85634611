"""An RDAP stand-in on 127.0.0.1: answers registry ip queries from recorded or generated networks.

Requests arrive as `/<registry host>/<path>` (the client's URL rewrite); the stand-in answers
`.../ip/<address>` with the most specific network that holds the address, or 404. Failures can
be scripted per address: an HTTP status, malformed JSON, a body of the test's own, a slow answer,
an answer dripped a byte at a time, 429s before success, or a redirect.
The same table feeds the DNS stand-in (Team Cymru-style ASN answers).
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

# Public facts about the origin ASes of the recorded networks (for the verbose ASN answer).
AS_DESCRIPTIONS = {
    2856: "BT-UK-AS BTnet UK Regional network, GB",
    2497: "IIJ Internet Initiative Japan Inc., JP",
    3786: "LGDACOM LG DACOM Corporation, KR",
    12091: "MTNNS-1, ZA",
    13335: "CLOUDFLARENET, US",
    15169: "GOOGLE, US",
    19373: "Triara.com, S.A. de C.V., MX",
    37578: "Tespok, KE",
    559: "SWITCH Peering requests: <peering@switch.ch>, CH",
    8075: "MICROSOFT-CORP-MSN-AS-BLOCK, US",
}
# The current-format answers carry no ASN data of their own: registry and origin AS (public facts).
WHOISIT_ASN = {
    "whoisit-rdap-ip_v4.json": ("apnic", 13335, "AU", "2011-08-11"),
    "whoisit-rdap-ip_v4_2.json": ("ripencc", 559, "CH", "1993-09-01"),
    "whoisit-rdap-ip_v4_3.json": ("arin", 8075, "US", "2015-03-26"),
    "whoisit-rdap-ip_v6.json": ("arin", 15169, "US", "2005-03-14"),
}
# Where ARIN's bootstrap service sends a query for a network of each registry (IANA's bootstrap file).
REGISTRY_RDAP = {
    "arin": "https://rdap.arin.net/registry",
    "ripencc": "https://rdap.db.ripe.net",
    "apnic": "https://rdap.apnic.net",
    "lacnic": "https://rdap.lacnic.net/rdap",
    "afrinic": "https://rdap.afrinic.net/rdap",
}
BOOTSTRAP_HOST = "rdap-bootstrap.arin.net"


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    text = str(text).strip().split("/", 1)[0]
    if "." in text and ":" not in text:
        text = ".".join(str(int(p)) for p in text.split("."))
    return ipaddress.ip_address(text)


@dataclass
class StandinNetwork:
    start: int
    end: int
    version: int
    registry: str
    asn: int | None
    asn_cidr: str
    country: str
    date: str
    response: dict

    def holds(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return address.version == self.version and self.start <= int(address) <= self.end


@dataclass
class Script:
    """What to do instead of answering normally, for one queried address."""

    status: int = 0  # answer with this HTTP status
    malformed: bool = False
    delay: float = 0.0
    rate_limited_times: int = 0  # answer 429 this many times first
    retry_after: str = "0"  # the Retry-After header of those 429s
    body: bytes | None = None  # answer 200 with this body
    drip: float = 0.0  # send the first DRIP_BYTES bytes one at a time, this many seconds apart
    drip_head: bool = False  # drip the status line and headers instead of the body
    redirect: str = ""  # answer 302 with this Location, as ARIN's bootstrap sends another registry's URL


DRIP_BYTES = 20


@dataclass
class RdapStandin:
    networks: list[StandinNetwork] = field(default_factory=list)
    scripts: dict[str, Script] = field(default_factory=dict)
    requests: Counter = field(default_factory=Counter)  # path kind -> count
    paths: list[str] = field(default_factory=list)
    _starts: list[tuple[tuple[int, int], int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, response: dict, *, registry: str, asn: int | None, country: str = "", date: str = "") -> None:
        start, end = _address(response["startAddress"]), _address(response["endAddress"])
        cidrs = list(ipaddress.summarize_address_range(start, end))
        asn_cidr = str(cidrs[0]) if cidrs else ""
        network = StandinNetwork(int(start), int(end), start.version, registry, asn, asn_cidr, country, date, response)
        self.networks.append(network)
        self._starts = sorted(((n.version, n.start), i) for i, n in enumerate(self.networks))

    def remove(self, start: str, end: str) -> None:
        """The registry deletes a network (e.g. an assignment returned to its provider)."""
        first, last = int(_address(start)), int(_address(end))
        self.networks = [n for n in self.networks if (n.start, n.end) != (first, last)]
        self._starts = sorted(((n.version, n.start), i) for i, n in enumerate(self.networks))

    def find(self, text: str) -> StandinNetwork | None:
        address = _address(text)
        key = (address.version, int(address))
        position = bisect.bisect_right(self._starts, (key, len(self.networks)))
        best = None
        # Walk back over earlier starts: the first few hold nested networks, if any.
        for (_, _), index in reversed(self._starts[max(0, position - 64) : position]):
            network = self.networks[index]
            if network.holds(address) and (best is None or network.end - network.start < best.end - best.start):
                best = network
        return best

    # --- builders ---------------------------------------------------------------------------

    @classmethod
    def from_recorded(cls, rdap_dir: Path) -> RdapStandin:
        """All ten ipwhois answers (five registries, 2015-16) and the current-format whoisit ones."""
        standin = cls()
        for entry in json.loads((rdap_dir / "ipwhois-tests-rdap.json").read_text()).values():
            asn_data = entry["asn_data"]
            asn = int(asn_data["asn"]) if str(asn_data["asn"]).isdigit() else None
            standin.add(
                entry["response"],
                registry=asn_data["asn_registry"],
                asn=asn,
                country=asn_data["asn_country_code"],
                date=asn_data["asn_date"],
            )
        for name, (registry, asn, country, date) in WHOISIT_ASN.items():
            standin.add(
                json.loads((rdap_dir / name).read_text()), registry=registry, asn=asn, country=country, date=date
            )
        return standin

    @classmethod
    def generated(cls, count: int, *, first: str = "11.0.0.0", prefix: int = 24, gap: int = 256) -> RdapStandin:
        """`count` IPv4 networks of size /prefix, each `gap` blocks apart, with an abuse contact each."""
        standin = cls()
        base = int(ipaddress.IPv4Address(first))
        size = 2 ** (32 - prefix)
        for i in range(count):
            start = ipaddress.IPv4Address(base + i * size * gap)
            end = ipaddress.IPv4Address(int(start) + size - 1)
            standin.add(generated_answer(i, start, end), registry="ripencc", asn=64000 + i % 500, country="NL")
        return standin

    # --- serving ----------------------------------------------------------------------------

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        parts = [unquote(p) for p in path.split("?", 1)[0].split("/") if p]
        kind = parts[-2] if len(parts) >= 2 else ""
        with self._lock:
            self.requests[kind] += 1
            self.paths.append(path)
        if kind != "ip":
            return 404, b'{"errorCode": 404, "title": "Not Found"}', {}
        query = parts[-1]
        script = self.scripts.get(query)
        if script:
            with self._lock:
                if script.rate_limited_times > 0:
                    script.rate_limited_times -= 1
                    return 429, b'{"errorCode": 429}', {"Retry-After": script.retry_after}
            if script.delay:
                time.sleep(script.delay)
            if script.status:
                return script.status, json.dumps({"errorCode": script.status}).encode(), {}
            if script.malformed:
                return 200, b'{"handle": "BROKEN", "startAddress": ', {}
            if script.body is not None:
                return 200, script.body, {}
            if script.redirect:
                return 302, b"", {"Location": script.redirect}
        try:
            network = self.find(query)
        except ValueError:
            return 400, b'{"errorCode": 400, "title": "Bad Request"}', {}
        if network is None:
            return 404, b'{"errorCode": 404, "title": "Not Found"}', {}
        if parts[0] == BOOTSTRAP_HOST:  # it answers no query itself: it redirects to the registry's server
            return 302, b"", {"Location": f"{REGISTRY_RDAP[network.registry]}/ip/{query}"}
        return 200, json.dumps(network.response).encode(), {}

    def drip_of(self, path: str) -> tuple[float, bool]:
        """(seconds between the first bytes, whether the head drips) scripted for a request."""
        parts = [unquote(p) for p in path.split("?", 1)[0].split("/") if p]
        script = self.scripts.get(parts[-1]) if parts else None
        return (script.drip, script.drip_head) if script else (0.0, False)

    def serve(self) -> RunningServer:
        return RunningServer(self)


def generated_answer(
    i: int, start: ipaddress.IPv4Address, end: ipaddress.IPv4Address, *, network_type: str = "ASSIGNED PA"
) -> dict:
    """A current-format RIPE-style ip-network answer with a nested abuse entity."""
    handle = f"{start} - {end}"
    return {
        "rdapConformance": ["cidr0", "rdap_level_0"],
        "objectClassName": "ip network",
        "handle": handle,
        "startAddress": str(start),
        "endAddress": str(end),
        "ipVersion": "v4",
        "type": network_type,
        "name": f"BENCH-NET-{i}",
        "country": "NL",
        "port43": "whois.ripe.net",
        "entities": [
            {
                "objectClassName": "entity",
                "handle": f"ORG-BENCH{i}-RIPE",
                "roles": ["registrant"],
                "vcardArray": ["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", f"Bench Org {i}"]]],
                "entities": [
                    {
                        "objectClassName": "entity",
                        "handle": f"AB{i}-RIPE",
                        "roles": ["abuse"],
                        "vcardArray": [
                            "vcard",
                            [
                                ["version", {}, "text", "4.0"],
                                ["fn", {}, "text", f"Abuse {i}"],
                                ["kind", {}, "text", "group"],
                                ["email", {}, "text", f"abuse{i}@bench{i}.example"],
                            ],
                        ],
                    }
                ],
            }
        ],
    }


class RunningServer:
    def __init__(self, standin: RdapStandin, address: str = "127.0.0.1") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body, headers = standin.answer(self.path)
                drip, drip_head = standin.drip_of(self.path)
                lines = [
                    f"{self.protocol_version} {status} {self.responses.get(status, ('',))[0]}",
                    "Content-Type: application/rdap+json",
                    f"Content-Length: {len(body)}",
                    *(f"{key}: {value}" for key, value in headers.items()),
                ]
                head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
                try:
                    self._send(head + body, drip, start=0 if drip_head else len(head))
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, data: bytes, drip: float, start: int) -> None:
                if drip:
                    self.wfile.write(data[:start])
                    for i in range(start, min(start + DRIP_BYTES, len(data))):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(drip)
                    data = data[start + DRIP_BYTES :]
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.standin = standin
        self.httpd = ThreadingHTTPServer((address, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{address}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
