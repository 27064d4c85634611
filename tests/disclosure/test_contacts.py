"""Which addresses of an RDAP answer can be mailed: what staff see must be what is sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.mail.message import sanitize_address
from django.core.management import call_command

from disclosure.models import Contact, HostOwner
from disclosure.owners.contacts import address_problem, contact_candidates, unusable_addresses
from disclosure.rdap_client import parse_network
from disclosure.services import owners_resolve
from tests.disclosure.conftest import make_host

# Django's validate_email takes each of these; its mail code would send another address or fail.
UNUSABLE = [
    "abuse@exa\u200bmple.com",  # zero-width space: sent to abuse@example.com
    "abuse@a\u2028b.com",  # line separator: sent to abuse@ab.com
    "abuse@\u202emoc.elpmaxe",  # right-to-left override: UnicodeError at sending time
    '"a\x01b"@x.com',  # a control character that reaches the header unquoted
    "abuse@exa\u034fmple.com",  # combining grapheme joiner: IDNA maps it to nothing
    "abuse@stra\u00dfe.de",  # IDNA 2003 sends strasse.de
    "abuse@ex\uff0eample.com",  # a full-width dot: IDNA reads it as a dot
    "abuse@exa\u00admple.com",  # soft hyphen
    "abuse@exa\ufeffmple.com",  # byte order mark (zero-width no-break space)
    "ab\u200cuse@example.com",  # zero-width non-joiner in the local part
    '"ab"@example.com',  # sent without its quotes
    "root@localhost",  # delivered on our own mail host, not to the network's holder
    "noc@mail.localhost",  # loopback by definition (RFC 6761)
    "abuse@[127.0.0.1]",  # an address literal: delivered to whichever machine the answer names
    "abuse@[81.0.0.1]",
]
USABLE = [
    "abuse@example.com",
    "Abuse@Example.COM",
    "abuse-desk+nl@ripe.net",
    "abuse@b\u00fccher.example",  # a legitimate IDN: sent as xn--bcher-kva.example
    "abuse@xn--bcher-kva.example",
    "noc@sub.domain.example.org",
]


def answer(*emails: str) -> dict:
    return {
        "objectClassName": "ip network",
        "handle": "NET-1",
        "type": "ASSIGNED PA",
        "startAddress": "81.0.0.0",
        "endAddress": "81.0.0.255",
        "country": "NL",
        "port43": "whois.ripe.net",
        "entities": [
            {
                "handle": "AB-1",
                "roles": ["abuse"],
                "vcardArray": ["vcard", [["email", {}, "text", email] for email in emails]],
            },
            {"handle": "TECH-1", "roles": ["technical"], "vcardArray": ["vcard", [["email", {}, "text", "noc@x.nl"]]]},
        ],
    }


@pytest.mark.parametrize("email", UNUSABLE)
def test_an_address_that_would_be_sent_elsewhere_is_never_a_candidate(email: str) -> None:
    network = parse_network(answer(email))

    assert [c["email"] for c in contact_candidates(network)] == ["noc@x.nl"]
    assert [(a["email"], a["handle"]) for a in unusable_addresses(network.entities)] == [(email.lower(), "AB-1")]
    assert address_problem(email)


@pytest.mark.parametrize("email", USABLE)
def test_an_ordinary_address_is_a_candidate_and_sent_as_shown(email: str) -> None:
    network = parse_network(answer(email))
    local, _, domain = email.lower().rpartition("@")

    assert contact_candidates(network)[0]["email"] == email.lower()
    assert unusable_addresses(network.entities) == []
    assert sanitize_address(email.lower(), "utf-8") == f"{local}@{domain.encode('idna').decode('ascii')}"


def test_an_address_too_long_to_send_is_not_cut_into_another() -> None:
    """Read cut to 254 characters, this address became a different, valid one: its first 254."""
    domain = ".".join(["a" * 61] * 3 + ["b" * 59, "nl"])
    whole = f"abuse@{domain}xyz"
    assert len(whole) == 257 and not address_problem(whole[:254])
    network = parse_network(answer(whole))

    assert [c["email"] for c in contact_candidates(network)] == ["noc@x.nl"]
    assert [a["email"] for a in unusable_addresses(network.entities)] == [whole]


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("abuse@exa\u200bmple.com", "U+200B ZERO WIDTH SPACE"),
        ("abuse@\u202emoc.elpmaxe", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("abuse@a\u2028b.com", "U+2028 LINE SEPARATOR"),
        ('"a\x01b"@x.com', "U+0001"),
        ("abuse@exa\u034fmple.com", "would be sent as example.com"),
        ("abuse@@example.com", "not a valid e-mail address"),
        ("<img src=x>@x", "U+0020 SPACE"),
        ('"ab"@example.com', "quoted local part"),
        ("root@localhost", "no internet domain"),
        ("abuse@[127.0.0.1]", "no internet domain"),
    ],
)
def test_the_reason_says_what_is_wrong_without_the_character_itself(email: str, reason: str) -> None:
    problem = address_problem(email) or ""

    assert reason in problem
    assert not any(char in problem for char in "\u200b\u202e\u2028\x01\u034f")


@pytest.mark.django_db
def test_an_unusable_abuse_address_never_becomes_the_recipient(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(answer("abuse@exa\u200bmple.com", "abuse@a\u2028b.com")))
    call_command("import_rdap_cache", str(tmp_path), "--json")
    make_host("81.0.0.7")

    owners_resolve()
    owner = HostOwner.objects.get()

    assert owner.recipient is not None and owner.recipient.email == "noc@x.nl"
    assert list(Contact.objects.values_list("email", flat=True)) == ["noc@x.nl"]
