"""The network cache answers for an address only with the network the registry would answer with:
an assignment for every address in it, an allocation only for the addresses it was the answer for."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from disclosure.models import Contact, HostOwner, Network, is_assignment
from disclosure.services import OwnersSummary, hosts_needing_owner, network_find_cached, owners_resolve
from tests.disclosure.conftest import Registries, make_host
from tests.standins.rdap_server import Script, generated_answer

pytestmark = pytest.mark.django_db

PROVIDER = ("11.0.0.0", "11.1.255.255")  # a provider's ALLOCATED PA /15
HOSPITAL = ("11.0.4.0", "11.0.4.255")  # a hospital's ASSIGNED PA /24 inside it
PROVIDER_ABUSE, HOSPITAL_ABUSE = "abuse0@bench0.example", "abuse1@bench1.example"


def add(registries: Registries, i: int, span: tuple[str, str], network_type: str) -> dict:
    start, end = (ipaddress.IPv4Address(a) for a in span)
    answer = generated_answer(i, start, end, network_type=network_type)
    registries.standin.add(answer, registry="ripencc", asn=64500, country="NL")
    return answer


@pytest.fixture
def allocation(registries: Registries) -> Registries:
    add(registries, 0, PROVIDER, "ALLOCATED PA")
    add(registries, 1, HOSPITAL, "ASSIGNED PA")
    return registries


def resolve(registries: Registries, concurrency: int = 4) -> OwnersSummary:
    return owners_resolve(options=registries.options, limiter=registries.limiter, concurrency=concurrency)


def recipient(ip: str) -> str:
    return HostOwner.objects.get(host__ip=ip).recipient.email


def test_an_address_in_an_assignment_inside_a_cached_allocation_is_looked_up(allocation: Registries) -> None:
    """The provider's /15, cached as the answer for one of its addresses, answered for a host in
    the hospital's /24 inside it, never looked up: the advisory went to the provider's abuse desk."""
    make_host("11.0.0.1")
    resolve(allocation)
    assert recipient("11.0.0.1") == PROVIDER_ABUSE
    make_host("11.0.4.20")  # in the hospital's assignment
    make_host("11.1.0.1")  # in the provider's allocation only
    before = allocation.ip_requests
    summary = resolve(allocation).as_dict()
    assert allocation.ip_requests == before + 2 and summary["requests"] == 2
    owner = HostOwner.objects.get(host__ip="11.0.4.20")
    assert owner.network.cidrs == ["11.0.4.0/24"] and owner.recipient.email == HOSPITAL_ABUSE
    assert recipient("11.1.0.1") == PROVIDER_ABUSE
    assert Network.objects.count() == 2  # the /15 answered again is the same row
    # Each network answers from the cache for what the registry answered with it.
    assert network_find_cached(ip="11.0.0.1").cidrs == ["11.0.0.0/15"]
    assert network_find_cached(ip="11.1.0.1").cidrs == ["11.0.0.0/15"]
    assert network_find_cached(ip="11.0.4.99").cidrs == ["11.0.4.0/24"]
    assert network_find_cached(ip="11.0.9.9") is None


@pytest.mark.parametrize("concurrency", [1, 4])
def test_addresses_resolved_at_once_each_get_the_registrys_answer(allocation: Registries, concurrency: int) -> None:
    """Addresses of one neighbourhood waited for the first one's answer and took it from memory:
    which of them reached the hospital depended on which was asked first."""
    for ip in ("11.0.0.1", "11.0.4.20", "11.0.4.21", "11.1.0.1"):
        make_host(ip)
    summary = resolve(allocation, concurrency=concurrency).as_dict()
    assert recipient("11.0.4.20") == recipient("11.0.4.21") == HOSPITAL_ABUSE
    assert recipient("11.0.0.1") == recipient("11.1.0.1") == PROVIDER_ABUSE
    assert summary["requests"] == 3 and summary["from_cache"] == 1  # 11.0.4.21: the hospital's /24
    assert Network.objects.count() == 2


def test_an_imported_allocation_answers_only_for_the_addresses_recorded_with_it(
    allocation: Registries, tmp_path: Path
) -> None:
    answer = generated_answer(0, *(ipaddress.IPv4Address(a) for a in PROVIDER), network_type="ALLOCATED PA")
    answer["links"] = [{"rel": "self", "value": "https://rdap.db.ripe.net/ip/11.0.0.1", "href": "x"}]
    (tmp_path / "provider.json").write_text(json.dumps(answer))
    (tmp_path / "provider.addresses").write_text("# asked for these\n11.0.0.2\n11.1.0.9  # and this one\n")
    from disclosure.services import rdap_cache_import

    report = rdap_cache_import(directory=tmp_path)
    assert (report.loaded, report.rejected) == (1, [])
    for ip in ("11.0.0.1", "11.0.0.2", "11.1.0.9", "11.0.4.20"):
        make_host(ip)
    summary = resolve(allocation).as_dict()
    assert summary["requests"] == 1 and summary["from_cache"] == 3
    assert recipient("11.0.4.20") == HOSPITAL_ABUSE
    assert recipient("11.0.0.1") == recipient("11.0.0.2") == recipient("11.1.0.9") == PROVIDER_ABUSE


def test_an_addresses_file_with_an_address_outside_the_answer_is_rejected(tmp_path: Path) -> None:
    answer = generated_answer(0, *(ipaddress.IPv4Address(a) for a in PROVIDER), network_type="ALLOCATED PA")
    (tmp_path / "provider.json").write_text(json.dumps(answer))
    (tmp_path / "provider.addresses").write_text("11.0.0.2\n12.0.0.1\n")
    from disclosure.services import rdap_cache_import

    report = rdap_cache_import(directory=tmp_path)
    assert report.loaded == 0 and report.rejected[0]["reason"] == "malformed_addresses"
    assert "line 2" in report.rejected[0]["detail"] and not Network.objects.exists()


def test_a_cached_network_the_registry_answers_past_stops_answering(registries: Registries) -> None:
    """A sub-allocation cached for one address went on answering for it after the registry had
    answered an address inside it with the wider allocation: the sub-allocation is gone."""
    add(registries, 0, PROVIDER, "ALLOCATED PA")
    add(registries, 1, ("11.0.16.0", "11.0.31.255"), "SUB-ALLOCATED PA")
    make_host("11.0.16.1")
    resolve(registries)
    assert recipient("11.0.16.1") == "abuse1@bench1.example" and not list(hosts_needing_owner())
    registries.standin.remove("11.0.16.0", "11.0.31.255")
    make_host("11.0.17.1")
    resolve(registries)
    assert recipient("11.0.17.1") == PROVIDER_ABUSE
    assert network_find_cached(ip="11.0.16.1") is None
    assert [h.ip for h in hosts_needing_owner()] == ["11.0.16.1"]  # resolved again on the next run
    resolve(registries)
    assert recipient("11.0.16.1") == PROVIDER_ABUSE


@pytest.mark.parametrize(
    ("network_type", "assignment"),
    [
        ("ASSIGNED PA", True),
        ("Assigned", True),  # RIPE IPv6, as the 2015 answer writes it
        ("ASSIGNED PORTABLE", True),
        ("assigned", True),  # LACNIC
        ("re-assigned", True),
        ("REASSIGNMENT", True),
        ("DIRECT ASSIGNMENT", True),
        ("ALLOCATED PA", False),
        ("SUB-ALLOCATED PA", False),
        ("DIRECT ALLOCATION", False),
        ("ALLOCATED PORTABLE", False),
        ("allocated", False),
        ("re-allocated", False),
        ("LEGACY", False),
        ("", False),
    ],
)
def test_only_assignments_answer_for_their_whole_range(network_type: str, assignment: bool) -> None:
    assert is_assignment(network_type) is assignment


def test_a_gone_network_does_not_hide_the_answer_cached_for_an_address_inside_it(registries: Registries) -> None:
    """Once the registry answered an address of a sub-allocation with the wider allocation, the
    sub-allocation (gone) was still the most specific network holding that address, so the
    allocation's cached answer for it was never found: a run that took the host up again (staff
    added a contact) asked the registry anew, and when it did not answer the host lost its network
    and its recipient."""
    add(registries, 0, PROVIDER, "ALLOCATED PA")
    add(registries, 1, ("11.0.16.0", "11.0.31.255"), "SUB-ALLOCATED PA")
    make_host("11.0.16.1")
    resolve(registries)
    registries.standin.remove("11.0.16.0", "11.0.31.255")
    host = make_host("11.0.17.1")
    resolve(registries)
    assert network_find_cached(ip="11.0.17.1").cidrs == ["11.0.0.0/15"]
    provider = HostOwner.objects.get(host=host).network.holder
    Contact.objects.create(organisation=provider, email="cert@provider.example", role="security")
    assert host in hosts_needing_owner()
    registries.standin.scripts["11.0.17.1"] = Script(status=503)  # the registry does not answer now
    before = registries.ip_requests
    summary = owners_resolve(hosts=[host], options=registries.options, limiter=registries.limiter).as_dict()
    assert registries.ip_requests == before and summary["from_cache"] == 1
    owner = HostOwner.objects.get(host=host)
    assert (owner.status, owner.network.cidrs, owner.recipient.email) == (
        "resolved",
        ["11.0.0.0/15"],
        "cert@provider.example",
    )
