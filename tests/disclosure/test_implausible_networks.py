"""An RDAP answer is written by a stranger: one that claims a network no registry gives an operator
(all of IPv4, a /1, a registry's own /8) must not become the owner of the hosts in its range."""

from __future__ import annotations

import importlib
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command
from django.utils import timezone

from disclosure.models import Contact, HostOwner, Network
from disclosure.rdap_client import RdapNetwork, iter_entities
from disclosure.services import (
    hosts_needing_owner,
    network_find_cached,
    network_save_answer,
    owners_resolve,
    rdap_cache_import,
)
from tests.disclosure.conftest import RDAP_DIR, Registries, make_host
from tests.standins.rdap_server import Script

pytestmark = pytest.mark.django_db

HOSTILE = "abuse@hostile.example"
SAMPLE_RDAP = Path(__file__).resolve().parents[2] / "fixtures" / "sample" / "rdap"


def claimed(
    start: str,
    end: str,
    *,
    network_type: str = "ASSIGNED",
    name: str = "EVERYTHING",
    registrant: tuple[str, str] = ("ORG-HOSTILE-RIPE", "Hostile Ltd"),
    **extra: object,
) -> dict:
    """An ip-network answer for start..end whose registrant has an abuse contact."""
    handle, full_name = registrant
    return {
        "objectClassName": "ip network",
        "handle": f"{start} - {end}",
        "startAddress": start,
        "endAddress": end,
        "ipVersion": "v6" if ":" in start else "v4",
        "type": network_type,
        "name": name,
        "country": "NL",
        "port43": "whois.ripe.net",
        "entities": [
            {
                "objectClassName": "entity",
                "handle": handle,
                "roles": ["registrant"],
                "vcardArray": ["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", full_name]]],
            },
            {
                "objectClassName": "entity",
                "handle": "HOSTILE-ABUSE",
                "roles": ["abuse"],
                "vcardArray": ["vcard", [["version", {}, "text", "4.0"], ["email", {}, "text", HOSTILE]]],
            },
        ],
        **extra,
    }


def serve(registries: Registries, address: str, answer: dict) -> None:
    registries.standin.scripts[address] = Script(body=json.dumps(answer).encode())


def resolve(registries: Registries) -> dict:
    summary = owners_resolve(options=registries.options, limiter=registries.limiter, concurrency=1)
    return summary.as_dict()


WIDE_V4 = [
    ("0.0.0.0", "255.255.255.255"),  # all of IPv4
    ("0.0.0.0", "127.255.255.255"),  # a /1
    ("62.0.0.0", "63.255.255.255"),  # a /7
    ("62.128.0.0", "63.127.255.255"),  # as many addresses as a /8, across two of IANA's /8s
]


@pytest.mark.parametrize(("start", "end"), WIDE_V4)
def test_an_answer_wider_than_any_registration_owns_no_host(registries: Registries, start: str, end: str) -> None:
    """An ASSIGNED 0.0.0.0/0 for one address was cached, and answered from memory for every other
    host of the run: all of them got the answer's abuse address as recipient."""
    serve(registries, "62.239.237.1", claimed(start, end))
    asked = make_host("62.239.237.1")
    others = [make_host("74.125.225.229"), make_host("210.107.73.73")]
    summary = resolve(registries)
    owner = HostOwner.objects.get(host=asked)
    assert (owner.status, owner.reason, owner.network, owner.recipient) == ("unknown", "network_too_wide", None, None)
    assert f"{start} - {end}" in owner.detail
    assert summary["failed"] == {"network_too_wide": 1}
    for host in others:
        other = HostOwner.objects.get(host=host)
        assert other.status == "resolved" and other.recipient.email != HOSTILE
    assert not Network.objects.filter(start_address=start).exists()
    assert not Contact.objects.filter(email=HOSTILE).exists()


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),  # all of IPv6
        ("2a00::", "2a0f:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),  # an RIR's /12 from IANA
    ],
)
def test_an_ipv6_answer_wider_than_any_registration_owns_no_host(registries: Registries, start: str, end: str) -> None:
    serve(registries, "2a00:2381:ffff::1", claimed(start, end, network_type="ALLOCATED-BY-RIR"))
    asked = make_host("2a00:2381:ffff::1")
    other = make_host("2001:4860:4860::8888")
    summary = resolve(registries)
    owner = HostOwner.objects.get(host=asked)
    assert (owner.status, owner.reason, owner.network) == ("unknown", "network_too_wide", None)
    assert summary["failed"] == {"network_too_wide": 1}
    assert HostOwner.objects.get(host=other).network.name == "GOOGLE-IPV6"
    assert not Contact.objects.filter(email=HOSTILE).exists()


@pytest.mark.parametrize(
    "answer",
    [
        # ARIN's own /8, as ARIN answers for space it has not given out: ARIN is no operator.
        claimed(
            "74.0.0.0", "74.255.255.255", network_type="ALLOCATION", name="NET74",
            registrant=("ARIN", "American Registry for Internet Numbers"),
        ),
        # The RIPE NCC's administrative status for the blocks it holds itself (IANA-BLK, EU-ZZ-nn).
        claimed("74.0.0.0", "74.255.255.255", network_type="ALLOCATED UNSPECIFIED", name="EU-ZZ-74"),
        claimed("74.125.0.0", "74.125.255.255", network_type="ALLOCATED PA", name="IANA-BLK"),
    ],
    ids=["registrant-arin", "allocated-unspecified", "iana-blk"],
)  # fmt: skip
def test_a_registrys_own_block_is_no_owner(registries: Registries, answer: dict) -> None:
    serve(registries, "74.125.225.229", answer)
    host = make_host("74.125.225.229")
    summary = resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert (owner.status, owner.reason, owner.network, owner.recipient) == ("unknown", "registry_block", None, None)
    assert summary["failed"] == {"registry_block": 1}
    assert not Network.objects.exists()


@pytest.mark.parametrize(
    ("answer", "registry", "address", "cidr"),
    [
        # Legacy /8s (17/8, the DoD's) are held by operators: their hosts are theirs.
        (claimed("17.0.0.0", "17.255.255.255", network_type="DIRECT ALLOCATION", name="APPLE-WWNET",
                 registrant=("APPLE-1", "Apple Inc.")), "arin", "17.1.2.3", "17.0.0.0/8"),
        # The registries run networks of their own: only IANA-level blocks are refused by registrant.
        (claimed("193.0.0.0", "193.0.7.255", network_type="ASSIGNED PI", name="RIPE-NCC",
                 registrant=("ORG-NCC1-RIPE", "RIPE Network Coordination Centre")), "ripencc", "193.0.6.139",
         "193.0.0.0/21"),
    ],
    ids=["operators-slash-8", "registrys-own-slash-21"],
)  # fmt: skip
def test_a_network_an_operator_holds_still_owns_its_hosts(
    registries: Registries, answer: dict, registry: str, address: str, cidr: str
) -> None:
    registries.standin.add(answer, registry=registry, asn=64500, country="NL")
    host = make_host(address)
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert (owner.status, owner.network.cidrs, owner.recipient.email) == ("resolved", [cidr], HOSTILE)


@pytest.mark.parametrize(
    ("answer", "reason", "kept"),
    [
        (claimed("0.0.0.0", "255.255.255.255"), "network_too_wide", True),  # a bad answer may pass
        (claimed("62.0.0.0", "62.255.255.255", network_type="ALLOCATED UNSPECIFIED"), "registry_block", False),
    ],
)
def test_an_expired_network_is_kept_only_while_the_answer_may_still_be_wrong(
    registries: Registries, answer: dict, reason: str, kept: bool
) -> None:
    """A registry's own block means the holder gave the address back: its old network must go."""
    host = make_host("62.239.237.1")
    resolve(registries)
    Network.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    serve(registries, "62.239.237.1", answer)
    assert resolve(registries)["failed"] == {reason: 1}
    owner = HostOwner.objects.get(host=host)
    assert (owner.network is not None, owner.recipient is not None) == (kept, kept)
    assert owner.status == ("resolved" if kept else "unknown")


# --- imported answers --------------------------------------------------------------------------


def test_imported_answers_that_no_registry_gives_an_operator_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a-everything.json").write_text(json.dumps(claimed("0.0.0.0", "255.255.255.255")))
    (tmp_path / "b-v6.json").write_text(json.dumps(claimed("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")))
    arin = claimed("74.0.0.0", "74.255.255.255", network_type="ALLOCATION", registrant=("ARIN", "ARIN"))
    (tmp_path / "c-arin.json").write_text(json.dumps(arin))
    (tmp_path / "d-good.json").write_text(json.dumps(claimed("81.0.0.0", "81.0.0.255")))
    report = rdap_cache_import(directory=tmp_path).as_dict()
    assert [(e["file"], e["reason"]) for e in report["errors"]] == [
        ("a-everything.json", "network_too_wide"),
        ("b-v6.json", "network_too_wide"),
        ("c-arin.json", "registry_block"),
    ]
    assert report["networks"] == ["81.0.0.0/24"]
    assert network_find_cached(ip="1.2.3.4") is None
    assert not Contact.objects.filter(email=HOSTILE, organisation__networks__cidrs=["0.0.0.0/0"]).exists()


def test_an_imported_answer_whose_self_link_names_an_address_outside_it_is_refused(tmp_path: Path) -> None:
    """A recorded answer says which address it was the answer for (its `self` link); when its range
    does not hold that address it is an answer about another network, as for a live lookup."""
    answer = claimed("81.0.0.0", "81.0.0.255", links=[{"rel": "self", "value": "https://rdap.db.ripe.net/ip/9.9.9.9"}])
    (tmp_path / "other.json").write_text(json.dumps(answer))
    report = rdap_cache_import(directory=tmp_path).as_dict()
    assert [(e["file"], e["reason"]) for e in report["errors"]] == [("other.json", "malformed_answer")]
    assert "9.9.9.9" in report["errors"][0]["detail"]
    assert not Network.objects.exists()


def test_every_real_recorded_answer_and_the_sample_still_import(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for number, entry in enumerate(json.loads((RDAP_DIR / "ipwhois-tests-rdap.json").read_text()).values()):
        (tmp_path / f"ipwhois-{number}.json").write_text(json.dumps(entry["response"]))
    for path in RDAP_DIR.glob("whoisit-rdap-*.json"):
        if json.loads(path.read_text()).get("objectClassName") == "ip network":
            shutil.copy(path, tmp_path / path.name)
    for path in SAMPLE_RDAP.iterdir():
        shutil.copy(path, tmp_path / f"sample-{path.name}")
    call_command("import_rdap_cache", str(tmp_path), "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == []
    assert report["loaded"] == len(list(tmp_path.glob("*.json")))


# --- networks cached before such answers were refused ------------------------------------------


def cached_before(start: str, end: str, *, queried: str = "", **claim: Any) -> Network:
    """A network as an earlier version stored it (parse_network now refuses it): a too-wide
    assignment, or a registry's own block given for `queried`."""
    raw = claimed(start, end, **claim)
    answer = RdapNetwork(
        start=start, end=end, cidrs=(), handle=raw["handle"], name=raw["name"], country="NL",
        registry="ripencc", asn=None, asn_description="", entities=tuple(iter_entities(raw["entities"])),
        raw=raw, network_type=raw["type"], queried=queried,
    )  # fmt: skip
    return network_save_answer(answer=answer, source=Network.Source.IMPORT)


def test_a_too_wide_network_cached_before_answers_for_no_address(registries: Registries) -> None:
    """Refusing new answers left one already cached answering: 62.0.0.0/7 for the hosts of 62/8
    from the database, and from memory for those of 63/8 as well."""
    cached_before("62.0.0.0", "63.255.255.255")
    host = make_host("62.239.237.1")
    assert network_find_cached(ip="62.239.237.1") is None
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert (owner.network.cidrs, owner.recipient.email) == (["62.239.237.0/24"], "zzdnsr@bt.com")


def test_hosts_owned_by_a_too_wide_network_cached_before_are_resolved_again(registries: Registries) -> None:
    wide = cached_before("62.0.0.0", "63.255.255.255")
    host = make_host("62.239.237.1")
    HostOwner.objects.create(host=host, status="resolved", network=wide, recipient=Contact.objects.get(email=HOSTILE))
    migration = importlib.import_module("disclosure.migrations.0003_expire_too_wide_networks")
    migration.expire_too_wide_networks(django_apps, None)
    assert [h.ip for h in hosts_needing_owner()] == ["62.239.237.1"]
    registries.standin.scripts["62.239.237.1"] = Script(status=503)  # the registry does not answer
    resolve(registries)
    owner = HostOwner.objects.get(host=host)  # the expired wide network is no fallback
    assert (owner.status, owner.reason, owner.network, owner.recipient) == ("unknown", "server_error", None, None)


REGISTRY_BLOCKS = [
    {"network_type": "ALLOCATED UNSPECIFIED", "name": "EU-ZZ-62",
     "registrant": ("ORG-NCC1-RIPE", "RIPE Network Coordination Centre")},
    {"network_type": "ALLOCATED PA", "name": "IANA-BLK", "registrant": ("IANA", "Internet Assigned Numbers Authority")},
    {"network_type": "ALLOCATION", "name": "NET62", "registrant": ("ARIN", "American Registry for Internet Numbers")},
]  # fmt: skip


@pytest.mark.parametrize("claim", REGISTRY_BLOCKS, ids=["allocated-unspecified", "iana-blk", "registrant-arin"])
def test_hosts_owned_by_a_registry_block_cached_before_are_resolved_again(registries: Registries, claim: dict) -> None:
    """Refusing registry blocks left those already cached answering: a host the RIPE NCC's EU-ZZ
    /8 (or IANA's block) had been the answer for kept the registry's abuse desk as its recipient,
    and the block was the fallback when the registry did not answer."""
    block = cached_before("62.0.0.0", "62.255.255.255", queried="62.239.237.1", **claim)
    host = make_host("62.239.237.1")
    HostOwner.objects.create(host=host, status="resolved", network=block, recipient=Contact.objects.get(email=HOSTILE))
    assert network_find_cached(ip="62.239.237.1") is None
    migration = importlib.import_module("disclosure.migrations.0005_expire_registry_blocks")
    migration.expire_registry_blocks(django_apps, None)
    assert [h.ip for h in hosts_needing_owner()] == ["62.239.237.1"]
    registries.standin.scripts["62.239.237.1"] = Script(status=503)  # the registry does not answer
    resolve(registries)
    owner = HostOwner.objects.get(host=host)  # the expired block is no fallback
    assert (owner.status, owner.reason, owner.network, owner.recipient) == ("unknown", "server_error", None, None)
    del registries.standin.scripts["62.239.237.1"]
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert (owner.network.cidrs, owner.recipient.email) == (["62.239.237.0/24"], "zzdnsr@bt.com")


def test_a_network_of_normal_size_cached_from_an_operator_is_not_expired_as_a_registry_block(
    registries: Registries,
) -> None:
    kept = cached_before("62.239.237.0", "62.239.237.255", network_type="ASSIGNED PA", name="BT-CORPORATE")
    migration = importlib.import_module("disclosure.migrations.0005_expire_registry_blocks")
    migration.expire_registry_blocks(django_apps, None)
    assert Network.objects.get(pk=kept.pk).expires_at == kept.expires_at
    assert network_find_cached(ip="62.239.237.1") == kept
