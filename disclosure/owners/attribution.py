"""Who operates a host, from what its banners tell: pure functions, no I/O.

Evidence, strongest first: a hostname or TLS certificate name inside a registered domain; a
registered name or alias in the certificate's organisation; in an HTTP title; in Shodan's `org`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from disclosure.owners.registry import RegistryOrganisation
from harvest.classify.types import san_dns_names

MAX_RAW = 200_000  # bytes of a Shodan record we parse for attribution
MAX_TEXT = 500
NON_WORD = re.compile(r"[^0-9a-z]+")
WORD = re.compile(r"[0-9A-Za-z+]+")
SHORT_ALIAS = 5  # aliases shorter than this (AMC, JBZ, MST) must match case-sensitively as a word
REGISTRY_COUNTRY = "NL"  # every organisation of the registry is Dutch
# DNS names compare without case in ASCII only (RFC 4343): str.lower() also turns the Kelvin sign
# U+212A, which looks like K, into "k", and so a look-alike IDN name into a hospital's.
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@dataclass(frozen=True)
class BannerFacts:
    hostnames: tuple[str, ...] = ()
    cert_names: tuple[str, ...] = ()
    cert_orgs: tuple[str, ...] = ()
    titles: tuple[str, ...] = ()
    org: str = ""


@dataclass(frozen=True)
class Attribution:
    organisation: RegistryOrganisation
    evidence: str


def facts_from_host(*, org: str, raws: Iterable[str]) -> BannerFacts:
    """Collect the facts from a host's Shodan org and its services' current raw records. Names
    come from those records alone, not from every name the host was ever seen with
    (Host.hostnames): a name the address lost (reassigned, its reverse name moved to another
    hospital) must not attribute it to its old operator."""
    names: list[str] = []
    cert_names: list[str] = []
    cert_orgs: list[str] = []
    titles: list[str] = []
    for raw in raws:
        try:
            record = json.loads(raw[:MAX_RAW]) if raw else {}
        except (ValueError, RecursionError):
            # Cut at MAX_RAW, not JSON, or nested deeper than json recurses (ingest keeps up to
            # orjson's 1,024 levels): attribute from the rest.
            continue
        if not isinstance(record, dict):
            continue
        names.extend(_strings(record.get("hostnames")))
        names.extend(_strings(record.get("domains")))
        cert = (record.get("ssl") or {}).get("cert") if isinstance(record.get("ssl"), dict) else None
        if isinstance(cert, dict):
            raw_subject = cert.get("subject")
            subject: dict = raw_subject if isinstance(raw_subject, dict) else {}
            cert_names.extend(_strings([subject.get("CN")]))
            cert_orgs.extend(_strings([subject.get("O")]))
            for extension in cert.get("extensions") or []:
                if isinstance(extension, dict) and extension.get("name") == "subjectAltName":
                    cert_names.extend(san_dns_names(extension.get("data"), 4000))
        http = record.get("http")
        if isinstance(http, dict):
            titles.extend(_strings([http.get("title")]))
    return BannerFacts(
        hostnames=_unique(n.translate(ASCII_LOWER) for n in names),
        cert_names=_unique(n.translate(ASCII_LOWER).lstrip("*.") for n in cert_names),
        cert_orgs=_unique(cert_orgs),
        titles=_unique(titles),
        org=str(org or "")[:MAX_TEXT],
    )


def attribute_operator(facts: BannerFacts, registry: Iterable[RegistryOrganisation]) -> Attribution | None:
    registry = tuple(registry)
    for label, names in (("hostname", facts.hostnames), ("certificate name", facts.cert_names)):
        for name in names:
            for organisation in registry:
                domain = _domain_match(name, organisation.domains)
                if domain:
                    return Attribution(organisation, f"{label} {name} is in {domain}")
    for label, texts in (
        ("certificate organisation", facts.cert_orgs),
        ("HTTP title", facts.titles),
        ("Shodan org", (facts.org,) if facts.org else ()),
    ):
        for text in texts:
            for organisation in registry:
                matched = _name_match(text, organisation)
                if matched:
                    return Attribution(organisation, f"{label} {text[:100]!r} names {matched}")
    return None


def registry_match_name(
    name: str, registry: Iterable[RegistryOrganisation], *, country: str | None = None
) -> RegistryOrganisation | None:
    """The registered organisation a whole name (an RDAP registrant) stands for, if any.

    Anyone anywhere can register a network under any name, so a registrant name stands for a
    Dutch hospital only on a Dutch network (`country`, the network's country code: a caller that
    knows it must pass it), and only by the hospital's name or a long alias: "AMC", "MST" or
    "CWZ" alone is somebody else's name somewhere. Banners (hostnames, certificates) still
    attribute a host to a hospital by any of its names: see `attribute_operator`.
    """
    if country is not None and country.strip().upper() != REGISTRY_COUNTRY:
        return None
    normalised = f" {_normalise(name)} "
    for organisation in registry:
        for candidate, pattern, short in _patterns(organisation):
            if short and candidate != organisation.name:
                continue
            if (name.strip() == candidate) if short else (normalised == pattern):
                return organisation
    return None


def _domain_match(hostname: str, domains: Iterable[str]) -> str | None:
    hostname = hostname.strip(".")
    for domain in domains:
        if hostname == domain or hostname.endswith("." + domain):
            return domain
    return None


def _name_match(text: str, organisation: RegistryOrganisation) -> str | None:
    normalised = f" {_normalise(text)} "
    words = set(WORD.findall(text))
    for name, pattern, short in _patterns(organisation):
        if (name in words) if short else (pattern in normalised):
            return name
    return None


@lru_cache(maxsize=1024)
def _patterns(organisation: RegistryOrganisation) -> tuple[tuple[str, str, bool], ...]:
    """(name, normalised name with spaces around, matched as a case-sensitive word) per name."""
    names = (organisation.name, *organisation.aliases)
    return tuple((name, f" {_normalise(name)} ", len(name) < SHORT_ALIAS) for name in names)


def _normalise(text: str) -> str:
    folded = text.casefold().replace("á", "a").replace("é", "e").replace("ë", "e")
    return NON_WORD.sub(" ", folded).strip()


def _strings(values: object) -> list[str]:
    if not isinstance(values, list):
        return []
    return [str(v)[:MAX_TEXT] for v in values[:50] if isinstance(v, str) and v.strip()]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))
