"""Operator attribution from banners against the Dutch healthcare registry: pure, no database."""

from __future__ import annotations

import json
import time

import pytest

from disclosure.owners.attribution import BannerFacts, attribute_operator, facts_from_host
from disclosure.owners.registry import load_registry

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
    ]
    facts = facts_from_host(hostnames=["host.example"], org="KPN B.V.", raws=raws)
    assert "web.example.nl" in facts.hostnames and "host.example" in facts.hostnames
    assert "mumc.nl" in facts.cert_names and "pacs.azm.nl" in facts.cert_names
    assert facts.titles == ("Login",) and facts.cert_orgs == ("azM",)
    assert attribute_operator(facts, REGISTRY).organisation.name == "Maastricht UMC+"


def test_hostile_input_is_bounded_and_fast() -> None:
    long = "a" * 200_000
    raws = [
        json.dumps(
            {
                "http": {"title": long},
                "ssl": {"cert": {"extensions": [{"name": "subjectAltName", "data": "a." * 100_000}]}},
            }
        )
    ]
    started = time.monotonic()
    facts = facts_from_host(hostnames=[long], org=long, raws=raws)
    attribute_operator(facts, REGISTRY)
    assert time.monotonic() - started < 2.0
    assert all(len(t) <= 500 for t in facts.titles) and len(facts.org) <= 500


def test_a_registrant_name_is_matched_whole() -> None:
    from disclosure.owners.attribution import registry_match_name

    assert registry_match_name("Erasmus MC", REGISTRY).name == "Erasmus MC"
    assert registry_match_name("Leids Universitair Medisch Centrum", REGISTRY).name.startswith("Leids")
    assert registry_match_name("LUMC", REGISTRY).name.startswith("Leids")
    assert registry_match_name("Erasmus MC Foundation Hosting", REGISTRY) is None
    assert registry_match_name("lumc", REGISTRY) is None
    assert registry_match_name("Microsoft Azure", REGISTRY) is None
