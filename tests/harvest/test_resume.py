"""A harvest killed with SIGKILL at any point resumes with nothing lost and nothing doubled.

The harvest runs as a real `manage.py harvest` process against its own database (a SQLite file, or a
fresh PostgreSQL database when the suite runs on PostgreSQL), is killed twice mid-run, and is resumed.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tests.factories import banner, line, many, write_lines

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_database(tmp_path) -> Iterator[str]:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        yield f"sqlite:///{tmp_path / 'resume.sqlite3'}"
        return
    name = f"medexpo_resume_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres", autocommit=True
    )
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def manage(url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "medexpo.settings"}
    return subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def run_json(url: str, *args: str) -> dict:
    proc = manage(url, *args, "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out)


def query(url: str, sql: str) -> list[tuple]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    with psycopg.connect(url.replace("postgres://", "postgresql://")) as conn:
        return conn.execute(sql).fetchall()


def checkpoint_line(url: str) -> int:
    try:
        rows = query(url, "SELECT checkpoint FROM harvest_harvestrun ORDER BY id DESC LIMIT 1")
    except (sqlite3.OperationalError, psycopg.Error):
        return 0
    if not rows:
        return 0
    value = rows[0][0]
    value = json.loads(value) if isinstance(value, str) else value
    return int(value.get("line", 0))


def kill_after_line(proc: subprocess.Popen, url: str, target: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the harvest ended before line {target} was committed: {proc.stderr.read().decode()[-2000:]}")
        reached = checkpoint_line(url)
        if reached >= target:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return checkpoint_line(url)
        time.sleep(0.01)
    pytest.fail("no progress within 120 s")


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
