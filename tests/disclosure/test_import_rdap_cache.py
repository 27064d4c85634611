"""import_rdap_cache: one bad file among good ones is reported and skipped, the rest are loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.core.management import call_command

from disclosure.models import Network
from disclosure.services import network_find_cached, rdap_cache_import

pytestmark = pytest.mark.django_db

GOOD = {
    "objectClassName": "ip network",
    "handle": "GOOD",
    "type": "ASSIGNED PA",
    "startAddress": "81.0.0.0",
    "endAddress": "81.0.0.255",
    "name": "GOOD-NET",
    "port43": "whois.ripe.net",
    "entities": [],
}
BAD = {**GOOD, "handle": "BAD", "startAddress": "82.0.0.0", "endAddress": "82.0.0.255"}
DEEP = '{"objectClassName": "ip network", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"  # too deep for json


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def import_with(directory: Path, bad: str, capsys: pytest.CaptureFixture) -> dict:
    (directory / "a-good.json").write_text(json.dumps(GOOD))
    (directory / "b-bad.json").write_text(bad)
    good2 = {**GOOD, "handle": "GOOD2", "startAddress": "83.0.0.0", "endAddress": "83.0.0.255"}
    (directory / "c-good.json").write_text(json.dumps(good2))
    call_command("import_rdap_cache", str(directory), "--json")
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("extra", "stored"),
    [
        ({"cidr0_cidrs": 5}, {"cidrs": ["82.0.0.0/24"]}),
        ({"port43": None, "links": ["https://rdap.db.ripe.net/ip/82.0.0.0"]}, {"registry": ""}),
        ({"arin_originas0_originautnums": 5}, {"asn": None}),
        ({"arin_originas0_originautnums": {"0": 1}}, {"asn": None}),
        ({"arin_originas0_originautnums": ["\u00b2"]}, {"asn": None}),
        ({"arin_originas0_originautnums": [99999999999999999999]}, {"asn": None}),
        ({"name": "NUL\x00NET", "remarks": [{"description": ["a\x00b"]}]}, {"name": "NUL\u2400NET"}),
        # More digits than int() reads from text (4,300): it raised ValueError and stopped the import.
        ({"cidr0_cidrs": [{"v4prefix": "82.0.0.0", "length": "9" * 5000}]}, {"cidrs": ["82.0.0.0/24"]}),
        # A self link that is no URL (urlsplit raises on "[bad") stopped the whole import.
        ({"links": [{"rel": "self", "value": "http://[bad/ip/82.0.0.1"}]}, {"registry": "ripencc"}),
    ],
)
def test_values_of_the_wrong_type_are_absent_and_the_file_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: dict, stored: dict
) -> None:
    report = import_with(tmp_path, json.dumps({**BAD, **extra}), capsys)
    assert report["loaded"] == 3 and report["errors"] == []
    network = Network.objects.get(handle="BAD")
    assert {key: getattr(network, key) for key in stored} == stored
    assert "\x00" not in json.dumps(network.raw, ensure_ascii=False)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (DEEP, "malformed_json"),
        (json.dumps({**BAD, "x": nested(70)}), "malformed_json"),  # deeper than we keep
        (json.dumps(BAD).replace('"entities": []', '"entities": NaN'), "malformed_json"),
        (json.dumps({**BAD, "cidr0_cidrs": [{"v4prefix": "9.9.9.0", "length": 24}]}), "malformed_answer"),
    ],
)
def test_a_bad_file_is_reported_by_name_and_the_good_ones_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture, bad: str, reason: str
) -> None:
    report = import_with(tmp_path, bad, capsys)
    assert report["loaded"] == 2 and sorted(Network.objects.values_list("handle", flat=True)) == ["GOOD", "GOOD2"]
    assert [(e["file"], e["reason"]) for e in report["errors"]] == [("b-bad.json", reason)]


def test_the_command_ends_with_a_summary_of_every_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a-deep.json").write_text(DEEP)
    (tmp_path / "b-good.json").write_text(json.dumps(GOOD))
    (tmp_path / "c-foreign-cidr.json").write_text(
        json.dumps({**BAD, "cidr0_cidrs": [{"v4prefix": "9.9.9.0", "length": 24}]})
    )
    (tmp_path / "d-folder.json").mkdir()
    call_command("import_rdap_cache", str(tmp_path))
    out, err = capsys.readouterr()
    assert out.strip() == "1 networks loaded, 3 files rejected"
    assert "a-deep.json: malformed_json: nested too deep to parse" in err
    assert "c-foreign-cidr.json: malformed_answer: CIDR 9.9.9.0/24 lies outside the range" in err
    assert "d-folder.json: unreadable: not a regular file" in err


def test_networks_that_start_at_the_same_address_are_cached_apart(tmp_path: Path) -> None:
    (tmp_path / "a-wide.json").write_text(json.dumps({**GOOD, "handle": "WIDE", "endAddress": "81.0.255.255"}))
    (tmp_path / "b-narrow.json").write_text(json.dumps(GOOD))

    rdap_cache_import(directory=tmp_path)

    assert sorted(Network.objects.values_list("handle", flat=True)) == ["GOOD", "WIDE"]
    assert network_find_cached(ip="81.0.0.9").handle == "GOOD"
    assert network_find_cached(ip="81.0.7.9").handle == "WIDE"


def test_a_file_that_is_no_regular_file_is_reported_and_not_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A named pipe (or a link to /dev/zero, which stat() calls 0 bytes long) among the answers,
    as an unpacked archive can hold: reading it waited for a writer forever, or read without end."""
    os.mkfifo(tmp_path / "b-pipe.json")
    (tmp_path / "a-good.json").write_text(json.dumps(GOOD))
    call_command("import_rdap_cache", str(tmp_path), "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["loaded"] == 1
    assert [(e["file"], e["reason"], e["detail"]) for e in report["errors"]] == [
        ("b-pipe.json", "unreadable", "not a regular file")
    ]


def test_rejections_reach_the_terminal_with_their_controls_visible(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A file's name and the answer's own text (its objectClassName) went to the terminal as they
    were: an escape sequence in either was run by the terminal."""
    (tmp_path / "a-\x1b]0;owned\x07.json").write_text("not json")
    (tmp_path / "b-class.json").write_text(json.dumps({**BAD, "objectClassName": "\x1b[2Jentity\u202e"}))
    call_command("import_rdap_cache", str(tmp_path))
    out, err = capsys.readouterr()
    assert out.strip() == "0 networks loaded, 2 files rejected"
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "a-\\x1b]0;owned\\x07.json: malformed_json" in err
    assert "b-class.json: malformed_answer: not an ip network but \\x1b[2Jentity\\u202e" in err


def test_a_line_break_in_a_file_name_cannot_start_a_line_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """visible_text() keeps CR and LF (banners are shown with their lines), so a file named
    "x.json\\n  y.json: ..." printed a second, made-up rejection line."""
    (tmp_path / "a\n  fake.json: unreadable: made up\r.json").write_text("not json")
    call_command("import_rdap_cache", str(tmp_path))
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "a\\n  fake.json: unreadable: made up\\r.json: malformed_json" in err
