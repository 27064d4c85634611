"""Which RDAP contacts of a network to prefer, and who holds it: pure functions, no I/O."""

from __future__ import annotations

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
            if not _valid(email):
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


def _valid(email: str) -> bool:
    try:
        validate_email(email)
    except ValidationError:
        return False
    return True
