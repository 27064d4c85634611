"""The pure parsing of one banner: lenient about everything but address, port and transport."""

import json

import pytest

from harvest.records import (
    MAX_RECORD_BYTES,
    UTF8_BOM,
    Reason,
    RecordError,
    clean_text,
    record_from_line,
    records_from_host_line,
)
from tests.factories import banner, line

DEEP = b"[" * 1000 + b"]" * 1000  # orjson reads up to 1,024 levels; Python's json recurses once per level


def test_it_reads_the_real_intelmq_banners(shared_data) -> None:
    lines = (shared_data / "shodan" / "intelmq-parser-tests.jsonl").read_bytes().splitlines()
    records = [record_from_line(raw) for raw in lines]
    assert [(r.port, r.transport) for r in records] == [
        (21, "tcp"),
        (8888, "tcp"),
        (500, "udp"),
        (5683, "udp"),
        (636, "tcp"),
        (389, "tcp"),
        (22, "tcp"),
    ]
    first = records[0]
    assert first.ip == "240.15.82.82"  # from the integer 4027535954
    assert first.asn == 64496
    assert first.country == "AT"
    assert first.hostnames == ("mail.example.at",)
    assert first.module == "ftp"
    assert first.raw == lines[0].decode()  # verbatim


def test_it_reads_the_real_host_lookup(shared_data) -> None:
    raw = (shared_data / "shodan" / "sner4-host-lookup.jsonl").read_bytes().splitlines()[0]
    good, bad = records_from_host_line(raw)
    assert bad == []
    assert sorted((r.port, r.transport) for r in good) == [(161, "udp"), (179, "tcp"), (443, "tcp")]
    assert len({r.ip for r in good}) == 1
    assert all(json.loads(r.raw)["port"] == r.port for r in good)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", Reason.NOT_JSON),
        (b"[1, 2, 3]", Reason.NOT_OBJECT),
        (b'"a string"', Reason.NOT_OBJECT),
        (line({"port": 80, "data": ""}), Reason.MISSING_ADDRESS),
        (line(banner("192.0.2.1") | {"ip_str": "999.1.1.1"}), Reason.INVALID_ADDRESS),
        (line(banner("192.0.2.1") | {"ip_str": "not-an-ip"}), Reason.INVALID_ADDRESS),
        (line({k: v for k, v in banner().items() if k != "port"}), Reason.MISSING_PORT),
        (line(banner(port=70000)), Reason.INVALID_PORT),
        (line(banner(port=-1)), Reason.INVALID_PORT),
        (line(banner() | {"port": None}), Reason.MISSING_PORT),
        (b'{"ip": true, "port": 80}', Reason.INVALID_ADDRESS),  # a boolean is no integer address
        (line(banner() | {"port": "http"}), Reason.INVALID_PORT),
        (line(banner() | {"port": True}), Reason.INVALID_PORT),
        (line(banner(transport="sctp")), Reason.INVALID_TRANSPORT),
        (line(banner() | {"port": "²"}), Reason.INVALID_PORT),  # "²".isdigit(), but int() refuses it
        (line(banner() | {"port": "٣"}), Reason.INVALID_PORT),  # an Arabic-Indic 3, not port 3
        (line(banner() | {"ip_str": "fe80::2%1"}), Reason.INVALID_ADDRESS),  # zone ids: PostgreSQL refuses them
        (line(banner() | {"ip_str": "fe80::1%eth0"}), Reason.INVALID_ADDRESS),
        (line({"ip": 2**32, "port": 80}), Reason.INVALID_ADDRESS),  # the integer `ip` is IPv4 only
        (b"[" * 100_000, Reason.NOT_JSON),  # too deep for orjson and for Python's json
        (b'{"ip_str": "192.0.2.1", "port": 80, "data": ' + DEEP + b"}", Reason.TOO_DEEP),
        (b'{"ip_str": "192.0.2.1", "port": 80, "data": "a\x00b"}', Reason.NUL_BYTE),
        (b'{"ip_str": "192.0.2.1", "port": 80, "data": "caf\xe9"}', Reason.NOT_UTF8),
    ],
)
def test_it_rejects_bad_records_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as exc:
        record_from_line(raw)
    assert exc.value.reason == reason
    assert exc.value.detail


@pytest.mark.parametrize("port", [0, 65535])
def test_the_port_range_includes_both_ends(port: int) -> None:
    assert record_from_line(line(banner(port=port))).port == port


def test_the_transport_is_read_in_any_case_and_stored_in_lower_case() -> None:
    # "TCP" and "tcp" are one service: the key must not depend on how a record spells it.
    assert record_from_line(line(banner(transport="UDP"))).key == ("192.0.2.10", 80, "udp")
    assert record_from_line(line(banner(transport="Tcp"))).transport == "tcp"


def test_it_rejects_a_record_over_the_size_limit() -> None:
    huge = line(banner(data="A" * (MAX_RECORD_BYTES + 10)))
    with pytest.raises(RecordError) as exc:
        record_from_line(huge)
    assert exc.value.reason == Reason.TOO_LARGE


def sized(size: int) -> bytes:
    """A banner line of exactly `size` bytes, without a line ending."""
    start = json.dumps(banner(data="")).encode()
    return json.dumps(banner(data="A" * (size - len(start)))).encode()


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_the_size_limit_does_not_count_the_line_ending(ending: bytes) -> None:
    assert record_from_line(sized(MAX_RECORD_BYTES) + ending).port == 80
    with pytest.raises(RecordError) as exc:
        record_from_line(sized(MAX_RECORD_BYTES + 1) + ending)
    assert exc.value.detail == f"record of {MAX_RECORD_BYTES + 1} bytes, limit {MAX_RECORD_BYTES}"


def test_it_drops_a_byte_order_mark_from_the_stored_record() -> None:
    raw = line(banner())
    record = record_from_line(UTF8_BOM + raw)
    assert record.raw == raw.decode().rstrip("\n")
    good, bad = records_from_host_line(UTF8_BOM + json.dumps({"ip_str": "192.0.2.3", "data": [{"port": 1}]}).encode())
    assert (len(good), bad) == (1, [])


def test_it_rejects_a_host_banner_too_deep_to_encode_and_keeps_the_others() -> None:
    host = b'{"ip_str": "192.0.2.3", "data": [{"port": 1, "x": ' + DEEP + b'}, {"port": 2}]}'
    good, bad = records_from_host_line(host)
    assert [r.port for r in good] == [2]
    assert [(index, error.reason) for index, error in bad] == [(0, Reason.TOO_DEEP)]


def test_it_keeps_escaped_nuls_and_binary_as_characters() -> None:
    pdu = "\x02\x00\x00\x00\x00\xb1\x00\x01ANY-SCP"
    record = record_from_line(line(banner(port=104, data=pdu)))
    assert "\x00" not in record.banner  # safe for PostgreSQL text
    assert record.banner.startswith("\x02\u2400")
    assert json.loads(record.raw)["data"] == pdu  # the exact bytes survive in the raw record


def test_it_accepts_lone_surrogate_escapes_and_cleans_them() -> None:
    raw = b'{"ip_str": "192.0.2.7", "port": 389, "data": "x\\ud800y", "org": "\\udfff Org"}'
    record = record_from_line(raw)
    record.banner.encode("utf-8")  # would raise on a lone surrogate
    record.org.encode("utf-8")
    assert record.banner == "x\ufffdy"


def test_it_normalises_addresses() -> None:
    assert record_from_line(line(banner() | {"ip_str": "::ffff:192.0.2.5"})).ip == "192.0.2.5"
    assert record_from_line(line(banner("2001:0db8:0000::0001"))).ip == "2001:db8::1"
    assert record_from_line(line({"ip": 3221225985, "port": 1})).ip == "192.0.2.1"
    assert record_from_line(line({"ip": 2**32 - 1, "port": 1})).ip == "255.255.255.255"


def test_it_is_lenient_about_everything_else() -> None:
    odd = banner() | {
        "location": "nowhere",
        "hostnames": "not-a-list",
        "asn": {"x": 1},
        "timestamp": "garbage",
        "_shodan": None,
        "data": None,
        "org": 12,
    }
    record = record_from_line(line(odd))
    assert record.country == "" and record.hostnames == () and record.asn is None and record.timestamp is None
    assert record.banner == "" and record.org == "12"


@pytest.mark.parametrize("asn", ["AS²", "AS٣", "²", "٣٣"])
def test_an_asn_of_other_digits_is_ignored(asn: str) -> None:
    assert record_from_line(line(banner(asn=asn))).asn is None
    assert record_from_line(line(banner(asn=" as64496 "))).asn == 64496


@pytest.mark.parametrize("timestamp", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"])
def test_an_offset_that_leaves_the_date_range_makes_the_time_unknown(timestamp: str) -> None:
    assert record_from_line(line(banner(timestamp=timestamp))).timestamp is None
    kept = record_from_line(line(banner(timestamp="9999-12-31T23:00:00+05:00")))
    assert kept.timestamp is not None and kept.timestamp.hour == 18


@pytest.mark.parametrize(("code", "country"), [("nl", "NL"), ("ßa", ""), ("ﬀa", ""), ("ŉa", ""), ("N1", "")])
def test_a_country_code_is_two_ascii_letters(code: str, country: str) -> None:
    assert record_from_line(line(banner(location={"country_code": code}))).country == country


def test_clean_text_bounds_and_sanitises() -> None:
    assert clean_text("a" * 1000, 10) == "a" * 10
    assert clean_text("a\x00b") == "a\u2400b"
    assert clean_text(None) == ""
    assert clean_text(["x"]) == ""


def test_a_host_banner_without_a_value_takes_its_hosts(shared_data) -> None:
    # The real lookup: its banners say "hostnames": [] and have no location; the host names one
    # hostname and its country in the top-level country_code, as /shodan/host/{ip} answers do.
    raw = (shared_data / "shodan" / "sner4-host-lookup.jsonl").read_bytes().splitlines()[0]
    good, _ = records_from_host_line(raw)
    assert {(r.hostnames, r.country) for r in good} == {(("dummy.hostname.test",), "US")}

    host = {"ip_str": "192.0.2.4", "org": "Host Org", "isp": "Host ISP", "asn": "AS64500", "os": "Linux"}
    empty = {"ip_str": None, "org": None, "isp": "", "asn": None, "os": None, "hostnames": [], "port": 80}
    good, bad = records_from_host_line(json.dumps(host | {"hostnames": ["h.example"], "data": [empty]}).encode())
    assert bad == []
    (record,) = good
    assert (record.ip, record.org, record.isp, record.asn, record.os) == (
        "192.0.2.4",
        "Host Org",
        "Host ISP",
        64500,
        "Linux",
    )
    assert record.hostnames == ("h.example",)
    # Stored with what it inherited: attribution and classification read a service's names and
    # organisation from its stored record, which would otherwise say it has none.
    assert json.loads(record.raw) == empty | host | {"hostnames": ["h.example"]}


def test_a_host_banner_of_another_address_inherits_nothing_from_the_host() -> None:
    host = {"ip_str": "192.0.2.5", "org": "Host Org", "hostnames": ["h.example"], "country_code": "NL"}
    same = {"ip": 3221225989, "port": 81}  # 192.0.2.5 as an integer: the same address
    other = {"ip_str": "203.0.113.9", "port": 80}
    good, bad = records_from_host_line(json.dumps(host | {"data": [same, other]}).encode())
    assert bad == []
    assert [(r.ip, r.org, r.hostnames, r.country) for r in good] == [
        ("192.0.2.5", "Host Org", ("h.example",), "NL"),
        ("203.0.113.9", "", (), ""),
    ]
