"""The exposure report: the study's overview (Figures 8, 10, 12 and Table 1) and more, from stored verdicts.

`exposure_report_build` aggregates in the database (a handful of GROUP BY queries, whatever the
number of services) into JSON-able data; the writers turn that into JSON, CSV, PNG/SVG charts,
HTML (autoescaped template) and PDF (weasyprint, with a URL fetcher that fetches nothing but the
charts embedded as data: URIs).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

from django.db import connection, transaction
from django.db.models import Case, CharField, Count, F, Q, Value, When
from django.template.loader import render_to_string
from django.utils import timezone
from weasyprint import HTML
from weasyprint.urls import URLFetcher, URLFetcherResponse

from harvest.classify.charts import render_charts
from harvest.classify.types import CLASSES
from harvest.models import Classification, Service
from medexpo.lib.files import replaced_whole
from medexpo.lib.text import json_escape_invisible, shorten, visible_text

MEDICAL_PORTS_FILE = Path(__file__).resolve().parent.parent / "data" / "medical_ports.toml"
FORMATS = ("json", "csv", "png", "svg", "html", "pdf")
MEDICAL_LIST_LIMIT = 200
# Characters of one value the HTML and PDF show (after controls became escapes); JSON and CSV keep
# it whole. WeasyPrint lays out a long unbroken word in time that grows with its square: a few
# hundred such values made the PDF take minutes.
REPORT_TEXT_LIMIT = 100


class ReportError(Exception):
    """The report cannot be written (bad output folder, unknown format); the message is for the user."""


# --- data ------------------------------------------------------------------------------------


def medical_ports() -> list[dict]:
    """Appendix B ports that are evidence enough to look at (the web's own ports are hints only)."""
    with MEDICAL_PORTS_FILE.open("rb") as handle:
        registry = tomllib.load(handle)
    return [p for p in registry.get("port", []) if not p.get("hint_only")]


def exposure_report_build(*, top: int = 10) -> dict:
    """Everything the report shows, as JSON-able data, aggregated from the current verdicts.

    All figures are read from one snapshot, so they agree with each other while harvests and
    classification runs write.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql" and not _in_outer_transaction():
            # READ COMMITTED, PostgreSQL's default, gives every query a snapshot of its own. SQLite
            # reads one snapshot inside a transaction anyway.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return _build(top)


def _in_outer_transaction() -> bool:
    # The block atomic() just opened is the only one unless a caller (a test) already had one.
    return len(connection.atomic_blocks) > 1


def _build(top: int) -> dict:
    current = Classification.objects.filter(current=True)
    services = Service.objects.count()
    by_class = dict(current.values_list("cls").annotate(n=Count("id")).order_by())
    classified = sum(by_class.values())
    blank = current.filter(category="blank").count()
    return {
        "generated_at": timezone.now().isoformat(timespec="seconds"),
        "rules_versions": dict(current.values_list("rules_version").annotate(n=Count("id")).order_by("rules_version")),
        "services": services,
        "classified": classified,
        "unclassified": services - classified,
        "blank": blank,
        "non_blank": classified - blank,
        "classes": {c: by_class.get(c, 0) for c in CLASSES},
        "class_share": {c: (by_class.get(c, 0) / classified if classified else 0.0) for c in CLASSES},
        "categories": [
            {"class": cls, "category": category, "count": n}
            for cls, category, n in current.values_list("cls", "category")
            .annotate(n=Count("id"))
            .order_by("cls", "-n", "category")
        ],
        "top_services": _top_services(current, top, classified - blank),
        "medical_ports": _medical_ports(current),
        "dicom": [
            {"port": port, "org": org, "asn": asn, "count": n}
            for port, org, asn, n in current.filter(category="dicom")
            .values_list("service__port", "service__host__org", "service__host__asn")
            .annotate(n=Count("id"))
            .order_by("service__port", "-n", "service__host__org")
        ],
        "segments": _segments(current),
        "honeypots": _honeypots(current),
        "medical_products": [
            {"product": product, "category": category, "count": n}
            for product, category, n in current.filter(cls="medical")
            .exclude(product="")
            .values_list("product", "category")
            .annotate(n=Count("id"))
            .order_by("-n", "product")[:top]
        ],
        "medical_services": _medical_services(current),
    }


# Shodan names a protocol after the crawler module that saw it; the study counts the protocol
# (Figure 14: "HTTP on ports 80, 443, 8080, 8443"), so the top services fold these names together.
SERVICE_MODULES = {
    "http": ("http", "https", "http-simple-new", "https-simple-new"),
    "ldap": ("ldap", "ldaps", "ldap-tcp", "ldap-udp"),
    "dns": ("dns", "dns-udp", "dns-tcp"),
    "snmp": ("snmp", "snmp_v1", "snmp_v2", "snmp_v3"),
    "ftp": ("ftp", "ftps"),
    "smtp": ("smtp", "smtps"),
    "imap": ("imap", "imaps"),
    "pop3": ("pop3", "pop3s"),
    "ike": ("ike", "ike-nat-t"),
}


def _top_services(current, top: int, non_blank: int) -> list[dict]:  # noqa: ANN001 - a QuerySet
    service = Case(
        *(When(service__module__in=modules, then=Value(name)) for name, modules in SERVICE_MODULES.items()),
        default=F("service__module"),
        output_field=CharField(),
    )
    rows = (
        current.exclude(category="blank")
        .annotate(protocol=service)
        .values_list("protocol")
        .annotate(n=Count("id"))
        .order_by("-n", "protocol")[:top]
    )
    return [
        {
            "service": module or "(unidentified)",
            "count": n,
            "share": n / non_blank if non_blank else 0.0,
            "percent": round(100 * n / non_blank, 2) if non_blank else 0.0,
        }
        for module, n in rows
    ]


def _medical_ports(current) -> list[dict]:  # noqa: ANN001
    ports = medical_ports()
    counts = {
        port: (blank, non_blank, medical)
        for port, blank, non_blank, medical in current.filter(service__port__in=[p["port"] for p in ports])
        .values_list("service__port")
        .annotate(
            blank=Count("id", filter=Q(category="blank")),
            non_blank=Count("id", filter=~Q(category="blank")),
            medical=Count("id", filter=Q(cls="medical")),
        )
        .order_by()
    }
    rows = []
    for p in sorted(ports, key=lambda p: p["port"]):
        blank, non_blank, medical = counts.get(p["port"], (0, 0, 0))
        rows.append(
            {
                "port": p["port"],
                "label": p.get("label", ""),
                "protocol": p.get("protocol", ""),
                "blank": blank,
                "non_blank": non_blank,
                "medical": medical,
                "total": blank + non_blank,
            }
        )
    return rows


def _segments(current) -> list[dict]:  # noqa: ANN001
    table: dict[str, dict] = {}
    for segment, cls, n in current.values_list("segment", "cls").annotate(n=Count("id")).order_by():
        row = table.setdefault(segment, {"segment": segment, **dict.fromkeys(CLASSES, 0), "total": 0})
        row[cls] += n
        row["total"] += n
    order = {"hospital_organisation": 0, "software": 1, "medical_port": 2, "": 3}
    return sorted(table.values(), key=lambda r: (order.get(r["segment"], 4), r["segment"]))


def _honeypots(current) -> dict:  # noqa: ANN001
    rows = dict(current.filter(honeypot=True).values_list("cls").annotate(n=Count("id")).order_by())
    return {"count": sum(rows.values()), "by_class": {c: rows.get(c, 0) for c in CLASSES}}


def _medical_services(current) -> list[dict]:  # noqa: ANN001
    rows = (
        current.filter(cls="medical")
        .select_related("service__host")
        .order_by("category", "service__host__ip__numeric", "service__port")[:MEDICAL_LIST_LIMIT]
    )
    return [
        {
            "ip": c.service.host.ip,
            "port": c.service.port,
            "transport": c.service.transport,
            "org": c.service.host.org,
            "asn": c.service.host.asn,
            "hostnames": list(c.service.host.hostnames)[:5],
            "category": c.category,
            "segment": c.segment,
            "product": c.product,
            "honeypot": c.honeypot,
            "confidence": c.confidence,
            "evidence": [{"rule": e.get("rule", ""), "excerpt": e.get("excerpt", "")} for e in c.evidence[:3]],
        }
        for c in rows
    ]


# --- CSV -------------------------------------------------------------------------------------

CSV_TABLES = {
    "classes": ("class", "count", "share"),
    "categories": ("class", "category", "count"),
    "top_services": ("service", "count", "share"),
    "medical_ports": ("port", "label", "protocol", "blank", "non_blank", "medical", "total"),
    "dicom": ("port", "org", "asn", "count"),
    "segments": ("segment", *CLASSES, "total"),
    "medical_services": ("ip", "port", "transport", "org", "asn", "category", "segment", "product", "honeypot"),
}


def _csv_rows(report: dict, table: str) -> Iterable[dict]:
    if table == "classes":
        return [{"class": c, "count": report["classes"][c], "share": report["class_share"][c]} for c in CLASSES]
    return report[table]


# Where a spreadsheet may start a cell inside one of our values: Excel splits a .csv at its
# locale's list separator (';' in Dutch and German Excel) and ignores quotes that do not open a
# cell, so a line break in a quoted value ends its row there; a tab import splits at tabs.
_CELL_START_INSIDE = re.compile('([;\t\r\n]"?)(?=[=+\\-@])')


def _csv_safe(value: object) -> object:
    # A cell starting with = + - @ is a formula to spreadsheets; banners and orgs are hostile.
    # Spreadsheets also obey bidi overrides, so controls are shown as escapes, as in the HTML.
    if not isinstance(value, str):
        return value
    value = _CELL_START_INSIDE.sub("\\1'", visible_text(value))
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def exposure_report_visible(report: object, limit: int | None = None) -> object:
    """The report with every string made visible (controls, bidi, invisibles as escapes), for reading,
    and cut to `limit` characters (the last one "…") when one is given.

    Orgs, hostnames, products, modules and evidence come from strangers: a right-to-left override
    can make "Evil \u202eCM sumsarE" read as "Evil Erasmus MC". JSON keeps the data as it is.
    """
    if isinstance(report, str):
        shown = visible_text(report)
        return shown if limit is None else shorten(shown, limit)
    if isinstance(report, dict):
        return {key: exposure_report_visible(value, limit) for key, value in report.items()}
    if isinstance(report, list | tuple):
        return [exposure_report_visible(value, limit) for value in report]
    return report


def exposure_report_csv(*, report: dict, table: str) -> str:
    out = io.StringIO()
    fields = CSV_TABLES[table]
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in _csv_rows(report, table):
        writer.writerow({k: _csv_safe(row.get(k)) for k in fields})
    return out.getvalue()


# --- HTML and PDF ----------------------------------------------------------------------------


def exposure_report_html(*, report: dict, charts: dict[str, dict[str, bytes]] | None = None) -> str:
    """The report as one self-contained HTML page; charts are embedded as data: URIs."""
    return _render_html(report, _chart_uris(report, charts))


def exposure_report_pdf(*, report: dict, charts: dict[str, dict[str, bytes]] | None = None) -> bytes:
    """The same page as PDF. Nothing is fetched but the chart data: URIs that we embed ourselves."""
    images = _chart_uris(report, charts)
    fetcher = ReportURLFetcher(allowed=set(images.values()))
    return HTML(string=_render_html(report, images), base_url=None, url_fetcher=fetcher).write_pdf()


def _chart_uris(report: dict, charts: dict[str, dict[str, bytes]] | None) -> dict[str, str]:
    charts = charts if charts is not None else render_charts(report, ("png",))
    return {
        name: "data:image/png;base64," + base64.b64encode(fmts["png"]).decode("ascii")
        for name, fmts in charts.items()
        if "png" in fmts
    }


def _render_html(report: dict, images: dict[str, str]) -> str:
    class_rows = [
        {"name": c, "count": report["classes"][c], "percent": 100 * report["class_share"][c]} for c in CLASSES
    ]
    context = {"report": exposure_report_visible(report, REPORT_TEXT_LIMIT), "charts": images, "class_rows": class_rows}
    return render_to_string("harvest/exposure_report.html", context)


class ReportURLFetcher(URLFetcher):
    """Refuses every URL except the allowed data: URIs, which it decodes itself (no urllib, no I/O).

    Banners, organisations and hostnames are escaped by the template, so they never become
    markup; this is the second wall: even markup that got through could not reach a file or host.
    """

    def __init__(self, *, allowed: set[str]) -> None:
        super().__init__(allowed_protocols=("data",), allow_redirects=False, timeout=1)
        self.allowed = allowed
        self.refused: list[str] = []

    def fetch(self, url: str, headers: dict | None = None) -> URLFetcherResponse:
        if url not in self.allowed:
            self.refused.append(url[:200])
            raise ValueError(f"the report fetches no external resource: {url[:80]}")
        header, _, payload = url.partition(",")
        return URLFetcherResponse(url, base64.b64decode(payload), {"Content-Type": header[5:].split(";")[0]})


# --- writing files ---------------------------------------------------------------------------


def exposure_report_write(
    *, report: dict, out: str | Path, formats: Iterable[str] = FORMATS, progress: Callable[[], None] | None = None
) -> list[Path]:
    """Write the report's files into `out` (created if missing); returns the paths written.

    `progress` is called once per format written.
    """
    step = progress or (lambda: None)
    formats = set(formats)
    unknown = formats - set(FORMATS)
    if unknown:
        raise ReportError(f"unknown format(s): {', '.join(sorted(unknown))}; choose from {', '.join(FORMATS)}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror}") from None
    written: list[Path] = []

    def write(name: str, content: str | bytes) -> None:
        # The files list exposed medical systems (TLP:AMBER): readable by their owner alone, like
        # the service export, and each one whole or not there (written beside it, then renamed).
        path = out / name
        try:
            with replaced_whole(path) as handle:
                handle.write(content if isinstance(content, bytes) else content.encode("utf-8"))
        except OSError as exc:
            raise ReportError(f"cannot write {path}: {exc.strerror}") from None
        written.append(path)

    if "json" in formats:
        # Values as stored; what JSON may leave raw (C1 controls, bidi, U+2028) as \u escapes,
        # so the file read with cat or less shows them, as the service export does.
        write("exposure_report.json", json_escape_invisible(json.dumps(report, indent=2, ensure_ascii=False)))
        step()
    if "csv" in formats:
        for table in CSV_TABLES:
            write(f"{table}.csv", exposure_report_csv(report=report, table=table))
        step()
    chart_formats = tuple(f for f in ("png", "svg") if f in formats or (f == "png" and formats & {"html", "pdf"}))
    charts = render_charts(report, chart_formats) if chart_formats else {}
    for fmt in ("png", "svg"):
        if fmt in formats:
            for name, by_format in charts.items():
                write(f"{name}.{fmt}", by_format[fmt])
            step()
    if "html" in formats:
        write("exposure_report.html", exposure_report_html(report=report, charts=charts))
        step()
    if "pdf" in formats:
        write("exposure_report.pdf", exposure_report_pdf(report=report, charts=charts))
        step()
    return written
