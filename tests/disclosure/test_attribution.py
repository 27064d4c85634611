"""Operator attribution from banners against the Dutch healthcare registry (pure, no database), and
which registry networks belong to a registered hospital (the last tests, with the database)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from disclosure.models import Contact, HostOwner, Network
from disclosure.owners.attribution import BannerFacts, attribute_operator, facts_from_host, registry_match_name
from disclosure.owners.registry import load_registry
from disclosure.services import hosts_needing_owner, owner_recompute, owners_resolve
from harvest.services import harvest_execute, harvest_file_start
from tests.disclosure.conftest import make_host

REGISTRY = load_registry()


def attribute(**facts: object) -> tuple[str, str] | None:
    found = attribute_operator(BannerFacts(**facts), REGISTRY)
    return (found.organisation.name, found.evidence) if found else None


def test_the_registry_is_read_from_the_shared_file() -> None:
    names = {o.name for o in REGISTRY}
    assert {"Erasmus MC", "Amsterdam UMC", "OLVG"} <= names
    assert next(o for o in REGISTRY if o.name == "Erasmus MC").kind == "umc"


@pytest.mark.parametrize(
    ("facts", "operator"),
    [
        ({"hostnames": ("pacs.erasmusmc.nl",)}, "Erasmus MC"),
        ({"hostnames": ("erasmusmc.nl",)}, "Erasmus MC"),
        ({"hostnames": ("ris.vumc.nl",)}, "Amsterdam UMC"),
        ({"cert_names": ("dicom.lumc.nl",)}, "Leids Universitair Medisch Centrum"),
        ({"cert_orgs": ("Stichting Radboud universitair medisch centrum",)}, "Radboudumc"),
        ({"titles": ("PACS Web - OLVG",)}, "OLVG"),
        ({"titles": ("Welkom bij het Onze Lieve Vrouwe Gasthuis",)}, "OLVG"),
        ({"org": "Jeroen Bosch Ziekenhuis"}, "Jeroen Bosch Ziekenhuis"),
        ({"org": "JBZ"}, "Jeroen Bosch Ziekenhuis"),
        ({"titles": ("Maxima MC portal",)}, "Máxima Medisch Centrum"),
    ],
)
def test_it_recognises_the_operator(facts: dict, operator: str) -> None:
    found = attribute(**facts)
    assert found is not None and found[0] == operator


@pytest.mark.parametrize(
    "facts",
    [
        {"hostnames": ("notlumc.nl",)},  # a suffix is not a subdomain
        {"hostnames": ("lumc.nl.evil.example",)},
        {"org": "Amazon.com, Inc."},
        {"titles": ("jbz tools",)},  # short aliases only match as written, as a word
        {"titles": ("Camcorder shop",)},  # "amc" inside a word
        {"titles": ("OLVGX",)},
        {},
    ],
)
def test_it_does_not_guess(facts: dict) -> None:
    assert attribute(**facts) is None


def test_a_domain_beats_a_name() -> None:
    found = attribute(hostnames=("pacs.umcg.nl",), org="OLVG")
    assert found[0] == "Universitair Medisch Centrum Groningen" and "hostname pacs.umcg.nl" in found[1]


def test_facts_come_from_shodan_records() -> None:
    raws = [
        json.dumps({"http": {"title": "Login"}, "hostnames": ["Web.Example.NL"]}),
        json.dumps(
            {
                "ssl": {
                    "cert": {
                        "subject": {"CN": "*.mumc.nl", "O": "azM"},
                        "extensions": [
                            {"name": "subjectAltName", "data": "0\x1a\x82\x0bpacs.azm.nl\x82\x0bris.mumc.nl"}
                        ],
                    }
                }
            }
        ),
        "not json at all",
        json.dumps(["a list"]),
        json.dumps({"hostnames": ["host.example"], "domains": ["example"]}),
    ]
    facts = facts_from_host(org="KPN B.V.", raws=raws)
    assert "web.example.nl" in facts.hostnames and "host.example" in facts.hostnames
    assert "mumc.nl" in facts.cert_names and "pacs.azm.nl" in facts.cert_names
    assert facts.titles == ("Login",) and facts.cert_orgs == ("azM",)
    assert attribute_operator(facts, REGISTRY).organisation.name == "Maastricht UMC+"


def test_certificate_names_in_shodan_s_escaped_form_are_read_without_their_length_bytes() -> None:
    # Real records show the extension's DER bytes as the text of a Python bytes literal; the length
    # byte before each name (an escape such as "\\x0c", or a printable byte: 109 is "m") is not
    # part of the name.
    names = [b"pacs.olvg.nl", b"ris." + b"a" * 102 + b".nl"]
    der = b"".join(b"\x82" + bytes([len(n)]) + n for n in names)
    escaped = repr(b"0" + bytes([len(der)]) + der)[2:-1]
    assert "\\x82\\x0cpacs" in escaped and "\\x82mris." in escaped
    cert = {"extensions": [{"name": "subjectAltName", "data": escaped}]}
    facts = facts_from_host(org="", raws=[json.dumps({"ssl": {"cert": cert}})])
    assert facts.cert_names == tuple(n.decode() for n in names)
    assert attribute_operator(facts, REGISTRY).organisation.name == "OLVG"


def test_hostile_input_is_bounded_and_fast() -> None:
    long = "a" * 200_000
    raws = [
        json.dumps(
            {
                "http": {"title": long},
                "hostnames": [long],
                "ssl": {"cert": {"extensions": [{"name": "subjectAltName", "data": "a." * 100_000}]}},
            }
        )
    ]
    started = time.monotonic()
    facts = facts_from_host(org=long, raws=raws)
    attribute_operator(facts, REGISTRY)
    assert time.monotonic() - started < 2.0
    assert all(len(t) <= 500 for t in facts.titles) and len(facts.org) <= 500


def test_a_registrant_name_is_matched_whole() -> None:
    assert registry_match_name("Erasmus MC", REGISTRY, country="NL").name == "Erasmus MC"
    assert registry_match_name("Leids Universitair Medisch Centrum", REGISTRY, country="NL").name.startswith("Leids")
    assert registry_match_name("OLVG", REGISTRY, country="NL").name == "OLVG"  # a short name, not an alias
    assert registry_match_name("Erasmus MC Foundation Hosting", REGISTRY, country="NL") is None
    assert registry_match_name("Microsoft Azure", REGISTRY, country="NL") is None


@pytest.mark.parametrize("name", ["AMC", "VUmc", "LUMC", "UMCG", "MST", "HMC", "CWZ", "JBZ", "azM", "AVL"])
def test_a_short_alias_alone_never_makes_a_registrant_a_hospital(name: str) -> None:
    assert registry_match_name(name, REGISTRY, country="NL") is None
    assert registry_match_name(name, REGISTRY) is None
    assert attribute(org=name) is not None  # in a banner the alias still names the hospital


@pytest.mark.parametrize(("country", "dutch"), [("NL", True), ("nl", True), ("US", False), ("DE", False), ("", False)])
def test_a_registrant_is_a_dutch_hospital_only_on_a_dutch_network(country: str, dutch: bool) -> None:
    found = registry_match_name("Isala", REGISTRY, country=country)

    assert (found.name if found else None) == ("Isala" if dutch else None)


def ip_network(handle: str, first: str, last: str, country: str, registrant: str, email: str) -> dict:
    return {
        "objectClassName": "ip network",
        "handle": handle,
        "startAddress": first,
        "endAddress": last,
        "country": country,
        "port43": "whois.arin.net" if country == "US" else "whois.ripe.net",
        "entities": [
            {
                "handle": f"{handle}-ORG",
                "roles": ["registrant"],
                "vcardArray": ["vcard", [["fn", {}, "text", registrant], ["kind", {}, "text", "org"]]],
                "entities": [
                    {
                        "handle": f"{handle}-AB",
                        "roles": ["abuse"],
                        "vcardArray": ["vcard", [["email", {}, "text", email]]],
                    }
                ],
            }
        ],
    }


def import_answers(directory: Path, *answers: dict) -> None:
    directory.mkdir()
    for position, answer in enumerate(answers):
        (directory / f"{position}.json").write_text(json.dumps(answer))
    call_command("import_rdap_cache", str(directory), "--json")


@pytest.mark.django_db
def test_a_foreign_network_named_amc_does_not_take_over_amsterdam_umc(tmp_path: Path) -> None:
    make_host("81.0.0.7", hostnames=["pacs.amsterdamumc.nl"])
    import_answers(tmp_path / "own", ip_network("AUMC-NET", "81.0.0.0", "81.0.0.255", "NL", "Zorghost", "a@zh.nl"))
    owners_resolve()
    amsterdam = HostOwner.objects.get().operator
    Contact.objects.create(organisation=amsterdam, email="cert@amsterdamumc.nl", role="security")

    # An unrelated company registered as "AMC", whose abuse desk would come before staff contacts.
    import_answers(
        tmp_path / "us",
        ip_network("NET-AMC-1", "198.51.1.0", "198.51.1.255", "US", "AMC", "abuse@amc-entertainment.example"),
    )
    owner = owner_recompute(owner=HostOwner.objects.get())

    assert amsterdam.name == "Amsterdam UMC"
    assert Network.objects.get(handle="NET-AMC-1").holder != amsterdam
    assert owner.operator == amsterdam and owner.recipient.email == "cert@amsterdamumc.nl"


@pytest.mark.django_db
def test_a_foreign_network_under_a_hospitals_full_name_is_not_the_hospitals(tmp_path: Path) -> None:
    import_answers(tmp_path / "us", ip_network("NET-ISALA", "198.51.2.0", "198.51.2.255", "US", "Isala", "a@isala.us"))

    assert Network.objects.get().holder.source == "rdap"


@pytest.mark.parametrize("name", ["pacs.maasstadzie\u212aenhuis.nl", "*.maartens\u212aliniek.nl"])
def test_a_look_alike_name_with_the_kelvin_sign_is_not_the_hospitals(name: str) -> None:
    """str.lower() turns the Kelvin sign U+212A, which looks like K, into an ASCII k: a name in
    another (IDN) domain was taken for the hospital's. DNS names compare without case in ASCII only."""
    record = {"ssl": {"cert": {"subject": {"CN": name}}}, "hostnames": [name]}
    facts = facts_from_host(org="", raws=[json.dumps(record)])
    assert attribute_operator(facts, REGISTRY) is None
    upper = facts_from_host(org="", raws=[json.dumps({"hostnames": ["PACS.MaasstadZiekenhuis.NL"]})])
    assert attribute_operator(upper, REGISTRY).organisation.name == "Maasstad Ziekenhuis"


@pytest.mark.django_db
def test_an_address_the_hospitals_registration_no_longer_names_is_not_its_operator_contact(tmp_path: Path) -> None:
    """A hospital on its own network is the holder, so its network's RDAP contacts serve it as
    operator. When the registry replaced the abuse address, the old contact stayed among the
    hospital's contacts and, being the older row of the same role, went on being chosen as the
    operator's contact for its systems, on its own network and elsewhere."""
    own = make_host("81.0.0.7", hostnames=["pacs.erasmusmc.nl"])
    cloud = make_host("198.51.3.7", hostnames=["viewer.erasmusmc.nl"])
    hoster = ip_network("NET-CLOUD", "198.51.3.0", "198.51.3.255", "US", "Cloud Inc", "abuse@cloud.example")
    hospital = ip_network("EMC-NET", "81.0.0.0", "81.0.0.255", "NL", "Erasmus MC", "old-abuse@erasmusmc.nl")
    import_answers(tmp_path / "first", hoster, hospital)
    owners_resolve()
    assert {o.recipient.email for o in HostOwner.objects.all()} == {"old-abuse@erasmusmc.nl"}

    hospital["entities"][0]["entities"][0]["vcardArray"][1][0][3] = "cert@erasmusmc.nl"
    import_answers(tmp_path / "again", hospital)  # the registry's answer now names another address

    assert owner_recompute(owner=HostOwner.objects.get(host=own)).recipient.email == "cert@erasmusmc.nl"
    assert owner_recompute(owner=HostOwner.objects.get(host=cloud)).recipient.email == "cert@erasmusmc.nl"
    assert Contact.objects.filter(email="old-abuse@erasmusmc.nl").exists()  # kept, with its history


@pytest.mark.django_db
def test_registrants_without_a_handle_are_not_one_organisation(tmp_path: Path) -> None:
    """RDAP makes an entity's handle optional. Holders were found again by registry and handle
    only, so every registrant without one was the same organisation: the first one's name, and
    a contact staff added for one network's holder mailed about the other's hosts."""
    first = ip_network("NET-A", "198.51.4.0", "198.51.4.255", "US", "Alpha Hosting", "abuse@alpha.example")
    second = ip_network("NET-B", "198.51.5.0", "198.51.5.255", "US", "Beta Cloud", "abuse@beta.example")
    nameless = ip_network("NET-C", "198.51.6.0", "198.51.6.255", "US", "", "abuse@gamma.example")
    for answer in (first, second, nameless):
        del answer["handle"], answer["entities"][0]["handle"]
    import_answers(tmp_path / "answers", first, second, nameless)

    holders = {n.start_address: n.holder for n in Network.objects.all()}
    assert holders["198.51.4.0"].name == "Alpha Hosting" and holders["198.51.5.0"].name == "Beta Cloud"
    assert holders["198.51.6.0"].name == "198.51.6.0 - 198.51.6.255"  # no handle, no name: the range
    assert len({h.pk for h in holders.values()}) == 3


@pytest.mark.django_db
def test_an_isp_abuse_desk_in_a_hospitals_answer_is_not_the_hospitals_contact_elsewhere(tmp_path: Path) -> None:
    """A hospital's PA assignment shows its provider's abuse desk (RIPE inherits the abuse-c of the
    provider's allocation). As the hospital's network's contacts serve it as operator, every one
    of its systems anywhere (at a cloud provider, too) went to that provider's abuse desk, which
    has nothing to do with them, instead of to the hospital's own address in the same answer."""
    own = make_host("81.0.0.7", hostnames=["pacs.erasmusmc.nl"])
    cloud = make_host("198.51.3.7", hostnames=["viewer.erasmusmc.nl"])
    hoster = ip_network("NET-CLOUD", "198.51.3.0", "198.51.3.255", "US", "Cloud Inc", "abuse@cloud.example")
    hospital = ip_network("EMC-NET", "81.0.0.0", "81.0.0.255", "NL", "Erasmus MC", "abuse@provider.example")
    noc = {
        "handle": "EMC-NOC",
        "roles": ["technical"],
        "vcardArray": ["vcard", [["email", {}, "text", "noc@erasmusmc.nl"]]],
    }
    hospital["entities"].append(noc)
    hospital["type"], hoster["type"] = "ASSIGNED PA", "REASSIGNMENT"  # they answer for their hosts
    import_answers(tmp_path / "answers", hoster, hospital)
    owners_resolve()
    for host in (own, cloud):
        owner = HostOwner.objects.get(host=host)
        assert owner.operator.name == "Erasmus MC"
        assert (owner.recipient.email, owner.recipient_reason) == (
            "noc@erasmusmc.nl",
            "operator Erasmus MC: technical contact (RDAP)",
        )
    # Without an address of its own in the answer, the hospital's systems go to each network's
    # abuse desk: on its own network that is still the provider's.
    Contact.objects.filter(email="noc@erasmusmc.nl").update(enabled=False)
    assert owner_recompute(owner=HostOwner.objects.get(host=own)).recipient.email == "abuse@provider.example"
    assert owner_recompute(owner=HostOwner.objects.get(host=cloud)).recipient.email == "abuse@cloud.example"


@pytest.mark.django_db
def test_a_domain_staff_give_a_hospital_chooses_its_hosts_recipients_again(tmp_path: Path) -> None:
    """An RDAP contact serves a hospital as operator only at one of its domains, which staff edit on
    the organisation. A domain they added (the hospital's IT runs on another one) changed nothing
    that the next run looked at: its systems elsewhere kept the hoster's abuse desk until their
    network expired, though the hospital's own address was a candidate again."""
    cloud = make_host("198.51.3.7", hostnames=["viewer.erasmusmc.nl"])
    hoster = ip_network("NET-CLOUD", "198.51.3.0", "198.51.3.255", "US", "Cloud Inc", "abuse@cloud.example")
    hospital = ip_network("EMC-NET", "81.0.0.0", "81.0.0.255", "NL", "Erasmus MC", "abuse@emc-it.example")
    hospital["type"], hoster["type"] = "ASSIGNED PI", "REASSIGNMENT"
    import_answers(tmp_path / "answers", hoster, hospital)
    owners_resolve()
    owner = HostOwner.objects.get(host=cloud)
    assert owner.recipient.email == "abuse@cloud.example"  # emc-it.example is none of its domains
    erasmus = owner.operator
    erasmus.domains = [*erasmus.domains, "emc-it.example"]
    erasmus.save()
    assert [h.ip for h in hosts_needing_owner()] == ["198.51.3.7"]
    owners_resolve()
    owner = HostOwner.objects.get(host=cloud)
    assert (owner.recipient.email, owner.recipient_reason) == (
        "abuse@emc-it.example",
        "operator Erasmus MC: abuse contact (RDAP)",
    )
    erasmus.domains = erasmus.domains[:-1]  # taken away again: the hoster's desk once more
    erasmus.save()
    owners_resolve()
    assert HostOwner.objects.get(host=cloud).recipient.email == "abuse@cloud.example"


def _ingest(path: Path, *records: dict, hosts: bool = False) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    harvest_execute(run=harvest_file_start(path=path, hosts=hosts))


def _hoster_answers(tmp_path: Path) -> None:
    """A cached network whose answer has a recipient: the owner resolves, and is settled."""
    answer = ip_network("NET-81", "81.0.0.0", "81.0.0.255", "NL", "Zorghost", "abuse@zorghost.example")
    answer["type"] = "ASSIGNED PA"
    import_answers(tmp_path / "answers", answer)


def _dicom(day: int, hostnames: list[str], **extra: object) -> dict:
    return {
        "ip_str": "81.0.0.7",
        "port": 104,
        "transport": "tcp",
        "data": "DICOM association accepted",
        "timestamp": f"2026-01-0{day}T00:00:00",
        "hostnames": hostnames,
        "domains": sorted({".".join(h.split(".")[-2:]) for h in hostnames}),
        **extra,
    }


@pytest.mark.django_db
def test_a_name_the_address_lost_no_longer_makes_its_old_hospital_the_operator(tmp_path: Path) -> None:
    """Ingest keeps a host's hostnames as every name ever seen, and attribution read them: once the
    address's reverse name moved to another hospital, the host kept going to the old one, and its
    advisory (TLP:AMBER) to the wrong organisation. The services' current records decide."""
    _hoster_answers(tmp_path)
    _ingest(tmp_path / "first.json", _dicom(1, ["pacs.erasmusmc.nl"]))
    owners_resolve()
    assert HostOwner.objects.get().operator.name == "Erasmus MC"

    _ingest(tmp_path / "moved.json", _dicom(2, ["pacs.lumc.nl"]))
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.7"]
    owners_resolve()
    owner = HostOwner.objects.get()
    assert owner.operator.name == "Leids Universitair Medisch Centrum"
    assert owner.operator_evidence == "hostname pacs.lumc.nl is in lumc.nl"
    # The host still shows every name it was seen with.
    assert HostOwner.objects.get().host.hostnames == ["pacs.erasmusmc.nl", "pacs.lumc.nl"]


@pytest.mark.django_db
def test_a_newer_record_with_fewer_hostnames_takes_the_host_up_again(tmp_path: Path) -> None:
    """A shrinking list left the union of names as it was, so nothing marked the host changed and
    the next run did not attribute it again: its old operator stayed."""
    _hoster_answers(tmp_path)
    _ingest(tmp_path / "first.json", _dicom(1, ["pacs.erasmusmc.nl", "node7.zorghost.nl"]))
    owners_resolve()
    assert HostOwner.objects.get().operator.name == "Erasmus MC"
    assert list(hosts_needing_owner()) == []

    _ingest(tmp_path / "fewer.json", _dicom(2, ["node7.zorghost.nl"]))
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.7"]
    owners_resolve()
    assert HostOwner.objects.get().operator is None
    assert list(hosts_needing_owner()) == []

    _ingest(tmp_path / "same.json", _dicom(3, ["node7.zorghost.nl"]))  # seen again, the same names
    assert list(hosts_needing_owner()) == []


@pytest.mark.django_db
def test_a_host_lookup_s_names_attribute_its_banners_until_a_newer_lookup_drops_them(tmp_path: Path) -> None:
    """A banner of a host lookup often has no hostnames of its own ("hostnames": []): the host's
    top-level ones are its names, and attribution must see them in what is stored for it."""
    _hoster_answers(tmp_path)
    banner = {k: v for k, v in _dicom(1, []).items() if k not in ("ip_str", "domains")}
    lookup = {"ip_str": "81.0.0.7", "hostnames": ["pacs.erasmusmc.nl"], "domains": ["erasmusmc.nl"], "data": [banner]}
    _ingest(tmp_path / "first.jsonl", lookup, hosts=True)
    owners_resolve()
    assert HostOwner.objects.get().operator.name == "Erasmus MC"

    newer = {**lookup, "hostnames": [], "domains": [], "data": [{**banner, "timestamp": "2026-01-02T00:00:00"}]}
    _ingest(tmp_path / "newer.jsonl", newer, hosts=True)
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.7"]
    owners_resolve()
    assert HostOwner.objects.get().operator is None


@pytest.mark.django_db
def test_a_host_whose_records_name_two_hospitals_is_attributed_by_its_lowest_port(tmp_path: Path) -> None:
    """Attribution takes the first name that matches, so the order of a host's records decides
    between two hospitals: by port, not by the order the database returns the rows in."""
    _hoster_answers(tmp_path)
    # The higher port is stored first: a scan of the table returns its row first.
    _ingest(tmp_path / "a.json", {**_dicom(1, ["pacs.lumc.nl"]), "port": 11112})
    _ingest(tmp_path / "b.json", _dicom(1, ["pacs.erasmusmc.nl"]))
    owners_resolve()
    assert HostOwner.objects.get().operator.name == "Erasmus MC"
