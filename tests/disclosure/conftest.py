"""Owner tests: the real ipwhois client against RDAP and DNS stand-ins on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from disclosure.rdap_client import LookupOptions, RateLimiter
from harvest.models import Host, Service
from tests.conftest import SHARED_DATA
from tests.standins.dns_server import RunningDns
from tests.standins.rdap_server import RdapStandin, RunningServer

RDAP_DIR = SHARED_DATA / "rdap"
SEEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Registries:
    """The stand-ins, started together, and lookup options that point at them."""

    def __init__(self, standin: RdapStandin) -> None:
        self.standin = standin
        self.http = RunningServer(standin)
        self.dns = RunningDns(standin)
        self.options = LookupOptions(
            base_url=self.http.url, dns_server=self.dns.address, timeout=1.0, asn_methods=("dns",)
        )
        self.limiter = RateLimiter(0)

    @property
    def ip_requests(self) -> int:
        return self.standin.requests["ip"]

    def close(self) -> None:
        self.http.close()
        self.dns.close()


@pytest.fixture(autouse=True)
def _no_traffic_off_loopback(settings: object) -> None:
    """Whatever a test forgets, a lookup goes to 127.0.0.1:9 (nothing listens), never outside."""
    settings.RDAP_BASE_URL = "http://127.0.0.1:9"
    settings.RDAP_DNS_SERVER = "127.0.0.1:9"
    settings.RDAP_TIMEOUT = 0.5


@pytest.fixture
def registries(settings: object) -> Iterator[Registries]:
    assert RDAP_DIR.is_dir(), f"the shared RDAP data is missing: {RDAP_DIR}"
    running = Registries(RdapStandin.from_recorded(RDAP_DIR))
    # The management commands read settings: point them at the stand-ins too.
    settings.RDAP_BASE_URL = running.http.url
    settings.RDAP_DNS_SERVER = running.dns.address
    settings.RDAP_TIMEOUT = 1.0
    settings.RDAP_REQUESTS_PER_SECOND = 0
    yield running
    running.close()


def make_host(
    ip: str, *, port: int = 104, hostnames: list[str] | None = None, org: str = "", record: dict | None = None
) -> Host:
    host, _ = Host.objects.get_or_create(
        ip=ip,
        defaults={"org": org, "hostnames": hostnames or [], "first_seen": SEEN, "last_seen": SEEN},
    )
    # The names are the record's too, as ingest stores them: attribution reads the current records.
    raw = json.dumps(
        {"ip_str": ip, "port": port, "transport": "tcp", "data": "", "hostnames": hostnames or [], **(record or {})}
    )
    Service.objects.create(
        host=host, port=port, raw=raw, banner_hash="0" * 32, first_seen=SEEN, last_seen=SEEN, banner_since=SEEN
    )
    return host
