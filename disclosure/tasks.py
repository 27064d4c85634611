"""Background work for owners (django-q2). Tasks take JSON-able values only and call one service."""

from __future__ import annotations

from disclosure.services import owners_resolve


def resolve_owners() -> dict:
    """Resolve every host that needs an owner; the summary is the task's result."""
    return owners_resolve().as_dict()
