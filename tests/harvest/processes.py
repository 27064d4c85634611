"""Real `manage.py` processes against a database of their own, for tests of what happens across
processes: a run killed with SIGKILL, two runs at once."""

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from harvest.locking import PG_LOCK_KEY, PG_RUN_NAMESPACE, sqlite_lock_path

ROOT = Path(__file__).resolve().parents[2]


def manage(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "medexpo.settings", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_answer_ctrl_c,  # noqa: PLW1509 - the workers start no threads of their own
    )


def _answer_ctrl_c() -> None:
    # A shell starts background jobs with SIGINT ignored, and a process inherits that (CI runs so):
    # Python then never turns Ctrl-C into KeyboardInterrupt. The process gets a terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
    return int(checkpoint(url).get("line", 0))


def checkpoint(url: str) -> dict:
    """The latest run's checkpoint, {} before there is one."""
    try:
        rows = query(url, "SELECT checkpoint FROM harvest_harvestrun ORDER BY id DESC LIMIT 1")
    except (sqlite3.OperationalError, psycopg.Error):
        return {}
    if not rows:
        return {}
    value = rows[0][0]
    return json.loads(value) if isinstance(value, str) else value


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


HOLDER = 99  # the run a test pretends to be while it holds the lock


@contextmanager
def holding_the_lock(url: str, run: int = HOLDER) -> Iterator[None]:
    """Hold the harvest lock as run `run` would while writing, the way harvest/locking.py takes it."""
    if url.startswith("sqlite"):
        path = sqlite_lock_path(url.removeprefix("sqlite:///"))
        assert path is not None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, str(run).encode())
        try:
            yield
        finally:
            os.close(fd)
        return
    with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s, %s)", PG_LOCK_KEY).fetchone() == (True,)
        conn.execute("SELECT pg_advisory_lock(%s, %s)", [PG_RUN_NAMESPACE, run])
        yield
