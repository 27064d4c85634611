"""A harvest killed with SIGKILL at any point resumes with nothing lost and nothing doubled.

The harvest runs as a real `manage.py harvest` process against its own database (a SQLite file, or a
fresh PostgreSQL database when the suite runs on PostgreSQL), is killed twice mid-run, and is resumed.
"""

import json
import signal
import time

import pytest

from tests.factories import banner, line, many, write_lines
from tests.harvest.processes import checkpoint, checkpoint_line, kill_after_line, manage, query, run_json


def test_a_killed_run_resumes_exactly(tmp_path, own_database) -> None:
    url = own_database
    good = many(12_000)
    lines = []
    for i, record in enumerate(good):
        lines.append(line(record))
        if i % 1000 == 500:
            lines.append(b"{broken json\n")  # rejected: not_json
        if i % 1500 == 700:
            lines.append(line(record))  # rejected: duplicate
    lines.append(line(banner(good[0]["ip_str"], 80, data="changed", timestamp="2026-06-01T00:00:00")))
    path = write_lines(tmp_path / "banners.json", lines)

    migrate = manage(url, "migrate", "-v0")
    assert migrate.wait(timeout=300) == 0, migrate.stderr.read().decode()

    first = manage(url, "harvest", "--file", str(path), "--batch-size", "50")
    stopped_at = kill_after_line(first, url, 2_000)
    assert 2_000 <= stopped_at < len(lines)
    assert query(url, "SELECT status FROM harvest_harvestrun") == [("running",)]

    second = manage(url, "harvest", "--resume", "1", "--batch-size", "50")
    stopped_again = kill_after_line(second, url, stopped_at + 3_000)
    assert stopped_again < len(lines)

    result = run_json(url, "harvest", "--resume", "1")
    assert result["status"] == "completed"
    assert result["seen"] == len(lines)
    assert result["new"] == len(good)
    assert result["updated"] == 1
    assert result["rejected"] == {"duplicate": 8, "not_json": 12}
    assert result["accepted"] == len(good) + 1

    stored = query(url, "SELECT h.ip, s.port, s.banner FROM harvest_service s JOIN harvest_host h ON h.id = s.host_id")
    assert len(stored) == len(good)
    assert {(str(ip).split("/")[0], port) for ip, port, _ in stored} == {(r["ip_str"], 80) for r in good}
    positions = query(url, "SELECT position, reason FROM harvest_rejection ORDER BY id")
    assert len(positions) == 20 and len(set(positions)) == 20  # each bad line reported exactly once
    assert query(url, "SELECT count(*) FROM harvest_servicebanner") == [(1,)]


def test_a_run_killed_inside_a_long_host_lookup_resumes_exactly(tmp_path, own_database) -> None:
    """A host lookup over a megabyte is read banner by banner, with a checkpoint after each: a run
    killed inside it resumes with the banner after the last committed batch."""
    url = own_database
    banners = [{"port": 1000 + i, "data": f"{i} " + "x" * 1000} for i in range(6_000)]
    for i in range(0, 6_000, 1_000):
        banners[i]["port"] = 70_000 + i  # rejected: invalid_port
    lines = [
        json.dumps({"ip_str": "192.0.2.1", "data": [{"port": 21}]}).encode() + b"\n",
        json.dumps({"org": "Busy", "data": banners, "ip_str": "192.0.2.2"}).encode() + b"\n",
        json.dumps({"ip_str": "192.0.2.3", "data": [{"port": 22}]}).encode() + b"\n",
    ]
    path = write_lines(tmp_path / "hosts.json", lines)
    migrate = manage(url, "migrate", "-v0")
    assert migrate.wait(timeout=300) == 0, migrate.stderr.read().decode()

    first = manage(url, "harvest", "--hosts", str(path), "--batch-size", "50")
    deadline = time.monotonic() + 120
    while checkpoint(url).get("item", 0) < 1_500:
        if first.poll() is not None:
            pytest.fail(f"the harvest ended before banner 1500: {first.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("no progress within 120 s")
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    stopped = checkpoint(url)
    assert stopped["line"] == 1 and 1_500 <= stopped["item"] < 6_000

    result = run_json(url, "harvest", "--resume", "1")
    assert result["status"] == "completed"
    assert (result["seen"], result["new"], result["rejected"]) == (6_002, 5_996, {"invalid_port": 6})
    assert query(url, "SELECT count(*) FROM harvest_service") == [(5_996,)]
    positions = query(url, "SELECT position FROM harvest_rejection")
    assert sorted(positions) == sorted((f"line 2 data[{i}]",) for i in range(0, 6_000, 1_000))  # each once


def test_ctrl_c_stops_the_run_resumably_with_the_shells_interrupt_status(tmp_path, own_database) -> None:
    """128 + SIGINT, as shells report an interrupted command: a script that resumes runs which
    exit with 3 (stopped) must not resume one that its user stopped by hand."""
    url = own_database
    records = many(60_000)  # enough that the run is still going when the signal comes, on any machine
    path = write_lines(tmp_path / "banners.json", [line(r) for r in records])
    migrate = manage(url, "migrate", "-v0")
    assert migrate.wait(timeout=300) == 0, migrate.stderr.read().decode()

    first = manage(url, "harvest", "--file", str(path), "--batch-size", "50")
    deadline = time.monotonic() + 120
    while checkpoint_line(url) < 500:
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    assert first.poll() is None, "the run ended before it could be interrupted"
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err.decode()[-2000:]
    assert "interrupted: resume with --resume 1" in err.decode()
    assert query(url, "SELECT status FROM harvest_harvestrun") == [("stopped",)]

    result = run_json(url, "harvest", "--resume", "1")
    assert (result["status"], result["seen"], result["new"], result["rejected"]) == ("completed", 60_000, 60_000, {})
