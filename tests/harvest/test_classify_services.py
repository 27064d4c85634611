"""Stored verdicts end to end: ingest real-format banners, classify them with the real engine and rules."""

from __future__ import annotations

import gc
import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from harvest import services as harvest_services
from harvest.classify import services
from harvest.classify.engine import classify
from harvest.classify.rules import RULES_DIR, load_rules
from harvest.classify.types import banner_from_shodan
from harvest.models import Classification, Service
from harvest.services import harvest_execute, harvest_file_start, service_export_rows
from tests.factories import banner, line, write_lines

pytestmark = pytest.mark.django_db
_files = itertools.count()


def ingest(tmp_path: Path, records: list[dict]) -> None:
    path = write_lines(tmp_path / f"banners-{next(_files)}.jsonl", [line(r) for r in records])
    run = harvest_execute(run=harvest_file_start(path=path))
    assert run.status == "completed", run.message


@pytest.fixture
def synapse_reply(shared_data: Path) -> str:
    # Shodan shows binary replies with each byte as one character U+0000..U+00FF.
    return (shared_data / "dicom" / "shodan-recorded-reply-fujifilm-synapse.bin").read_bytes().decode("latin-1")


@pytest.fixture
def world(tmp_path: Path, synapse_reply: str) -> list[dict]:
    records = [
        banner("192.0.2.1", 104, data=synapse_reply, org="SURFsara", _shodan={"module": "dicom"}),
        banner("192.0.2.2", 80, data="HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: text/html\r\n\r\n"),
        banner("192.0.2.2", 22, data="SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", _shodan={"module": "ssh"}),
        banner("192.0.2.3", 104, data="", _shodan={"module": "dicom"}),
        banner("192.0.2.4", 2575, data="\x0bMSH|^~\\&|MIRTH|HOSP|ACME|LAB|20260101||ACK|1|P|2.5\rMSA|AA|1\r\x1c\r"),
    ]
    ingest(tmp_path, records)
    return records


def expected_verdict(service: Service, rules: object) -> object:
    """What the engine says about a stored service, with its host's other services as context."""
    others = Service.objects.filter(host_id=service.host_id).exclude(pk=service.pk).order_by("port")
    modules = tuple(s.module or f"{s.port}/{s.transport}" for s in others)
    return classify(banner_from_shodan(json.loads(service.raw), modules), rules)


def test_it_stores_the_engines_verdict_for_every_pending_service(world: list[dict]) -> None:
    rules = load_rules()

    summary = services.classification_run_pending()

    assert summary.examined == 5 and summary.rules_version == rules.version
    assert Classification.objects.count() == 5
    for service in Service.objects.all():
        row = Classification.objects.get(service=service)
        verdict = expected_verdict(service, rules)
        assert (row.cls, row.category, row.segment, row.product) == (
            verdict.cls,
            verdict.category,
            verdict.segment,
            verdict.product,
        )
        assert row.evidence == [{"rule": e.rule, "field": e.field, "excerpt": e.excerpt} for e in verdict.evidence]
        assert row.confidence == pytest.approx(verdict.confidence)
        assert (row.current, row.rules_version, row.banner_hash) == (True, rules.version, service.banner_hash)
    assert sum(summary.by_class.values()) == 5
    dicom = Classification.objects.get(service__host__ip="192.0.2.1")
    assert (dicom.cls, dicom.category) == ("medical", "dicom")
    blank = Classification.objects.get(service__host__ip="192.0.2.3")
    assert (blank.cls, blank.category) == ("unknown", "blank")
    assert summary.by_category["dicom"] == 1 and summary.by_category["blank"] == 1


def test_it_keeps_binary_evidence_storable(world: list[dict]) -> None:
    """DICOM evidence and details come from bytes with NULs; PostgreSQL jsonb must accept them."""
    services.classification_run_pending()
    row = Classification.objects.get(service__host__ip="192.0.2.1")
    row.refresh_from_db()
    stored = json.dumps([row.evidence, row.details])
    assert "\\u0000" not in stored
    assert row.details  # the decoder's findings (AE titles, implementation) are kept


def test_a_second_pending_run_does_nothing(world: list[dict]) -> None:
    services.classification_run_pending()
    before = list(Classification.objects.values_list("id", "classified_at").order_by("id"))

    again = services.classification_run_pending()

    assert again.examined == 0
    assert list(Classification.objects.values_list("id", "classified_at").order_by("id")) == before


def test_all_reclassifies_everything_in_place(world: list[dict]) -> None:
    services.classification_run_pending()
    before = dict(Classification.objects.values_list("id", "classified_at"))

    first = services.classification_run_all()
    second = services.classification_run_all()

    assert first.examined == second.examined == 5
    after = dict(Classification.objects.values_list("id", "classified_at"))
    assert after.keys() == before.keys()  # the same rows, rewritten
    assert all(after[pk] > before[pk] for pk in before)
    assert Classification.objects.filter(current=True).count() == 5


def test_a_changed_banner_is_classified_again(world: list[dict], tmp_path: Path) -> None:
    services.classification_run_pending()
    row = Classification.objects.get(service__host__ip="192.0.2.3")
    assert row.category == "blank"

    ingest(
        tmp_path,
        [
            banner(
                "192.0.2.3",
                104,
                data="SSH-2.0-OpenSSH_8.4\r\n",
                timestamp="2026-02-01T00:00:00",
                _shodan={"module": "ssh"},
            )
        ],
    )
    assert services.classification_pending_count(rules_version=load_rules().version) == 1
    summary = services.classification_run_pending()

    assert summary.examined == 1
    changed = Classification.objects.get(service__host__ip="192.0.2.3")
    assert changed.pk == row.pk  # same service, same rules: rewritten, not duplicated
    assert changed.category != "blank"
    assert changed.banner_hash == Service.objects.get(host__ip="192.0.2.3").banner_hash


def test_a_newer_record_with_the_same_banner_is_classified_again(tmp_path: Path) -> None:
    # Shodan's `data` holds an HTTP server's headers; the title is elsewhere in the record.
    data = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n\r\n"
    ingest(tmp_path, [banner("192.0.2.60", 8042, data=data, http={"title": "Welcome to nginx"})])
    services.classification_run_pending()
    before = Classification.objects.get()
    title = {"title": "Orthanc Explorer", "html": "<title>Orthanc Explorer</title>"}
    ingest(tmp_path, [banner("192.0.2.60", 8042, data=data, timestamp="2026-02-01T00:00:00", http=title)])

    assert services.classification_pending_count(rules_version=load_rules().version) == 1
    summary = services.classification_run_pending()

    after = Classification.objects.get()
    assert summary.examined == 1 and after.pk == before.pk
    assert (before.cls, after.cls, after.category) == ("non_medical", "medical", "pacs_web")
    assert services.classification_run_pending().examined == 0
    services.classification_run_all()
    assert Classification.objects.get().category == after.category  # the same as judging everything


def test_a_host_that_gains_services_has_its_other_services_judged_again(tmp_path: Path, synapse_reply: str) -> None:
    rules = load_rules()
    ingest(tmp_path, [banner("192.0.2.51", 104, data=synapse_reply, _shodan={"module": "dicom"})])
    ingest(tmp_path, [banner("192.0.2.52", 22, data="SSH-2.0-OpenSSH_9.2p1\r\n", _shodan={"module": "ssh"})])
    services.classification_run_pending()
    assert Classification.objects.get(service__port=104).honeypot is False
    modules = [f"proto{i}" for i in range(rules.honeypot_min_host_modules)]
    siblings = [
        banner("192.0.2.51", 2000 + i, data=f"hello {i}\r\n", _shodan={"module": m}) for i, m in enumerate(modules)
    ]
    ingest(tmp_path, siblings)

    assert services.classification_pending_count(rules_version=rules.version) == len(modules) + 1
    summary = services.classification_run_pending(batch_size=3)  # a host larger than a batch stays whole

    assert summary.examined == len(modules) + 1  # the other host is not judged again
    assert Classification.objects.get(service__port=104).honeypot is True
    assert services.classification_run_pending().examined == 0


def test_the_summary_says_why_each_service_was_judged(tmp_path: Path, synapse_reply: str) -> None:
    """A service judged again only because another one on its host changed is not new or changed:
    the summary said "N new, changed or unclassified" for the whole host."""
    data = "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n\r\n"
    ingest(
        tmp_path,
        [
            banner("192.0.2.70", 104, data=synapse_reply, _shodan={"module": "dicom"}),
            banner("192.0.2.70", 22, data="SSH-2.0-OpenSSH_9.2p1\r\n", _shodan={"module": "ssh"}),
            banner("192.0.2.70", 80, data=data, http={"title": "nginx"}),
            banner("192.0.2.70", 443, data=data),
        ],
    )
    first = services.classification_run_pending()
    assert first.why == {"new": 4}
    later = "2026-02-01T00:00:00"
    ingest(
        tmp_path,
        [
            banner("192.0.2.70", 22, data="SSH-2.0-OpenSSH_9.6\r\n", timestamp=later, _shodan={"module": "ssh"}),
            banner("192.0.2.70", 80, data=data, timestamp=later, http={"title": "Orthanc Explorer"}),
        ],
    )

    summary = services.classification_run_pending()

    assert summary.examined == 4
    assert summary.why == {"banner_changed": 1, "record_newer": 1, "unchanged": 2}
    assert summary.as_dict()["why"] == {
        "new": 0,
        "banner_changed": 1,
        "record_newer": 1,
        "rules_changed": 0,
        "unchanged": 2,
    }
    assert services.classification_run_all().why == {"unchanged": 4}


def test_a_rules_change_adds_verdicts_under_the_new_version(world: list[dict], tmp_path: Path) -> None:
    old = load_rules()
    services.classification_run_pending(rules=old)
    changed_dir = tmp_path / "rules"
    shutil.copytree(RULES_DIR, changed_dir)
    first = sorted(changed_dir.glob("*.toml"))[0]
    first.write_text(first.read_text() + "\n# reviewed again\n")
    new = load_rules(changed_dir)
    assert new.version != old.version

    assert services.classification_pending_count(rules_version=new.version) == 5
    summary = services.classification_run_pending(rules=new)

    assert summary.examined == 5 and summary.rules_version == new.version
    assert summary.why == {"rules_changed": 5}
    assert Classification.objects.count() == 10
    assert set(Classification.objects.filter(current=True).values_list("rules_version", flat=True)) == {new.version}
    assert Classification.objects.filter(rules_version=old.version, current=False).count() == 5
    assert services.classification_run_pending(rules=new).examined == 0

    # Going back to the earlier rules makes their rows current again, still without duplicates.
    back = services.classification_run_pending(rules=old)
    assert back.examined == 5
    assert Classification.objects.count() == 10
    assert set(Classification.objects.filter(current=True).values_list("rules_version", flat=True)) == {old.version}


def test_it_gives_each_service_its_hosts_other_services_as_context(tmp_path: Path, synapse_reply: str) -> None:
    rules = load_rules()
    modules = [f"proto{i}" for i in range(rules.honeypot_min_host_modules)]
    records = [banner("192.0.2.50", 104, data=synapse_reply, _shodan={"module": "dicom"})]
    records += [
        banner("192.0.2.50", 2000 + i, data=f"hello {i}\r\n", _shodan={"module": m}) for i, m in enumerate(modules)
    ]
    ingest(tmp_path, records)

    services.classification_run_pending(batch_size=3)  # the DICOM service and its siblings in different batches

    dicom_service = Service.objects.get(port=104)
    row = Classification.objects.get(service=dicom_service)
    alone = classify(banner_from_shodan(json.loads(dicom_service.raw)), rules)
    assert alone.honeypot is False  # without context the same banner is not suspicious
    assert row.honeypot is True
    assert row.honeypot_evidence and row.honeypot_evidence[0]["field"] == "host_modules"
    assert row.honeypot_evidence == [
        {"rule": e.rule, "field": e.field, "excerpt": e.excerpt}
        for e in expected_verdict(dicom_service, rules).honeypot_evidence
    ]


def test_an_unreadable_stored_record_is_counted_and_kept_unknown(world: list[dict]) -> None:
    Service.objects.filter(host__ip="192.0.2.2", port=80).update(raw='{"port": 80, "data": "trunc')
    Service.objects.filter(host__ip="192.0.2.2", port=22).update(raw="[1, 2, 3]")

    summary = services.classification_run_pending()

    assert summary.examined == 5
    assert summary.unparseable_count == 2
    reasons = sorted(e["reason"] for e in summary.unparseable)
    assert "not an object" in reasons[0] or "not an object" in reasons[1]
    bad = Classification.objects.filter(service__host__ip="192.0.2.2")
    assert {(c.cls, c.category) for c in bad} == {("unknown", "unparseable")}
    assert all(c.evidence[0]["rule"] == "record.unreadable" for c in bad)
    good = Classification.objects.get(service__host__ip="192.0.2.1")
    assert good.category == "dicom"


def _queries(fn: object) -> int:
    with CaptureQueriesContext(connection) as ctx:
        fn()
    return len(ctx.captured_queries)


def test_it_costs_a_fixed_number_of_queries_per_batch(tmp_path: Path) -> None:
    ingest(tmp_path, [banner(f"198.51.100.{i}", 80) for i in range(40)])
    rules = load_rules()
    small = _queries(lambda: services.classification_run_all(rules=rules, batch_size=20))  # 2 batches
    ingest(tmp_path, [banner(f"203.0.113.{i}", 80) for i in range(40)])
    large = _queries(lambda: services.classification_run_all(rules=rules, batch_size=40))  # 80 services, 2 batches
    assert small == large
    more = _queries(lambda: services.classification_run_all(rules=rules, batch_size=20))  # 4 batches
    assert more > large
    assert Classification.objects.count() == 80


def test_the_export_gains_the_verdict_columns(world: list[dict], django_assert_num_queries, monkeypatch) -> None:
    assert services.classification_export_enrich in harvest_services.EXPORT_ENRICHERS
    # Other parts add their own columns; count only this one's queries.
    monkeypatch.setattr(harvest_services, "EXPORT_ENRICHERS", [services.classification_export_enrich])
    services.classification_run_pending()
    Service.objects.filter(host__ip="192.0.2.2", port=22).delete()
    ingest_path_unclassified = Service.objects.filter(host__ip="192.0.2.3").first()
    Classification.objects.filter(service=ingest_path_unclassified).delete()

    # Per batch: the services, their verdicts; then one empty page that ends the stream.
    with django_assert_num_queries(2 * 2 + 1):
        rows = list(service_export_rows(chunk_size=2))

    by_ip = {r["ip"]: r for r in rows}
    dicom = by_ip["192.0.2.1"]
    stored = Classification.objects.get(service__host__ip="192.0.2.1")
    assert (dicom["class"], dicom["category"], dicom["segment"], dicom["honeypot"]) == (
        "medical",
        "dicom",
        stored.segment,
        False,
    )
    assert dicom["evidence"] == [{"rule": e["rule"], "excerpt": e["excerpt"]} for e in stored.evidence]
    assert dicom["evidence"] and set(dicom["evidence"][0]) == {"rule", "excerpt"}
    unclassified = by_ip["192.0.2.3"]
    assert (unclassified["class"], unclassified["evidence"], unclassified["honeypot"]) == (None, [], None)


def test_the_verdict_counts_follow_the_database(world: list[dict]) -> None:
    services.classification_run_pending()
    Classification.objects.filter(service__host__ip="192.0.2.3").delete()

    counts = services.classification_counts()

    assert counts["services"] == 5 and counts["classified"] == 4 and counts["unclassified"] == 1
    assert counts["by_class"]["medical"] == Classification.objects.filter(cls="medical").count()
    assert sum(counts["by_category"].values()) == 4


def test_the_admin_shows_verdicts_escaped_without_a_query_per_row(
    world: list[dict], admin_client: Client, django_assert_max_num_queries
) -> None:
    services.classification_run_pending()
    hostile = '<img src="http://127.0.0.1:9/x.png"><script>alert(1)</script>'
    row = Classification.objects.get(service__host__ip="192.0.2.1")
    row.evidence = [{"rule": "dicom.associate_ac", "field": "data", "excerpt": hostile}]
    row.product = hostile
    row.save()

    page = admin_client.get(reverse("admin:harvest_classification_change", args=[row.pk])).content.decode()
    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    service_page = admin_client.get(reverse("admin:harvest_service_change", args=[row.service_id])).content.decode()
    assert hostile not in service_page and "&lt;img src=&quot;http://127.0.0.1:9/x.png&quot;&gt;" in service_page

    url = reverse("admin:harvest_service_changelist")
    admin_client.get(url)  # warm the session and content types
    with django_assert_max_num_queries(7):  # the page's verdicts are one query; a query per row would add 5
        listing = admin_client.get(url).content.decode()
    assert "medical / dicom" in listing and "unknown / blank" in listing
    verdicts = admin_client.get(reverse("admin:harvest_classification_changelist"), {"cls__exact": "medical"})
    assert verdicts.status_code == 200 and "192.0.2.1:104/tcp" in verdicts.content.decode()


@pytest.mark.django_db
def test_every_service_of_a_honeypot_host_is_flagged_with_or_without_a_module(
    tmp_path: Path, synapse_reply: str
) -> None:
    rules = load_rules()
    siblings = [
        banner("192.0.2.53", 2000 + i, data=f"hello {i}\r\n", _shodan={"module": "proto0" if i == 0 else None})
        for i in range(rules.honeypot_min_host_modules)
    ]
    ingest(tmp_path, [banner("192.0.2.53", 104, data=synapse_reply, _shodan={"module": "dicom"}), *siblings])

    services.classification_run_pending()

    flags = dict(Classification.objects.values_list("service__port", "honeypot"))
    assert flags == {port: True for port in [104, *range(2000, 2000 + rules.honeypot_min_host_modules)]}


def test_a_run_collects_rarely_and_gives_the_thresholds_back(tmp_path: Path) -> None:
    """As for ingest (medexpo/lib/collector.py): a batch of parsed records is many live
    containers, and walking them every 700 allocations cost about 8 % of a run's CPU."""
    ingest(tmp_path, [banner(f"198.51.{i // 250}.{i % 250}", 80) for i in range(2_000)])
    started = []
    before = gc.get_threshold()
    gc.callbacks.append(lambda phase, info: started.append(info) if phase == "start" else None)
    try:
        summary = services.classification_run_all(rules=load_rules())
    finally:
        gc.callbacks.pop()
    assert summary.examined == 2_000
    assert gc.get_threshold() == before
    assert len(started) < 10, f"{len(started)} collections for 2,000 services"


def test_a_honeypot_host_with_more_services_than_the_sample_is_judged_as_one(
    tmp_path: Path, synapse_reply: str
) -> None:
    """The host context was the first MAX_HOST_MODULES sibling names in port order, repeats
    included: on a honeypot with hundreds of web ports below its DICOM port that sample held
    one protocol and no DICOM, and none of its services, DICOM included, was flagged."""
    rules = load_rules()
    web = [banner("192.0.2.54", 1000 + i) for i in range(services.MAX_HOST_MODULES + 4)]
    others = [
        banner("192.0.2.54", 30000 + i, data=f"hello {i}\r\n", _shodan={"module": f"proto{i}"})
        for i in range(rules.honeypot_min_host_modules)
    ]
    dicom = banner("192.0.2.54", 40000, data=synapse_reply, _shodan={"module": "dicom"})
    ingest(tmp_path, [*web, *others, dicom])

    services.classification_run_pending()

    flags = Counter(Classification.objects.values_list("honeypot", flat=True))
    assert flags == {True: len(web) + len(others) + 1}
