"""export_services: one JSON object per service and per line, without the stored banners."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from harvest import services
from tests.factories import line, many, write_lines
from tests.factories import minimal_banner as _minimal_banner
from tests.harvest.processes import manage, run_json


def minimal_banner(ip: str, port: int, data: str, **extra: object) -> dict:
    return _minimal_banner(ip, port, data, timestamp="2026-01-02T03:04:05.000000", **extra)


def ingest(tmp_path: Path, records: list[dict]) -> None:
    path = tmp_path / "banners.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    services.harvest_execute(run=services.harvest_file_start(path=path))


@pytest.mark.django_db
def test_hostile_line_separators_do_not_split_a_row(tmp_path: Path) -> None:
    ingest(
        tmp_path,
        [
            minimal_banner("192.0.2.1", 80, "x", product="a\u2028b\u2029c\x85d", org="Org\u2028BV"),
            minimal_banner("192.0.2.2", 443, "y", hostnames=["h\u2029.example"]),
        ],
    )
    out = tmp_path / "out.jsonl"

    call_command("export_services", format="jsonl", output=str(out))

    lines = out.read_text(encoding="utf-8").splitlines()  # splits at U+2028, U+2029 and U+0085 too
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 2
    assert rows[0]["product"] == "a\u2028b\u2029c\x85d" and rows[0]["org"] == "Org\u2028BV"
    assert rows[1]["hostnames"] == ["h\u2029.example"]


@pytest.mark.django_db
def test_the_export_does_not_read_banners_or_raw_records(tmp_path: Path) -> None:
    ingest(tmp_path, [minimal_banner("192.0.2.3", 104, "B" * 200_000), minimal_banner("192.0.2.4", 80, "small")])

    with CaptureQueriesContext(connection) as ctx:
        rows = list(services.service_export_rows())

    assert [(r["ip"], r["port"]) for r in rows] == [("192.0.2.3", 104), ("192.0.2.4", 80)]
    selects = [q["sql"] for q in ctx.captured_queries if "harvest_service" in q["sql"].split("FROM", 1)[-1]]
    assert selects and not any(
        '"harvest_service"."raw"' in sql or '"harvest_service"."banner"' in sql for sql in selects
    )


@pytest.mark.django_db
def test_an_empty_database_exports_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    call_command("export_services", format="jsonl", output=str(out))
    assert out.read_text() == ""


@pytest.mark.django_db
def test_each_row_carries_the_service_and_its_host_over_the_whole_window(tmp_path: Path) -> None:
    host = {"org": "Example Hospital", "asn": "AS64496", "hostnames": ["pacs.example.org"]}
    ingest(
        tmp_path,
        [
            _minimal_banner("192.0.2.5", 104, "v1", timestamp="2026-01-05T00:00:00", **host),
            _minimal_banner(
                "192.0.2.5", 104, "v2", timestamp="2026-03-05T00:00:00", product="Orthanc", version="1.12", **host
            ),
            _minimal_banner("192.0.2.5", 443, "tls", timestamp="2026-02-05T00:00:00", transport="udp", **host),
            _minimal_banner("192.0.2.6", 80, "x", timestamp="2026-02-05T00:00:00"),
        ],
    )

    rows = list(services.service_export_rows(chunk_size=1))  # a chunk per row: no row twice, none left out

    assert [(r["ip"], r["port"], r["transport"]) for r in rows] == [
        ("192.0.2.5", 104, "tcp"),
        ("192.0.2.5", 443, "udp"),
        ("192.0.2.6", 80, "tcp"),
    ]
    first = rows[0]
    assert {k: first[k] for k in ("product", "version", "module", "org", "asn", "country", "hostnames")} == {
        "product": "Orthanc",
        "version": "1.12",
        "module": "dicom",
        "org": "Example Hospital",
        "asn": 64496,
        "country": "NL",
        "hostnames": ["pacs.example.org"],
    }
    # The window of the service, not of its current banner (which changed in March).
    assert (first["first_seen"], first["last_seen"]) == ("2026-01-05T00:00:00+00:00", "2026-03-05T00:00:00+00:00")


@pytest.mark.django_db
def test_a_file_export_prints_a_summary_and_json_for_scripts(tmp_path: Path) -> None:
    ingest(tmp_path, [minimal_banner("192.0.2.5", 104, "a"), minimal_banner("192.0.2.5", 11112, "b")])
    out = tmp_path / "out.jsonl"
    stdout = io.StringIO()

    call_command("export_services", output=str(out), json=True, stdout=stdout)

    summary = json.loads(stdout.getvalue())
    assert summary["services"] == 2 == len(out.read_text().splitlines())
    assert summary["output"] == str(out.resolve())
    assert (out.stat().st_mode & 0o077) == 0  # confidential: readable by its owner only


@pytest.mark.django_db
def test_rows_on_standard_output_stay_alone_there(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ingest(tmp_path, [minimal_banner("192.0.2.6", 2575, "MSH|^~\\&|")])

    call_command("export_services")

    captured = capsys.readouterr()
    assert [json.loads(line)["port"] for line in captured.out.splitlines()] == [2575]
    assert "Exported 1 services to standard output" in captured.err
    with pytest.raises(CommandError, match="--json needs --output"):
        call_command("export_services", json=True)


@pytest.mark.django_db
def test_a_failed_export_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    ingest(tmp_path, [minimal_banner(f"192.0.2.{i}", 80, "x") for i in range(1, 6)])
    out = tmp_path / "out.jsonl"
    out.write_text("the previous export\n")

    def broken(batch: list, rows: list) -> None:
        raise RuntimeError("enricher failed")

    services.register_export_enricher(broken)
    try:
        with pytest.raises(RuntimeError, match="enricher failed"):
            call_command("export_services", output=str(out))
    finally:
        services.EXPORT_ENRICHERS.remove(broken)

    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


@pytest.mark.django_db
def test_an_output_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no such directory"):
        call_command("export_services", output=str(tmp_path / "nowhere" / "out.jsonl"))


@pytest.mark.django_db
def test_an_output_file_it_cannot_create_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"cannot write .*: File name too long"):
        call_command("export_services", output=str(tmp_path / ("x" * 300)))


@pytest.mark.django_db
def test_rows_carry_controls_and_bidi_characters_as_escapes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """JSON needs no escape for DEL, the C1 controls or bidi and invisible characters, so rows on a
    terminal ran an 8-bit CSI (U+009B) from a product name and reversed text after a U+202E."""
    hostile = {"product": "a\x9b2Jb\x7f", "org": "\u202eCM sumsarE", "hostnames": ["h\U000e0041\u200b.example"]}
    ingest(tmp_path, [minimal_banner("192.0.2.7", 80, "x", **hostile)])

    call_command("export_services")

    out = capsys.readouterr().out
    assert not any(char in out for char in "\x7f\x9b\u202e\u200b\U000e0041")
    row = json.loads(out)
    assert {key: row[key] for key in hostile} == hostile


@pytest.mark.django_db
def test_an_output_that_is_no_regular_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """The file is written beside its name and renamed over it: over a pipe or a device (as
    root, --output /dev/stdout is a link to one in /dev) that rename would replace it."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(CommandError, match="not a regular file.*use - for standard output"):
        call_command("export_services", output=str(pipe))
    assert stat.S_ISFIFO(pipe.lstat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


@pytest.mark.django_db
def test_an_output_through_a_link_replaces_the_file_it_points_to(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    real = tmp_path / "exports" / "services.jsonl"
    real.write_text("old\n")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    call_command("export_services", output=str(link))
    assert link.is_symlink() and link.resolve() == real
    assert real.read_text() == ""  # an empty database: no rows, and the old content gone


@pytest.mark.django_db
def test_rows_carry_what_the_verdict_identified_and_how_sure_it_is(tmp_path: Path) -> None:
    """A row's `product` is Shodan's, empty for nearly every medical service (a DICOM server
    names itself only in its association reply); the product the rules identified there, the
    verdict's confidence and the rules version that gave it were in no row."""
    from harvest.classify import services as classify_services
    from harvest.models import Classification

    # DCMTK's A-ASSOCIATE-AC to Shodan's probe (as pynetdicom encodes it).
    dicom = (
        "\x02\x00\x00\x00\x00\xb8\x00\x01\x00\x00ANY-SCP         FINDSCU         "
        + "\x00" * 32
        + "\x10\x00\x00\x151.2.840.10008.3.1.1.1!\x00\x00\x19\x01\x00\x00\x00@\x00\x00\x111.2.840.10008.1.2"
        + "P\x00\x00:Q\x00\x00\x04\x00\x00@\x00R\x00\x00\x1b1.2.276.0.7230010.3.0.3.6.7U\x00\x00\x0fOFFIS_DCMTK_367"
    )
    ingest(tmp_path, [minimal_banner("192.0.2.8", 104, dicom), minimal_banner("192.0.2.9", 80, "HTTP/1.1 200 OK")])
    classify_services.classification_run_pending()
    Classification.objects.filter(service__host__ip="192.0.2.9").delete()

    rows = {r["ip"]: r for r in services.service_export_rows()}

    verdict = Classification.objects.get(service__host__ip="192.0.2.8", current=True)
    assert verdict.product.startswith("DCMTK") and rows["192.0.2.8"]["product"] == ""
    assert {k: rows["192.0.2.8"][k] for k in ("identified_product", "confidence", "rules_version")} == {
        "identified_product": verdict.product,
        "confidence": verdict.confidence,
        "rules_version": verdict.rules_version,
    }
    assert {k: rows["192.0.2.9"][k] for k in ("identified_product", "confidence", "rules_version")} == {
        "identified_product": None,
        "confidence": None,
        "rules_version": None,
    }


@pytest.mark.django_db
def test_rows_on_standard_output_are_utf8_whatever_the_locale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """JSON Lines are UTF-8. Standard output takes the locale's encoding (Latin-1 or ASCII on an
    older server, PYTHONIOENCODING): the first organisation outside it ended the export with a
    UnicodeEncodeError traceback after the rows before it."""
    ingest(tmp_path, [minimal_banner("192.0.2.10", 80, "x", org="Ziekenhuis Ω"), minimal_banner("192.0.2.11", 80, "y")])
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    monkeypatch.setattr("sys.stdout", stdout)

    call_command("export_services")

    stdout.flush()
    rows = [json.loads(line) for line in stdout.buffer.getvalue().decode("utf-8").splitlines()]
    assert [row["org"] for row in rows] == ["Ziekenhuis Ω", ""]


def part_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".part"))


def stopped_while_writing(url: str, out: Path) -> subprocess.Popen:
    """An export process frozen (SIGSTOP) while it writes `out` beside its name."""
    before = set(part_files(out.parent))
    proc = manage(url, "export_services", "--output", str(out))
    deadline = time.monotonic() + 60
    # Its file exists an instant before its writer locks it: caught in between, it is rightly
    # taken for a dead writer's.
    while not any(_locked(out.parent / name) for name in set(part_files(out.parent)) - before):
        assert proc.poll() is None, f"the export ended before it was caught: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no locked temporary file within 60 s"
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)
    return proc


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also gives up a shared lock this took
    return False


def test_a_killed_exports_temporary_file_is_removed_by_the_next_export_of_that_file(
    tmp_path: Path, own_database: str
) -> None:
    """A killed export leaves its hidden temporary file (a part of the export: exposed systems)
    beside the output; the next export to that output removes it, and nothing else: not another
    output's, not one an export still running writes."""
    url = own_database
    assert manage(url, "migrate", "-v0").wait(timeout=300) == 0
    banners = write_lines(tmp_path / "banners.json", [line(r) for r in many(20_000)])
    run_json(url, "harvest", "--file", str(banners))
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "services.jsonl"
    others = [".other.jsonl.abcd1234.part", ".services.jsonl.notes", "services.jsonl.abcd1234.part"]
    for name in others:
        (folder / name).write_text("not the export's")

    killed = stopped_while_writing(url, out)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    [stale] = sorted(set(part_files(folder)) - set(others))
    running = stopped_while_writing(url, out)  # alive, frozen mid-export
    [live] = sorted(set(part_files(folder)) - set(others) - {stale})

    again = manage(url, "export_services", "--output", str(out), "--json")
    summary, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()[-2000:]
    assert json.loads(summary)["services"] == 20_000
    assert sorted(set(part_files(folder)) - set(others)) == [live]  # the stale one went, the live one stayed
    assert all((folder / name).read_text() == "not the export's" for name in others)

    running.send_signal(signal.SIGCONT)
    assert running.wait(timeout=300) == 0, running.stderr.read().decode()[-2000:]
    assert sorted(os.listdir(folder)) == sorted([*others, "services.jsonl"])
    assert len(out.read_text().splitlines()) == 20_000
