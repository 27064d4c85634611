"""Lists staff open with odd filter values in the URL: an answer, never a server error.

The browser adds nothing to these (the value is in the address), so they use the test client."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client

from harvest.models import HarvestRun
from tests.factories import minimal_banner

pytestmark = [pytest.mark.django_db(transaction=True)]

HarvestLines = Callable[..., HarvestRun]


@pytest.mark.parametrize(
    ("url", "parameter"),
    [
        ("/admin/harvest/service/", "module"),
        ("/admin/harvest/service/", "transport__exact"),
        ("/admin/harvest/rejection/", "reason__exact"),
        ("/admin/harvest/classification/", "rules_version__exact"),
        ("/admin/harvest/harvestrun/", "country__exact"),
        ("/admin/disclosure/organisation/", "country__exact"),
        ("/admin/disclosure/hostowner/", "reason__exact"),
        ("/admin/disclosure/inhibition/", "reason"),
    ],
)
def test_a_nul_in_a_filter_value_is_refused_not_a_server_error(
    admin_client: Client, harvest_lines: HarvestLines, url: str, parameter: str
) -> None:
    # PostgreSQL cannot compare text with NUL: the lookup failed with DataError, a 500.
    harvest_lines([minimal_banner("192.0.2.1", 104, "DICOM", timestamp="2026-01-01T00:00:00"), b"junk"])

    response = admin_client.get(url, {parameter: "a\x00b"})
    plain = admin_client.get(url, {parameter: "ab"})

    assert response.status_code == 400
    assert plain.status_code == 200
