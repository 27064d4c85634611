"""Fixtures for harvesting tests: a Shodan stand-in on 127.0.0.1 serving a banner corpus."""

from __future__ import annotations

import functools
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from harvest import shodan_client
from tests.conftest import ROOT, SHARED_DATA
from tests.factories import banner
from tests.standins.shodan_server import ShodanStandIn, load_corpus

SAMPLE_CORPUS = ROOT / "fixtures" / "sample" / "banners.jsonl.gz"
STANDIN_KEY = "sk-standin-0123456789abcdef"  # what the stand-in accepts; must never be printed


def _ips(start: str, n: int) -> list[str]:
    base = int(ipaddress.ip_address(start))
    return [str(ipaddress.ip_address(base + i)) for i in range(n)]


def medical_banners() -> list[dict]:
    """Dutch medical-looking banners on Appendix B ports, enough for several pages per query,
    plus foreign ones that a country:NL query must not return and one with a broken address."""
    dicom = "\x02\x00\x00\x00\x00\xa8\x00\x01\x00\x00ANY-SCP         FINDSCU         "
    out = [
        banner(ip, 104, data=f"{dicom}\x55\x00\x00\x10OFFIS_DCMTK_367 #{i}", _shodan={"module": "dicom"})
        for i, ip in enumerate(_ips("198.18.0.0", 230))
    ]
    out += [
        banner(ip, 2575, data=f"MSH|^~\\&|LAB|ZKH|HIS|ZKH|20260101||ACK|{i}|P|2.5\rMSA|AA|{i}\r")
        for i, ip in enumerate(_ips("198.18.10.0", 105))
    ]
    out += [
        banner(ip, 4242, data="HTTP/1.1 401 Unauthorized\r\nServer: Orthanc\r\n", product="Orthanc")
        for ip in _ips("198.18.20.0", 3)
    ]
    out += [
        banner(
            ip,
            443,
            data="HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n<title>Ziekenhuis portaal</title>",
            hostnames=[f"pacs{i}.erasmusmc.nl"],
            org="Erasmus MC",
        )
        for i, ip in enumerate(_ips("198.18.30.0", 12))
    ]
    out += [banner(ip, 104, data=f"{dicom} foreign", location={"country_code": "DE"}) for ip in _ips("198.18.40.0", 20)]
    broken = banner("198.18.50.1", 104, data=dicom)
    broken["ip_str"] = "999.18.50.1"
    del broken["ip"]
    out.append(broken)
    return out


@functools.cache
def corpus_banners() -> tuple[dict, ...]:
    """The bundled sample corpus (when it exists), the real shared banners, and ours. Read once:
    nothing may change these banners."""
    paths = [SAMPLE_CORPUS] if SAMPLE_CORPUS.is_file() else []
    paths += sorted((SHARED_DATA / "shodan").glob("*.jsonl"))
    return tuple(load_corpus(paths) + medical_banners())


@pytest.fixture
def shodan_standin(settings: pytest.FixtureRequest) -> Iterator[ShodanStandIn]:
    """The stand-in, and settings that point the real client at it (fast retries and timeouts)."""
    with ShodanStandIn(corpus_banners(), key=STANDIN_KEY, credits=1000) as server:
        settings.SHODAN_API_URL = server.url
        settings.SHODAN_API_KEY = STANDIN_KEY
        settings.SHODAN_REQUEST_INTERVAL = 0.0
        settings.SHODAN_TIMEOUT = 1.0
        settings.SHODAN_MAX_RETRIES = 3
        settings.SHODAN_BACKOFF = 0.02
        settings.MEDEXPO_COUNTRY = "NL"
        shodan_client.reset()
        yield server
    shodan_client.reset()


@pytest.fixture
def plan_file(tmp_path: Path):  # noqa: ANN201 - returns a small factory
    """Write a plan file of the given queries; returns its path for --plan."""

    def write(*queries: str, name: str = "testplan") -> str:
        lines = [f'name = "{name}"']
        for query in queries:
            lines += ["[[query]]", f"query = '{query}'"]
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    return write


@pytest.fixture
def own_database(tmp_path) -> Iterator[str]:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        yield f"sqlite:///{tmp_path / 'resume.sqlite3'}"
        return
    name = f"medexpo_resume_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres", autocommit=True
    )
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
