"""The RDAP client: the real ipwhois against the RDAP and DNS stand-ins, recorded answers of all
five registries in old (2015-16) and current formats, and every way a lookup can fail."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from disclosure.models import Network
from disclosure.owners.contacts import contact_candidates, network_holder
from disclosure.rdap_client import (
    MAX_ANSWER_BYTES,
    LookupOptions,
    LookupStats,
    RateLimiter,
    RdapError,
    _Opener,
    address_refusal,
    lookup_ip,
    parse_network,
)
from disclosure.services import network_resolve_addresses
from tests.disclosure.conftest import Registries
from tests.standins.rdap_server import RunningServer, Script

# address, registry, origin ASN, first CIDR, preferred e-mail, its role, network holder.
RECORDED = [
    ("74.125.225.229", "arin", 15169, "74.125.0.0/16", "arin-contact@google.com", "abuse", "Google Inc."),
    ("62.239.237.1", "ripencc", 2856, "62.239.237.0/24", "zzdnsr@bt.com", "abuse", "BT-CORPORATE"),
    ("2001:4860:4860::8888", "arin", 15169, "2001:4860::/32", "arin-contact@google.com", "abuse", "Google LLC"),
    (
        "200.57.141.161",
        "lacnic",
        19373,
        "200.57.141.161/32",
        "operacion.redes@triara.com",
        "abuse",
        "Triara.com, S.A. de C.V.",
    ),
    (
        "196.11.240.215",
        "afrinic",
        12091,
        "196.11.239.0/24",
        "ip-maint@mtnbusiness.co.za",
        "administrative",
        "ORG-VSA1-AFRINIC",
    ),
    ("210.107.73.73", "apnic", 3786, "210.107.0.0/17", "hostmaster@nic.or.kr", "abuse", "BORANET-NET-210-107"),
    (
        "2001:43f8:7b0::",
        "afrinic",
        37578,
        "2001:43f8:7b0::/48",
        "jpmuga@tespok.co.ke",
        "administrative",
        "ORG-TA38-AFRINIC",
    ),
    # Cymru knows no ASN for it ("NA"): the client falls back to ARIN's bootstrap.
    (
        "2801:10:c000::",
        "lacnic",
        None,
        "2801:10:c000::/128",
        "sistemas.red@uco.edu.co",
        "abuse",
        "Universidad Catolica de Oriente",
    ),
    ("2a00:2381:ffff::1", "ripencc", 2856, "2a00:2381:ffff::/64", "zzdnsr@bt.com", "abuse", "BT-WORLD-IPVSIX-LAUNCH"),
    (
        "2001:240:10c:1::ca20:9d1d",
        "apnic",
        2497,
        "2001:240::/32",
        "hostmaster@nic.ad.jp",
        "technical",
        "IIJ-JPNIC-JP-20000308",
    ),
    ("1.1.1.1", "apnic", 13335, "1.1.1.0/24", "helpdesk@apnic.net", "abuse", "APNIC-LABS"),
    ("130.59.1.1", "ripencc", 559, "130.59.0.0/16", "abuse@switch.ch", "abuse", "SWITCH-LAN"),
    ("13.64.5.5", "arin", 8075, "13.64.0.0/11", "abuse@microsoft.com", "abuse", "Microsoft Corporation"),
]


def lookup(registries: Registries, ip: str) -> tuple:
    stats = LookupStats()
    return lookup_ip(ip, options=registries.options, limiter=registries.limiter, stats=stats), stats


@pytest.mark.parametrize(("ip", "registry", "asn", "cidr", "email", "role", "holder"), RECORDED)
def test_it_resolves_recorded_answers_of_every_registry(
    registries: Registries, ip: str, registry: str, asn: int | None, cidr: str, email: str, role: str, holder: str
) -> None:
    network, stats = lookup(registries, ip)
    assert (network.registry, network.asn, network.cidrs[0]) == (registry, asn, cidr)
    best = contact_candidates(network)[0]
    assert (best["email"], best["role"]) == (email, role)
    assert network_holder(network)[1] == holder
    # Without an origin AS, ARIN's bootstrap finds the registry: its redirect is a request too.
    assert stats.requests == (1 if asn is not None else 2)
    assert network.raw["startAddress"]  # the raw answer is kept as sent


def test_it_follows_nested_entities_to_the_abuse_contact(registries: Registries) -> None:
    network, _ = lookup(registries, "13.107.4.4")  # MSFT: abuse sits inside the registrant entity
    best = contact_candidates(network)[0]
    assert best["email"] == "abuse@microsoft.com" and best["parent"] == "MSFT"
    assert "nested under MSFT" in best["why"]


def test_it_reads_the_asn_description_from_the_dns_step(registries: Registries) -> None:
    network, _ = lookup(registries, "74.125.225.229")
    assert network.asn_description == "GOOGLE, US"
    assert registries.dns.resolver.queries["origin"] == 1


@pytest.mark.parametrize(
    ("script", "reason", "permanent"),
    [
        (Script(status=404), "not_found", True),
        (Script(status=500), "server_error", False),
        (Script(status=503), "server_error", False),
        (Script(malformed=True), "malformed_json", False),
        (Script(delay=2.5), "timeout", False),
        (Script(rate_limited_times=10), "rate_limited", False),
    ],
)
def test_it_reports_each_failure_with_its_reason(
    registries: Registries, script: Script, reason: str, permanent: bool
) -> None:
    registries.standin.scripts["74.125.225.229"] = script
    with pytest.raises(RdapError) as caught:
        lookup(registries, "74.125.225.229")
    assert caught.value.reason == reason
    assert caught.value.permanent is permanent


def test_it_backs_off_on_429_and_then_succeeds(registries: Registries) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(rate_limited_times=2)
    network, stats = lookup(registries, "62.239.237.1")
    assert network.cidrs == ("62.239.237.0/24",)
    assert stats.requests == 3


def test_it_waits_as_long_as_retry_after_says(registries: Registries) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(rate_limited_times=1, retry_after="1")
    started = time.monotonic()
    network, stats = lookup(registries, "62.239.237.1")
    assert time.monotonic() - started >= 0.95
    assert stats.requests == 2 and network.handle == "62.239.237.0 - 62.239.237.255"


def test_an_address_outside_every_network_is_not_found(registries: Registries) -> None:
    with pytest.raises(RdapError) as caught:
        lookup(registries, "8.8.8.8")
    assert caught.value.reason == "not_found"


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("169.254.1.1", "link_local"),
        ("192.0.2.7", "private"),  # documentation: Python counts TEST-NET as private
        ("2001:db8::1", "private"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:10.0.0.1", "private"),
        ("not-an-ip", "invalid_address"),
    ],
)
def test_it_never_looks_up_non_public_addresses(registries: Registries, ip: str, reason: str) -> None:
    assert address_refusal(ip) == reason
    with pytest.raises(RdapError) as caught:
        lookup(registries, ip)
    assert caught.value.reason == reason and caught.value.permanent
    assert registries.ip_requests == 0
    assert sum(registries.dns.resolver.queries.values()) == 0


def test_public_addresses_are_allowed() -> None:
    assert address_refusal("74.125.225.229") is None
    assert address_refusal("2001:4860:4860::8888") is None


def test_the_rate_limiter_spaces_requests_per_registry() -> None:
    limiter = RateLimiter(20)  # one request per 50 ms and registry
    started = time.monotonic()
    for _ in range(5):
        limiter.wait("ripencc")
    limiter.wait("arin")  # another registry does not wait for RIPE's slots
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 1.0


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"objectClassName": "entity", "handle": "X"},
        {"objectClassName": "ip network", "startAddress": "1.2.3.4"},
        {"objectClassName": "ip network", "startAddress": "1.2.3.9", "endAddress": "1.2.3.0"},
        {"objectClassName": "ip network", "startAddress": "1.2.3.0", "endAddress": "2001:db8::"},
        {"objectClassName": "ip network", "startAddress": "1.2.3.x", "endAddress": "1.2.3.255"},
    ],
)
def test_it_rejects_answers_that_are_not_usable_networks(raw: object) -> None:
    with pytest.raises(RdapError) as caught:
        parse_network(raw)
    assert caught.value.reason == "malformed_answer"


def test_it_accepts_registry_quirks_in_addresses() -> None:
    network = parse_network(
        {"startAddress": "074.125.000.000", "endAddress": "074.125.255.255", "port43": "whois.arin.net"}
    )
    assert network.cidrs == ("74.125.0.0/16",) and network.registry == "arin"
    network = parse_network({"startAddress": "62.239.237.0/32", "endAddress": "62.239.237.255/32"})
    assert network.cidrs == ("62.239.237.0/24",)


@pytest.mark.parametrize(("value", "wait"), [("1.5", 1.5), ("soon", 1.0), ("\u00b2", 1.0), ("-3", 1.0)])
def test_an_unusable_retry_after_means_the_normal_backoff(registries: Registries, value: str, wait: float) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(rate_limited_times=1, retry_after=value)
    started = time.monotonic()
    network, stats = lookup(registries, "62.239.237.1")
    assert wait - 0.05 <= time.monotonic() - started < wait + 0.9
    assert stats.requests == 2 and network.cidrs == ("62.239.237.0/24",)


@pytest.mark.parametrize(
    "answer",
    [
        {"startAddress": "9.9.9.0", "endAddress": "9.9.9.255"},  # some other network
        {"startAddress": "2001:db8::", "endAddress": "2001:db8::ffff"},  # not even the same version
        {"cidr0_cidrs": [{"v4prefix": "9.9.9.0", "length": 24}]},  # a CIDR outside the range
    ],
)
def test_it_refuses_an_answer_about_another_network(registries: Registries, answer: dict) -> None:
    network = registries.standin.find("62.239.237.1")
    network.response = {**network.response, **answer}
    with pytest.raises(RdapError) as caught:
        lookup(registries, "62.239.237.1")
    assert caught.value.reason == "malformed_answer"


def test_every_cidr0_cidr_must_lie_inside_the_range() -> None:
    raw = {"startAddress": "81.0.0.0", "endAddress": "81.0.0.255"}
    with pytest.raises(RdapError) as caught:
        parse_network({**raw, "cidr0_cidrs": [{"v4prefix": "9.9.9.0", "length": 24}]})
    assert caught.value.reason == "malformed_answer" and "9.9.9.0/24" in caught.value.detail
    inside = parse_network({**raw, "cidr0_cidrs": [{"v4prefix": "81.0.0.0", "length": "25"}]})
    assert inside.cidrs == ("81.0.0.0/25",)


@pytest.mark.parametrize(
    ("asn", "origins", "expected"),
    [
        ("\u00b2", None, None),  # superscript two: isdigit() but no ASCII digit
        ("\u0661\u0662\u0663", None, None),  # Arabic-Indic digits
        ("99999999999999999999", None, None),
        ("4294967296", None, None),
        (None, ["\u00b2", "15169"], 15169),  # a bad origin is passed over
        (None, [99999999999999999999, 8075], 8075),
        ("\u00b2", [2856], 2856),  # an unusable ASN step falls back to the answer's own
    ],
)
def test_an_asn_is_ascii_digits_within_32_bits(asn: object, origins: list | None, expected: int | None) -> None:
    raw: dict = {"startAddress": "13.64.0.0", "endAddress": "13.95.255.255"}
    if origins is not None:
        raw["arin_originas0_originautnums"] = origins
    assert parse_network(raw, asn=asn).asn == expected
    assert parse_network(raw, asn="AS4294967295").asn == 4294967295  # the largest there is


@pytest.mark.parametrize(
    "extra",
    [
        {"cidr0_cidrs": 5},
        {"cidr0_cidrs": [5, "x", {"v4prefix": 7, "length": 24}, {"v4prefix": "81.0.0.0", "length": True}]},
        {"links": ["https://rdap.db.ripe.net/ip/81.0.0.0"], "port43": None},
        {"links": 7, "port43": ["whois.ripe.net"]},
        {"links": [{"href": 5, "value": {"x": 1}}, {"href": "http://[bad"}]},
        {"arin_originas0_originautnums": 5},
        {"arin_originas0_originautnums": {"0": 15169}},
        {"entities": [{"handle": ["X"], "roles": "abuse", "vcardArray": ["vcard", [[1, {}, "text", "x"]]]}]},
        {"entities": [{"roles": [{"r": 1}], "vcardArray": ["vcard", [["fn", {}, "text", ["A"]]]]}]},
        {"handle": {"h": 1}, "name": ["N"], "country": True},
    ],
)
def test_values_of_the_wrong_type_count_as_absent(extra: dict) -> None:
    network = parse_network({"startAddress": "81.0.0.0", "endAddress": "81.0.0.255", **extra})
    assert network.cidrs == ("81.0.0.0/24",) and network.asn is None
    assert (network.handle, network.name, network.country) == ("", "", "")
    assert all((e.handle, e.roles, e.name) == ("", (), "") for e in network.entities)


@pytest.mark.parametrize("address", ["8_1.0.0.0", "\u0668\u0661.0.0.0"])
def test_an_address_is_text_with_ascii_digits(address: object) -> None:
    with pytest.raises(RdapError) as caught:
        parse_network({"startAddress": address, "endAddress": "81.0.0.255"})
    assert caught.value.reason == "malformed_answer"


def test_text_is_made_storable_and_the_raw_answer_is_kept_otherwise_as_sent() -> None:
    raw = {
        "startAddress": "81.0.0.0",
        "endAddress": "81.0.0.255",
        "name": "NUL\x00NET",
        "handle": "H\ud800",  # a lone surrogate, as JSON's "\ud800" gives it
        "remarks": [{"description": ["a\x00b", 1, None, True, 2.5]}],
        "k\x00ey": {"z": 1, "a": 2},
        "entities": [
            {"handle": "AB\x00", "roles": ["abuse"], "vcardArray": ["vcard", [["fn", {}, "text", "Ab\x00use"]]]}
        ],
    }
    network = parse_network(raw)
    assert (network.name, network.handle) == ("NUL\u2400NET", "H\ufffd")
    assert (network.entities[0].handle, network.entities[0].name) == ("AB\u2400", "Ab\u2400use")
    assert network.raw["remarks"] == [{"description": ["a\u2400b", 1, None, True, 2.5]}]
    assert list(network.raw) == [k.replace("\x00", "\u2400") for k in raw]  # same keys, same order
    assert list(network.raw["k\u2400ey"]) == ["z", "a"]
    assert raw["name"] == "NUL\x00NET"  # the answer itself is left alone


@pytest.mark.parametrize(
    "body",
    [
        '{"objectClassName": "ip network", "x": ' + "[" * 50_000 + "]" * 50_000 + "}",  # too deep for json
        '{"objectClassName": "ip network", "x": ' + "[" * 100 + "]" * 100 + "}",  # deeper than we keep
        '{"objectClassName": "ip network", "startAddress": NaN}',
        '{"objectClassName": "ip network", "startAddress": 1e999}',
    ],
)
def test_an_answer_that_is_no_storable_json_is_malformed_json(registries: Registries, body: str) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(body=body.encode())
    with pytest.raises(RdapError) as caught:
        lookup(registries, "62.239.237.1")
    assert caught.value.reason == "malformed_json"


@pytest.mark.parametrize("drip_head", [False, True])
def test_the_timeout_bounds_the_whole_answer_not_each_read(registries: Registries, drip_head: bool) -> None:
    # 20 bytes 0.3 s apart: every read is quick, the answer takes 6 s; the timeout is 1 s.
    registries.standin.scripts["62.239.237.1"] = Script(drip=0.3, drip_head=drip_head)
    started = time.monotonic()
    with pytest.raises(RdapError) as caught:
        lookup(registries, "62.239.237.1")
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 2.0
    registries.standin.scripts["62.239.237.1"] = Script(drip=0.02, drip_head=drip_head)  # 0.4 s in all
    network, _ = lookup(registries, "62.239.237.1")
    assert network.cidrs == ("62.239.237.0/24",)


def test_an_ipv4_mapped_address_is_looked_up_as_ipv4(registries: Registries) -> None:
    network, stats = lookup(registries, "::ffff:62.239.237.1")
    assert network.cidrs == ("62.239.237.0/24",) and stats.requests == 1


def test_a_redirect_to_another_registry_by_name_is_followed(registries: Registries) -> None:
    # ARIN's bootstrap answers every address with a redirect to the registry that holds it.
    registries.standin.scripts["62.239.237.1"] = Script(redirect="https://rdap.db.ripe.net/ip/62.239.237.0")

    network, stats = lookup(registries, "62.239.237.1")

    assert network.cidrs == ("62.239.237.0/24",)
    assert stats.requests == 2
    assert registries.standin.paths[-1] == "/rdap.db.ripe.net/ip/62.239.237.0"


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("http://rdap.db.ripe.net/ip/62.239.237.0", "not HTTPS"),  # anyone on the path could rewrite the contacts
        ("https://127.0.0.1/ip/62.239.237.0", "not a public address"),
        ("https://[::1]/ip/62.239.237.0", "not a public address"),
        ("https://10.0.0.1/ip/62.239.237.0", "not a public address"),
        ("https://169.254.169.254/latest/meta-data/", "not a public address"),
        # Address literals in the other forms that the resolver takes (inet_aton): all 127.0.0.1.
        ("https://127.1/ip/62.239.237.0", "not a public address"),
        ("https://2130706433/ip/62.239.237.0", "not a public address"),
        ("https://0x7f000001/ip/62.239.237.0", "not a public address"),
        ("https://0177.0.0.1/ip/62.239.237.0", "not a public address"),
        ("https://169.254.169.254./latest/meta-data/", "not a public address"),
        ("https://localhost/ip/62.239.237.0", "not a public address"),
        ("https://metadata.localhost/ip/62.239.237.0", "not a public address"),
    ],
)
def test_a_redirect_off_https_or_into_a_private_network_is_refused(
    registries: Registries, location: str, why: str
) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(redirect=location)

    with pytest.raises(RdapError) as caught:
        lookup(registries, "62.239.237.1")

    assert (caught.value.reason, caught.value.permanent) == ("refused_url", True)
    assert why in caught.value.detail
    assert len(registries.standin.paths) == 1  # the redirect itself; nothing was fetched from where it led


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.20.30.40"],  # the hospital's own network
        ["127.0.0.1"],
        ["::1"],
        ["169.254.169.254"],  # a cloud metadata service
        ["fd00::1"],
        ["130.59.1.1", "192.168.1.10"],  # one public address does not make the other one safe
    ],
)
def test_a_redirect_to_a_name_that_resolves_into_a_private_network_is_refused(
    registries: Registries, addresses: list[str]
) -> None:
    # A hostile or compromised RDAP server names a host of the CERT's own network.
    registries.dns.resolver.names["pacs.intranet.example"] = addresses
    registries.standin.scripts["62.239.237.1"] = Script(redirect="https://pacs.intranet.example/ip/62.239.237.0")

    with pytest.raises(RdapError) as caught:
        lookup(registries, "62.239.237.1")

    assert (caught.value.reason, caught.value.permanent) == ("refused_url", True)
    assert "pacs.intranet.example" in caught.value.detail and "not a public address" in caught.value.detail
    assert registries.dns.resolver.queries["address"] >= 1  # asked through RDAP_DNS_SERVER
    assert len(registries.standin.paths) == 1  # the redirect itself; nothing was fetched from where it led


def test_a_redirect_to_a_name_with_public_addresses_is_followed(registries: Registries) -> None:
    # LACNIC sends Brazilian networks to NIC.br's own RDAP server.
    registries.dns.resolver.names["rdap.registro.br"] = ["200.160.2.3", "2001:12ff:0:2::3"]
    registries.standin.scripts["62.239.237.1"] = Script(redirect="https://rdap.registro.br/ip/62.239.237.0")

    network, stats = lookup(registries, "62.239.237.1")

    assert network.cidrs == ("62.239.237.0/24",) and stats.requests == 2
    assert registries.standin.paths[-1] == "/rdap.registro.br/ip/62.239.237.0"


def test_a_redirect_to_a_name_that_does_not_resolve_is_a_connection_error(registries: Registries) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(redirect="https://gone.example/ip/62.239.237.0")

    with pytest.raises(RdapError) as caught:
        lookup(registries, "62.239.237.1")

    assert (caught.value.reason, caught.value.permanent) == ("connection_error", False)
    assert "gone.example" in caught.value.detail
    assert len(registries.standin.paths) == 1


def test_the_registries_own_names_are_not_resolved_first(registries: Registries) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(redirect="https://rdap.db.ripe.net/ip/62.239.237.0")
    lookup(registries, "62.239.237.1")
    assert registries.dns.resolver.queries["address"] == 0


def test_a_checked_name_is_reached_at_the_address_that_was_checked(registries: Registries) -> None:
    # Asked again when connecting, the name could answer with another address (DNS rebinding):
    # the connection goes to the address checked. "localhost" is what the system resolver
    # answers without the network (127.0.0.1); the address checked is 127.0.0.2.
    with RunningServer(registries.standin, address="127.0.0.2") as server:
        opener = _Opener(LookupOptions(timeout=1.0), RateLimiter(0), LookupStats())
        opener.pins["localhost"] = ("127.0.0.2",)
        # The opener's own open() takes HTTPS URLs only; its handlers are what connects.
        url = f"http://localhost:{server.port}/rdap.db.ripe.net/ip/62.239.237.1"
        with urllib.request.OpenerDirector.open(opener, url) as response:
            assert response.status == 200
    assert registries.standin.paths == ["/rdap.db.ripe.net/ip/62.239.237.1"]


def test_an_answer_with_more_entities_than_any_registry_sends_is_refused_quickly(registries: Registries) -> None:
    # ipwhois compares each nested entity's handle with all those before it: 100,000 of them in
    # 2 MB kept a worker busy for more than a minute, far past RDAP_TIMEOUT.
    answer = dict(registries.standin.find("62.239.237.1").response)
    answer["entities"] = [
        {"handle": "ORG", "roles": ["registrant"], "entities": [{"handle": str(i)} for i in range(100_000)]}
    ]
    body = json.dumps(answer, separators=(",", ":")).encode()
    assert len(body) < MAX_ANSWER_BYTES
    registries.standin.scripts["62.239.237.1"] = Script(body=body)
    started = time.monotonic()

    with pytest.raises(RdapError) as caught:
        lookup(registries, "62.239.237.1")

    assert time.monotonic() - started < 5
    assert (caught.value.reason, caught.value.permanent) == ("answer_too_large", True)
    assert "entities" in caught.value.detail


@pytest.mark.django_db
@pytest.mark.parametrize(("country", "stored"), [("nl", "NL"), ("ßß", "ßß"), ("ﬀ", "ﬀ")])
def test_a_country_is_kept_in_the_two_characters_it_came_in(registries: Registries, country: str, stored: str) -> None:
    # Upper case, "ß" is "SS" and "ﬀ" is "FF": two characters became four, which PostgreSQL's
    # varchar(2) refused, and the whole answer, contacts included, was not saved.
    network = registries.standin.find("62.239.237.1")
    network.response = {**network.response, "country": country}

    outcomes, _ = network_resolve_addresses(
        addresses=["62.239.237.1"], options=registries.options, limiter=registries.limiter
    )

    outcome = outcomes["62.239.237.1"]
    assert (outcome.reason, outcome.detail) == ("", "")
    assert outcome.network is not None and outcome.network.country == stored
    assert Network.objects.get().country == stored
