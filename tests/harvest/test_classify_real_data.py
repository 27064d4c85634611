"""Every real record in the shared data folder gets the verdict a person would give it.

The files are used as they are (see /work/shared/data/SOURCES.md for origins and licences):
7 Shodan banners from intelmq's parser tests, one host lookup with 3 banners from sner4, and the
two DICOM PDUs recorded from Shodan's scanner and a Fujifilm Synapse PACS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harvest.classify import Banner, banner_from_shodan, classify, load_rules

KNOWN = ("non_medical", "known_service")

# (port, transport) -> (class, category, segment, product): what a person reads in each banner.
INTELMQ = {
    (21, "tcp"): (*KNOWN, "", "FTP"),  # FileZilla Server greeting
    (8888, "tcp"): (*KNOWN, "", ""),  # Shodan's HTTP module answered; no page content kept
    (500, "udp"): (*KNOWN, "", "IKE"),  # "VPN (IKE)" rendering
    (5683, "udp"): (*KNOWN, "", "CoAP"),  # "CoAP Resources:"
    (636, "tcp"): (*KNOWN, "", "LDAP"),  # LDAP root DSE of a PBX
    (389, "tcp"): (*KNOWN, "", "LDAP"),  # LDAP root DSE of a domain controller
    (22, "tcp"): (*KNOWN, "", "SSH"),  # OpenSSH 7.4
}
SNER4 = {
    (161, "udp"): (*KNOWN, "", "SNMP"),  # SNMPv3 engine of a Cisco device
    (179, "tcp"): (*KNOWN, "", ""),  # BGP speaker: silent to anyone but its peers
    (443, "tcp"): (*KNOWN, "", "HTTP"),  # nginx 401 page; 443 is only a hint port of Appendix B
}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(banner: Banner) -> tuple[str, str, str, str]:
    verdict = classify(banner, load_rules())
    assert not verdict.honeypot, verdict.honeypot_evidence
    assert verdict.evidence and all(len(e.excerpt) <= 200 for e in verdict.evidence)
    return (verdict.cls, verdict.category, verdict.segment, verdict.product)


def test_every_intelmq_banner(shared_data: Path) -> None:
    records = lines(shared_data / "shodan" / "intelmq-parser-tests.jsonl")

    got = {(r["port"], r["transport"]): summary(banner_from_shodan(r)) for r in records}

    assert len(records) == 7
    assert got == INTELMQ


def test_every_banner_of_the_sner4_host_lookup_with_its_host_as_context(shared_data: Path) -> None:
    (host,) = lines(shared_data / "shodan" / "sner4-host-lookup.jsonl")
    items = host["data"]

    got = {}
    for item in items:
        siblings = tuple(other["_shodan"]["module"] for other in items if other is not item)
        got[(item["port"], item["transport"])] = summary(banner_from_shodan(item, siblings))

    assert len(items) == 3
    assert got == SNER4


def test_the_recorded_fujifilm_synapse_reply(shared_data: Path) -> None:
    data = (shared_data / "dicom" / "shodan-recorded-reply-fujifilm-synapse.bin").read_bytes().decode("latin-1")

    verdict = classify(Banner(port=104, data=data, module="dicom"), load_rules())

    assert (verdict.cls, verdict.category, verdict.segment) == ("medical", "dicom", "medical_port")
    assert "Synapse" in verdict.product and verdict.product == "Fujifilm Synapse 4.4.0.36"
    assert verdict.details["dicom"]["implementation_version"] == "Syn4,4,0,36"
    assert not verdict.honeypot and verdict.confidence >= 0.9
    assert [e.rule for e in verdict.evidence] == ["dicom.associate_ac", "dicom_impl.synapse"]


@pytest.mark.parametrize("port", [104, 11112, 8080])
def test_the_recorded_probe_is_never_a_server_whatever_the_port(shared_data: Path, port: int) -> None:
    data = (shared_data / "dicom" / "shodan-dicom-probe-request.bin").read_bytes().decode("latin-1")

    verdict = classify(Banner(port=port, data=data), load_rules())

    assert (verdict.cls, verdict.category) == ("unknown", "unparseable")
    assert verdict.honeypot and verdict.details["dicom"]["pdu"] == "associate_rq"
