"""The exposure report: data from the database, files written, hostile text kept as text everywhere."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from pypdf import PdfReader
from weasyprint import HTML

from harvest.classify import report as reports
from harvest.models import Classification, Host, Service

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE_ORG = '<img src="file:///etc/passwd"> Evil & Co'


def make_service(
    ip: str, port: int, *, org: str = "Example Org", asn: int | None = 64496, module: str = "http", banner: str = "x"
) -> Service:
    host, _ = Host.objects.get_or_create(
        ip=ip, defaults={"org": org, "asn": asn, "first_seen": NOW, "last_seen": NOW, "hostnames": []}
    )
    return Service.objects.create(
        host=host,
        port=port,
        module=module,
        banner=banner,
        raw=json.dumps({"ip_str": ip, "port": port, "data": banner}),
        banner_hash="h",
        first_seen=NOW,
        last_seen=NOW,
        banner_since=NOW,
    )


def judge(
    service: Service,
    cls: str,
    category: str,
    *,
    segment: str = "",
    product: str = "",
    version: str = "test.1",
    **kw: object,
) -> None:
    Classification.objects.create(
        service=service,
        rules_version=version,
        cls=cls,
        category=category,
        segment=segment,
        product=product,
        banner_hash="h",
        classified_at=NOW,
        evidence=kw.pop("evidence", [{"rule": "r.x", "field": "data", "excerpt": "x"}]),
        **kw,
    )


@pytest.fixture
def corpus(db: None) -> dict:
    """A small world: 3 DICOM servers on 2 ports, an HL7 engine, web and SSH services, blanks."""
    judge(
        make_service("192.0.2.1", 104, org="Microsoft Azure", asn=8075, module="dicom"),
        "medical",
        "dicom",
        segment="medical_port",
        product="DCMTK 3.6.7",
    )
    judge(
        make_service("192.0.2.2", 11112, org="SURFsara", asn=1103, module="dicom"),
        "medical",
        "dicom",
        segment="medical_port",
        product="DCMTK 3.6.7",
    )
    judge(
        make_service("192.0.2.3", 11112, org="SURFsara", asn=1103, module="dicom"),
        "medical",
        "dicom",
        segment="medical_port",
        product="Orthanc",
        honeypot=True,
    )
    judge(
        make_service("192.0.2.4", 2575, org=HOSTILE_ORG, asn=None, module="hl7"),
        "medical",
        "hl7",
        segment="software",
        product="Mirth Connect",
        evidence=[{"rule": "hl7.msh", "field": "data", "excerpt": '<script>alert("x")</script>MSH|^~\\&|'}],
    )
    for i in range(5):
        judge(make_service(f"198.51.100.{i}", 80, module="http"), "non_medical", "known_service")
    judge(make_service("198.51.100.10", 22, module="ssh"), "non_medical", "known_service")
    judge(
        make_service("198.51.100.11", 443, org="Erasmus MC", module="https"),
        "non_medical",
        "hospital_infra",
        segment="hospital_organisation",
    )
    judge(make_service("203.0.113.1", 104, module="", banner=""), "unknown", "blank", segment="")
    judge(make_service("203.0.113.2", 104, module="", banner=""), "unknown", "blank", segment="")
    judge(make_service("203.0.113.3", 1500, module="", banner="\x01\x02"), "unknown", "unparseable")
    make_service("203.0.113.4", 8080)  # not classified yet
    return {}


def test_it_aggregates_the_studys_figures_from_the_database(corpus: dict) -> None:
    report = reports.exposure_report_build(top=3)

    current = Classification.objects.filter(current=True)
    assert report["services"] == Service.objects.count() == 15
    assert report["classified"] == current.count() == 14
    assert report["unclassified"] == 1
    assert (
        report["classes"]
        == {c: current.filter(cls=c).count() for c in ("medical", "non_medical", "unknown")}
        == {"medical": 4, "non_medical": 7, "unknown": 3}
    )
    assert report["blank"] == 2 and report["non_blank"] == 12
    assert report["class_share"]["medical"] == pytest.approx(4 / 14)
    # Figure 10: protocols of non-blank banners (http and https as one), most frequent first, cut at --top.
    assert [(r["service"], r["count"]) for r in report["top_services"]] == [
        ("http", 6),
        ("dicom", 3),
        ("(unidentified)", 1),
    ]
    assert report["top_services"][0]["share"] == pytest.approx(6 / 12)
    # Figure 12: every non-hint Appendix B port, blank and non-blank.
    ports = {r["port"]: r for r in report["medical_ports"]}
    assert 80 not in ports and 443 not in ports
    assert (ports[104]["non_blank"], ports[104]["blank"], ports[104]["medical"]) == (1, 2, 1)
    assert (ports[11112]["non_blank"], ports[11112]["medical"]) == (2, 2)
    assert (ports[1500]["non_blank"], ports[1500]["blank"]) == (1, 0)
    assert ports[6464]["total"] == 0
    # Table 1: DICOM servers by port, organisation and ASN.
    assert report["dicom"] == [
        {"port": 104, "org": "Microsoft Azure", "asn": 8075, "count": 1},
        {"port": 11112, "org": "SURFsara", "asn": 1103, "count": 2},
    ]
    segments = {r["segment"]: r for r in report["segments"]}
    assert segments["medical_port"]["medical"] == 3
    assert segments["software"]["medical"] == 1
    assert segments["hospital_organisation"]["non_medical"] == 1
    assert segments[""]["total"] == 9
    assert report["honeypots"] == {"count": 1, "by_class": {"medical": 1, "non_medical": 0, "unknown": 0}}
    assert report["medical_products"][0] == {"product": "DCMTK 3.6.7", "category": "dicom", "count": 2}
    assert [s["ip"] for s in report["medical_services"]] == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_top_services_count_a_protocol_once_whatever_shodan_module_answered(db: None) -> None:
    # The study counts HTTP on 80, 443, 8080 and 8443 as one service (Figures 10 and 14); Shodan
    # names the same protocol after the crawler that saw it (https, http-simple-new, ldap-tcp).
    modules = ["http", "http", "https", "https", "http-simple-new", "https-simple-new"]
    modules += ["ldaps", "ldap-tcp", "ssh", "ssh", "ssh", "snmp_v3", "dns-udp"]
    for i, module in enumerate(modules):
        judge(make_service(f"198.51.100.{i}", 10000 + i, module=module), "non_medical", "known_service")

    report = reports.exposure_report_build(top=3)

    assert [(r["service"], r["count"]) for r in report["top_services"]] == [("http", 6), ("ssh", 3), ("ldap", 2)]
    assert report["top_services"][0]["share"] == pytest.approx(6 / len(modules))


def test_it_counts_only_the_current_verdict_of_each_service(corpus: dict) -> None:
    service = Service.objects.get(host__ip="192.0.2.1")
    Classification.objects.filter(service=service).update(current=False)
    judge(service, "unknown", "unparseable", version="test.2")  # a newer rules version's verdict

    report = reports.exposure_report_build()

    assert report["classes"]["medical"] == 3
    assert report["rules_versions"] == {"test.1": 13, "test.2": 1}
    assert report["dicom"] == [{"port": 11112, "org": "SURFsara", "asn": 1103, "count": 2}]


def test_it_builds_the_report_in_a_fixed_number_of_queries(corpus: dict, django_assert_max_num_queries) -> None:
    for i in range(30):
        judge(make_service(f"198.18.0.{i}", 104, module="dicom"), "medical", "dicom")
    with django_assert_max_num_queries(15):
        report = reports.exposure_report_build()
    assert report["classes"]["medical"] == 34


def test_it_writes_json_and_csv_that_match_the_database(corpus: dict, tmp_path: Path) -> None:
    report = reports.exposure_report_build()
    written = reports.exposure_report_write(report=report, out=tmp_path, formats=["json", "csv"])

    assert {p.name for p in written} == {"exposure_report.json"} | {f"{t}.csv" for t in reports.CSV_TABLES}
    data = json.loads((tmp_path / "exposure_report.json").read_text())
    assert data["classes"] == {"medical": 4, "non_medical": 7, "unknown": 3}
    assert data["dicom"][1]["org"] == "SURFsara"

    classes = list(csv.DictReader(io.StringIO((tmp_path / "classes.csv").read_text())))
    assert [(r["class"], int(r["count"])) for r in classes] == [("medical", 4), ("non_medical", 7), ("unknown", 3)]
    dicom = list(csv.DictReader(io.StringIO((tmp_path / "dicom.csv").read_text())))
    assert [(int(r["port"]), r["org"], int(r["asn"]), int(r["count"])) for r in dicom] == [
        (104, "Microsoft Azure", 8075, 1),
        (11112, "SURFsara", 1103, 2),
    ]
    ports = {int(r["port"]): r for r in csv.DictReader(io.StringIO((tmp_path / "medical_ports.csv").read_text()))}
    assert (int(ports[104]["blank"]), int(ports[104]["non_blank"])) == (2, 1)
    medical = list(csv.DictReader(io.StringIO((tmp_path / "medical_services.csv").read_text())))
    assert medical[3]["org"] == HOSTILE_ORG  # plain text in CSV, not a formula, not altered


def test_it_defuses_spreadsheet_formulas_in_csv(db: None, tmp_path: Path) -> None:
    judge(make_service("192.0.2.9", 104, org='=HYPERLINK("http://x")', module="dicom"), "medical", "dicom")
    report = reports.exposure_report_build()
    text = reports.exposure_report_csv(report=report, table="dicom")
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["org"] == '\'=HYPERLINK("http://x")'


def test_it_writes_valid_png_and_svg_charts(corpus: dict, tmp_path: Path) -> None:
    written = reports.exposure_report_write(
        report=reports.exposure_report_build(), out=tmp_path, formats=["png", "svg"]
    )

    names = {"classes", "top_services", "medical_ports", "segments"}
    assert {p.name for p in written} == {f"{n}.png" for n in names} | {f"{n}.svg" for n in names}
    for name in names:
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 2000
        root = ET.fromstring((tmp_path / f"{name}.svg").read_bytes())  # well-formed XML
        assert root.tag.endswith("svg")
    # Hostile text in a chart label is SVG text (escaped), not markup or mathtext.
    svg = (tmp_path / "top_services.svg").read_text()
    assert "http" in svg


@pytest.mark.parametrize("module", ["ht\x1b[31mtp\x01", "\ufffe", "a\uffffb", "\x00x\u202e", "\ud800"])
def test_it_writes_well_formed_svg_whatever_a_module_name_holds(db: None, tmp_path: Path, module: str) -> None:
    # As stored (PostgreSQL text holds no NUL or lone surrogate), and as a label in the report data.
    stored = module.replace("\x00", "\u2400").replace("\ud800", "\\ud800")
    judge(make_service("192.0.2.8", 80, module=stored), "non_medical", "known_service")
    report = reports.exposure_report_build()
    report["top_services"].append({"service": module, "count": 1, "share": 0.5, "percent": 50.0})

    written = reports.exposure_report_write(report=report, out=tmp_path, formats=["svg"])

    assert len(written) == 4
    for path in written:
        ET.fromstring(path.read_bytes())  # every chart is a well-formed XML document
    labels = "".join(ET.fromstring((tmp_path / "top_services.svg").read_bytes()).itertext())
    assert not [c for c in labels if c not in "\t\n\r" and (ord(c) < 0x20 or c in "\ufffe\uffff\u202e")]


def test_it_keeps_dollar_signs_in_labels_as_text(db: None, tmp_path: Path) -> None:
    judge(make_service("192.0.2.7", 80, module="$\\frac{a}{b$"), "non_medical", "known_service")
    written = reports.exposure_report_write(report=reports.exposure_report_build(), out=tmp_path, formats=["svg"])
    assert (tmp_path / "top_services.svg") in written
    assert "$\\frac{a}{b$" in (tmp_path / "top_services.svg").read_text()


def test_it_escapes_hostile_text_in_the_html(corpus: dict) -> None:
    html = reports.exposure_report_html(report=reports.exposure_report_build())

    assert '<img src="file:///etc/passwd">' not in html
    assert "&lt;img src=&quot;file:///etc/passwd&quot;&gt; Evil &amp; Co" in html
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    # The only images are the four charts, embedded.
    assert html.count("<img ") == 4
    assert html.count('src="data:image/png;base64,') == 4


# An organisation that a right-to-left override makes read as a hospital's name.
SPOOFED_ORG = "Evil \u202eCM sumsarE\u202c\u200b"
INVISIBLES = ("\u202e", "\u202c", "\u200b", "\x1b", "\x01")


@pytest.fixture
def spoofed(db: None) -> dict:
    service = make_service("192.0.2.20", 104, org=SPOOFED_ORG, module="dic\x1b[31mom\u202e")
    Host.objects.filter(pk=service.host_id).update(hostnames=["x\u202egro.live"])
    judge(
        service,
        "medical",
        "dicom",
        product="Orth\u200banc\x01",
        evidence=[{"rule": "dicom.x", "field": "data", "excerpt": "AE\u202eSOAP\x1b]0;t\x07"}],
    )
    return {}


def test_it_shows_bidi_and_invisible_characters_as_escapes_in_the_html(spoofed: dict) -> None:
    html = reports.exposure_report_html(report=reports.exposure_report_build(), charts={})

    assert not [c for c in INVISIBLES if c in html]
    assert "Evil \\u202eCM sumsarE\\u202c\\u200b" in html  # in the DICOM table and the service list
    assert html.count("Evil \\u202eCM") == 2
    assert "x\\u202egro.live" in html
    assert "Orth\\u200banc\\x01" in html
    assert "AE\\u202eSOAP\\x1b]0;t\\x07" in html
    assert "dic\\x1b[31mom\\u202e" in html  # the module in the top services table


def test_it_shows_bidi_as_escapes_in_the_pdf(spoofed: dict, tmp_path: Path) -> None:
    reports.exposure_report_write(report=reports.exposure_report_build(), out=tmp_path, formats=["pdf"])

    text = "\n".join(page.extract_text() for page in PdfReader(tmp_path / "exposure_report.pdf").pages)
    assert "Erasmus" not in text
    assert "\\u202eCMsumsarE" in re.sub(r"\s+", "", text)


def test_it_shows_bidi_as_escapes_in_csv_and_keeps_json_as_data(spoofed: dict, tmp_path: Path) -> None:
    report = reports.exposure_report_build()
    reports.exposure_report_write(report=report, out=tmp_path, formats=["json", "csv"])

    for path in tmp_path.glob("*.csv"):
        text = path.read_text(encoding="utf-8")
        assert not [c for c in INVISIBLES if c in text], path.name
    medical = next(csv.DictReader(io.StringIO((tmp_path / "medical_services.csv").read_text())))
    assert medical["org"] == "Evil \\u202eCM sumsarE\\u202c\\u200b"
    assert medical["product"] == "Orth\\u200banc\\x01"
    data = json.loads((tmp_path / "exposure_report.json").read_text())
    assert data["dicom"][0]["org"] == SPOOFED_ORG
    assert data["medical_services"][0]["hostnames"] == ["x\u202egro.live"]


def test_it_renders_a_pdf_with_the_figures(corpus: dict, tmp_path: Path) -> None:
    reports.exposure_report_write(report=reports.exposure_report_build(), out=tmp_path, formats=["pdf"])

    reader = PdfReader(tmp_path / "exposure_report.pdf")
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "Services per class" in text
    assert "Microsoft Azure" in text and "AS8075" in text and "SURFsara" in text
    assert "Mirth Connect" in text
    # Figure 8's numbers: 4 medical services of 14 classified.
    assert re.search(r"medical\s+4\s+28\.57\s*%", text)
    assert re.search(r"non_medical\s+7\s+50\.00\s*%", text)
    # The hostile organisation is printed as text (wrapped over lines), not turned into an image.
    compact = re.sub(r"\s+", "", text)
    assert '<imgsrc="file:///etc/passwd">Evil&Co' in compact
    assert '<script>alert("x")</script>MSH|^~\\&|' in compact
    # weasyprint shares image resources between pages: count distinct images.
    images = {hashlib.sha256(image.data).hexdigest() for page in reader.pages for image in page.images}
    assert len(images) == 4


class _CountingHandler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_trap() -> str:
    _CountingHandler.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_pdf_fetcher_refuses_files_and_hosts_even_for_live_markup(http_trap: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG_MAGIC + b"not really")
    # Markup that escaping would never let through, to prove the second wall on its own.
    html = (
        f'<p>x</p><img src="file://{secret}"><img src="{http_trap}/a.png">'
        f'<link rel="stylesheet" href="{http_trap}/s.css"><div style="background: url({http_trap}/b.png)">y</div>'
    )
    fetcher = reports.ReportURLFetcher(allowed=set())

    pdf = HTML(string=html, base_url=None, url_fetcher=fetcher).write_pdf()

    assert _CountingHandler.hits == []
    assert f"file://{secret}" in fetcher.refused
    assert f"{http_trap}/a.png" in fetcher.refused
    assert sum(len(p.images) for p in PdfReader(io.BytesIO(pdf)).pages) == 0


def test_hostile_text_reaches_no_fetcher_in_the_real_report(corpus: dict, http_trap: str, tmp_path: Path) -> None:
    service = Service.objects.get(host__ip="192.0.2.4")
    Classification.objects.filter(service=service).update(
        product=f'<img src="{http_trap}/p.png"><link rel=stylesheet href="{http_trap}/x.css">'
    )
    reports.exposure_report_write(report=reports.exposure_report_build(), out=tmp_path, formats=["pdf", "html"])
    assert _CountingHandler.hits == []
    text = "\n".join(p.extract_text() for p in PdfReader(tmp_path / "exposure_report.pdf").pages)
    assert f"{http_trap}/p.png" in re.sub(r"\s+", "", text)


def test_the_command_prints_a_table_and_writes_the_files(corpus: dict, tmp_path: Path) -> None:
    out = io.StringIO()
    call_command("exposure_report", "--out", str(tmp_path / "r"), "--format", "json,csv,html", stdout=out)
    text = out.getvalue()
    assert "15 services, 14 classified" in text
    assert "1 services are not classified yet" in text
    assert "SURFsara" in text and "AS1103" in text
    assert (tmp_path / "r" / "exposure_report.html").is_file()
    assert not (tmp_path / "r" / "exposure_report.pdf").exists()
    assert "wrote " + str(tmp_path / "r" / "dicom.csv") in text


def test_the_command_prints_json(corpus: dict) -> None:
    out = io.StringIO()
    call_command("exposure_report", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["classes"]["medical"] == 4
    assert data["files"] == []


def test_the_command_rejects_an_unknown_format(corpus: dict, tmp_path: Path) -> None:
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="unknown format.*docx"):
        call_command("exposure_report", "--out", str(tmp_path), "--format", "json,docx", stdout=io.StringIO())


def test_the_command_says_when_it_cannot_write_the_folder(corpus: dict, tmp_path: Path) -> None:
    from django.core.management import CommandError

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    with pytest.raises(CommandError, match=f"cannot create {blocker}"):
        call_command("exposure_report", "--out", str(blocker), "--format", "json", stdout=io.StringIO())


def test_it_refuses_formats_without_a_folder_to_write_them_into(db: None) -> None:
    """Without --out nothing is written: --format png printed the table and exited 0."""
    with pytest.raises(CommandError, match="--format needs --out DIR"):
        call_command("exposure_report", "--format", "png", stdout=io.StringIO())


def test_it_refuses_a_format_list_that_names_no_format(db: None, tmp_path: Path) -> None:
    """--format "," (a script's empty variable) wrote no file and exited 0, as if it had."""
    for empty in (",", "", " , "):
        with pytest.raises(CommandError, match="--format names no format"):
            call_command("exposure_report", "--out", str(tmp_path), "--format", empty, stdout=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_long_hostile_text_is_cut_in_the_html_and_pdf_and_kept_whole_in_json(db: None, tmp_path: Path) -> None:
    # Escaping makes "\u202e" six characters: 255 of them would be 1,530 characters without a
    # break, which the PDF engine lays out in time that grows with the square of the length.
    long_org = "\u202e" * 255
    service = make_service("192.0.2.30", 104, org=long_org, module="dicom")
    Host.objects.filter(pk=service.host_id).update(hostnames=["h" * 253])
    judge(service, "medical", "dicom", product="W" * 255, evidence=[{"rule": "r.x", "excerpt": "\u200b" * 200}])
    report = reports.exposure_report_build()

    html = reports.exposure_report_html(report=report, charts={})

    shown = reports.REPORT_TEXT_LIMIT
    assert "\\u202e" * (shown // 6) in html and "\\u202e" * (shown // 6 + 1) not in html
    assert "W" * (shown - 1) + "…" in html and "W" * shown not in html
    assert "h" * (shown - 1) + "…" in html
    assert "\\u200b" * (shown // 6 + 1) not in html
    reports.exposure_report_write(report=report, out=tmp_path, formats=["json"])
    data = json.loads((tmp_path / "exposure_report.json").read_text())
    assert data["medical_services"][0]["org"] == long_org and data["medical_services"][0]["product"] == "W" * 255


def test_long_unbroken_values_wrap_inside_the_pdf_page(db: None, tmp_path: Path) -> None:
    """Host names, organisations and products without a space: a table cell could not break them,
    so the table grew past the page's right edge and everything there was cut off the PDF."""
    service = make_service("192.0.2.31", 104, org="O" * 255, module="D" * 64)
    Host.objects.filter(pk=service.host_id).update(hostnames=["h" * 253])
    judge(service, "medical", "dicom", product="W" * 255, evidence=[{"rule": "r." + "R" * 80, "excerpt": "x"}])
    reports.exposure_report_write(report=reports.exposure_report_build(), out=tmp_path, formats=["pdf"])

    starts: list[float] = []
    pdf = PdfReader(tmp_path / "exposure_report.pdf")
    for page in pdf.pages:
        page.extract_text(visitor_text=lambda text, cm, tm, *_: text.strip() and starts.append(cm[4] + tm[4] * cm[0]))
    width = float(pdf.pages[0].mediabox.width)
    right_margin = 14 / 25.4 * 72  # the template's @page margin, in points
    assert starts and max(starts) < width - right_margin
    text = re.sub(r"\s+", "", "".join(page.extract_text() for page in pdf.pages))
    assert "W" * 99 + "…" in text and "h" * 99 + "…" in text  # shown whole (up to the cut), wrapped


def test_the_medical_service_list_says_how_many_it_leaves_out(db: None) -> None:
    """The list stops at MEDICAL_LIST_LIMIT: with exactly that many medical services it said
    "(first 200)" though none was left out, and with more it never said of how many."""
    for i in range(reports.MEDICAL_LIST_LIMIT):
        judge(make_service(f"10.0.{i // 250}.{i % 250 + 1}", 104, module="dicom"), "medical", "dicom")

    html = reports.exposure_report_html(report=reports.exposure_report_build(), charts={})
    assert "<h2>Medical services</h2>" in html

    judge(make_service("10.1.0.1", 104, module="dicom"), "medical", "dicom")
    html = reports.exposure_report_html(report=reports.exposure_report_build(), charts={})
    assert "<h2>Medical services (the first 200 of 201)</h2>" in html


@pytest.mark.django_db(transaction=True)
def test_every_figure_comes_from_one_moment_while_verdicts_are_written(corpus: dict) -> None:
    """The report reads the database in a dozen queries. Under PostgreSQL's default isolation each
    saw the data of its own moment: a service harvested and judged in between counted in
    `classified` but not in `services`, and the report said every service was classified."""
    failures: list[Exception] = []

    def judge_one_more() -> None:
        try:
            judge(make_service("192.0.2.99", 104, module="dicom"), "medical", "dicom")
        except Exception as exc:  # noqa: BLE001 - SQLite refuses the write while the report reads: fine
            failures.append(exc)
        finally:
            connection.close()

    fired = []

    def between_queries(execute, sql, params, many, context):  # noqa: ANN001, ANN202
        result = execute(sql, params, many, context)
        if not fired and sql.lstrip().upper().startswith("SELECT"):
            fired.append(sql)
            writer = threading.Thread(target=judge_one_more)
            writer.start()
            writer.join(timeout=30)
        return result

    with connection.execute_wrapper(between_queries):
        report = reports.exposure_report_build()

    assert fired, failures
    assert (report["services"], report["classified"], report["unclassified"]) in ((15, 14, 1), (16, 15, 1))
    assert report["classes"]["medical"] == sum(r["count"] for r in report["categories"] if r["class"] == "medical")


def test_the_report_files_are_readable_by_their_owner_alone(corpus: dict, tmp_path: Path) -> None:
    """The report lists exposed medical systems with their addresses and evidence (TLP:AMBER), like
    the service export, which is written owner-only; the report's files were world-readable."""
    out = tmp_path / "report"
    (out).mkdir()
    (out / "exposure_report.json").write_text("an older report")
    (out / "exposure_report.json").chmod(0o644)

    written = reports.exposure_report_write(report=reports.exposure_report_build(), out=out)

    assert len(written) == 18
    for path in written:
        assert path.stat().st_mode & 0o077 == 0, path.name
    assert json.loads((out / "exposure_report.json").read_text())["services"] == 15
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temporary files left


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_no_cell_is_a_formula_whatever_separator_the_spreadsheet_splits_at(
    db: None, tmp_path: Path, delimiter: str
) -> None:
    """Excel opens a .csv by splitting at the list separator of its locale: ';' in Dutch (and
    German) Excel, as at a Dutch CERT. A value with no comma or quote is written as it is, so
    'x;=cmd|...' became a cell '=cmd|...', a formula; a line break inside a quoted value
    starts a row for a reader that splits elsewhere, and a tab splits cells in a tab import."""
    hostile = ["x;=cmd|' /C calc'!A0", "a\tb\t+1", 'q;"@SUM(1)"', "n\n-2+3", "r\r\n=1+1"]
    for i, org in enumerate(hostile):
        service = make_service(f"192.0.2.{40 + i}", 104, org=org, module=hostile[-1 - i])
        judge(service, "medical", "dicom", product=org, segment=hostile[i - 1])
    report = reports.exposure_report_build()
    reports.exposure_report_write(report=report, out=tmp_path, formats=["csv"])

    cells = [
        cell
        for path in sorted(tmp_path.glob("*.csv"))
        for row in csv.reader(path.open(encoding="utf-8", newline=""), delimiter=delimiter)
        for cell in row
    ]
    assert len(cells) > 60
    assert [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")] == []
    # Read as the comma file it is, each value is there, a quote before each formula start.
    medical = list(csv.DictReader((tmp_path / "medical_services.csv").open(encoding="utf-8", newline="")))
    assert [row["org"] for row in medical] == [
        "x;'=cmd|' /C calc'!A0",
        "a\tb\t'+1",
        'q;"\'@SUM(1)"',
        "n\n'-2+3",
        "r\r\n'=1+1",
    ]


def test_the_json_file_writes_controls_and_bidi_as_escapes_and_reads_back_as_stored(
    spoofed: dict, tmp_path: Path
) -> None:
    """JSON needs no escape for DEL, C1 controls, bidi or invisible characters, so the report's
    JSON, read with cat or less, ran an 8-bit CSI (U+009B) from an organisation and showed text
    after a U+202E reversed; the service export writes them as \\u escapes already."""
    service = make_service("192.0.2.21", 104, org="a\x9b2Jb\x7f\u2028", module="dicom")
    judge(service, "medical", "dicom")
    reports.exposure_report_write(report=reports.exposure_report_build(), out=tmp_path, formats=["json"])

    text = (tmp_path / "exposure_report.json").read_text(encoding="utf-8")
    assert not [c for c in (*INVISIBLES, "\x9b", "\x7f", "\u2028") if c in text]
    data = json.loads(text)
    assert {row["org"] for row in data["dicom"]} == {SPOOFED_ORG, "a\x9b2Jb\x7f\u2028"}
    assert data["medical_services"][0]["hostnames"] == ["x\u202egro.live"]


def test_services_whose_names_are_cut_alike_keep_a_bar_each() -> None:
    """Chart labels are cut to 40 characters; matplotlib put two services whose labels came out
    the same on one category, so one bar hid the other."""
    from harvest.classify import charts

    prefix = "Vendor Imaging Archive Server Edition 20"  # 40 characters
    report = {"top_services": [{"service": f"{prefix}25 A", "count": 5}, {"service": f"{prefix}26 B", "count": 3}]}
    figure = charts.CHARTS["top_services"](report)
    try:
        axes = figure.axes[0]
        assert sorted(bar.get_width() for bar in axes.patches) == [3, 5]
        assert len({bar.get_y() for bar in axes.patches}) == 2  # each on a row of its own
        assert len(axes.get_yticklabels()) == 2
    finally:
        charts.plt.close(figure)
