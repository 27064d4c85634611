"""The bulk writer's own COPY formatting, read back from the real database."""

import itertools
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from django.db import connection, transaction

from harvest import bulk, ingest
from harvest.models import HarvestRun, Host, Rejection, Service

pytestmark = pytest.mark.django_db

HOSTILE = [
    "",
    "plain",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "ends with a backslash\\",
    "\t\n\r\\ all at once \\t\\n",
    "ümlaut ☃ \u2400 \U0001f600",
    "x" * 400 + "\\" + "\t",
]


def test_hostile_text_survives_the_copy_format() -> None:
    run = HarvestRun.objects.create(source="file")
    with transaction.atomic():
        ids = bulk.insert_rows(
            Rejection._meta.db_table,
            ("run_id", "position", "reason", "detail"),
            [(run.pk, "p", "r", t) for t in HOSTILE],
        )
    stored = dict(Rejection.objects.filter(pk__in=ids).values_list("pk", "detail"))
    assert [stored[pk] for pk in ids] == HOSTILE


def test_hostile_text_and_timestamps_survive_the_binary_copy_of_services() -> None:
    """Ingest writes new services in COPY's binary format on PostgreSQL, typed by
    ingest._SERVICE_TYPES (SQLite writes the rows themselves)."""
    run = HarvestRun.objects.create(source="file")
    plus_two = timezone(timedelta(hours=2))
    host = Host.objects.create(
        ip="192.0.2.9", first_seen=datetime(2026, 1, 1, tzinfo=UTC), last_seen=datetime(2026, 1, 1, tzinfo=UTC)
    )
    when = [datetime(2026, 3, 1, 12, 30, 5, i, tzinfo=UTC if i % 2 else plus_two) for i in range(len(HOSTILE))]
    dt = bulk.datetime_adapter()
    with transaction.atomic():
        ids = bulk.allocate_ids(Service._meta.db_table, len(HOSTILE))
        rows = [
            (pk, host.pk, port, "udp", text[:255], "v", "m", text, text, "0" * 32, "1" * 32, *[dt(w)] * 3, run.pk)
            for port, (pk, text, w) in enumerate(zip(ids, HOSTILE, when, strict=True))
        ]
        payload = None
        if connection.vendor == "postgresql":
            payload = bulk.copy_binary(rows, ingest._SERVICE_TYPES)
            assert b"back\\\\slash" not in payload and b"back\\slash" in payload  # nothing escaped
        bulk.copy_in(Service._meta.db_table, ("id", *ingest._SERVICE_INSERT), rows, payload=payload, binary=True)
    stored = {s.pk: s for s in Service.objects.filter(pk__in=ids)}
    assert [(stored[pk].banner, stored[pk].raw, stored[pk].product, stored[pk].port) for pk in ids] == [
        (t, t, t[:255], port) for port, t in enumerate(HOSTILE)
    ]
    assert [stored[pk].first_seen for pk in ids] == when
    assert {(s.transport, s.module, s.identity_hash, s.last_run_id, s.host_id) for s in stored.values()} == {
        ("udp", "m", "1" * 32, run.pk, host.pk)
    }


def test_hostile_text_addresses_and_hostnames_survive_the_binary_copy_of_hosts() -> None:
    """New hosts go in COPY's binary format too (ingest._HOST_TYPES), the address and the
    hostnames as the canonical text and JSON text that ingest holds."""
    plus_two = timezone(timedelta(hours=2))
    addresses = ["192.0.2.1", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::", "64:ff9b::c000:201", "fe80::1:2:3:4"]
    addresses += [f"198.51.100.{i}" for i in range(len(HOSTILE) - len(addresses))]
    when = [datetime(2026, 3, 1, 12, 30, 5, i, tzinfo=UTC if i % 2 else plus_two) for i in range(len(HOSTILE))]
    dt = bulk.datetime_adapter()
    with transaction.atomic():
        ids = bulk.allocate_ids(Host._meta.db_table, len(HOSTILE))
        rows = [
            (
                pk,
                ip,
                text[:255],
                text[:255],
                asn,
                "NL",
                orjson.dumps([text, "a.example"]).decode(),
                text[:255],
                dt(w),
                dt(w),
                dt(w),
            )
            for pk, ip, text, w, asn in zip(
                ids, addresses, HOSTILE, when, itertools.cycle([None, 0, 2**32 - 1]), strict=False
            )
        ]
        payload = None
        if connection.vendor == "postgresql":
            payload = bulk.copy_binary(rows, ingest._HOST_TYPES)
        bulk.copy_in(Host._meta.db_table, ("id", *ingest._HOST_COLUMNS), rows, payload=payload, binary=True)
    stored = {h.pk: h for h in Host.objects.filter(pk__in=ids)}
    assert [stored[pk].ip for pk in ids] == addresses
    assert [(stored[pk].org, stored[pk].isp, stored[pk].os) for pk in ids] == [(t[:255],) * 3 for t in HOSTILE]
    assert [stored[pk].hostnames for pk in ids] == [[t, "a.example"] for t in HOSTILE]
    assert [stored[pk].asn for pk in ids] == [r[4] for r in rows]
    assert [stored[pk].last_seen for pk in ids] == [stored[pk].changed_at for pk in ids] == when
    # The database reads the address as an address, not as text that looks like one.
    assert Host.objects.filter(pk__in=ids, ip="2001:0db8:0:0::1").count() == 1


def test_binary_copy_refuses_what_it_cannot_write_exactly() -> None:
    if connection.vendor != "postgresql":
        # SQLite never formats binary COPY; its bulk writes adapt each value through the driver.
        assert bulk.datetime_adapter()(datetime(2026, 1, 1, tzinfo=UTC)).startswith("2026-01-01")
        return
    with pytest.raises(TypeError, match="naive"):
        bulk.copy_binary([(datetime(2026, 1, 1),)], ("timestamptz",))
    with pytest.raises(UnicodeEncodeError):
        bulk.copy_binary([("lone \udc80 surrogate",)], ("text",))
    with pytest.raises(TypeError):
        bulk.copy_binary([("3",)], ("int8",))
    with pytest.raises(OSError):
        bulk.copy_binary([("192.0.2.256",)], ("inet",))


def test_nulls_numbers_and_timestamps_survive_the_copy_format() -> None:
    when = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
    rows = [
        ("192.0.2.1", "a", "", None, "", "[]", "", when, when),
        ("2001:db8::1", "b", "i", 4_294_967_295, "NL", '["x\\ty"]', "os", when - timedelta(days=1), when),
        ("192.0.2.2", "c", "", 0, "", "[]", "", datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))), when),
    ]
    dt = bulk.datetime_adapter()
    columns = ("ip", "org", "isp", "asn", "country", "hostnames", "os", "first_seen", "last_seen")
    with transaction.atomic():
        bulk.insert_rows(Host._meta.db_table, columns, [(*r[:7], dt(r[7]), dt(r[8])) for r in rows])
    hosts = {h.ip: h for h in Host.objects.all()}
    assert hosts["192.0.2.1"].asn is None and hosts["192.0.2.1"].first_seen == when
    assert hosts["2001:db8::1"].asn == 4_294_967_295 and hosts["2001:db8::1"].hostnames == ["x\ty"]
    assert hosts["2001:db8::1"].first_seen == when - timedelta(days=1)
    assert hosts["192.0.2.2"].asn == 0 and hosts["192.0.2.2"].first_seen == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_copy_text_escapes_every_special_character() -> None:
    text = bulk.copy_text([("a\tb", None, 3, True, 1.5), ("\\N", "c\nd\re\\", -1, False, 0.0)]).decode()
    assert text == "a\\tb\t\\N\t3\tt\t1.5\n\\\\N\tc\\nd\\re\\\\\t-1\tf\t0.0\n"


def test_copy_text_refuses_what_it_cannot_write_exactly() -> None:
    with pytest.raises(ValueError, match="naive"):
        bulk.copy_text([(datetime(2026, 1, 1),)])
    with pytest.raises(TypeError):
        bulk.copy_text([(object(),)])


def test_ids_come_from_the_table_sequence() -> None:
    with transaction.atomic():
        first = bulk.allocate_ids(Host._meta.db_table, 3)
        second = bulk.allocate_ids(Host._meta.db_table, 2)
    assert len(set(first + second)) == 5 or connection.vendor == "sqlite"
    assert first == sorted(first) and bulk.allocate_ids(Host._meta.db_table, 0) == []
