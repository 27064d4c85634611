"""Staff use the harvest admin in a real browser: log in, search, read hostile banners safely, read a run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page

from harvest.models import HarvestRun, Service
from tests.factories import minimal_banner

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HarvestLines = Callable[..., HarvestRun]

HOSTILE_BANNER = (
    "HTTP/1.1 200 OK\r\nServer: <script>alert(1)</script>\r\n"
    "X-Junk: \x00\x01\x07\x1b[31m<img src=x onerror=alert(2)>\u202eevil\x7f end\r\n"
)
HOSTILE_TITLE = "<script>alert(3)</script>"
HOSTILE_ORG = "<b onmouseover=alert(4)>Evil BV</b><img src=y onerror=alert(8)>"
HOSTILE_HOSTNAME = "<svg onload=alert(5)>.example"


def banner(ip: str, port: int, data: str, **extra: object) -> dict:
    return minimal_banner(ip, port, data, **{"timestamp": "2026-03-04T05:06:07.000000", **extra})


HOSTILE = banner(
    "192.0.2.66",
    8080,
    HOSTILE_BANNER,
    org=HOSTILE_ORG,
    hostnames=[HOSTILE_HOSTNAME],
    product="<i>PACS</i>",
    http={"title": HOSTILE_TITLE},
)

# Elements or handlers that would exist only if a payload had been parsed as HTML.
INJECTED = """() => ({
    inlineScripts: [...document.scripts].filter(s => s.textContent.includes('alert(')).length,
    images: document.querySelectorAll('img[src="x"], img[src="y"], img[onerror]').length,
    svgs: document.querySelectorAll('svg[onload]').length,
    bold: document.querySelectorAll('b[onmouseover]').length,
    italic: [...document.querySelectorAll('i')].filter(e => e.textContent === 'PACS').length,
})"""
NOTHING_INJECTED = {"inlineScripts": 0, "images": 0, "svgs": 0, "bold": 0, "italic": 0}


def result_rows(page: Page) -> list[str]:
    return page.locator("#result_list tbody tr").all_inner_texts()


def search(page: Page, text: str) -> list[str]:
    page.fill("#searchbar", text)
    page.press("#searchbar", "Enter")
    page.wait_for_load_state()
    return result_rows(page)


def test_it_logs_in_and_searches_services_by_banner_and_ip(admin_page: Page, harvest_lines: HarvestLines) -> None:
    harvest_lines(
        [
            banner("192.0.2.10", 104, "DICOM Server Response: Orthanc", org="Ziekenhuis Oost"),
            banner("192.0.2.11", 80, "HTTP/1.1 200 OK\r\nServer: nginx", org="Hosting BV"),
            banner("192.0.2.12", 11112, "DICOM Server Response: dcmtk", org="UMC West"),
        ]
    )
    assert admin_page.locator("#user-tools").inner_text().upper().startswith("WELCOME,")
    admin_page.click("text=Services")
    admin_page.wait_for_url("**/admin/harvest/service/")
    assert len(result_rows(admin_page)) == 3

    by_banner = search(admin_page, "banner:server response")
    by_ip = search(admin_page, "192.0.2.11")
    help_text = admin_page.locator("#searchbar_helptext").inner_text()

    assert sorted(row.split("\t")[0] for row in by_banner) == ["192.0.2.10", "192.0.2.12"]
    assert "banner:" in help_text
    assert [row.split("\t")[0] for row in by_ip] == ["192.0.2.11"]
    assert "nginx" in by_ip[0]


def test_it_shows_a_hostile_service_literally(
    admin_page: Page, harvest_lines: HarvestLines, dialogs: list, page_errors: list, blocked_requests: list
) -> None:
    harvest_lines([HOSTILE])
    service = Service.objects.get()

    admin_page.goto("/admin/harvest/service/")
    admin_page.goto(f"/admin/harvest/service/{service.pk}/change/")
    shown_banner = admin_page.locator(".field-banner_text pre").inner_text()
    raw = admin_page.locator(".field-raw_record pre").text_content() or ""
    org = admin_page.locator(".field-org .readonly").inner_text()
    product = admin_page.locator(".field-product_text .readonly").inner_text()
    on_service_page = admin_page.evaluate(INJECTED)
    admin_page.click(".field-host_link a")
    admin_page.wait_for_url("**/admin/harvest/host/*/change/")
    hostnames = admin_page.locator(".field-hostnames_list .readonly").inner_text()
    on_host_page = admin_page.evaluate(INJECTED)
    admin_page.goto("/admin/harvest/host/")
    listed = admin_page.locator("#result_list").inner_text()
    on_host_list = admin_page.evaluate(INJECTED)

    assert dialogs == [] and page_errors == [] and blocked_requests == []
    assert on_service_page == on_host_page == on_host_list == NOTHING_INJECTED
    assert "Server: <script>alert(1)</script>" in shown_banner
    assert "X-Junk: \\x00\\x01\\x07\\x1b[31m<img src=x onerror=alert(2)>\\u202eevil\\x7f end" in shown_banner
    assert f'"title": "{HOSTILE_TITLE}"' in raw and '"data": "HTTP/1.1 200 OK\\r\\nServer: <script>' in raw
    assert org == HOSTILE_ORG and product == "<i>PACS</i>"
    assert hostnames == HOSTILE_HOSTNAME
    assert HOSTILE_HOSTNAME in listed and HOSTILE_ORG in listed


def test_it_shows_a_run_with_its_rejections_by_reason(
    admin_page: Page, harvest_lines: HarvestLines, dialogs: list
) -> None:
    run = harvest_lines(
        [
            banner("192.0.2.20", 104, "ok"),
            b"not json <script>alert(6)</script>",
            b"{broken",
            b'{"ip_str": "192.0.2.21", "port": "<img src=x onerror=alert(7)>"}',
            b'{"port": 104}',
        ]
    )

    admin_page.goto("/admin/harvest/harvestrun/")
    admin_page.click(f"#result_list a[href$='/harvestrun/{run.pk}/change/']")
    admin_page.wait_for_url(f"**/admin/harvest/harvestrun/{run.pk}/change/")
    rows = admin_page.locator("table.medexpo-rejected tbody tr").all_inner_texts()
    total = admin_page.locator("table.medexpo-rejected tfoot").inner_text()
    counts = {row.split("\t")[0]: int(row.split("\t")[-1]) for row in rows}
    admin_page.click("table.medexpo-rejected a:text-is('invalid_port')")
    admin_page.wait_for_url("**/admin/harvest/rejection/?*")
    rejected = result_rows(admin_page)
    on_rejection_list = admin_page.evaluate(INJECTED)

    assert counts == {"not_json": 2, "invalid_port": 1, "missing_address": 1}
    assert total.split("\t")[-1].strip() == "4"
    assert len(rejected) == 1 and "line 4" in rejected[0]
    assert "port '<img src=x onerror=alert(7)>'" in rejected[0]
    assert dialogs == [] and on_rejection_list == NOTHING_INJECTED


def test_long_unbroken_text_wraps_instead_of_pushing_the_page_sideways(
    admin_page: Page, harvest_lines: HarvestLines
) -> None:
    # Organisation, ISP, OS and product are kept to 255 characters, hostnames to 253: a stranger
    # can fill them without a space. Unwrapped, one such host put the service list's verdict
    # column thousands of pixels to the right and made the host page 5,000 pixels wide.
    long = "A" * 255
    harvest_lines(
        [
            banner(
                "192.0.2.30",
                80,
                "HTTP/1.1 200 OK",
                org=long,
                isp=long,
                os=long,
                product=long,
                version=long,
                hostnames=["h" * 253, "g" * 253],
            ),  # fmt: skip
            banner("192.0.2.31", 104, "DICOM"),
        ]
    )
    service = Service.objects.get(port=80)
    admin_page.set_viewport_size({"width": 1280, "height": 900})
    # Staff scroll a list sideways anyway when its columns do not fit beside the sidebars (the
    # admin's own .results box); long text must not make it wider than the screen.
    widths = """() => ({
        page: document.documentElement.scrollWidth,
        list: document.querySelector('.results')?.scrollWidth ?? 0,
        // A change page's rows hide what overflows them (the admin's .form-row): a value that does
        // not wrap is cut off there, out of reach, rather than widening the page.
        clipped: [...document.querySelectorAll('.form-row')].filter(e => e.scrollWidth > e.clientWidth + 1).length,
    })"""

    measured = {}
    for url in (
        "/admin/harvest/service/",
        f"/admin/harvest/service/{service.pk}/change/",
        "/admin/harvest/host/",
        f"/admin/harvest/host/{service.host_id}/change/",
    ):
        admin_page.goto(url)
        measured[url] = admin_page.evaluate(widths)

    assert all(m["page"] <= 1280 and m["list"] <= 1280 and m["clipped"] == 0 for m in measured.values()), measured
