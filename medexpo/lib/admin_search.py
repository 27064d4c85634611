"""Admin searches for an address. A whole address finds that address, through the unique index:
the default text search would scan every row and also match its neighbours ("10.1.2.3" is part
of "110.1.2.30"), and finds nothing for another spelling of an IPv6 address. Anything else
(a part of an address, a name) is searched as text as before."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from django.db.models import QuerySet
from django.http import HttpRequest


def search_address(term: str) -> str | None:
    """The address `term` names, spelled as ingest stores it; None if it is not one address."""
    term = term.strip()
    if not term or len(term) > 45 or "%" in term:  # 45: the longest IPv6 text; no zone ids
        return None
    try:
        return str(ipaddress.ip_address(term))
    except ValueError:
        return None


class AddressSearchMixin:
    """For a ModelAdmin whose rows have an address at `address_lookup` (e.g. "host__ip")."""

    address_lookup: ClassVar[str]

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        address = search_address(search_term)
        if address is not None:
            return queryset.filter(**{self.address_lookup: address}), False
        result: Any = super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        return result
