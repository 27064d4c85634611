"""The harvest admin: read-only, searchable, hostile text escaped, no N+1 on the lists.

Data comes from the real ingest (harvest_file_start + harvest_execute on a JSON-lines file).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from harvest import services
from harvest.admin import BANNER_DISPLAY_LIMIT, HOST_SERVICES_SHOWN, PREVIEW_LIMIT
from harvest.locking import harvest_lock, run_owned
from harvest.models import Classification, HarvestRun, Host, Rejection, Service
from medexpo.lib.display import text_block, visible_text
from tests.factories import minimal_banner
from tests.standins.shodan_server import ShodanStandIn

HOSTILE_BANNER = (
    "HTTP/1.1 200 OK\r\nServer: <script>alert(1)</script>\r\n"
    "X-Pad: \x00\x01\x1b[31m<img src=x onerror=alert(2)>\u202eevil\x7f\x85 end\r\n"
)
HOSTILE = {
    "ip_str": "192.0.2.66",
    "port": 8080,
    "transport": "tcp",
    "data": HOSTILE_BANNER,
    "org": "<b onmouseover=alert(4)>Evil BV</b>",
    "isp": "<marquee>isp</marquee>",
    "hostnames": ["<svg onload=alert(5)>.example"],
    "product": "<i>PACS</i>",
    "http": {"title": "<script>alert(3)</script>"},
    "timestamp": "2026-01-02T03:04:05.000000",
    "_shodan": {"module": "http"},
    "location": {"country_code": "NL"},
    "asn": "AS1103",
}


def banner(ip: str, port: int, data: str, **extra: object) -> dict:
    return minimal_banner(ip, port, data, **{"timestamp": "2026-01-02T03:04:05.000000", **extra})


def ingest(tmp_path: Path, lines: list[dict | bytes], name: str = "banners.json") -> HarvestRun:
    """Run the real file ingest over records (dicts become JSON lines; bytes are written as they are)."""
    path = tmp_path / name
    with path.open("wb") as out:
        for line in lines:
            out.write((json.dumps(line).encode() if isinstance(line, dict) else line) + b"\n")
    run = services.harvest_file_start(path=path)
    return services.harvest_execute(run=run)


def many(count: int, offset: int = 0) -> list[dict]:
    return [
        banner(
            f"198.51.{(offset + i) // 200}.{(offset + i) % 200 + 1}",
            [104, 11112, 443][i % 3],
            f"banner {offset + i}",
            org=f"Org {i % 7}",
            asn=64500 + i % 5,
            hostnames=[f"h{offset + i}.example.nl"],
            product=f"Product {i % 4}",
        )
        for i in range(count)
    ]


def change_url(obj: object) -> str:
    return reverse(f"admin:harvest_{type(obj)._meta.model_name}_change", args=[obj.pk])


def changelist_url(model: type) -> str:
    return reverse(f"admin:harvest_{model._meta.model_name}_changelist")


def results(html: str) -> str:
    """The result table of a changelist page, so that search boxes and filters do not count."""
    match = re.search(r'<table id="result_list".*?</table>', html, re.S)
    return match.group(0) if match else ""


# --- pure display helpers ------------------------------------------------------------------


def test_it_makes_control_and_invisible_characters_visible() -> None:
    text = "a\x00b\x01c\x1bd\x7fe\x85f\u202eg\u200bh\r\ni\rj\tk\u2400"
    assert visible_text(text) == "a\\x00b\\x01c\\x1bd\\x7fe\\x85f\\u202eg\\u200bh\r\ni\\rj\tk\\x00"


def test_it_escapes_and_bounds_a_text_block() -> None:
    html = text_block("<script>alert(1)</script>\x00" + "x" * 100, limit=30)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<span class="medexpo-ctl"' in html and "\\x00</span>" in html
    assert "Showing the first 30 of 126 characters." in html
    assert "\\x00</span>" + "x" * 4 + "</pre>" in html


# --- services ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_shows_a_hostile_service_escaped(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [HOSTILE])
    service = Service.objects.get()

    html = admin_client.get(change_url(service)).content.decode()

    for hostile in ("<script>alert", "<img src=x", "<svg onload", "<b onmouseover", "<i>PACS", "<marquee>"):
        assert hostile not in html, hostile
    assert "Server: &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;b onmouseover=alert(4)&gt;Evil BV&lt;/b&gt;" in html
    assert "&lt;i&gt;PACS&lt;/i&gt;" in html
    # NUL is stored as U+2400; it and the other controls are shown as escapes.
    assert re.search(
        r"X-Pad: (<span[^>]*>\\(x00|x01|x1b)</span>){3}\[31m&lt;img src=x onerror=alert\(2\)&gt;"
        r"<span[^>]*>\\u202e</span>evil<span[^>]*>\\x7f</span><span[^>]*>\\x85</span> end",
        html,
    )
    assert "\\u202e</span>" in html and "\u202e" not in html
    assert "\x01" not in html and "\x1b" not in html
    # The raw record, pretty-printed: the title escaped, the NUL as its JSON escape.
    assert "&quot;title&quot;: &quot;&lt;script&gt;alert(3)&lt;/script&gt;&quot;" in html
    assert "\\\\u0000" in html or "\\u0000" in html


@pytest.mark.django_db
def test_it_bounds_a_long_banner_and_gives_its_full_size(tmp_path: Path, admin_client: Client) -> None:
    data = "A" * (BANNER_DISPLAY_LIMIT + 5000) + "THE-END"
    ingest(tmp_path, [banner("192.0.2.7", 104, data)])

    html = admin_client.get(change_url(Service.objects.get())).content.decode()

    assert f"Showing the first {BANNER_DISPLAY_LIMIT:,} of {len(data):,} characters." in html
    banner_pre = re.search(r'<pre class="medexpo-text"[^>]*>(A+)</pre>', html)
    assert banner_pre is not None and len(banner_pre.group(1)) == BANNER_DISPLAY_LIMIT


@pytest.mark.django_db
def test_it_lists_earlier_banners_in_the_history(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [banner("192.0.2.8", 104, "first <b>banner</b>")], "one.json")
    later = banner("192.0.2.8", 104, "second banner", timestamp="2026-02-01T00:00:00")
    run = ingest(tmp_path, [later], "two.json")
    service = Service.objects.get()

    html = admin_client.get(change_url(service)).content.decode()

    assert "banner history" in html.lower()
    assert "first &lt;b&gt;banner&lt;/b&gt;" in html
    assert "second banner" in html
    assert f'href="{change_url(run)}"' in html


@pytest.mark.django_db
def test_it_searches_services_by_ip_product_org_and_on_request_banner(tmp_path: Path, admin_client: Client) -> None:
    ingest(
        tmp_path,
        [
            banner("192.0.2.10", 104, "DICOM Server Response OFFIS", product="Orthanc", org="Ziekenhuis Oost"),
            banner("192.0.2.11", 80, "nginx welcome", product="nginx", org="Hosting BV"),
        ],
    )
    url = changelist_url(Service)

    def found(query: str) -> set[str]:
        table = results(admin_client.get(url, {"q": query}).content.decode())
        return {ip for ip in ("192.0.2.10", "192.0.2.11") if ip in table}

    assert found("banner:server response") == {"192.0.2.10"}
    assert found("banner: Server Response ") == {"192.0.2.10"}
    assert found("server response") == set()  # banners only when asked for: each search would read them all
    assert found("192.0.2.11") == {"192.0.2.11"}
    assert found("orthanc") == {"192.0.2.10"}
    assert found("hosting") == {"192.0.2.11"}
    assert found("192.0.2.") == {"192.0.2.10", "192.0.2.11"}  # a part of an address: as text
    assert found("192.0.2.1") == set()  # a whole address: that address, not every one it is part of


@pytest.mark.django_db
def test_the_service_list_shows_controls_of_a_banner_as_escapes(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [banner("192.0.2.67", 80, "\x1b[31m\u202eevil <b>PACS</b>\x00")])

    table = results(admin_client.get(changelist_url(Service)).content.decode())

    assert "\\x1b[31m\\u202eevil &lt;b&gt;PACS&lt;/b&gt;" in table
    assert "\u202e" not in table and "\x1b" not in table


@pytest.mark.django_db
def test_a_whole_address_finds_that_address_on_every_list_that_has_one(tmp_path: Path, admin_client: Client) -> None:
    from harvest.classify.services import classification_run_pending

    ingest(
        tmp_path,
        [
            banner("10.1.2.3", 104, "a"),
            banner("110.1.2.30", 104, "b"),
            banner("2001:db8::1", 104, "c"),
            banner("2001:db8::10", 104, "d"),
        ],
    )
    classification_run_pending()
    addresses = ("10.1.2.3", "110.1.2.30", "2001:db8::1", "2001:db8::10")

    def found(model: type, query: str) -> set[str]:
        table = results(admin_client.get(changelist_url(model), {"q": query}).content.decode())
        # Each address as a whole cell text or link text, so that "2001:db8::1" is not read in "...::10".
        return {ip for ip in addresses if re.search(rf">\s*{re.escape(ip)}(?::\d+/\w+)?\s*<", table)}

    for model in (Host, Service, Classification):
        assert found(model, "10.1.2.3") == {"10.1.2.3"}, model
        assert found(model, " 2001:0DB8:0:0::1 ") == {"2001:db8::1"}, model  # another spelling of it
        assert found(model, "1.2.3") == {"10.1.2.3", "110.1.2.30"}, model  # a part: as text


@pytest.mark.django_db
def test_it_filters_services_by_port_transport_and_module(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [banner("192.0.2.20", 104, "dicom"), banner("192.0.2.21", 443, "https")])
    url = changelist_url(Service)

    by_port = results(admin_client.get(url, {"port": "104"}).content.decode())
    by_module = results(admin_client.get(url, {"module": "http"}).content.decode())
    by_transport = results(admin_client.get(url, {"transport__exact": "udp"}).content.decode())

    assert "192.0.2.20" in by_port and "192.0.2.21" not in by_port
    assert "192.0.2.21" in by_module and "192.0.2.20" not in by_module
    assert "192.0.2.2" not in by_transport


@pytest.mark.django_db
def test_it_offers_the_most_common_ports_and_asns_first(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, many(7))  # ports 104 x3, 11112 x2, 443 x2 (ties in port order); ASNs 64500-64504

    services_page = admin_client.get(changelist_url(Service)).content.decode()
    hosts_page = admin_client.get(changelist_url(Host)).content.decode()

    assert re.findall(r'<a href="\?port=(\d+)"', services_page) == ["104", "443", "11112"]
    assert re.findall(r'<a href="\?asn=(\d+)">AS\1</a>', hosts_page) == ["64500", "64501", "64502", "64503", "64504"]
    assert "64502" not in results(admin_client.get(changelist_url(Host), {"asn": "64500"}).content.decode())
    not_a_number = admin_client.get(changelist_url(Host), {"asn": "AS1"})
    assert not_a_number.status_code == 200 and "0 hosts" in not_a_number.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["²", "①", "٣", "1²"])
def test_number_filters_take_only_ascii_digits(tmp_path: Path, admin_client: Client, value: str) -> None:
    # str.isdigit() is true for these; int() refuses the first two and reads "٣" as 3.
    ingest(tmp_path, many(4))
    pages = {
        "services": admin_client.get(changelist_url(Service), {"port": value}),
        "hosts": admin_client.get(changelist_url(Host), {"asn": value}),
        "rejections": admin_client.get(changelist_url(Rejection), {"run": value}),
    }

    assert {name: page.status_code for name, page in pages.items()} == dict.fromkeys(pages, 200)
    assert "<tbody>" not in results(pages["services"].content.decode())
    assert "0 hosts" in pages["hosts"].content.decode()


@pytest.mark.django_db
def test_the_module_filter_shows_hostile_module_names_visibly(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [banner("192.0.2.24", 80, "x", _shodan={"module": "ht\u202etp<b>"}), *many(2)])

    page = admin_client.get(changelist_url(Service)).content.decode()
    only = results(admin_client.get(changelist_url(Service), {"module": "ht\u202etp<b>"}).content.decode())

    assert "ht\\u202etp&lt;b&gt;" in page and "\u202e" not in page and "<b>" not in page
    assert "192.0.2.24" in only and "198.51" not in only


@pytest.mark.django_db
def test_it_shows_an_escaped_banner_preview_in_the_list(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [HOSTILE])

    table = results(admin_client.get(changelist_url(Service)).content.decode())

    assert "HTTP/1.1 200 OK ↵ Server: &lt;script&gt;alert(1)&lt;/scrip…</td>" in table
    assert "<script" not in table and "\x01" not in table


@pytest.mark.django_db
def test_it_does_not_show_half_a_line_break_in_the_preview(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [banner("192.0.2.9", 80, "x" * (PREVIEW_LIMIT - 1) + "\r\nmore")])

    table = results(admin_client.get(changelist_url(Service)).content.decode())

    assert "x" * (PREVIEW_LIMIT - 1) + "…</td>" in table


@pytest.mark.django_db
def test_it_lets_staff_look_but_not_change(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [HOSTILE])
    service = Service.objects.get()

    page = admin_client.get(change_url(service)).content.decode()
    post = admin_client.post(change_url(service), {"product": "edited", "port": "1"})

    assert 'name="product"' not in page and 'name="_save"' not in page
    assert post.status_code == 403
    assert admin_client.get(reverse("admin:harvest_service_add")).status_code == 403
    assert admin_client.get(reverse("admin:harvest_host_delete", args=[service.host_id])).status_code == 403
    service.refresh_from_db()
    assert service.product == "<i>PACS</i>" and service.port == 8080


# --- hosts ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_shows_hosts_with_their_service_count_and_services(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [HOSTILE, {**HOSTILE, "port": 104, "data": "dicom"}, banner("192.0.2.30", 22, "ssh")])
    host = Host.objects.get(ip="192.0.2.66")

    listing = results(admin_client.get(changelist_url(Host)).content.decode())
    page = admin_client.get(change_url(host)).content.decode()

    row = re.search(r"<tr>.*?192\.0\.2\.66.*?</tr>", listing, re.S)
    assert row is not None and '<td class="field-service_total">2</td>' in row.group(0)
    assert "&lt;svg onload=alert(5)&gt;.example" in listing and "<svg" not in listing
    assert "<svg onload" not in page and "<b onmouseover" not in page
    assert "&lt;svg onload=alert(5)&gt;.example" in page
    assert page.count('class="inlineviewlink"') == 2
    assert "8080" in page and "104" in page


@pytest.mark.django_db
def test_a_hosts_page_gives_each_service_its_verdict(tmp_path: Path, admin_client: Client) -> None:
    # Which of a host's services are the medical exposure is what staff open a host for.
    from harvest.classify.services import classification_run_pending

    hl7 = "\x0bMSH|^~\\&|HiX|ZH|||20260101||ACK^A01|1|P|2.4\rMSA|AA|1\r\x1c\r"
    ingest(tmp_path, [banner("192.0.2.30", 2575, hl7), banner("192.0.2.30", 22, "SSH-2.0-OpenSSH_9.6")])
    classification_run_pending()
    ingest(tmp_path, [banner("192.0.2.30", 8080, "HTTP/1.1 200 OK\r\n\r\n")], name="later.json")

    html = admin_client.get(change_url(Host.objects.get())).content.decode()

    rows = re.findall(r'field-port">\s*<p>(\d+)</p>.*?field-verdict">\s*<p>(.*?)</p>', html, re.S)
    assert rows == [("22", "non_medical / known_service"), ("2575", "medical / hl7"), ("8080", "-")]


@pytest.mark.django_db
def test_it_searches_and_filters_hosts(tmp_path: Path, admin_client: Client) -> None:
    ingest(
        tmp_path,
        [
            banner("192.0.2.40", 104, "a", org="UMC Noord", asn=1103, hostnames=["pacs.umcnoord.example"]),
            banner("192.0.2.41", 104, "b", org="Cloud Inc", asn=16509, location={"country_code": "DE"}),
            banner("192.0.2.42", 104, "c", location=None),
        ],
    )
    url = changelist_url(Host)

    def found(params: dict) -> set[str]:
        table = results(admin_client.get(url, params).content.decode())
        return {ip for ip in ("192.0.2.40", "192.0.2.41", "192.0.2.42") if ip in table}

    filters = admin_client.get(url).content.decode()
    assert re.findall(r'<a href="\?country=([^"]+)">([^<]+)</a>', filters) == [
        ("DE", "DE"),
        ("NL", "NL"),
        ("-", "unknown"),
    ]
    assert found({"q": "umcnoord"}) == {"192.0.2.40"}
    assert found({"q": "cloud"}) == {"192.0.2.41"}
    assert found({"q": "192.0.2.41"}) == {"192.0.2.41"}
    assert found({"country": "DE"}) == {"192.0.2.41"}
    assert found({"country": "de"}) == {"192.0.2.41"}
    assert found({"country": "-"}) == {"192.0.2.42"}
    assert found({"country": "NL"}) == {"192.0.2.40"}
    assert found({"asn": "1103"}) == {"192.0.2.40"}


# --- runs and rejections -------------------------------------------------------------------


def _run_with_rejections(tmp_path: Path) -> HarvestRun:
    return ingest(
        tmp_path,
        [
            banner("192.0.2.50", 104, "ok"),
            b"not json <script>alert(6)</script>",
            b"{broken",
            b'{"ip_str": "192.0.2.51", "port": "<script>alert(7)</script>"}',
            b"[1, 2]",
        ],
    )


@pytest.mark.django_db
def test_it_shows_a_run_with_rejections_by_reason(tmp_path: Path, admin_client: Client) -> None:
    run = _run_with_rejections(tmp_path)
    assert run.rejected == {"invalid_port": 1, "not_json": 2, "not_object": 1}

    html = admin_client.get(change_url(run)).content.decode()

    table = re.search(r'<table class="medexpo-rejected">.*?</table>', html, re.S)
    assert table is not None
    rows = re.findall(r'<tr><td><a href="([^"]+)">(\w+)</a></td><td>[^<]*</td><td[^>]*>(\d+)</td></tr>', table.group(0))
    assert [(reason, int(count)) for _, reason, count in rows] == [
        ("not_json", 2),
        ("invalid_port", 1),
        ("not_object", 1),
    ]
    assert "line is not valid JSON" in table.group(0)
    assert re.search(r"<td colspan=\"2\">total</td><td[^>]*>4</td>", table.group(0))
    assert "<script>alert" not in html

    not_json = admin_client.get(rows[0][0].replace("&amp;", "&")).content.decode()
    listed = results(not_json)
    assert listed.count("<tr") == 3  # header and two rows
    assert "line 2" in listed and "line 3" in listed and "line 4" not in listed


@pytest.mark.django_db
def test_it_shows_a_search_runs_query_errors_apart_from_its_rejected_records(
    shodan_standin: ShodanStandIn, plan_file, admin_client: Client
) -> None:
    call_command("harvest", "--plan", plan_file("vuln:CVE-2019-0708", "port:104"), "--json", stdout=io.StringIO())
    run = HarvestRun.objects.get()
    html = admin_client.get(change_url(run)).content.decode()

    rejected = re.search(r'<table class="medexpo-rejected">.*?</table>', html, re.S)
    errors = re.search(r'<table class="medexpo-query-errors">.*?</table>', html, re.S)
    assert rejected is not None and errors is not None
    assert "query_failed" not in rejected.group(0) and "invalid_address" in rejected.group(0)
    assert "query_failed" in errors.group(0) and "Shodan refused the query" in errors.group(0)
    assert re.search(r"<td colspan=\"2\">total</td><td[^>]*>1</td>", errors.group(0))
    listing = admin_client.get(reverse("admin:harvest_harvestrun_changelist")).content.decode()
    assert re.search(r'<td class="field-query_errors_count">1</td>', listing)


@pytest.mark.django_db
def test_it_shows_hostile_rejection_details_escaped(tmp_path: Path, admin_client: Client) -> None:
    run = _run_with_rejections(tmp_path)

    html = admin_client.get(changelist_url(type(run.rejections.first())), {"run": run.pk}).content.decode()

    assert "&#x27;&lt;script&gt;alert(7)&lt;/script&gt;&#x27;" in html
    assert "<script>alert" not in html


@pytest.mark.django_db
def test_it_lists_runs_with_their_counts(tmp_path: Path, admin_client: Client) -> None:
    run = _run_with_rejections(tmp_path)

    table = results(admin_client.get(changelist_url(HarvestRun)).content.decode())

    assert f'<th class="field-id"><a href="{change_url(run)}">{run.pk}</a></th>' in table
    assert '<td class="field-rejected_count">4</td>' in table
    assert '<td class="field-seen">5</td>' in table and '<td class="field-accepted">1</td>' in table


# --- no N+1 --------------------------------------------------------------------------------


def _queries(client: Client, url: str) -> int:
    client.get(url)  # a first request fills per-process caches (content types) that would skew the count
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        reverse("admin:harvest_service_changelist"),
        reverse("admin:harvest_service_changelist") + "?q=product",
        reverse("admin:harvest_service_changelist") + "?q=banner:banner",
        reverse("admin:harvest_host_changelist"),
        reverse("admin:harvest_host_changelist") + "?q=example",
        reverse("admin:harvest_harvestrun_changelist"),
        reverse("admin:harvest_rejection_changelist"),
    ],
)
def test_it_lists_many_rows_in_a_fixed_number_of_queries(
    tmp_path: Path, admin_client: Client, django_assert_num_queries: object, url: str
) -> None:
    ingest(tmp_path, [*many(3), b"bad line"], "small.json")
    small = _queries(admin_client, url)
    for n in range(4):
        ingest(tmp_path, [*many(30, offset=100 + 30 * n), b"bad", b"[]"], f"more{n}.json")
    assert Service.objects.count() == 123 and HarvestRun.objects.count() == 5

    with django_assert_num_queries(small):  # type: ignore[operator]
        response = admin_client.get(url)
    assert response.status_code == 200
    assert results(response.content.decode()).count("<tr") > 4


@pytest.mark.django_db
def test_it_shows_a_host_with_many_services_in_a_fixed_number_of_queries(
    tmp_path: Path, admin_client: Client, django_assert_num_queries: object
) -> None:
    ingest(tmp_path, [banner("192.0.2.60", port, f"s{port}") for port in range(1000, 1002)], "a.json")
    host = Host.objects.get()
    small = _queries(admin_client, change_url(host))
    ingest(tmp_path, [banner("192.0.2.60", port, f"s{port}") for port in range(2000, 2040)], "b.json")

    with django_assert_num_queries(small):  # type: ignore[operator]
        html = admin_client.get(change_url(host)).content.decode()
    assert html.count('class="inlineviewlink"') == 42


@pytest.mark.django_db
def test_a_host_with_more_services_than_a_page_lists_the_first_and_links_to_all(
    tmp_path: Path, admin_client: Client
) -> None:
    # Some hosts answer on thousands of ports (honeypots, tarpits): listing them all made the host
    # page megabytes long (5.7 MB and 4.5 s for 3,000).
    ingest(tmp_path, [banner("2001:db8::60", port, f"s{port}") for port in range(1, HOST_SERVICES_SHOWN + 6)])
    host = Host.objects.get()

    html = admin_client.get(change_url(host)).content.decode()

    ports = [int(port) for port in re.findall(r'field-port">\s*<p>(\d+)</p>', html)]
    assert ports == list(range(1, HOST_SERVICES_SHOWN + 1))
    every = changelist_url(Service) + "?q=2001%3Adb8%3A%3A60"
    assert f'<a href="{every}">{HOST_SERVICES_SHOWN + 5}</a> (the first {HOST_SERVICES_SHOWN} by port are' in html
    assert f"{HOST_SERVICES_SHOWN + 5} services" in admin_client.get(every).content.decode()


@pytest.mark.django_db
def test_it_shows_a_service_with_a_long_history_in_a_fixed_number_of_queries(
    tmp_path: Path, admin_client: Client, django_assert_num_queries: object
) -> None:
    def seen(day: int) -> dict:
        return banner("192.0.2.61", 104, f"version {day}", timestamp=f"2026-01-{day:02d}T00:00:00")

    ingest(tmp_path, [seen(1), seen(2)], "a.json")
    service = Service.objects.get()
    small = _queries(admin_client, change_url(service))
    ingest(tmp_path, [seen(day) for day in range(3, 28)], "b.json")

    with django_assert_num_queries(small):  # type: ignore[operator]
        html = admin_client.get(change_url(service)).content.decode()
    assert "version 27" in html and "version 1<" in html and "version 14<" in html


@pytest.mark.django_db
def test_it_filters_services_by_verdict_class_and_category(tmp_path: Path, admin_client: Client) -> None:
    from harvest.classify.services import classification_run_pending

    ingest(
        tmp_path,
        [
            banner("192.0.2.30", 2575, "\x0bMSH|^~\\&|HiX|ZH|||20260101||ACK^A01|1|P|2.4\rMSA|AA|1\r\x1c\r"),
            banner("192.0.2.31", 22, "SSH-2.0-OpenSSH_9.6"),
            banner("192.0.2.32", 104, ""),  # module dicom, no answer: blank
        ],
    )
    classification_run_pending()
    ingest(tmp_path, [banner("192.0.2.33", 80, "HTTP/1.1 200 OK\r\n\r\n")], name="later.json")
    url = changelist_url(Service)

    def listed(**query: str) -> set[str]:
        html = results(admin_client.get(url, query).content.decode())
        return {ip for ip in ("192.0.2.30", "192.0.2.31", "192.0.2.32", "192.0.2.33") if ip in html}

    assert listed(verdict="medical") == {"192.0.2.30"}
    assert listed(verdict="non_medical") == {"192.0.2.31"}
    assert listed(verdict="unknown") == {"192.0.2.32"}
    assert listed(verdict="none") == {"192.0.2.33"}
    assert listed(category="hl7") == {"192.0.2.30"}
    assert listed(category="blank") == {"192.0.2.32"}
    by_verdict = re.findall(r"192\.0\.2\.3[0-2]", results(admin_client.get(url, {"o": "10"}).content.decode()))
    assert by_verdict == ["192.0.2.30", "192.0.2.31", "192.0.2.32"]  # medical, non_medical, unknown


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["verdict=medical", "verdict=none", "category=hl7", "o=10", "o=-10.1"])
def test_the_verdict_filters_and_sort_run_no_subquery_per_service(
    tmp_path: Path, admin_client: Client, query: str
) -> None:
    from harvest.classify.services import classification_run_pending

    ingest(tmp_path, many(6))
    classification_run_pending()
    url = changelist_url(Service) + "?" + query
    admin_client.get(url)
    with CaptureQueriesContext(connection) as ctx:
        assert admin_client.get(url).status_code == 200

    # A filter or sort key that is a subquery runs it once for every service in the table (10 s
    # over 200,000 services); the page's own verdict columns may be subqueries, run per shown row.
    # PostgreSQL's plans name the subqueries a filter or sort key runs; SQLite's do not tell them
    # from the page's own columns.
    verdict_queries = [q["sql"] for q in ctx.captured_queries if "harvest_classification" in q["sql"]]
    assert verdict_queries
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for sql in verdict_queries:
                if not sql.startswith("SELECT"):
                    continue
                cursor.execute("EXPLAIN " + sql)
                plan = [row[0] for row in cursor.fetchall()]
                keys = [line for line in plan if re.search(r"\b(Filter|Sort Key|Join Filter):", line)]
                assert not [line for line in keys if "SubPlan" in line], "\n".join(plan)
    # Nor does a verdict subquery join the service and its host again (the verdicts' own ordering).
    assert all(q["sql"].count('JOIN "harvest_host"') <= 1 for q in ctx.captured_queries)


@pytest.mark.django_db
def test_a_later_page_of_services_runs_no_subquery_for_the_rows_it_skips(tmp_path: Path, admin_client: Client) -> None:
    from harvest.classify.services import classification_run_pending

    ingest(tmp_path, many(130))
    classification_run_pending()
    with CaptureQueriesContext(connection) as ctx:
        html = results(admin_client.get(changelist_url(Service), {"p": "2"}).content.decode())

    # A subquery in the select list runs for every row OFFSET skips too (2 s on page 1,000 of
    # 200,000 services); the page's verdicts come in one more query instead.
    pages = [q["sql"] for q in ctx.captured_queries if "OFFSET" in q["sql"] and '"harvest_service"' in q["sql"]]
    assert len(pages) == 1 and pages[0].count("SELECT") == 1, pages
    shown = re.findall(r">(198\.51\.\d+\.\d+)<.*?field-port\">(\d+)<.*?field-verdict\">([^<]*)<", html, re.S)
    expected = {
        (c.service.host.ip, str(c.service.port)): f"{c.cls} / {c.category}"
        for c in Classification.objects.filter(current=True).select_related("service__host")
    }
    assert len(shown) == 30 and all(verdict == expected[ip, port] for ip, port, verdict in shown)


@pytest.mark.django_db
def test_a_service_page_is_titled_with_the_host_address(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [banner("192.0.2.40", 104, "x")])
    html = admin_client.get(change_url(Service.objects.get())).content.decode()
    assert "192.0.2.40:104/tcp" in html


@pytest.mark.django_db
def test_staff_resume_a_stopped_run_in_the_background(
    tmp_path: Path, admin_client: Client, django_capture_on_commit_callbacks
) -> None:
    path = tmp_path / "banners.json"
    path.write_text("\n".join(json.dumps(b) for b in many(7)) + "\n")
    stopped = services.harvest_file_start(path=path)  # never executed: stands for a run cut short
    stopped.status = HarvestRun.Status.STOPPED
    stopped.save(update_fields=["status"])
    done = ingest(tmp_path, many(2, offset=50), name="other.json")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            changelist_url(HarvestRun),
            {"action": "resume", "index": 0, "_selected_action": [stopped.pk, done.pk]},
            follow=True,
        )
    text = response.content.decode()
    assert f"Run {stopped.pk} will resume in the background." in text
    assert f"run {done.pk} has completed" in text.lower()
    stopped.refresh_from_db()
    assert (stopped.status, stopped.new) == ("completed", 7)  # the task ran (synchronously in tests)


@pytest.mark.django_db
def test_a_resume_the_task_queue_cannot_take_is_a_message_not_a_server_error(
    tmp_path: Path, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the Redis broker down, the action ended in a 500 (the broker's ConnectionError)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    path = tmp_path / "banners.json"
    path.write_text("\n".join(json.dumps(b) for b in many(3)) + "\n")
    stopped = services.harvest_file_start(path=path)
    HarvestRun.objects.filter(pk=stopped.pk).update(status=HarvestRun.Status.STOPPED)

    response = admin_client.post(
        changelist_url(HarvestRun), {"action": "resume", "index": 0, "_selected_action": [stopped.pk]}, follow=True
    )
    text = response.content.decode()
    assert response.status_code == 200
    assert f"run {stopped.pk} could not be handed to the task queue" in text.lower()
    assert "will resume in the background" not in text
    assert HarvestRun.objects.get(pk=stopped.pk).status == "stopped"


@pytest.mark.django_db
def test_the_runs_list_tells_a_run_writing_now_from_an_interrupted_one(tmp_path: Path, admin_client: Client) -> None:
    path = tmp_path / "banners.json"
    path.write_text("\n".join(json.dumps(b) for b in many(3)) + "\n")
    interrupted = services.harvest_file_start(path=path)  # marked running, no process behind it
    writing = services.harvest_file_start(path=path)
    with harvest_lock(writing.pk):
        text = admin_client.get(changelist_url(HarvestRun)).content.decode()
        response = admin_client.post(
            changelist_url(HarvestRun),
            {"action": "resume", "index": 0, "_selected_action": [writing.pk]},
            follow=True,
        )
        assert f"run {writing.pk} is being written right now" in response.content.decode().lower()
    assert text.count("Running: writing now") == 1
    row = re.compile(r'<a href="[^"]*/harvestrun/(\d+)/change/">\d+</a>(.*?)</tr>', re.S)
    rows = dict(row.findall(text))
    assert "writing now" in rows[str(writing.pk)] and "Stopped (can be resumed)" in rows[str(interrupted.pk)]
    interrupted.refresh_from_db()
    assert interrupted.status == "stopped" and f"resume with --resume {interrupted.pk}" in interrupted.message
    killed = services.harvest_file_start(path=path)  # its page is the first to look at it
    text = admin_client.get(change_url(killed)).content.decode()
    assert "Stopped (can be resumed)" in text and "no process was running it any more" in text
    assert f"resume with --resume {killed.pk}" in text


@pytest.mark.django_db
def test_a_run_that_waits_for_another_is_shown_waiting_and_cannot_be_resumed_twice(
    tmp_path: Path, admin_client: Client
) -> None:
    path = tmp_path / "banners.json"
    path.write_text("\n".join(json.dumps(b) for b in many(3)) + "\n")
    writing, waiting = services.harvest_file_start(path=path), services.harvest_file_start(path=path)
    with harvest_lock(writing.pk), run_owned(waiting.pk):  # as a process waiting for the lock holds it
        text = admin_client.get(changelist_url(HarvestRun)).content.decode()
        response = admin_client.post(
            changelist_url(HarvestRun), {"action": "resume", "index": 0, "_selected_action": [waiting.pk]}, follow=True
        )
        assert f"run {waiting.pk} is being run right now" in response.content.decode().lower()
        page = admin_client.get(change_url(waiting)).content.decode()
    row = re.compile(r'<a href="[^"]*/harvestrun/(\d+)/change/">\d+</a>(.*?)</tr>', re.S)
    assert f"Running: waiting for run {writing.pk} to finish" in dict(row.findall(text))[str(waiting.pk)]
    assert f"Running: waiting for run {writing.pk} to finish" in page
    assert HarvestRun.objects.get(pk=waiting.pk).status == "running"


@pytest.mark.django_db
def test_looking_at_runs_is_not_enough_to_resume_them(
    tmp_path: Path, client: Client, django_capture_on_commit_callbacks
) -> None:
    path = tmp_path / "banners.json"
    path.write_text("\n".join(json.dumps(b) for b in many(3)) + "\n")
    stopped = services.harvest_file_start(path=path)
    stopped.status = HarvestRun.Status.STOPPED
    stopped.save(update_fields=["status"])
    staff = User.objects.create_user("handler", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_harvestrun"))
    client.force_login(staff)

    def resume() -> str:
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                changelist_url(HarvestRun),
                {"action": "resume", "index": 0, "_selected_action": [stopped.pk]},
                follow=True,
            )
        return response.content.decode()

    listing = client.get(changelist_url(HarvestRun)).content.decode()
    refused = resume()
    stopped.refresh_from_db()
    assert 'value="resume"' not in listing
    assert "will resume" not in refused and stopped.status == "stopped"

    staff.user_permissions.add(Permission.objects.get(codename="resume_harvestrun"))
    staff = User.objects.get(pk=staff.pk)  # permissions are cached on the user object
    client.force_login(staff)
    assert 'value="resume"' in client.get(changelist_url(HarvestRun)).content.decode()
    assert f"Run {stopped.pk} will resume in the background." in resume()
    stopped.refresh_from_db()
    assert (stopped.status, stopped.new) == ("completed", 3)


@pytest.mark.django_db
def test_a_record_nested_deeper_than_json_can_read_is_shown_as_text(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [banner("192.0.2.70", 80, "deep")])
    service = Service.objects.get()
    deep = '{"ip_str": "192.0.2.70", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    Service.objects.filter(pk=service.pk).update(raw=deep)  # stands for a record only orjson could parse

    response = admin_client.get(change_url(service))

    assert response.status_code == 200
    assert "[" * 5000 in response.content.decode()


@pytest.mark.django_db
def test_text_from_records_shows_its_bidi_and_invisible_characters(tmp_path: Path, admin_client: Client) -> None:
    rlo = "\u202e"
    ingest(
        tmp_path,
        [
            banner(
                "192.0.2.71",
                8080,
                "x",
                product=f"PACS{rlo}gpj.exe",
                version=f"1{rlo}2",
                org=f"Org{rlo}BV",
                isp=f"ISP{rlo}x",
                os=f"Linux{rlo}x",
                _shodan={"module": f"http{rlo}"},
            )
        ],
    )
    service = Service.objects.get()
    pages = {
        "service list": admin_client.get(changelist_url(Service)),
        "service page": admin_client.get(change_url(service)),
        "host list": admin_client.get(changelist_url(Host)),
        "host page": admin_client.get(change_url(service.host)),
    }

    for name, page in pages.items():
        html = page.content.decode()
        assert rlo not in html, name
    assert "PACS\\u202egpj.exe" in pages["service list"].content.decode()
    assert "1\\u202e2" in pages["service page"].content.decode()
    host_page = pages["host page"].content.decode()
    for shown in ("Org\\u202eBV", "ISP\\u202ex", "Linux\\u202ex", "PACS\\u202egpj.exe", "http\\u202e"):
        assert shown in host_page, shown


@pytest.mark.django_db
def test_the_host_list_counts_services_per_listed_host(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, [*many(6), banner("198.51.0.1", 22, "ssh")])
    admin_client.get(changelist_url(Host))

    with CaptureQueriesContext(connection) as ctx:
        listing = results(admin_client.get(changelist_url(Host), {"o": "-9"}).content.decode())

    # No join of hosts with every service before the page's LIMIT: the count is a subquery per row.
    page_queries = [q["sql"] for q in ctx.captured_queries if "LIMIT" in q["sql"] and "harvest_host" in q["sql"]]
    assert page_queries and not any("JOIN" in sql for sql in page_queries)
    shown = re.findall(r">(198\.51\.0\.\d+)</a>.*?field-service_total\">(\d+)<", listing, re.S)
    # Sorted by the count, descending, each host once (sorting by the relation would repeat it).
    assert shown[0] == ("198.51.0.1", "2") and len(shown) == len({ip for ip, _ in shown}) == 6


@pytest.mark.django_db
def test_the_host_service_counts_and_port_filter_are_read_from_indexes(tmp_path: Path, admin_client: Client) -> None:
    ingest(tmp_path, many(6))
    with CaptureQueriesContext(connection) as ctx:
        assert admin_client.get(changelist_url(Host), {"o": "-9"}).status_code == 200
        assert admin_client.get(changelist_url(Service)).status_code == 200
    counts = [
        q["sql"]
        for q in ctx.captured_queries
        if 'COUNT(U0."id")' in q["sql"] or 'COUNT(*) AS "n"' in q["sql"] or 'AS "port", COUNT(' in q["sql"]
    ]
    assert len(counts) == 2

    # Counting ids reads every service row (about 1 KiB each, banner and record inline) where the
    # index alone would do: on 200,000 services the sort by count took twice as long, the port
    # filter four times. Without sequential scans the plan shows which the query allows (on
    # PostgreSQL; SQLite keeps the rows in the table's b-tree, so the SQL itself is what is checked).
    assert not [sql for sql in counts if re.search(r'COUNT\("?\w+"?\."id"\)', sql)]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        for sql in counts:
            cursor.execute("EXPLAIN " + sql)
            plan = [row[0] for row in cursor.fetchall()]
            scans = [line for line in plan if re.search(r"Scan .*\bon harvest_service\b", line)]
            assert scans and all("Index Only Scan" in line for line in scans), "\n".join(plan)


@pytest.mark.django_db
def test_the_runs_list_asks_for_the_writing_run_once_a_page(tmp_path: Path, admin_client: Client) -> None:
    path = tmp_path / "banners.json"
    path.write_text("\n".join(json.dumps(b) for b in many(3)) + "\n")
    runs = [services.harvest_file_start(path=path) for _ in range(4)]  # marked running, none writing
    admin_client.get(changelist_url(HarvestRun))
    HarvestRun.objects.update(status=HarvestRun.Status.RUNNING)  # the first page marked them stopped

    with harvest_lock(runs[1].pk), run_owned(runs[2].pk), run_owned(runs[3].pk):
        with CaptureQueriesContext(connection) as ctx:
            text = admin_client.get(changelist_url(HarvestRun)).content.decode()

    assert text.count("Running: writing now") == 1 and text.count(f"Running: waiting for run {runs[1].pk}") == 2
    assert results(text).count("Stopped (can be resumed)") == 1
    # On PostgreSQL the holder comes from pg_locks (on SQLite from a lock file): once a page.
    lock_queries = [q for q in ctx.captured_queries if "pg_locks" in q["sql"]]
    assert len(lock_queries) == (1 if connection.vendor == "postgresql" else 0)


@pytest.mark.django_db
def test_a_runs_message_and_target_show_their_controls_as_escapes(admin_client: Client) -> None:
    """A run's message quotes errors (Shodan's own words, a file's name) and its target is a path
    or a query: text from outside, shown as every other such text is."""
    hostile = "\x1b[31m\u202eevil <b>x</b>\u2400"  # NUL as stored
    run = HarvestRun.objects.create(
        source="file", status="stopped", target=f"/data/{hostile}.json", message=f"Shodan says: {hostile}"
    )

    page = admin_client.get(change_url(run)).content.decode()
    table = results(admin_client.get(changelist_url(HarvestRun)).content.decode())

    for html in (page, table):
        assert "\\x1b[31m\\u202eevil &lt;b&gt;x&lt;/b&gt;\\x00" in html
        assert "\u202e" not in html and "\x1b" not in html and "<b>x" not in html
    assert "Shodan says: \\x1b" in page


@pytest.mark.django_db
def test_a_regular_expression_in_a_list_url_is_refused_not_run(tmp_path: Path, admin_client: Client) -> None:
    """?banner__regex=... ran a regular expression over every stored banner, and one the database
    could not compile was a server error; the lists filter by their own filters and search."""
    ingest(tmp_path, [banner("192.0.2.41", 104, "DICOM")])
    for query in ("banner__regex=(", "banner__iregex=DICOM", "host__org__regex=x"):
        response = admin_client.get(f"{changelist_url(Service)}?{query}")
        assert response.status_code == 400, query
    assert admin_client.get(f"{changelist_url(Service)}?port=104").status_code == 200
