"""Ingest of download and host-lookup files through the real services and command, on the real database."""

import gc
import gzip
import itertools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterable
from datetime import timedelta
from io import StringIO
from pathlib import Path

import orjson
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from harvest import readers, services
from harvest.ingest import REJECTION_ROWS_PER_REASON, BatchWriter, Checkpoint
from harvest.models import HarvestRun, Host, Rejection, Service, ServiceBanner
from harvest.records import MAX_RECORD_BYTES, UTF8_BOM, Reason, RecordError, record_from_line, records_from_host_line
from tests.factories import banner, line, many, write_lines
from tests.harvest.processes import ROOT, manage, query

pytestmark = pytest.mark.django_db


def interrupt(run: HarvestRun, source: str, *, at_event: int, batch_size: int) -> None:
    """Run `run` through its source until event `at_event`, where a KeyboardInterrupt (Ctrl-C)
    stops it; the run is then read back as stored."""

    def interrupted_source(run: HarvestRun, progress: object) -> object:
        for n, event in enumerate(services.SOURCES[source](run, progress)):
            if n == at_event:
                raise KeyboardInterrupt
            yield event

    services.register_source("interrupted")(interrupted_source)
    run.source = "interrupted"
    run.save(update_fields=["source"])
    try:
        with pytest.raises(KeyboardInterrupt):
            services.harvest_execute(run=run, batch_size=batch_size)
    finally:
        del services.SOURCES["interrupted"]
    run.refresh_from_db()


def harvest(path: Path, *, hosts: bool = False, batch_size: int | None = None) -> HarvestRun:
    run = services.harvest_file_start(path=path, hosts=hosts)
    return services.harvest_execute(run=run, batch_size=batch_size)


def endpoints() -> set[tuple[str, int, str]]:
    return set(Service.objects.values_list("host__ip", "port", "transport"))


def test_it_ingests_every_real_shodan_file(shared_data) -> None:
    run = harvest(shared_data / "shodan" / "intelmq-parser-tests.jsonl")
    assert (run.status, run.seen, run.new, run.rejected) == ("completed", 7, 7, {})
    lookup = harvest(shared_data / "shodan" / "sner4-host-lookup.jsonl", hosts=True)
    assert (lookup.status, lookup.new, lookup.rejected) == ("completed", 3, {})
    assert Service.objects.count() == 10
    ldap = Service.objects.get(port=389)
    assert ldap.module == "ldap-tcp" and ldap.host.country == "EE"
    assert json.loads(ldap.raw)["port"] == 389


def test_a_file_read_in_the_wrong_mode_says_which_mode_reads_it(shared_data, tmp_path) -> None:
    """Every line rejected for a reason that did not say the file was of the other kind: a run
    "completed" with nothing accepted, and "no port field" sent its user looking at the data."""
    lookups = harvest(shared_data / "shodan" / "sner4-host-lookup.jsonl")
    banners = harvest(shared_data / "shodan" / "intelmq-parser-tests.jsonl", hosts=True)
    assert (lookups.rejected, banners.rejected) == ({Reason.MISSING_PORT: 1}, {Reason.NO_BANNERS: 7})
    assert "read the file with --hosts" in lookups.rejections.get().detail
    long = harvest(write_lines(tmp_path / "long.json", [line(banner(data="x" * MAX_RECORD_BYTES))]), hosts=True)
    assert {r.detail for r in [*banners.rejections.all(), *long.rejections.all()]} == {
        "a banner, not a host lookup: its data is text, not a list of banners; read the file with --file"
    }


def test_seeing_a_service_again_never_duplicates_it(shared_data) -> None:
    path = shared_data / "shodan" / "intelmq-parser-tests.jsonl"
    harvest(path)
    again = harvest(path)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 7)
    assert Service.objects.count() == 7 and Host.objects.count() == 5  # one host has three services
    assert set(Service.objects.values_list("last_run", flat=True)) == {again.pk}


def test_a_newer_banner_updates_the_service_and_keeps_the_old_one_as_history(tmp_path) -> None:
    old = banner("192.0.2.1", 104, data="old banner", timestamp="2026-01-01T00:00:00")
    new = banner("192.0.2.1", 104, data="new banner", timestamp="2026-02-01T00:00:00")
    harvest(write_lines(tmp_path / "a.json", [line(old)]))
    run = harvest(write_lines(tmp_path / "b.json", [line(new)]))
    assert run.updated == 1
    service = Service.objects.get()
    assert service.banner == "new banner"
    assert (service.first_seen.month, service.last_seen.month, service.banner_since.month) == (1, 2, 2)
    history = ServiceBanner.objects.get()
    assert history.banner == "old banner" and history.last_seen.month == 1
    assert json.loads(history.raw)["data"] == "old banner"


def test_the_host_window_follows_its_services(tmp_path) -> None:
    harvest(write_lines(tmp_path / "a.json", [line(banner(timestamp="2026-02-01T00:00:00"))]))
    harvest(write_lines(tmp_path / "b.json", [line(banner(port=22, data="SSH-2.0", timestamp="2026-03-01T00:00:00"))]))
    harvest(write_lines(tmp_path / "c.json", [line(banner(port=443, data="tls", timestamp="2026-01-01T00:00:00"))]))
    host = Host.objects.get()
    assert (host.first_seen.month, host.last_seen.month) == (1, 3)


def test_an_older_record_only_widens_the_window(tmp_path) -> None:
    harvest(write_lines(tmp_path / "a.json", [line(banner(timestamp="2026-03-01T00:00:00"))]))
    harvest(write_lines(tmp_path / "b.json", [line(banner(timestamp="2026-01-01T00:00:00"))]))
    service = Service.objects.get()
    assert (service.first_seen.month, service.last_seen.month, service.banner_since.month) == (1, 3, 1)
    assert ServiceBanner.objects.count() == 0  # same banner: no history


def test_an_unchanged_banner_writes_no_history(tmp_path) -> None:
    harvest(write_lines(tmp_path / "a.json", [line(banner(timestamp="2026-01-01T00:00:00"))]))
    run = harvest(write_lines(tmp_path / "b.json", [line(banner(timestamp="2026-02-01T00:00:00"))]))
    assert run.updated == 1 and ServiceBanner.objects.count() == 0
    assert Service.objects.get().last_seen.month == 2


def test_a_host_is_marked_changed_only_when_what_is_stored_about_it_changes(tmp_path) -> None:
    """Owner resolution attributes a host again after Host.changed_at: a sighting of the same banner,
    a record older than what is known, or a file read again must not set it; another org or
    hostname, a service added, or a banner replaced must."""
    at = [f"2026-01-{day:02}T00:00:00" for day in range(1, 12)]
    first = write_lines(tmp_path / "a.json", [line(banner(port=104, data="DICOM", timestamp=at[1]))])
    harvest(first)
    stored = Host.objects.get().changed_at
    assert stored is not None

    def changed(records: list[dict]) -> bool:
        nonlocal stored
        harvest(write_lines(tmp_path / f"{len(list(tmp_path.iterdir()))}.json", [line(r) for r in records]))
        before, stored = stored, Host.objects.get().changed_at
        return stored != before

    org = "Example Org"  # what banner() writes

    def dicom(day: int, data: str = "DICOM", port: int = 104, **extra: object) -> dict:
        return banner(port=port, data=data, timestamp=at[day], **{"org": org, **extra})

    assert not changed([dicom(2)])  # seen again
    assert not changed([dicom(0)])  # seen earlier
    harvest(first)  # read again
    assert Host.objects.get().changed_at == stored
    org = "Erasmus MC"
    assert changed([dicom(3)])
    assert changed([dicom(4, hostnames=["pacs.erasmusmc.nl"])])
    assert changed([dicom(0, hostnames=["old.erasmusmc.nl"])])  # an older record adds its name
    assert not changed([dicom(0, org="Other")])  # but not its org: the newer one stands
    assert changed([dicom(5, data="DICOM 2")])  # banner replaced
    assert not changed([dicom(1)])  # an older banner: history only
    assert not changed([dicom(6, data="DICOM 2")])  # the new banner seen again
    cert = {"subject": {"CN": "pacs.erasmusmc.nl"}, "fingerprint": {"sha256": "1"}}
    assert changed([dicom(7, data="DICOM 2", ssl={"cert": cert})])  # a certificate under the same banner
    assert not changed([dicom(8, data="DICOM 2", ssl={"cert": cert})])
    assert changed([dicom(9, data="DICOM 2", ssl={"cert": {**cert, "fingerprint": {"sha256": "2"}}})])
    assert changed(
        [
            dicom(
                10, data="DICOM 2", http={"title": "Erasmus MC"}, ssl={"cert": {**cert, "fingerprint": {"sha256": "2"}}}
            )
        ]
    )
    assert changed([dicom(6, data="TLS", port=443)])  # a service added
    host = Host.objects.get()
    assert (host.org, host.hostnames) == ("Erasmus MC", ["old.erasmusmc.nl", "pacs.erasmusmc.nl"])


def test_a_newer_record_naming_the_host_otherwise_marks_it_changed(tmp_path) -> None:
    """Host.hostnames keeps every name the host was seen with, so a newer record with fewer names
    left it as it was and nothing marked the host: owners, attributed from the current records'
    names, were not attributed again. A service's identity covers its hostnames and domains."""
    at = [f"2026-01-{day:02}T00:00:00" for day in range(1, 12)]

    def dicom(day: int, names: list[str], **extra: object) -> dict:
        return banner(port=104, data="DICOM", timestamp=at[day], hostnames=names, **extra)

    harvest(write_lines(tmp_path / "first.json", [line(dicom(1, ["a.example", "pacs.erasmusmc.nl"]))]))
    stored = Host.objects.get().changed_at

    def changed(record: dict) -> bool:
        nonlocal stored
        harvest(write_lines(tmp_path / f"{len(list(tmp_path.iterdir()))}.json", [line(record)]))
        before, stored = stored, Host.objects.get().changed_at
        return stored != before

    assert changed(dicom(2, ["a.example"]))  # a name lost
    assert not changed(dicom(3, ["a.example"]))
    assert changed(dicom(4, ["a.example"], domains=["example"]))  # a domain added
    assert not changed(dicom(0, []))  # an older record: the newer one stands
    assert changed(dicom(5, []))
    assert json.loads(Service.objects.get().raw)["hostnames"] == []
    assert Host.objects.get().hostnames == ["a.example", "pacs.erasmusmc.nl"]  # every name seen

    # A service stored before its identity covered names: owners were attributed from every name
    # the host was seen with, so a record with all of them changes nothing, one without some does.
    Service.objects.update(identity_hash=None)
    assert not changed(dicom(6, ["pacs.erasmusmc.nl", "a.example"]))
    Service.objects.update(identity_hash=None)
    assert changed(dicom(7, ["a.example"]))
    assert not changed(dicom(8, ["a.example"]))  # known again from then on


def test_a_banner_of_a_host_lookup_stores_the_names_it_inherits(tmp_path) -> None:
    """Shodan writes "hostnames": [] in banners whose host has names: the stored record must hold
    the host's, since owner attribution reads a service's names from it."""
    item = banner("192.0.2.1", 104, data="DICOM", hostnames=[], org=None)
    del item["ip_str"], item["ip"]
    lookup = {"ip_str": "192.0.2.1", "hostnames": ["pacs.erasmusmc.nl"], "domains": ["erasmusmc.nl"], "org": "EMC"}
    own = {**item, "port": 80, "hostnames": ["www.example"]}
    path = write_lines(tmp_path / "hosts.jsonl", [line({**lookup, "data": [item, own]})])
    assert harvest(path, hosts=True).new == 2
    raws = {s.port: json.loads(s.raw) for s in Service.objects.all()}
    inherited = (raws[104]["hostnames"], raws[104]["org"], raws[104]["ip_str"])
    assert inherited == (["pacs.erasmusmc.nl"], "EMC", "192.0.2.1")
    # A banner's own names are its own; the host's domains stand for all its names, not its.
    assert raws[80]["hostnames"] == ["www.example"] and "domains" not in raws[80]
    assert Host.objects.get().hostnames == ["pacs.erasmusmc.nl", "www.example"]


def test_a_host_lookup_read_again_after_the_upgrade_stores_the_names_its_banners_inherit(tmp_path) -> None:
    """Services stored from host lookups before their records held what they inherit have no
    names of their own: once owners read the current records, their host's names stopped counting
    for them, and reading the same lookups again left them as they were (the same sighting)."""
    item = banner("192.0.2.1", 104, data="DICOM", hostnames=[])
    del item["ip_str"], item["ip"]
    lookup = {"ip_str": "192.0.2.1", "hostnames": ["pacs.erasmusmc.nl"], "data": [item]}
    path = write_lines(tmp_path / "hosts.jsonl", [line(lookup)])
    harvest(path, hosts=True)
    Service.objects.update(raw=json.dumps(item), identity_hash=None)  # as stored before
    marked = Host.objects.get().changed_at

    again = harvest(path, hosts=True)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 1)
    service = Service.objects.get()
    assert json.loads(service.raw)["hostnames"] == ["pacs.erasmusmc.nl"] and service.identity_hash
    assert Host.objects.get().changed_at == marked  # the names owners were attributed from
    harvest(path, hosts=True)
    assert Service.objects.get().identity_hash == service.identity_hash

    # A banner of a file stored before, whose record lacks a name of its host: owners saw it.
    other = banner("192.0.2.1", 80, hostnames=["www.example"])
    harvest(write_lines(tmp_path / "other.json", [line(other)]))
    Service.objects.update(identity_hash=None)
    marked = Host.objects.get().changed_at
    assert harvest(write_lines(tmp_path / "again.json", [line(other)])).updated == 1
    assert Host.objects.get().changed_at != marked


@pytest.mark.parametrize("batch_size", [1, 2, 3, 1000])
def test_the_result_does_not_depend_on_batch_boundaries(tmp_path, batch_size: int) -> None:
    records = [
        banner("192.0.2.1", 80, data="v1", timestamp="2026-01-01T00:00:00"),
        banner("192.0.2.1", 80, data="v2", timestamp="2026-01-03T00:00:00"),
        banner("192.0.2.1", 80, data="v0", timestamp="2026-01-02T00:00:00"),
        banner("192.0.2.1", 443, data="tls", timestamp="2026-01-01T00:00:00"),
        banner("192.0.2.2", 80, data="other", timestamp="2026-01-01T00:00:00"),
        banner("192.0.2.1", 80, data="v2", timestamp="2026-01-03T00:00:00"),
    ]
    run = harvest(write_lines(tmp_path / "f.json", [line(r) for r in records]), batch_size=batch_size)
    assert (run.new, run.updated, run.rejected) == (3, 2, {Reason.DUPLICATE: 1})
    service = Service.objects.get(port=80, host__ip="192.0.2.1")
    assert service.banner == "v2" and service.first_seen.day == 1 and service.last_seen.day == 3
    assert sorted(ServiceBanner.objects.values_list("banner", flat=True)) == ["v0", "v1"]


BAD_LINES = {
    Reason.NOT_JSON: b"{this is not json\n",
    Reason.NOT_OBJECT: b"[1, 2]\n",
    Reason.MISSING_ADDRESS: b'{"port": 80, "data": "x"}\n',
    Reason.INVALID_ADDRESS: line(banner() | {"ip_str": "300.1.2.3"}),
    Reason.MISSING_PORT: b'{"ip_str": "192.0.2.200", "data": "x"}\n',
    Reason.INVALID_PORT: line(banner(port=65536)),
    Reason.NUL_BYTE: b'{"ip_str": "192.0.2.201", "port": 80, "data": "\x00"}\n',
    Reason.NOT_UTF8: b'{"ip_str": "192.0.2.202", "port": 80, "data": "\xff\xfe"}\n',
    Reason.INVALID_TRANSPORT: line(banner(transport="quic")),
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_a_bad_record_is_counted_with_its_line_and_its_neighbours_are_kept(tmp_path, reason: str) -> None:
    good = many(4)
    lines = [line(good[0]), line(good[1]), BAD_LINES[reason], line(good[2]), line(good[3])]
    run = harvest(write_lines(tmp_path / "f.json", lines))
    assert run.status == "completed"
    assert run.rejected == {reason: 1}
    assert run.accepted == 4 and Service.objects.count() == 4
    rejection = Rejection.objects.get(run=run)
    assert (rejection.position, rejection.reason) == ("line 3", reason)
    assert rejection.detail


DEEP = b"[" * 1000 + b"]" * 1000  # orjson reads it; Python's json cannot encode it again
HOSTILE_LINES = {
    "a superscript digit as port": ('{"ip_str": "192.0.2.203", "port": "²"}\n'.encode(), Reason.INVALID_PORT),
    "an Arabic-Indic digit as port": ('{"ip_str": "192.0.2.203", "port": "٣"}\n'.encode(), Reason.INVALID_PORT),
    "JSON too deep to parse": (b"[" * 100_000 + b"\n", Reason.NOT_JSON),
    "data too deep to encode": (b'{"ip_str": "192.0.2.203", "port": 80, "data": ' + DEEP + b"}\n", Reason.TOO_DEEP),
    "an IPv6 zone number": (line(banner("fe80::2%1")), Reason.INVALID_ADDRESS),
    "an IPv6 zone name": (line(banner("fe80::1%eth0")), Reason.INVALID_ADDRESS),
    "an integer ip past IPv4": (b'{"ip": 4294967296, "port": 80}\n', Reason.INVALID_ADDRESS),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_a_hostile_value_is_rejected_with_its_line_and_the_run_goes_on(tmp_path, case: str) -> None:
    bad, reason = HOSTILE_LINES[case]
    good = many(4)
    path = write_lines(tmp_path / "f.json", [line(good[0]), line(good[1]), bad, line(good[2]), line(good[3])])
    run = harvest(path)
    assert (run.status, run.rejected) == ("completed", {reason: 1})
    assert Rejection.objects.get(run=run).position == "line 3"
    assert endpoints() == {(r["ip_str"], 80, "tcp") for r in good}
    again = harvest(path)  # reading the stored rows back (an address as the database gives it)
    assert (again.status, again.unchanged, again.rejected) == ("completed", 4, {reason: 1})


def test_a_hostile_banner_of_a_host_lookup_is_rejected_by_index(tmp_path) -> None:
    host = (
        '{"ip_str": "192.0.2.60", "data": [{"port": "²"}, {"port": 22}, {"port": 23, "x": '.encode()
        + DEEP
        + '}, {"port": "٣"}]}\n'.encode()
    )
    run = harvest(write_lines(tmp_path / "h.json", [host]), hosts=True)
    assert (run.status, run.rejected) == ("completed", {Reason.INVALID_PORT: 2, Reason.TOO_DEEP: 1})
    rejections = Rejection.objects.order_by("position").values_list("position", "reason")
    assert list(rejections) == [
        ("line 1 data[0]", Reason.INVALID_PORT),
        ("line 1 data[2]", Reason.TOO_DEEP),
        ("line 1 data[3]", Reason.INVALID_PORT),
    ]
    assert endpoints() == {("192.0.2.60", 22, "tcp")}


def test_an_asn_of_other_digits_is_ignored_and_the_banner_kept(tmp_path) -> None:
    run = harvest(write_lines(tmp_path / "f.json", [line(banner(asn="AS²")), line(banner("192.0.2.11", asn="AS٣"))]))
    assert (run.status, run.new, run.rejected) == ("completed", 2, {})
    assert list(Host.objects.values_list("asn", flat=True)) == [None, None]


def test_a_time_an_offset_takes_out_of_range_falls_back_to_the_run_start(tmp_path) -> None:
    records = [
        banner("192.0.2.1", timestamp="9999-12-31T23:00:00-05:00"),
        banner("192.0.2.2", timestamp="0001-01-01T00:00:00+05:00"),
    ]
    run = harvest(write_lines(tmp_path / "f.json", [line(r) for r in records]))
    assert (run.status, run.new, run.rejected) == ("completed", 2, {})
    assert set(Service.objects.values_list("first_seen", flat=True)) == {run.started_at}


def test_a_time_after_the_run_started_is_rejected_and_the_banners_around_it_kept(tmp_path) -> None:
    """A banner dated 2099 became its service's current banner until 2099: every real sighting
    after it was filed as an older banner in history, and the host and service looked alive."""
    records = [
        banner("192.0.2.1", port=104, timestamp="2026-11-01T10:00:00.000000"),
        banner("192.0.2.1", port=104, data="later, and false", timestamp="2099-01-01T00:00:00.000000"),
        banner("192.0.2.2", timestamp="2099-01-01T00:00:00+00:00"),
        banner("192.0.2.1", port=104, data="real", timestamp="2026-11-02T10:00:00.000000"),
    ]
    path = write_lines(tmp_path / "f.json", [line(r) for r in records])
    run = harvest(path)
    assert (run.status, run.seen, run.accepted, run.rejected) == ("completed", 4, 2, {Reason.FUTURE_TIMESTAMP: 2})
    assert [(r.position, r.reason) for r in run.rejections.all()] == [
        ("line 2", Reason.FUTURE_TIMESTAMP),
        ("line 3", Reason.FUTURE_TIMESTAMP),
    ]
    assert "2099-01-01T00:00:00Z" in run.rejections.first().detail
    service = Service.objects.get()
    assert (service.banner, service.last_seen.year, service.history.count()) == ("real", 2026, 1)
    assert Host.objects.get().last_seen.year == 2026
    # Within a day of the run's start is a clock's drift, not a false date.
    soon = (run.started_at + timedelta(hours=23)).strftime("%Y-%m-%dT%H:%M:%S.%f")
    again = harvest(write_lines(tmp_path / "g.json", [line(banner("192.0.2.3", timestamp=soon))]))
    assert (again.new, again.rejected) == (1, {})


@pytest.mark.parametrize("ip", ["::a:b", "::102:304", "2001:db8::1"])
def test_a_known_ipv6_host_is_found_again_whatever_form_the_database_writes(tmp_path, ip: str) -> None:
    """PostgreSQL writes an address whose first 96 bits are zero with its last 32 as IPv4
    ("::0.10.0.11" for "::a:b"); ingest must still know the host it stored."""
    harvest(write_lines(tmp_path / "a.json", [line(banner(ip, 80, timestamp="2026-01-01T00:00:00"))]))
    later = banner(ip, 81, org="Later", timestamp="2026-01-02T00:00:00")
    run = harvest(write_lines(tmp_path / "b.json", [line(later)]))
    assert (run.status, run.new) == ("completed", 1)
    assert Host.objects.count() == 1 and Service.objects.count() == 2
    assert Host.objects.get().org == "Later"


def test_a_country_code_that_upper_case_lengthens_is_left_empty(tmp_path) -> None:
    """ "ß".upper() is "SS": three characters would not fit the column (PostgreSQL refuses the batch)."""
    codes = ["ßa", "ﬀa", "nl"]
    records = [banner(f"192.0.2.{i}", location={"country_code": code}) for i, code in enumerate(codes, 1)]
    run = harvest(write_lines(tmp_path / "f.json", [line(r) for r in records]))
    assert (run.status, run.new) == ("completed", 3)
    assert sorted(Host.objects.values_list("country", flat=True)) == ["", "", "NL"]


def test_a_byte_order_mark_is_not_stored(tmp_path) -> None:
    """An editor's BOM in front of a line: the record is kept, and stored as JSON others can read."""
    record = line(banner())
    run = harvest(write_lines(tmp_path / "f.json", [UTF8_BOM + record, line(banner("192.0.2.11"))]))
    assert (run.status, run.new, run.rejected) == ("completed", 2, {})
    stored = Service.objects.get(host__ip="192.0.2.10").raw
    assert stored == record.decode().rstrip("\n")
    assert orjson.loads(stored)["port"] == 80


def sized(size: int, ip: str = "192.0.2.10") -> bytes:
    """A banner line of exactly `size` bytes, without a line ending."""
    start = len(json.dumps(banner(ip, data="")).encode())
    return json.dumps(banner(ip, data="A" * (size - start))).encode()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("last", ["exact", "over"])
def test_the_size_limit_is_the_same_with_or_without_a_final_newline(tmp_path, ending: bytes, last: str) -> None:
    """A record of up to MAX_RECORD_BYTES, not counting its line ending, is read; the last line of
    a file (often without an ending) is held to the same rule."""
    exact, over = sized(MAX_RECORD_BYTES), sized(MAX_RECORD_BYTES + 1, "192.0.2.11")
    content = [exact + ending, over + ending, exact if last == "exact" else over]
    events = list(readers.file_events(write_lines(tmp_path / "f.json", content), {}, hosts=False))
    outcome = [(e[1], "ok") if e[0] == "record" else (e[1], e[3]) for e in events if e[0] in ("record", "reject")]
    too_large = f"record of {MAX_RECORD_BYTES + 1} bytes, limit {MAX_RECORD_BYTES}"
    assert outcome == [(1, "ok"), ("line 2", too_large), (3, "ok") if last == "exact" else ("line 3", too_large)]
    assert [e[2] for e in events if e[0] == "line"] == list(itertools.accumulate(len(c) for c in content))


def test_a_five_megabyte_banner_is_rejected_without_losing_the_rest(tmp_path) -> None:
    good = many(3)
    huge = line(banner("192.0.2.99", data="A" * (5 * 1024 * 1024)))
    run = harvest(write_lines(tmp_path / "f.json.gz", [line(good[0]), huge, line(good[1]), line(good[2])], gz=True))
    assert run.rejected == {Reason.TOO_LARGE: 1}
    assert Rejection.objects.get().position == "line 2"
    assert endpoints() == {(r["ip_str"], 80, "tcp") for r in good}


def test_duplicate_lines_are_counted_once(tmp_path) -> None:
    record = line(banner())
    run = harvest(write_lines(tmp_path / "f.json", [record, record, record]))
    assert (run.new, run.rejected) == (1, {Reason.DUPLICATE: 2})
    assert [r.position for r in Rejection.objects.order_by("id")] == ["line 2", "line 3"]


@pytest.mark.parametrize("batch_size", [1, 100])
def test_a_line_rejected_as_a_duplicate_changes_nothing_about_its_host(tmp_path, batch_size: int) -> None:
    """The same sighting again (service, time and banner) with another org and hostname was
    rejected as a duplicate, yet its org and hostname were taken for the host: a rejected record
    must leave nothing behind, and reading the file again must leave the host as it is."""
    first = banner(org="Ziekenhuis Oost", hostnames=["pacs.zhoost.nl"])
    again = banner(org="Hoster BV", hostnames=["vps1.hoster.example"])
    path = write_lines(tmp_path / "f.json", [line(first), line(again)])
    run = harvest(path, batch_size=batch_size)
    assert run.rejected == {Reason.DUPLICATE: 1}
    host = Host.objects.get()
    assert (host.org, host.hostnames) == ("Ziekenhuis Oost", ["pacs.zhoost.nl"])
    changed_at = host.changed_at
    run = harvest(path, batch_size=batch_size)
    assert (run.unchanged, run.rejected) == (1, {Reason.DUPLICATE: 1})
    host.refresh_from_db()
    assert (host.org, host.hostnames, host.changed_at) == ("Ziekenhuis Oost", ["pacs.zhoost.nl"], changed_at)


def test_a_truncated_gzip_keeps_what_came_before(tmp_path) -> None:
    full = tmp_path / "full.json.gz"
    write_lines(full, [line(r) for r in many(2000)], gz=True)
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    run = harvest(cut)
    assert run.status == "completed"
    assert Reason.TRUNCATED_FILE in run.rejected
    assert 0 < Service.objects.count() < 2000
    # the damage is reported at the first line that could not be read whole
    assert Rejection.objects.get(run=run).position == f"line {Service.objects.count() + 1}"
    # every stored service is one that the file really had
    assert endpoints() <= {(r["ip_str"], 80, "tcp") for r in many(2000)}


@pytest.mark.parametrize("ending", [b"", b"\r"])  # b"\r": every line ends so, the last one too
@pytest.mark.parametrize("hosts", [False, True])
def test_a_last_line_without_a_newline_before_the_damage_is_kept_when_it_is_whole(
    tmp_path, hosts: bool, ending: bytes
) -> None:
    """Junk after the last gzip member lost the record before it when that record had no newline:
    the reader dropped its unfinished last line whenever reading stopped on an error."""
    records = many(3)
    if hosts:
        records = [{"ip_str": r["ip_str"], "data": [{"port": 80}]} for r in records]
    body = b"".join(line(r).replace(b"\n", ending or b"\n") for r in records).rstrip(b"\n")
    path = tmp_path / "f.json.gz"
    path.write_bytes(gzip.compress(body) + b"junk after the last member")
    run = harvest(path, hosts=hosts)
    assert endpoints() == {(r["ip_str"], 80, "tcp") for r in records}
    assert run.rejected == {Reason.CORRUPT_FILE: 1}
    assert Rejection.objects.get(run=run).position == "line 4"


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_gzip_is_reported_once_when_its_run_is_resumed_after_its_last_batch(tmp_path, damage: str) -> None:
    """A run can die after its last batch committed and before it was marked completed (kill -9,
    Ctrl-C, the task timeout): resuming it must not read the damage, and count it, again."""
    full = tmp_path / "full.json.gz"
    write_lines(full, [line(r) for r in many(2000)], gz=True)
    data = full.read_bytes()
    path = tmp_path / "damaged.json.gz"
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data + b"not a gzip member")
    run = harvest(path, batch_size=500)
    reason = Reason.TRUNCATED_FILE if damage == "truncated" else Reason.CORRUPT_FILE
    assert run.rejected == {reason: 1}
    first = _counts(run)
    HarvestRun.objects.filter(pk=run.pk).update(status=HarvestRun.Status.STOPPED)  # died before the mark

    again = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk), batch_size=500)
    assert again.status == "completed"
    assert _counts(again) == first


def _counts(run: HarvestRun) -> tuple:
    return (run.seen, run.accepted, run.rejected, list(run.rejections.values_list("position", "reason")))


def test_blank_lines_are_not_records(tmp_path) -> None:
    run = harvest(write_lines(tmp_path / "f.json", [b"\n", line(banner()), b"   \n"]))
    assert (run.seen, run.accepted, run.rejected) == (1, 1, {})


@pytest.mark.parametrize("hosts", [False, True])
def test_a_line_of_characters_json_does_not_count_as_blank_is_rejected(tmp_path, hosts: bool) -> None:
    """bytes.strip() also takes away vertical tabs and form feeds: a line of them vanished without
    a count, though JSON allows only space, tab, CR and LF between values."""
    record = line(banner()) if not hosts else line({"ip_str": "192.0.2.70", "data": [{"port": 80}]})
    path = write_lines(tmp_path / "f.json", [record, b"\x0b\n", b" \x0c \r\n", b"\x1c\n", b"\t \r\n"])
    run = harvest(path, hosts=hosts)
    assert (run.accepted, run.rejected) == (1, {Reason.NOT_JSON: 3})
    assert list(run.rejections.values_list("position", flat=True)) == ["line 2", "line 3", "line 4"]


def test_a_host_lookup_reports_each_bad_banner_by_index(tmp_path) -> None:
    host = {
        "ip_str": "192.0.2.50",
        "org": "Host Org",
        "data": [
            {"port": 22, "data": "SSH-2.0-OpenSSH_9.6"},
            {"port": 99999, "data": "bad port"},
            "not an object",
        ],
    }
    run = harvest(
        write_lines(tmp_path / "h.json", [json.dumps(host).encode() + b"\n", b'{"ip_str": "192.0.2.51"}\n']), hosts=True
    )
    assert run.rejected == {Reason.INVALID_PORT: 1, Reason.NOT_OBJECT: 1, Reason.NO_BANNERS: 1}
    assert set(Rejection.objects.values_list("position", flat=True)) == {"line 1 data[1]", "line 1 data[2]", "line 2"}
    service = Service.objects.get()
    assert (service.port, service.host.org) == (22, "Host Org")  # host fields are inherited


@pytest.mark.parametrize("long", [False, True])
def test_a_repeated_or_future_banner_of_a_host_lookup_is_reported_by_index(tmp_path, long: bool) -> None:
    """They were reported as "line 1", which a lookup of thousands of banners does not narrow down."""
    banners = [{"port": 1000 + i, "data": "x" * (4000 if long else 10)} for i in range(300 if long else 3)]
    banners.append(banners[1])  # repeated within the host
    banners.append({"port": 2, "timestamp": "2099-01-01T00:00:00"})
    run = harvest(write_lines(tmp_path / "h.json", [host_lookup(banners)]), hosts=True)
    assert run.rejected == {Reason.DUPLICATE: 1, Reason.FUTURE_TIMESTAMP: 1}
    last = len(banners) - 1
    assert list(run.rejections.order_by("position").values_list("position", "reason")) == [
        (f"line 1 data[{last - 1}]", Reason.DUPLICATE),
        (f"line 1 data[{last}]", Reason.FUTURE_TIMESTAMP),
    ]


def host_lookup(
    banners: list, ip: str = "192.0.2.70", *, separators: tuple[str, str] | None = None, **fields: object
) -> bytes:
    """A host lookup as Shodan writes it: some host fields, ip_str among them, after data[]."""
    host = {"org": "Host Org", "data": banners, "asn": "AS64500", "ip_str": ip, **fields}
    return json.dumps(host, separators=separators).encode() + b"\n"


def busy_host(n: int, size: int = 4000) -> list[dict]:
    return [{"port": 1000 + i, "data": f"{i} " + "x" * size, "timestamp": "2026-01-01T00:00:00"} for i in range(n)]


def test_a_host_lookup_over_a_megabyte_is_read_banner_by_banner(tmp_path) -> None:
    """Busy hosts, and lookups with history, exceed the per-banner limit as a whole: each banner is
    held to it on its own."""
    banners = busy_host(300)
    banners.insert(150, {"port": 9, "data": "A" * MAX_RECORD_BYTES})  # {"port": 9, "data": "AA…"}: 23 bytes more
    path = write_lines(tmp_path / "h.json", [host_lookup(banners), host_lookup([{"port": 22}], "192.0.2.71")])
    run = harvest(path, hosts=True)
    assert (run.status, run.new, run.rejected) == ("completed", 301, {Reason.TOO_LARGE: 1})
    rejection = Rejection.objects.get()
    assert rejection.position == "line 1 data[150]"
    assert rejection.detail == f"banner of {MAX_RECORD_BYTES + 23} bytes, limit {MAX_RECORD_BYTES}"
    host = Host.objects.get(ip="192.0.2.70")
    assert (host.org, host.asn, host.services.count()) == ("Host Org", 64500, 300)
    assert json.loads(host.services.get(port=1000).raw)["data"] == banners[0]["data"]


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        (b'"tags": [tru]', Reason.NOT_JSON),
        (b'"note": "a \\q escape"', Reason.NOT_JSON),
        (b'"note": "a \x01 control"', Reason.NOT_JSON),
        (b'"note": "a \xff byte"', Reason.NOT_UTF8),
        (b'"note": "a \x00 byte"', Reason.NUL_BYTE),
        # Keys over 256 bytes went unread: a bad one passed where a whole-line parse refuses it.
        (b'"' + b"k" * 300 + b' \x01": 1', Reason.NOT_JSON),
        (b'"' + b"k" * 300 + b' \xff": 1', Reason.NOT_UTF8),
        (b'"' + b"k" * 300 + b' \x00": 1', Reason.NUL_BYTE),
    ],
)
def test_a_long_host_lookup_with_a_bad_field_outside_its_banners_is_rejected_whole(
    tmp_path, field: bytes, reason: str
) -> None:
    # As a whole-line parse would: the scanner alone checks only what delimits the values.
    big = host_lookup(busy_host(300)).rstrip(b"}\n") + b", " + field + b"}\n"
    path = write_lines(tmp_path / "h.json", [big, host_lookup([{"port": 22}], "192.0.2.71")])
    run = harvest(path, hosts=True)
    assert (run.status, run.new, run.rejected) == ("completed", 1, {reason: 1})
    assert Rejection.objects.get().position == "line 1"


def test_a_host_lookup_over_the_host_limit_is_rejected_whole(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(readers, "MAX_HOST_LINE_BYTES", 2 * MAX_RECORD_BYTES)
    big = host_lookup(busy_host(600))
    path = write_lines(tmp_path / "h.json", [big, host_lookup([{"port": 22}], "192.0.2.71")])
    run = harvest(path, hosts=True)
    assert (run.status, run.new, run.rejected) == ("completed", 1, {Reason.TOO_LARGE: 1})
    rejection = Rejection.objects.get()
    assert (rejection.position, rejection.detail) == (
        "line 1",
        f"host lookup of {len(big) - 1} bytes, limit {2 * MAX_RECORD_BYTES}",
    )


def test_a_run_stopped_inside_a_long_host_lookup_resumes_with_the_next_banner(tmp_path) -> None:
    banners = busy_host(300)
    banners[10]["port"] = 70000  # rejected before the stop, and only then
    banners[250]["port"] = "x"
    lines = [host_lookup([{"port": 21}], "192.0.2.69"), host_lookup(banners), host_lookup([{"port": 22}], "192.0.2.71")]
    path = write_lines(tmp_path / "h.json", lines)
    run = services.harvest_file_start(path=path, hosts=True)

    interrupt(run, HarvestRun.Source.HOSTS, at_event=250, batch_size=50)  # inside the long line
    stored = run.checkpoint["item"]
    assert run.status == "stopped" and run.checkpoint == {"line": 1, "offset": len(lines[0]), "item": stored}
    assert 10 < stored < 250
    assert (run.rejected, run.accepted, Service.objects.count()) == ({Reason.INVALID_PORT: 1}, stored, stored)

    run.source = HarvestRun.Source.HOSTS
    run.save(update_fields=["source"])
    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk), batch_size=50)
    assert (done.status, done.seen, done.new, done.rejected) == ("completed", 302, 300, {Reason.INVALID_PORT: 2})
    positions = sorted(Rejection.objects.values_list("position", flat=True))
    assert positions == ["line 2 data[10]", "line 2 data[250]"]
    assert Service.objects.filter(host__ip="192.0.2.70").count() == 298


TRICKY_BANNERS = [
    {"port": 1, "data": 'a quote " a backslash \\ brackets ]}[{ "}, {" and a last backslash \\'},
    {"port": 2, "data": "caf\u00e9 \u2603 \U0001f600 \ud800", "x": [[], {}, [{"a": [1, {"b": "]"}]}]]},
    {"port": 3, "data": None, "n": -1.5e3, "t": True, "f": False, "z": None},
    "not an object",
    {"port": 70000},
    {"port": 5, "nested": {"data": "}"}, "empty": ""},
]
PADDING = "y" * 500  # a host field no banner inherits, to make the lines longer than the banner limit


def test_no_room_to_copy_a_long_host_lookup_fails_the_run_which_then_resumes(tmp_path) -> None:
    """Copying a long host lookup to a temporary file can fail for want of room (a full /tmp):
    that was reported as a corrupt file and ended the run's reading for good, completed, every
    line after it unread. The file is not damaged: the run fails, and resumes once there is room."""
    short = host_lookup([{"port": 22}], "192.0.2.71")
    long = host_lookup(busy_host(700))
    assert len(long) > 2 * MAX_RECORD_BYTES
    path = write_lines(tmp_path / "h.json", [short, long, host_lookup([{"port": 23}], "192.0.2.72")])
    run = services.harvest_file_start(path=path, hosts=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MAX_RECORD_BYTES, hard))
    try:
        with pytest.raises(OSError, match="File too large"):
            services.harvest_execute(run=run, batch_size=1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    run.refresh_from_db()
    assert (run.status, run.checkpoint["line"], run.rejected) == ("failed", 1, {})
    assert "File too large" in run.message

    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk))
    assert (done.status, done.seen, done.new, done.rejected) == ("completed", 702, 702, {})


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_long_host_lookups_split_across_read_blocks_read_as_short_ones(tmp_path, monkeypatch, chunk: int) -> None:
    """Lines over the banner limit are read banner by banner, in blocks: whatever the blocks, the
    result is that of reading the line whole, and resuming after any banner gives the rest."""
    monkeypatch.setattr(readers, "READ_CHUNK", chunk)
    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 400)
    content = [
        host_lookup(TRICKY_BANNERS, tags=[PADDING]),
        UTF8_BOM + host_lookup(TRICKY_BANNERS, "192.0.2.71", separators=(" ,\t", " :  "), tags=[PADDING]),
        b'{"data": [' + b" " * 500 + b'{"port": 1}]}\n',  # no address: data[0] is rejected
        b'{"data": "none", "ip_str": "192.0.2.72", "x": "' + PADDING.encode() + b'"}\n',
        b'{"data": [{"port": 1}] "ip_str": "192.0.2.72", "x": "' + PADDING.encode() + b'"}\n',
        b'[{"data": [{"port": 1}], "ip_str": "192.0.2.72", "x": "' + PADDING.encode() + b'"}]\n',
        b" " * 600 + b"\n",
    ]
    path = write_lines(tmp_path / "h.json", content)
    events = list(readers.file_events(path, {}, hosts=True))
    assert all(len(text) > 400 for text in content)

    expected = [event for n, text in enumerate(content, 1) for event in read_whole(text, n)]
    assert [e[:3] for e in events if e[0] in ("record", "reject")] == expected
    assert [e[2] for e in events if e[0] == "line"] == list(itertools.accumulate(len(c) for c in content))

    for at, event in enumerate(events):
        if event[0] == "checkpoint":
            resumed = readers.file_events(path, event[1].state, hosts=True)
            assert plain(resumed) == plain(events[at + 1 :])


def read_whole(text: bytes, line_no: int) -> list[tuple]:
    """The events of a host lookup read as one JSON document (records.py), without the details."""
    if not text.strip():
        return []
    try:
        good, bad = records_from_host_line(text)
    except RecordError as exc:
        return [("reject", f"line {line_no}", exc.reason)]
    failed = dict(bad)
    records = iter(good)
    return [
        ("reject", f"line {line_no} data[{i}]", failed[i].reason)
        if i in failed
        else ("record", f"line {line_no} data[{i}]", next(records))
        for i in range(len(good) + len(bad))
    ]


def plain(events: Iterable[tuple]) -> list:
    return [event[1].state if event[0] == "checkpoint" else event for event in events]


def test_a_long_host_lookup_is_read_in_bounded_memory(tmp_path) -> None:
    """Copied to a temporary file and read a block and a banner at a time: never held whole."""
    line_bytes = host_lookup(busy_host(5000))  # 20 MB
    path = write_lines(tmp_path / "h.json", [line_bytes])
    tracemalloc.start()
    try:
        records = sum(e[0] == "record" for e in readers.file_events(path, {}, hosts=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert records == 5000
    assert peak < 8 * MAX_RECORD_BYTES < len(line_bytes) / 2, f"peak {peak} bytes"


def test_the_command_prints_a_summary_and_json(tmp_path) -> None:
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(3)] + [b"oops\n"])
    out = StringIO()
    call_command("harvest", file=str(path), stdout=out)
    text = out.getvalue()
    assert "accepted" in text and "not_json" in text and "line 4" in text
    out = StringIO()
    call_command("harvest", file=str(path), json=True, stdout=out)
    result = json.loads(out.getvalue())
    assert result["accepted"] == 3 and result["rejected"] == {"not_json": 1}
    assert result["run"] == HarvestRun.objects.order_by("-pk").first().pk


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--resume", "0", "there is no harvest run 0"),
        ("--file", "", "no file given"),
        ("--hosts", "", "no file given"),
        ("--plan", "", "invalid plan name ''"),
    ],
)
def test_the_command_reports_an_empty_source_or_run_zero(option: str, value: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("harvest", option, value)
    assert not HarvestRun.objects.exists()


def test_the_command_says_a_folder_is_not_a_file(tmp_path) -> None:
    with pytest.raises(CommandError, match="is a folder, not a file"):
        call_command("harvest", "--file", str(tmp_path))


def test_the_command_says_a_pipe_or_device_is_not_a_regular_file(tmp_path) -> None:
    """A named pipe or a device exists: 'no such file' sent its user looking for a typo."""
    fifo = tmp_path / "banners.json"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/null"):
        with pytest.raises(CommandError, match=f"^{re.escape(path)} is not a regular file"):
            call_command("harvest", "--file", path)
    assert not HarvestRun.objects.exists()


def test_a_file_name_that_is_not_utf8_is_refused_with_a_message(tmp_path) -> None:
    """Such a name (from an archive made on another system) reached the database as the run's
    target, which cannot store it: the command ended in a UnicodeEncodeError traceback."""
    path = Path(os.fsdecode(bytes(tmp_path) + b"/banners-\xff.json"))
    write_lines(path, [line(banner())])
    with pytest.raises(CommandError, match=r"banners-\\udcff\.json: the file name is not valid UTF-8"):
        call_command("harvest", "--file", str(path))
    assert not HarvestRun.objects.exists()


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_a_file_name_in_an_error_reaches_the_terminal_with_its_controls_shown(tmp_path, kind: str) -> None:
    """File names come from wherever the files came from (an unpacked archive, a shared folder):
    one with an escape sequence was run by the terminal when the command named it in an error."""
    path = tmp_path / "dicom\x1b]0;owned\x07\u202e.json"
    if kind == "folder":
        path.mkdir()
    with pytest.raises(CommandError) as raised:
        call_command("harvest", "--file", str(path))
    assert "dicom\\x1b]0;owned\\x07\\u202e.json" in str(raised.value)
    assert not any(char in str(raised.value) for char in "\x1b\x07\u202e")


def test_a_file_runs_country_is_checked_like_a_plans(tmp_path) -> None:
    """It is only recorded, but a value the column cannot hold failed with a database traceback."""
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(2)])
    with pytest.raises(CommandError, match="two-letter code"):
        call_command("harvest", "--file", str(path), "--country", "NLD")
    assert not HarvestRun.objects.exists()
    call_command("harvest", "--hosts", str(path), "--country", "nl", stdout=StringIO())
    assert HarvestRun.objects.get().country == "NL"


@pytest.mark.parametrize("size", ["0", "-3"])
def test_the_command_refuses_a_batch_size_below_one(tmp_path, size: str) -> None:
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(2)])
    with pytest.raises(CommandError, match="--batch-size: must be 1 or more"):
        call_command("harvest", "--file", str(path), "--batch-size", size)
    assert not HarvestRun.objects.exists()


@pytest.mark.parametrize("source", ["--file", "--hosts"])
def test_the_command_refuses_a_credit_limit_for_a_file(tmp_path, source: str) -> None:
    """A file costs no credits: the limit was ignored, as if it had been set."""
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(2)])
    with pytest.raises(CommandError, match="--max-credits applies to --plan"):
        call_command("harvest", source, str(path), "--max-credits", "5")
    assert not HarvestRun.objects.exists()


def test_a_resume_refuses_options_it_would_ignore(tmp_path) -> None:
    """A resumed run keeps its country, and a file run has no credits to limit: both were ignored."""
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(3)])
    run = services.harvest_file_start(path=path, hosts=False, country="NL")
    HarvestRun.objects.filter(pk=run.pk).update(status=HarvestRun.Status.STOPPED)

    with pytest.raises(CommandError, match="--country does not apply to --resume"):
        call_command("harvest", "--resume", str(run.pk), "--country", "DE")
    with pytest.raises(CommandError, match=f"--max-credits applies to search runs: run {run.pk} reads a file"):
        call_command("harvest", "--resume", str(run.pk), "--max-credits", "5")
    assert not Service.objects.exists()

    call_command("harvest", "--resume", str(run.pk), "--json", stdout=StringIO())
    run.refresh_from_db()
    assert (run.status, run.country, Service.objects.count()) == (HarvestRun.Status.COMPLETED, "NL", 3)


def test_options_that_do_not_go_together_exit_with_the_status_of_wrong_options(tmp_path) -> None:
    """`harvest --help` says 2: wrong options, as for `--batch-size 0` or two sources; these were
    refused with 1, the status of a run that failed, before anything started."""
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(2)])
    run = services.harvest_file_start(path=path, hosts=False, country="NL")
    HarvestRun.objects.filter(pk=run.pk).update(status=HarvestRun.Status.STOPPED)
    for args in (
        ["--plan", "ports", "--batch-size", "10"],
        ["--file", str(path), "--max-credits", "5"],
        ["--resume", str(run.pk), "--country", "DE"],
        ["--resume", str(run.pk), "--max-credits", "5"],
        ["--file", str(path), "--count-only"],
        ["--plan", "ports", "--max-credits", "0"],  # a run that could buy nothing was started and stopped
    ):
        with pytest.raises(CommandError) as raised:
            call_command("harvest", *args)
        assert raised.value.returncode == 2, (args, raised.value)
    with pytest.raises(CommandError) as raised:
        call_command("harvest", "--file", str(tmp_path / "missing.json"))
    assert raised.value.returncode == 1  # not an option error: the file is not there
    assert HarvestRun.objects.count() == 1 and not Service.objects.exists()


def test_export_services_writes_one_object_per_service(tmp_path, shared_data) -> None:
    harvest(shared_data / "shodan" / "intelmq-parser-tests.jsonl")
    out_file = tmp_path / "out.jsonl"
    call_command("export_services", format="jsonl", output=str(out_file))
    rows = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert len(rows) == 7
    assert {"ip", "port", "transport", "product", "first_seen", "last_seen"} <= rows[0].keys()
    assert {(r["ip"], r["port"]) for r in rows} == {(ip, p) for ip, p, _ in endpoints()}


def test_a_completed_run_cannot_be_resumed(shared_data) -> None:
    run = harvest(shared_data / "shodan" / "intelmq-parser-tests.jsonl")
    with pytest.raises(services.HarvestError, match="completed"):
        services.harvest_run_get_resumable(run_id=run.pk)


@pytest.mark.parametrize("change", ["same_size", "gone"])
def test_a_run_whose_file_changed_is_not_resumed(tmp_path, change: str) -> None:
    """Resuming reads on from a byte offset: in another file of the same size (a download
    rewritten in place, even within the same second) it would mix the two files' banners."""
    path = write_lines(tmp_path / "f.json", [line(banner(f"192.0.2.{i}", 80, data=f"old {i}")) for i in range(1, 7)])
    run = services.harvest_file_start(path=path)
    interrupt(run, HarvestRun.Source.FILE, at_event=6, batch_size=2)
    run.source = HarvestRun.Source.FILE
    run.save(update_fields=["source"])
    before = (run.checkpoint, run.seen, sorted(Service.objects.values_list("host__ip", "banner")))
    assert before[1] == 2
    size = path.stat().st_size
    if change == "gone":
        path.unlink()
    else:
        write_lines(path, [line(banner(f"192.0.2.{i}", 80, data=f"new {i}")) for i in range(1, 7)])
        assert path.stat().st_size == size

    with pytest.raises(CommandError, match="has changed since the run started" if change != "gone" else "gone"):
        call_command("harvest", "--resume", str(run.pk), "--json")
    run.refresh_from_db()
    assert (run.checkpoint, run.seen, sorted(Service.objects.values_list("host__ip", "banner"))) == before


@pytest.mark.parametrize("gz", [False, True])
def test_a_file_replaced_by_another_of_the_same_size_and_time_is_not_resumed(tmp_path, gz: bool) -> None:
    """Size and modification time were the whole identity: another download of the same size with
    its time carried over (cp -p, rsync -t, an unpacked archive) passed, and the resume read the
    other file's records on from the checkpoint's offset."""
    old = [line(banner(f"192.0.2.{i}", 80, data=f"old {i}")) for i in range(1, 7)]
    path = write_lines(tmp_path / ("f.json.gz" if gz else "f.json"), old, gz=gz)
    run = services.harvest_file_start(path=path)
    interrupt(run, HarvestRun.Source.FILE, at_event=6, batch_size=2)
    run.source = HarvestRun.Source.FILE
    run.save(update_fields=["source"])
    stat = path.stat()
    other = tmp_path / "other"
    write_lines(other, [line(banner(f"192.0.2.{i}", 80, data=f"new {i}")) for i in range(1, 7)], gz=gz)
    if gz:  # the same size: the same compressed length, the other content
        other.write_bytes(other.read_bytes()[: stat.st_size].ljust(stat.st_size, b"\0"))
    os.replace(other, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    with pytest.raises(services.HarvestError, match="has changed since the run started"):
        services.harvest_run_get_resumable(run_id=run.pk)
    assert sorted(Service.objects.values_list("banner", flat=True)) == ["old 1", "old 2"]


def test_a_file_its_user_may_not_read_is_refused_before_a_run_starts(tmp_path, own_database) -> None:
    """A run takes its file's identity, a sample of its content, when it starts: a file its user
    may not read was a traceback there. The process runs without root's right to read any file."""
    path = write_lines(tmp_path / "f.json", [line(banner())])
    path.chmod(0)
    migrate = manage(own_database, "migrate", "-v0")
    assert migrate.wait(timeout=300) == 0, migrate.stderr.read().decode()
    as_a_user = [
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
    ]
    env = {**os.environ, "DATABASE_URL": own_database, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "medexpo.settings"}
    harvest = [sys.executable, "manage.py", "harvest", "--file", str(path)]
    result = subprocess.run([*as_a_user, *harvest], cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    error = result.stderr.decode()
    assert (result.returncode, error.strip()) == (1, f"CommandError: {path} cannot be read: Permission denied")
    assert query(own_database, "SELECT count(*) FROM harvest_harvestrun") == [(0,)]


def test_a_run_started_before_the_content_check_resumes_by_size_and_time(tmp_path) -> None:
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(6)])
    run = services.harvest_file_start(path=path)
    interrupt(run, HarvestRun.Source.FILE, at_event=6, batch_size=2)
    HarvestRun.objects.filter(pk=run.pk).update(
        source=HarvestRun.Source.FILE, options={"file": {key: run.options["file"][key] for key in ("size", "mtime_ns")}}
    )
    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk))
    assert (done.status, done.seen, done.new) == ("completed", 6, 6)
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
    HarvestRun.objects.filter(pk=run.pk).update(status=HarvestRun.Status.STOPPED)
    with pytest.raises(services.HarvestError, match="has changed since the run started"):
        services.harvest_run_get_resumable(run_id=run.pk)


def test_the_identity_of_a_large_file_reads_a_megabyte_at_most(tmp_path) -> None:
    """A resume checks the file before it reads on: for a download of many gigabytes that must not
    mean reading it whole."""
    path = tmp_path / "big.json"
    with open(path, "wb") as fh:
        fh.truncate(8 * 1024**3)  # sparse: takes no room
    io_before = _bytes_read()
    identity = readers.file_identity(path)
    assert _bytes_read() - io_before <= 1024 * 1024 + 64 * 1024
    assert identity["size"] == 8 * 1024**3 and identity == readers.file_identity(path)


def _bytes_read() -> int:
    """What this process has read through system calls so far (Linux)."""
    fields = dict(row.split(": ") for row in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def test_the_gzip_reader_streams(tmp_path) -> None:
    path = tmp_path / "f.json.gz"
    with gzip.open(path, "wb") as fh:
        for r in many(10):
            fh.write(line(r))
    assert harvest(path).new == 10


def test_an_interrupted_run_keeps_only_committed_batches_and_resumes_exactly(tmp_path) -> None:
    records = many(25)
    path = write_lines(tmp_path / "f.json", [line(r) for r in records])
    run = services.harvest_file_start(path=path)

    interrupt(run, HarvestRun.Source.FILE, at_event=31, batch_size=10)  # between two checkpoints of batch 2
    assert run.status == "stopped" and run.checkpoint == {"line": 10, "offset": run.checkpoint["offset"]}
    assert Service.objects.count() == 10 == run.accepted

    run.source = HarvestRun.Source.FILE
    run.save(update_fields=["source"])
    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk), batch_size=10)
    assert (done.status, done.seen, done.new, done.rejected) == ("completed", 25, 25, {})
    assert endpoints() == {(r["ip_str"], 80, "tcp") for r in records}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("at_event", [12, 25, 31, 38])
def test_an_interrupted_pipelined_run_keeps_only_committed_batches_and_resumes_exactly(tmp_path, at_event: int) -> None:
    """Pipelined (PostgreSQL, outside a transaction), a batch is written by the writer thread
    while the next is parsed: interrupted at any point, the run keeps whole batches only."""
    records = many(45)
    path = write_lines(tmp_path / "f.json", [line(r) for r in records])
    run = services.harvest_file_start(path=path)

    interrupt(run, HarvestRun.Source.FILE, at_event=at_event, batch_size=10)
    assert run.status == "stopped"
    line_no = run.checkpoint.get("line", 0)
    assert line_no % 10 == 0 and line_no < at_event
    assert Service.objects.count() == line_no == run.accepted == run.seen

    run.source = HarvestRun.Source.FILE
    run.save(update_fields=["source"])
    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk), batch_size=10)
    assert (done.status, done.seen, done.new, done.rejected) == ("completed", 45, 45, {})
    assert endpoints() == {(r["ip_str"], 80, "tcp") for r in records}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("where", ["opening", "begun", "closing"])
def test_ctrl_c_while_a_batch_transaction_opens_or_closes_still_marks_the_run_stopped(
    tmp_path, monkeypatch, where: str
) -> None:
    """Ctrl-C that lands inside Django's opening or closing of a batch's transaction (autocommit
    off, the block's bookkeeping half done) left the connection in a transaction that nothing
    would commit, and the stop mark written into it was lost at exit: the run stayed 'running'
    though the command said it was stopped (seen once in CI, on SQLite)."""
    from django.db import connection
    from django.db.transaction import Atomic

    path = write_lines(tmp_path / "f.json", [line(r) for r in many(30)])
    run = services.harvest_file_start(path=path)
    enter, leave, calls = Atomic.__enter__, Atomic.__exit__, []

    def half_open(self: Atomic) -> None:
        if threading.current_thread() is threading.main_thread():
            calls.append(self)
            if len(calls) == 2:
                connection.set_autocommit(False)  # the first thing Atomic.__enter__ does
                raise KeyboardInterrupt
        enter(self)

    def begun(self: Atomic) -> None:
        # Inside set_autocommit(False): the driver has begun (SQLite: BEGIN sent; PostgreSQL:
        # the driver's autocommit off) but Django's own flag still says autocommit. A signal that
        # arrives during the BEGIN is raised right after it, in Django's cursor wrapper.
        if threading.current_thread() is threading.main_thread():
            calls.append(self)
            if len(calls) == 2:
                if connection.vendor == "sqlite":
                    connection._start_transaction_under_autocommit()
                else:
                    connection._set_autocommit(False)
                raise KeyboardInterrupt
        enter(self)

    def half_closed(self: Atomic, *exc: object) -> None:
        if threading.current_thread() is threading.main_thread() and exc[0] is None:
            calls.append(self)
            if len(calls) == 2:
                raise KeyboardInterrupt  # before __exit__ has left the block or committed
        leave(self, *exc)

    if where == "opening":
        monkeypatch.setattr(Atomic, "__enter__", half_open)
    elif where == "begun":
        monkeypatch.setattr(Atomic, "__enter__", begun)
    else:
        monkeypatch.setattr(Atomic, "__exit__", half_closed)
    with pytest.raises(KeyboardInterrupt):
        services.harvest_execute(run=run, batch_size=10)
    monkeypatch.undo()

    # What is written now commits: the connection is out of the half-made transaction.
    assert connection.get_autocommit() and not connection.in_atomic_block
    run.refresh_from_db()
    assert run.status == "stopped" and run.message.startswith("interrupted")
    assert Service.objects.count() == run.accepted == run.checkpoint.get("line", 0)
    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk), batch_size=10)
    assert (done.status, done.seen, done.new) == ("completed", 30, 30)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_while_a_batch_commits_still_marks_the_run_stopped(tmp_path, monkeypatch, stop: type) -> None:
    """An interrupt (Ctrl-C, or django-q2's timeout, a SystemExit) that lands inside the commit of a
    batch, between the COMMIT's sending and its answer, left the connection busy: Django's clean-up
    of the block then failed ("can't change 'autocommit' now"), that error replaced the interrupt,
    and marking the run failed failed too ("another command is already in progress"): the run stayed
    'running' and a worker's timeout was reported as a database error (seen in CI, under load)."""
    from django.db import connection, connections

    path = write_lines(tmp_path / "f.json", [line(r) for r in many(30)])
    run = services.harvest_file_start(path=path)
    main = connections["default"]  # this thread's; the writer thread has its own
    commit, calls = type(main)._commit, []

    def interrupted_commit(self: object) -> None:
        if self is main:
            calls.append(self)
            if len(calls) == 2:
                if connection.vendor == "postgresql":
                    connection.connection.pgconn.send_query(b"COMMIT")  # sent, its answer unread
                else:
                    commit(self)  # SQLite commits in one call: the signal lands right after it
                raise stop("Task exceeded maximum timeout value (1 seconds)")
        commit(self)

    monkeypatch.setattr(type(main), "_commit", interrupted_commit)
    with pytest.raises(stop):
        services.harvest_execute(run=run, batch_size=10)
    monkeypatch.undo()

    run.refresh_from_db()
    assert (run.status, run.message) == (
        "stopped",
        "interrupted (Task exceeded maximum timeout value (1 seconds)); resume with --resume",
    )
    assert Service.objects.count() == run.accepted == run.checkpoint.get("line", 0)
    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk), batch_size=10)
    assert (done.status, done.seen, done.new) == ("completed", 30, 30)


def test_hostile_fields_are_stored_exactly(tmp_path) -> None:
    record = banner(
        "192.0.2.77",
        8080,
        data="line1\r\nline2\t\\N\\.",
        product="a\tb\\N",
        version="\n",
        org="x\\y",
        isp="\r",
        os="tab\t",
        hostnames=["h\\1.example", "h\t2.example"],
    )
    harvest(write_lines(tmp_path / "f.json", [line(record)]))
    service = Service.objects.select_related("host").get()
    assert (service.banner, service.product, service.version) == ("line1\r\nline2\t\\N\\.", "a\tb\\N", "\n")
    assert json.loads(service.raw) == record
    host = service.host
    assert (host.org, host.isp, host.os, host.hostnames) == ("x\\y", "\r", "tab\t", ["h\t2.example", "h\\1.example"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("batch_size", [1, 2, 3, 1000])
def test_the_pipelined_writer_gives_the_same_result(tmp_path, batch_size: int) -> None:
    """Outside a transaction on PostgreSQL batches are written by a writer thread while the next
    one is prepared; the next batch must see the state of the one still being written."""
    probe = BatchWriter(HarvestRun.objects.create(source="file"), 10)
    probe.close()
    assert probe.pipelined == (connection.vendor == "postgresql")
    records = [
        banner("192.0.2.1", 80, data="v1", timestamp="2026-01-01T00:00:00", hostnames=["a.example"]),
        banner("192.0.2.1", 80, data="v2", timestamp="2026-01-03T00:00:00", org="Older Org"),
        banner("192.0.2.1", 80, data="v0", timestamp="2026-01-02T00:00:00", hostnames=["b.example"]),
        banner("192.0.2.1", 443, data="tls", timestamp="2026-01-01T00:00:00"),
        banner("192.0.2.2", 80, data="other", timestamp="2026-01-01T00:00:00"),
        banner("192.0.2.1", 80, data="v2", timestamp="2026-01-03T00:00:00"),
        banner("192.0.2.1", 80, data="v3", timestamp="2026-01-04T00:00:00", org="Newer Org"),
    ]
    path = write_lines(tmp_path / "f.json", [line(r) for r in records])
    run = harvest(path, batch_size=batch_size)
    assert (run.new, run.updated, run.rejected) == (3, 3, {Reason.DUPLICATE: 1})
    service = Service.objects.get(port=80, host__ip="192.0.2.1")
    assert service.banner == "v3" and service.first_seen.day == 1 and service.last_seen.day == 4
    assert sorted(ServiceBanner.objects.values_list("banner", flat=True)) == ["v0", "v1", "v2"]
    host = Host.objects.get(ip="192.0.2.1")
    assert host.org == "Newer Org" and host.hostnames == ["a.example", "b.example"] and host.last_seen.day == 4

    later = [
        banner("192.0.2.1", 80, data="v3", timestamp="2026-01-04T00:00:00"),
        banner("192.0.2.1", 443, data="tls", timestamp="2026-01-05T00:00:00"),
        banner("192.0.2.2", 80, data="changed", timestamp="2026-01-06T00:00:00"),
    ]
    again = harvest(write_lines(tmp_path / "g.json", [line(r) for r in later]), batch_size=batch_size)
    assert (again.new, again.updated, again.unchanged, again.rejected) == (0, 2, 1, {})
    assert Service.objects.get(port=443).last_seen.day == 5 and ServiceBanner.objects.count() == 4
    assert Host.objects.get(ip="192.0.2.2").last_seen.day == 6


@pytest.mark.parametrize("endings", ["\n", "\r\n", "\r", "mixed"])
@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_lines_split_across_read_blocks_are_whole(tmp_path, monkeypatch, chunk: int, endings: str) -> None:
    """Whatever their endings: a file with old Mac ones ("\r" alone) was one line, rejected whole
    as too large or not JSON with every record in it. A raw CR cannot stand inside a JSON string,
    so a lone one ends a line as "\r\n" and "\n" do, wherever the read blocks split it."""
    monkeypatch.setattr(readers, "READ_CHUNK", chunk)
    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 400)
    good = [line(r).rstrip(b"\n") for r in many(4)]
    huge = line(banner("192.0.2.99", data="A" * 1000)).rstrip(b"\n")
    bodies = [good[0], b"", huge, good[1], huge, b"{broken", good[2], good[3]]
    ends = itertools.cycle([b"\r", b"\r\n", b"\n"] if endings == "mixed" else [endings.encode()])
    content = [body + end for body, end in zip(bodies, ends, strict=False)]
    content[-1] = good[3] if endings == "\n" else content[-1]  # the last line's ending is one too, or none
    path = write_lines(tmp_path / "f.json", content)
    events = list(readers.file_events(path, {}, hosts=False))
    offsets = [e[2] for e in events if e[0] == "line"]
    assert offsets == list(itertools.accumulate(len(c) for c in content))
    assert [(e[1], e[2]) for e in events if e[0] == "reject"] == [
        ("line 3", Reason.TOO_LARGE),
        ("line 5", Reason.TOO_LARGE),
        ("line 6", Reason.NOT_JSON),
    ]
    assert [e[1] for e in events if e[0] == "record"] == [1, 4, 7, 8]

    for done, offset in enumerate(offsets, 1):  # a run resumed after any line reads on from the next
        resumed = list(readers.file_events(path, {"line": done, "offset": offset}, hosts=False))
        assert [e[1] for e in resumed if e[0] == "record"] == [n for n in [1, 4, 7, 8] if n > done]


REFUSE_PORT_8080 = {
    "postgresql": [
        "CREATE FUNCTION refuse_8080() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN IF NEW.port = 8080 THEN RAISE EXCEPTION 'port 8080 refused'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_8080 BEFORE INSERT ON harvest_service FOR EACH ROW EXECUTE FUNCTION refuse_8080()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse_8080 BEFORE INSERT ON harvest_service WHEN NEW.port = 8080 "
        "BEGIN SELECT RAISE(ABORT, 'port 8080 refused'); END",
    ],
}
ALLOW_PORT_8080 = {
    "postgresql": ["DROP TRIGGER refuse_8080 ON harvest_service", "DROP FUNCTION refuse_8080()"],
    "sqlite": ["DROP TRIGGER refuse_8080"],
}


@pytest.mark.django_db(transaction=True)
def test_a_batch_the_database_refuses_fails_the_run_and_keeps_the_batches_before(tmp_path) -> None:
    """On PostgreSQL the refused batch is written by the writer thread: its error must reach the
    run, and nothing after the last committed batch may be counted."""
    records = [banner("192.0.2.1", port) for port in (80, 81, 8080, 82)]
    path = write_lines(tmp_path / "f.json", [line(r) for r in records])
    with connection.cursor() as cursor:
        for sql in REFUSE_PORT_8080[connection.vendor]:
            cursor.execute(sql)
    try:
        run = services.harvest_file_start(path=path)
        with pytest.raises(Exception, match="port 8080 refused"):
            services.harvest_execute(run=run, batch_size=1)
    finally:
        with connection.cursor() as cursor:
            for sql in ALLOW_PORT_8080[connection.vendor]:
                cursor.execute(sql)
    run.refresh_from_db()
    assert run.status == "failed" and "port 8080 refused" in run.message
    assert sorted(Service.objects.values_list("port", flat=True)) == [80, 81]
    assert (run.checkpoint["line"], run.seen, run.new) == (2, 2, 2)

    done = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk), batch_size=1)
    assert (done.status, done.seen, done.new) == ("completed", 4, 4)
    assert sorted(Service.objects.values_list("port", flat=True)) == [80, 81, 82, 8080]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_reading_a_file_again_adds_no_history(tmp_path, batch_size: int) -> None:
    """Older banners that differ from the current one are history; reading them again (the same
    file twice, or one line twice) finds them there and adds nothing."""
    records = [
        banner("192.0.2.1", 80, data="v1", timestamp="2026-01-01T00:00:00"),
        banner("192.0.2.1", 80, data="v3", timestamp="2026-01-04T00:00:00"),
        banner("192.0.2.1", 80, data="v0", timestamp="2026-01-02T00:00:00"),
        banner("192.0.2.1", 80, data="v2", timestamp="2026-01-03T00:00:00"),
        banner("192.0.2.1", 80, data="v0", timestamp="2026-01-02T00:00:00"),
    ]
    path = write_lines(tmp_path / "f.json", [line(r) for r in records])
    first = harvest(path, batch_size=batch_size)
    assert (first.new, first.updated, first.rejected) == (1, 3, {Reason.DUPLICATE: 1})
    history = sorted(ServiceBanner.objects.values_list("banner", "first_seen__day", "last_seen__day"))
    assert history == [("v0", 2, 2), ("v1", 1, 1), ("v2", 3, 3)]

    again = harvest(path, batch_size=batch_size)
    assert (again.new, again.updated, again.unchanged, again.rejected) == (0, 0, 4, {Reason.DUPLICATE: 1})
    assert sorted(ServiceBanner.objects.values_list("banner", "first_seen__day", "last_seen__day")) == history
    assert Service.objects.get().banner == "v3"

    # An older banner at a time no history row covers is still new history.
    later = harvest(write_lines(tmp_path / "g.json", [line(records[0] | {"timestamp": "2026-01-02T12:00:00"})]))
    assert later.updated == 1 and ServiceBanner.objects.filter(banner="v1").count() == 2


@pytest.mark.parametrize("batch_size", [1, 1000])
@pytest.mark.parametrize("order", ["A3 B1 B2", "A3 B2 B1", "B1 B2 A3"])
def test_an_older_spell_read_out_of_order_is_one_history_row(tmp_path, batch_size: int, order: str) -> None:
    """B on days 1 and 2, then A on day 3: B's spell is one history row, whatever order the lines
    come in (read after A, B's sightings were two rows, as if something had come between them)."""
    lines = [line(banner(data=item[0], timestamp=f"2026-01-0{item[1]}T00:00:00")) for item in order.split()]
    path = write_lines(tmp_path / "f.json", lines)
    run = harvest(path, batch_size=batch_size)
    assert (run.new, run.updated, run.unchanged) == (1, 2, 0)
    history = list(ServiceBanner.objects.values_list("banner", "first_seen__day", "last_seen__day"))
    assert history == [("B", 1, 2)]
    assert harvest(path, batch_size=batch_size).unchanged == 3  # read again: nothing changes
    assert list(ServiceBanner.objects.values_list("banner", "first_seen__day", "last_seen__day")) == history


def test_stored_history_is_read_once_a_batch(tmp_path) -> None:
    """A file of host lookups with history holds many older banners: reading it again looks up
    the stored history of the batch's services together, not one query per service."""
    records = []
    for i in range(300):
        ip = f"192.0.2.{i % 250}"
        port = 8000 + i
        records += [
            banner(ip, port, data=f"v2-{i}", timestamp="2026-01-03T00:00:00"),
            banner(ip, port, data=f"v1-{i}", timestamp="2026-01-02T00:00:00"),
            banner(ip, port, data=f"v0-{i}", timestamp="2026-01-01T00:00:00"),
        ]
    path = write_lines(tmp_path / "f.json", [line(r) for r in records])
    harvest(path, batch_size=500)
    assert ServiceBanner.objects.count() == 600

    sql: list[str] = []

    def record(execute, query, params, many, context):  # noqa: ANN001, ANN202 - Django's wrapper signature
        sql.append(query)
        return execute(query, params, many, context)

    with connection.execute_wrapper(record):  # sees every query; ingest resets the debug log
        again = harvest(path, batch_size=500)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 900)
    assert ServiceBanner.objects.count() == 600
    reads = [q for q in sql if q.startswith("SELECT") and "servicebanner" in q]
    assert 1 <= len(reads) <= 2  # two batches of 500 lines


def test_a_later_record_at_the_same_moment_adds_its_host_fields(tmp_path) -> None:
    first = banner("192.0.2.1", 80, timestamp="2026-01-01T00:00:00", hostnames=[])
    second = banner("192.0.2.1", 443, data="tls", timestamp="2026-01-01T00:00:00", hostnames=["pacs.example.org"])
    harvest(write_lines(tmp_path / "f.json", [line(first), line(second)]))
    assert Host.objects.get().hostnames == ["pacs.example.org"]


def test_a_newer_record_without_an_organisation_keeps_the_known_one(tmp_path) -> None:
    named = banner(timestamp="2026-01-01T00:00:00", org="Example Hospital", isp="Example ISP", os="Linux")
    blank = banner(port=22, data="SSH-2.0", timestamp="2026-02-01T00:00:00", org="", isp="", os="")
    harvest(write_lines(tmp_path / "f.json", [line(named), line(blank)]))
    host = Host.objects.get()
    assert (host.org, host.isp, host.os, host.last_seen.month) == ("Example Hospital", "Example ISP", "Linux", 2)


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_an_older_record_fills_what_newer_ones_left_empty_whatever_the_order(tmp_path, batch_size: int) -> None:
    """Files need not be in time order: the host must come out as from the same lines in time
    order, whose newer empty fields keep the older values and whose hostnames add up."""
    named = banner(timestamp="2026-01-01T00:00:00", org="Example Hospital", isp="Example ISP", asn="AS64500")
    named |= {"os": "Linux", "location": {"country_code": "NL"}, "hostnames": ["pacs.example.org"]}
    blank = banner(port=22, data="SSH-2.0", timestamp="2026-02-01T00:00:00", org="", isp="", asn=None)
    blank |= {"os": "", "location": {}, "hostnames": ["www.example.org"]}
    fields = ("org", "isp", "asn", "country", "os", "hostnames", "first_seen", "last_seen")
    hosts = []
    for name, lines in (("in-order.json", [named, blank]), ("reversed.json", [blank, named])):
        harvest(write_lines(tmp_path / name, [line(r) for r in lines]), batch_size=batch_size)
        hosts.append(Host.objects.values(*fields).get())
        Service.objects.all().delete()
        Host.objects.all().delete()
    assert hosts[1] == hosts[0]
    assert (hosts[0]["org"], hosts[0]["asn"], hosts[0]["hostnames"]) == (
        "Example Hospital",
        64500,
        ["pacs.example.org", "www.example.org"],
    )


def test_rejections_past_the_row_limit_are_only_counted(tmp_path) -> None:
    bad = [b"{not json %d\n" % n for n in range(REJECTION_ROWS_PER_REASON + 1)]
    run = harvest(write_lines(tmp_path / "f.json", [*bad, line(banner())]), batch_size=400)
    assert run.rejected == {Reason.NOT_JSON: REJECTION_ROWS_PER_REASON + 1} and run.accepted == 1
    assert Rejection.objects.filter(run=run).count() == REJECTION_ROWS_PER_REASON
    assert Rejection.objects.filter(run=run).order_by("id").last().position == f"line {REJECTION_ROWS_PER_REASON}"


def test_a_source_that_stops_keeps_only_what_its_last_checkpoint_covers(tmp_path) -> None:
    """A source stops between events; records after its last checkpoint are read again on resume,
    so they must not be written now."""
    path = write_lines(tmp_path / "f.json", [line(r) for r in many(2)])
    kept, after = many(2)

    def stopping_source(run: HarvestRun, progress: object) -> object:
        if run.checkpoint.get("n") == 1:
            yield ("record", 2, record_from_line(line(after)))
            yield ("checkpoint", Checkpoint({"n": 2}))
            return
        yield ("record", 1, record_from_line(line(kept)))
        yield ("checkpoint", Checkpoint({"n": 1}))
        yield ("record", 2, record_from_line(line(after)))
        raise services.HarvestStopped("out of credits")

    services.register_source("stopping")(stopping_source)
    try:
        run = services.harvest_file_start(path=path)
        run.source = "stopping"
        run.save(update_fields=["source"])
        stopped = services.harvest_execute(run=run)
        assert (stopped.status, stopped.checkpoint, stopped.seen) == ("stopped", {"n": 1}, 1)
        assert endpoints() == {(kept["ip_str"], 80, "tcp")}
        resumed = services.harvest_execute(run=services.harvest_run_get_resumable(run_id=run.pk))
    finally:
        del services.SOURCES["stopping"]
    assert (resumed.status, resumed.seen, resumed.new, resumed.rejected) == ("completed", 2, 2, {})


def test_a_run_collects_rarely_and_gives_the_thresholds_back(tmp_path) -> None:
    """The live batch is thousands of containers without cycles: walking it 700 allocations at a
    time cost 9-16 % of an ingest (docs/BENCHMARKS.md)."""
    path = write_lines(tmp_path / "many.json", map(line, many(6_000)))
    young = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            young.append(info["generation"])

    before = gc.get_threshold()
    gc.callbacks.append(count)
    try:
        run = harvest(path, batch_size=2_000)
    finally:
        gc.callbacks.remove(count)
    assert run.new == 6_000
    assert gc.get_threshold() == before
    assert len(young) < 20, f"{len(young)} collections for 6,000 banners"


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "cut mid-member"])
@pytest.mark.parametrize("hosts", [False, True])
def test_the_damage_of_a_gzip_counts_as_a_record_read_and_rejected(tmp_path, damage: str, hosts: bool) -> None:
    """The damage was counted in `rejected` but not in `seen`: a run's read count was one short of
    accepted + rejected, in its summary and its --json alike. The damage rejects the record it
    spoils, so it is read too."""
    records = many(2000)
    if hosts:
        records = [{"ip_str": r["ip_str"], "data": [{"port": 80}]} for r in records]
    full = write_lines(tmp_path / "full.json.gz", [line(r) for r in records], gz=True)
    data = full.read_bytes()
    path = tmp_path / "damaged.json.gz"
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        path.write_bytes(data + b"not a gzip member")
    else:  # a second member whose deflate data is garbage
        path.write_bytes(data + gzip.compress(line(banner("192.0.2.99")))[:10] + b"\xff" * 64)
    out = StringIO()
    call_command("harvest", **{"hosts" if hosts else "file": str(path)}, json=True, stdout=out)
    result = json.loads(out.getvalue())
    assert sum(result["rejected"].values()) == 1
    assert result["seen"] == result["accepted"] + 1
    out = StringIO()
    call_command("harvest", **{"hosts" if hosts else "file": str(path)}, stdout=out)
    text = out.getvalue()
    read = int(re.search(r"read\s+(\d+)", text).group(1))
    accepted = int(re.search(r"accepted\s+(\d+)", text).group(1))
    rejected = int(re.search(r"rejected\s+(\d+)", text).group(1))
    assert read == accepted + rejected and rejected == 1


@pytest.mark.parametrize("gz", [False, True])
def test_a_file_with_old_mac_line_endings_is_read_record_by_record(tmp_path, gz: bool) -> None:
    records = many(4000)
    lines = [line(r).replace(b"\n", b"\r") for r in records]
    lines.insert(4, b"oops\r")
    assert sum(map(len, lines)) > MAX_RECORD_BYTES  # one line, it was rejected as too large
    run = harvest(write_lines(tmp_path / ("f.json.gz" if gz else "f.json"), lines, gz=gz))
    assert (run.seen, run.new, run.rejected) == (4001, 4000, {Reason.NOT_JSON: 1})
    assert Rejection.objects.get().position == "line 5"
    assert endpoints() == {(r["ip_str"], 80, "tcp") for r in records}


def test_host_lookups_with_old_mac_line_endings_are_read_one_by_one(tmp_path) -> None:
    long = host_lookup(busy_host(300)).replace(b"\n", b"\r")  # over a megabyte: read banner by banner
    short = host_lookup([{"port": 22}], "192.0.2.71").replace(b"\n", b"\r")
    run = harvest(write_lines(tmp_path / "h.json", [short, long, b"[]\r", short]), hosts=True)
    assert (run.seen, run.new, run.rejected) == (303, 301, {Reason.NOT_OBJECT: 1, Reason.DUPLICATE: 1})
    assert sorted(run.rejections.values_list("position", flat=True)) == ["line 3", "line 4 data[0]"]
