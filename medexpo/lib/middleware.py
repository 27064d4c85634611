"""Request checks that hold for every page."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


def refuse_nul_in_query(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """A NUL in a query parameter answers 400.

    The admin turns any field named in the URL into a lookup (?reason=..., ?module=...), and
    PostgreSQL cannot compare text with NUL: the query failed with a server error. No stored text
    holds NUL (ingest stores it as U+2400), so such a filter could never match anything anyway.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        if any("\x00" in key or "\x00" in value for key, values in request.GET.lists() for value in values):
            return HttpResponseBadRequest("A query parameter contains a NUL character.")
        return get_response(request)

    return middleware
