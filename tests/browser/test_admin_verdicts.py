"""Staff read a service's verdict in a real browser: class, category, segment, evidence, honeypot flag.

The verdicts come from the real classification service over banners ingested by the real harvest;
the banners carry markup and script written by strangers, which must reach the page as text.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page

from harvest.classify.services import classification_run_pending
from harvest.models import Classification, HarvestRun, Service

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HarvestLines = Callable[..., HarvestRun]

# Shodan's text form of a DICOM association answer. The version name is the one Shodan's own probe
# sends, so the rules flag it as a honeypot echoing the request; the AE title and a stray line are
# script and markup that end up in the evidence excerpt.
HOSTILE_DICOM = (
    "DICOM Server Response\n"
    "Called AE Title: <script>alert(1)</script>\n"
    "Implementation Class UID: 1.2.276.0.7230010.3.0.3.6.0\n"
    "Implementation Version: OFFIS_DCMTK_360\n"
    "<img src=x onerror=alert(2)>\n"
)
HOSTILE_ORG = "<b onmouseover=alert(4)>Erasmus MC</b>"
HOSTILE_HOSTNAME = "<svg onload=alert(5)>.pacs.erasmusmc.nl"
HOSTILE_TITLE = "<script>alert(3)</script>"
HOSTILE_CN = "<img src=y onerror=alert(6)>"


def record(ip: str, port: int, data: str, module: str, **extra: object) -> dict:
    return {
        "ip_str": ip,
        "port": port,
        "transport": "tcp",
        "data": data,
        "timestamp": "2026-03-04T05:06:07.000000",
        "_shodan": {"module": module},
        "location": {"country_code": "NL"},
        **extra,
    }


DICOM = record(
    "192.0.2.104",
    104,
    HOSTILE_DICOM,
    "dicom",
    org=HOSTILE_ORG,
    hostnames=[HOSTILE_HOSTNAME],
    http={"title": HOSTILE_TITLE},
    ssl={"cert": {"subject": {"CN": HOSTILE_CN}}},
)
PLAIN_WEB = record("192.0.2.80", 80, "HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n", "http", org="Hosting BV")

# Elements or handlers that would exist only if a payload had been parsed as HTML.
INJECTED = """() => ({
    inlineScripts: [...document.scripts].filter(s => s.textContent.includes('alert(')).length,
    images: document.querySelectorAll('img[src="x"], img[src="y"], img[onerror]').length,
    svgs: document.querySelectorAll('svg[onload]').length,
    bold: document.querySelectorAll('b[onmouseover]').length,
})"""
NOTHING_INJECTED = {"inlineScripts": 0, "images": 0, "svgs": 0, "bold": 0}


@pytest.fixture
def classified(harvest_lines: HarvestLines) -> Service:
    harvest_lines([DICOM, PLAIN_WEB])
    summary = classification_run_pending()
    assert summary.examined == 2 and summary.by_category["dicom"] == 1
    return Service.objects.get(port=104)


def cells(page: Page, row: str) -> dict[str, str]:
    """Text of each readonly cell of one inline row, by field name (td.field-<name>)."""
    names = page.locator(f"{row} td[class^='field-']").evaluate_all(
        "tds => tds.map(td => [td.className.split(' ')[0].slice(6), td.textContent.trim()])"
    )
    return dict(names)


def test_it_shows_a_dicom_verdict_with_its_evidence_on_the_service_page(
    admin_page: Page,
    classified: Service,
    dialogs: list,
    page_errors: list,
    blocked_requests: list,
) -> None:
    admin_page.click("text=Services")
    admin_page.wait_for_url("**/admin/harvest/service/")
    listed = {row.split("\t")[0]: row for row in admin_page.locator("#result_list tbody tr").all_inner_texts()}
    on_list = admin_page.evaluate(INJECTED)
    admin_page.click(f"#result_list a[href$='/service/{classified.pk}/change/']")
    admin_page.wait_for_url(f"**/admin/harvest/service/{classified.pk}/change/")
    inline = admin_page.locator("#classifications-group")
    heading = inline.locator("h2").inner_text()
    rows = inline.locator("tbody tr.has_original")
    verdict = cells(admin_page, "#classifications-group tr.has_original")
    evidence = inline.locator("td.field-evidence_list div").all_text_contents()
    honeypot_icon = inline.locator("td.field-honeypot img").get_attribute("alt")
    current_icon = inline.locator("td.field-current img").get_attribute("alt")
    on_service = admin_page.evaluate(INJECTED)

    assert dialogs == [] and page_errors == [] and blocked_requests == []
    assert on_list == on_service == NOTHING_INJECTED
    assert "medical / dicom" in listed["192.0.2.104"] and "medical / dicom" not in listed["192.0.2.80"]
    assert heading.lower() == "verdicts (one per rules version)" and rows.count() == 1
    assert (verdict["cls"], verdict["category"], verdict["segment"]) == ("Medical", "dicom", "hospital_organisation")
    assert verdict["product_text"] == "DCMTK 3.6.0"
    assert honeypot_icon == current_icon == "True"
    summary = next(line for line in evidence if line.startswith("dicom.summary"))
    assert "Called AE Title: <script>alert(1)</script>" in summary
    assert "<img src=x onerror=alert(2)>" in summary
    assert "organisation.name (org): Erasmus MC" in evidence


def test_it_lists_honeypots_and_shows_the_verdict_page_literally(
    admin_page: Page, classified: Service, dialogs: list, page_errors: list
) -> None:
    verdict = Classification.objects.get(service=classified, current=True)

    admin_page.goto("/admin/harvest/classification/?honeypot__exact=1")
    honeypots = admin_page.locator("#result_list tbody tr").all_inner_texts()
    link = admin_page.locator(f"#result_list a[href*='/classification/{verdict.pk}/change/']")
    link_text = link.inner_text()
    link.click()
    admin_page.wait_for_url(f"**/admin/harvest/classification/{verdict.pk}/change/?*")
    shown = {
        name: admin_page.locator(f".field-{name} .readonly").text_content() or ""
        for name in ("cls", "category", "segment", "org", "evidence_list", "honeypot_list", "details_json")
    }
    on_page = admin_page.evaluate(INJECTED)
    admin_page.click(".field-service_link a")
    admin_page.wait_for_url(f"**/admin/harvest/service/{classified.pk}/change/")

    assert dialogs == [] and page_errors == [] and on_page == NOTHING_INJECTED
    assert len(honeypots) == 1 and honeypots[0].startswith("192.0.2.104:104/tcp")
    assert link_text == "Medical"  # the verdict opens from its class: the first column links to the service
    assert (shown["cls"], shown["category"], shown["segment"]) == ("Medical", "dicom", "hospital_organisation")
    assert shown["org"] == HOSTILE_ORG
    assert "Called AE Title: <script>alert(1)</script>" in shown["evidence_list"]
    assert "honeypot.probe_identity (dicom.implementation_version): OFFIS_DCMTK_360" in shown["honeypot_list"]
    assert '"called_ae": "<script>alert(1)</script>"' in shown["details_json"]
