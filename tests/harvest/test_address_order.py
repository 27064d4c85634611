"""Addresses are listed in numeric order on both databases: IPv4 before IPv6, then by number.

SQLite keeps a GenericIPAddressField as text, where 10.0.0.10 sorts before 10.0.0.2 and IPv6
falls between IPv4 addresses; PostgreSQL's inet sorts by number. Data comes from the real ingest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from harvest.classify import report as reports
from harvest.classify.services import classification_run_pending
from harvest.models import Classification, Host, Service
from harvest.services import service_export_rows
from tests.harvest.test_admin import banner, change_url, changelist_url, ingest, results

# In numeric order; as text they sort 10.0.0.10, 10.0.0.2, 192.0.2.1, 2001:db8:1::1, 2001:db8::10,
# 2001:db8::2, 2001:db8::a, 9.1.1.1.
IN_ORDER = [
    "9.1.1.1",
    "10.0.0.2",
    "10.0.0.10",
    "192.0.2.1",
    "2001:db8::2",
    "2001:db8::a",
    "2001:db8::10",
    "2001:db8:1::1",
]
# A query that sorts by a host's address: on SQLite, a function call for every row it reads.
ADDRESS_SORT = re.compile(r'ORDER BY .*(?:"ip"|medexpo_address_key)')
# The hosts' services: two on one host, so that its ports follow its address.
SERVICES_IN_ORDER = [(ip, 104) for ip in IN_ORDER[:2]] + [("10.0.0.2", 443)] + [(ip, 104) for ip in IN_ORDER[2:]]


@pytest.fixture
def harvested(tmp_path: Path, db: None) -> None:
    # Ingested in neither order, so that neither the ids nor the text can give the one expected.
    ingest(tmp_path, [banner(ip, port, f"{ip} {port}") for ip, port in sorted(SERVICES_IN_ORDER, reverse=True)])


@pytest.fixture
def judged(harvested: None) -> None:
    """Every service with a current medical verdict."""
    for service in Service.objects.all():
        Classification.objects.create(
            service=service, rules_version="t.1", cls="medical", category="dicom", banner_hash="h",
            classified_at=service.last_seen,
        )  # fmt: skip


def column(client: Client, model: type, name: str, **query: str) -> list[str]:
    """The text of one column of a changelist, row by row (the link's text where it is a link)."""
    response = client.get(changelist_url(model), query)
    assert response.status_code == 200
    cells = re.findall(rf'class="field-{name}[" ][^>]*>(?:<a [^>]*>)?([^<]*)<', results(response.content.decode()))
    assert cells, f"no column {name}"
    return cells


def test_the_models_list_hosts_and_services_in_address_order(harvested: None) -> None:
    assert list(Host.objects.values_list("ip", flat=True)) == IN_ORDER
    assert list(Service.objects.values_list("host__ip", "port")) == SERVICES_IN_ORDER


def test_the_host_list_is_in_address_order_and_sorts_by_address_both_ways(
    harvested: None, admin_client: Client
) -> None:
    assert column(admin_client, Host, "address") == IN_ORDER
    assert column(admin_client, Host, "address", o="0") == IN_ORDER
    assert column(admin_client, Host, "address", o="-0") == IN_ORDER[::-1]


def test_the_service_list_is_in_address_order_and_sorts_by_host_both_ways(
    harvested: None, admin_client: Client
) -> None:
    listed = [ip for ip, _ in SERVICES_IN_ORDER]
    assert column(admin_client, Service, "host_ip") == listed
    assert column(admin_client, Service, "host_ip", o="0.1") == listed
    assert column(admin_client, Service, "port", o="0.1") == [str(port) for _, port in SERVICES_IN_ORDER]
    assert column(admin_client, Service, "host_ip", o="-0") == listed[::-1]


def test_the_verdict_list_sorts_by_service_address(judged: None, admin_client: Client) -> None:
    listed = [f"{ip}:{port}/tcp" for ip, port in SERVICES_IN_ORDER]
    assert column(admin_client, Classification, "service_link", o="0") == listed
    assert column(admin_client, Classification, "service_link", o="-0") == listed[::-1]


def test_the_exposure_reports_medical_services_are_in_address_order(judged: None) -> None:
    rows = reports.exposure_report_build()["medical_services"]
    assert [(row["ip"], row["port"]) for row in rows] == SERVICES_IN_ORDER


def test_the_address_sort_is_postgresqls_own_column_and_the_counts_do_not_sort(
    harvested: None, admin_client: Client
) -> None:
    with CaptureQueriesContext(connection) as ctx:
        column(admin_client, Host, "address")
        column(admin_client, Service, "host_ip", o="-0")
    pages = [
        q["sql"] for q in ctx.captured_queries if '"service_count" FROM' in q["sql"] or '"banner_head"' in q["sql"]
    ]
    counts = [q["sql"] for q in ctx.captured_queries if 'AS "__count"' in q["sql"]]
    assert len(pages) >= 2 and counts
    # The paginator's counts never sort, in particular not by a per-row function on SQLite.
    assert not [sql for sql in counts if "ORDER BY" in sql]
    if connection.vendor != "postgresql":
        return
    # inet sorts by number already: the sort is the column itself, which the unique index serves.
    host_page = next(sql for sql in pages if '"service_count" FROM "harvest_host"' in sql)
    assert 'ORDER BY "harvest_host"."ip" ASC' in host_page
    assert 'ORDER BY "harvest_host"."ip" DESC' in next(sql for sql in pages if '"banner_head"' in sql)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + host_page)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert re.search(r"Index (Only )?Scan using harvest_host_ip\w* on harvest_host", plan), plan
    assert "Sort Key" not in plan or "Presorted Key: harvest_host.ip" in plan, plan


class Statements:
    """Every statement run on this thread's connection (ingest clears the debug query log)."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def __call__(self, execute: Callable, sql: str, params: object, many: bool, context: object) -> object:
        self.sql.append(sql)
        return execute(sql, params, many, context)

    def sorting_by_address(self) -> list[str]:
        return [sql for sql in self.sql if ADDRESS_SORT.search(sql)]


def test_ingest_classification_and_export_never_sort_by_address(tmp_path: Path, db: None) -> None:
    records = [banner(ip, port, f"{ip} {port}") for ip, port in SERVICES_IN_ORDER]
    statements = Statements()
    with connection.execute_wrapper(statements):
        ingest(tmp_path, records, "first.json")
        # Again, with a banner changed: the stored hosts, services and banner history are read.
        ingest(tmp_path, [*records, banner("10.0.0.2", 104, "changed", timestamp="2026-02-01T00:00:00")], "again.json")
        classification_run_pending()
        assert len(list(service_export_rows())) == len(SERVICES_IN_ORDER)
    # Ingest's reads were seen (on PostgreSQL they go to psycopg directly, in SQL that sorts nothing).
    assert connection.vendor != "sqlite" or any('FROM "harvest_host" WHERE' in sql for sql in statements.sql)
    # They build lookups by id or key: a sort would be a cost on every batch, per row on SQLite.
    assert statements.sorting_by_address() == []


def test_a_hosts_page_and_a_services_page_do_not_sort_by_address(
    harvested: None, tmp_path: Path, admin_client: Client
) -> None:
    ingest(tmp_path, [banner("10.0.0.2", 104, "changed", timestamp="2026-02-01T00:00:00")], "changed.json")
    host = Host.objects.get(ip="10.0.0.2")
    service = Service.objects.get(host=host, port=104)
    statements = Statements()
    with connection.execute_wrapper(statements):
        host_page = admin_client.get(change_url(host)).content.decode()
        service_page = admin_client.get(change_url(service)).content.decode()
    # Its services by port, and the service's earlier banner, each of one host or service: sorting
    # them by the address they share would cost a function call per row on SQLite.
    assert re.findall(r'class="field-port">\s*<p>(\d+)<', host_page) == ["104", "443"]
    assert "10.0.0.2 104" in service_page  # the earlier banner
    assert statements.sorting_by_address() == []
