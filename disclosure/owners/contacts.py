"""Which RDAP contacts of a network to prefer, and who holds it: pure functions, no I/O."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from disclosure.rdap_client import RdapEntity, RdapNetwork

# RDAP roles -> our contact roles, best first. "noc" is the operations desk: a technical contact.
ROLE_ORDER = ("abuse", "security", "technical", "administrative")
RDAP_ROLES = {
    "abuse": "abuse",
    "security": "security",
    "technical": "technical",
    "noc": "technical",
    "administrative": "administrative",
}


def contact_candidates(network: RdapNetwork) -> list[dict]:
    """Every e-mail address in the answer with the role it would serve, best first.

    Abuse first, then security, technical, administrative; within a role, top-level entities
    before nested ones. An address that only appears without any role (old AFRINIC answers)
    comes last, as administrative, and says so.
    """
    ranked: dict[str, tuple[tuple[int, int, int], dict]] = {}
    for position, entity in enumerate(network.entities):
        roles = [RDAP_ROLES[r] for r in entity.roles if r in RDAP_ROLES]
        rank_role = min((ROLE_ORDER.index(r) for r in roles), default=len(ROLE_ORDER))
        role = ROLE_ORDER[rank_role] if rank_role < len(ROLE_ORDER) else "administrative"
        for email in entity.emails:
            if address_problem(email):
                continue  # registries hold typos and worse; an address we cannot mail is no contact
            why = _why(entity, role, bool(roles))
            rank = (rank_role, 1 if entity.parent else 0, position)
            if email not in ranked or rank < ranked[email][0]:
                ranked[email] = (
                    rank,
                    {"email": email, "role": role, "handle": entity.handle, "parent": entity.parent, "why": why},
                )
    return [candidate for _, candidate in sorted(ranked.values(), key=lambda item: item[0])]


def _why(entity: RdapEntity, role: str, has_role: bool) -> str:
    where = f"nested under {entity.parent}" if entity.parent else "on the network"
    if not has_role:
        return f"RDAP entity {entity.handle} {where} has no role; used as {role}"
    return f"RDAP entity {entity.handle} {where} with role {role}"


def network_holder(network: RdapNetwork) -> tuple[str, str]:
    """(handle, name) of the organisation that holds the network: the registrant, else the network."""
    registrants = [e for e in network.entities if "registrant" in e.roles and e.name]
    registrants.sort(key=lambda e: (1 if e.parent else 0, 0 if e.kind == "org" else 1))
    if registrants:
        return registrants[0].handle, registrants[0].name
    return network.handle, network.name or network.handle


def unusable_addresses(entities: Iterable[RdapEntity]) -> list[dict]:
    """The answer's addresses that are never contacts, each with why: shown to staff, never mailed."""
    found: dict[str, dict] = {}
    for entity in entities:
        for email in entity.emails:
            problem = address_problem(email)
            if problem and email not in found:
                found[email] = {"email": email, "handle": entity.handle, "why": problem}
    return list(found.values())


def address_problem(email: str) -> str | None:
    """Why an address must not be mailed, or None: what staff see must be what is sent.

    Django's validator takes any character from U+00A1 in a domain, and its mail code drops some
    of them on the way out (IDNA maps a zero-width space to nothing: abuse@exa<U+200B>mple.com is
    sent to abuse@example.com) or fails at sending time (a bidi override). So an address with a
    control, format, separator or space character anywhere is refused, the domain must be an
    internet domain (not localhost, not an address literal), and it must come back from IDNA (the
    standard library's codec) as it went in.
    """
    hidden = next((char for char in email if _hidden(char)), None)
    if hidden is not None:
        name = unicodedata.name(hidden, "(a control character)")
        return f"contains U+{ord(hidden):04X} {name}: control, invisible and space characters are not sent as shown"
    if len(email) > 254:  # RFC 5321's limit, and the contact field's: Django's validator takes 320
        return f"is {len(email)} characters long, more than the 254 an address can have"
    try:
        validate_email(email)
    except ValidationError:
        return "not a valid e-mail address"
    local, _, domain = email.rpartition("@")
    if local.startswith('"'):
        return "has a quoted local part (sent without its quotes, it is another address)"
    if domain.startswith("[") or "." not in domain or domain.lower().endswith(".localhost"):
        # Django's validator takes "localhost" and address literals: mail to them goes to our own
        # mail host, or to whatever machine the answer's writer chose, never to a holder's domain.
        return "has no internet domain (localhost or an address literal)"
    return _domain_problem(domain)


def _hidden(char: str) -> bool:
    # C*: controls, format (bidi, zero-width), surrogates, private use, unassigned; Z*: spaces
    # and the line and paragraph separators.
    return unicodedata.category(char)[0] in "CZ" or char.isspace()


def _domain_problem(domain: str) -> str | None:
    try:
        sent = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        return f"the domain cannot be written for sending (IDNA): {exc}"
    for label in domain.split("."):
        # IDNA 2003 maps some characters to others or to nothing (ß to ss, U+034F to nothing):
        # each non-ASCII label must come back as it was shown.
        if not label.isascii() and label.encode("idna").decode("idna") != label.lower():
            return f"the domain would be sent as {sent}, which is not the address shown"
    return None
