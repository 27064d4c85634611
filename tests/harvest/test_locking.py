"""One harvest writes at a time: real `manage.py harvest` processes on a database of their own.

The test holds the harvest lock itself (as a run in progress would), starts the runs, sees each one
say that it waits, then lets go: the runs then take turns, and the result is what running them
one after the other gives.
"""

import json
import os
import re
import select
import signal
import subprocess
import time

import psycopg
import pytest

from harvest.locking import PG_BATCH_KEY
from tests.factories import line, many, write_lines
from tests.harvest.processes import HOLDER, checkpoint_line, holding_the_lock, kill_after_line, manage, query, run_json

WAITING = re.compile(rb"run (\d+) waits: another harvest is writing to this database \(run (\d+)\)")


def wait_for_waiting(proc: subprocess.Popen, timeout: float = 60, holder: int = HOLDER) -> int:
    """Read the process's stderr until it says it waits, naming the holder; return its own run."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            if match := WAITING.search(seen):
                assert int(match.group(2)) == holder  # it names the run that holds the lock
                return int(match.group(1))
        elif proc.poll() is not None:
            break
    raise AssertionError(f"the process did not say it waits; stderr: {seen.decode(errors='replace')[-2000:]}")


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


def migrated(url: str) -> str:
    migrate = manage(url, "migrate", "-v0")
    assert migrate.wait(timeout=300) == 0, migrate.stderr.read().decode()
    return url


def test_two_runs_at_once_take_turns(tmp_path, own_database) -> None:
    url = migrated(own_database)
    older = many(3000, timestamp="2026-01-01T00:00:00")
    newer = [r | {"data": "changed " + r["data"], "timestamp": "2026-02-01T00:00:00"} for r in older[:2000]]
    newer += many(1000, start="203.0.113.0", timestamp="2026-02-01T00:00:00")
    a = write_lines(tmp_path / "a.json", [line(r) for r in older])
    b = write_lines(tmp_path / "b.json", [line(r) for r in newer])

    with holding_the_lock(url):
        first = manage(url, "harvest", "--file", str(a), "--batch-size", "25", "--json")
        second = manage(url, "harvest", "--file", str(b), "--batch-size", "25", "--json")
        waiting = {wait_for_waiting(first), wait_for_waiting(second)}
        assert query(url, "SELECT count(*) FROM harvest_service") == [(0,)]  # nobody wrote while waiting
    finish(first)
    finish(second)

    assert len(waiting) == 2
    runs = dict(query(url, "SELECT target, status FROM harvest_harvestrun"))
    assert runs == {str(a): "completed", str(b): "completed"}
    assert query(url, "SELECT count(*) FROM harvest_service") == [(4000,)]
    assert query(url, "SELECT count(*) FROM harvest_host") == [(4000,)]
    # Whichever ran first, the newer banner is current and the older one is history, once.
    assert query(url, "SELECT count(*) FROM harvest_service WHERE banner LIKE 'changed %'") == [(2000,)]
    history = query(url, "SELECT count(*), count(DISTINCT service_id) FROM harvest_servicebanner")
    assert history == [(2000, 2000)]


def test_a_run_resumed_twice_at_once_is_done_once(tmp_path, own_database) -> None:
    url = migrated(own_database)
    records = many(3000)
    path = write_lines(tmp_path / "a.json", [line(r) for r in records])

    with holding_the_lock(url):
        started = manage(url, "harvest", "--file", str(path))
        run = wait_for_waiting(started)
        started.send_signal(signal.SIGKILL)  # a run that never wrote anything, left "running"
        started.wait()
        resumes = [manage(url, "harvest", "--resume", str(run), "--batch-size", "50", "--json") for _ in range(2)]
        assert [wait_for_waiting(proc) for proc in resumes] == [run, run]
    results = [finish(proc) for proc in resumes]

    assert all('"status": "completed"' in out for out in results)
    assert query(url, f"SELECT seen, new, accepted, status FROM harvest_harvestrun WHERE id = {run}") == [
        (3000, 3000, 3000, "completed")
    ]
    assert query(url, "SELECT count(*) FROM harvest_service") == [(3000,)]


def batch_key_locks(url: str) -> list[tuple]:
    """The batch key's locks in this test's database: pg_locks shows every database's, and tests
    running beside this one harvest into databases of their own."""
    return query(
        url,
        "SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory' AND classid = {} AND objid = {} "
        "AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY granted DESC".format(*PG_BATCH_KEY),
    )


def test_a_resume_waits_for_the_batch_a_killed_process_was_still_committing(tmp_path, own_database) -> None:
    url = migrated(own_database)
    records = many(3000)
    path = write_lines(tmp_path / "a.json", [line(r) for r in records])
    if not url.startswith("postgres"):
        # SQLite has no writer thread: a batch commits on the connection that holds the lock.
        killed = manage(url, "harvest", "--file", str(path), "--batch-size", "50")
        deadline = time.monotonic() + 60
        while checkpoint_line(url) < 100:
            assert time.monotonic() < deadline and killed.poll() is None, "no batch committed"
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert '"status": "completed"' in finish(manage(url, "harvest", "--resume", "1", "--json"))
        assert query(url, "SELECT count(*) FROM harvest_service") == [(3000,)]
        return

    with psycopg.connect(url.replace("postgres://", "postgresql://")) as blocker:
        blocker.execute("LOCK TABLE harvest_host IN SHARE MODE")  # the first batch's writes wait here
        killed = manage(url, "harvest", "--file", str(path), "--batch-size", "50")
        deadline = time.monotonic() + 60
        while batch_key_locks(url) != [("ShareLock", True)]:  # the writer's batch transaction holds it
            assert time.monotonic() < deadline and killed.poll() is None, "no batch in flight"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)  # its writer's backend lives on, inside that batch
        killed.wait()

        resumed = manage(url, "harvest", "--resume", "1", "--batch-size", "50", "--json")
        deadline = time.monotonic() + 60
        while ("ExclusiveLock", False) not in batch_key_locks(url):  # it waits for that batch to end
            if resumed.poll() is not None:
                raise AssertionError(f"the resume did not wait: {resumed.communicate()[1].decode()[-2000:]}")
            assert time.monotonic() < deadline, "the resume did not wait"
            time.sleep(0.05)
        assert query(url, "SELECT count(*) FROM harvest_service") == [(0,)]
        blocker.rollback()  # the orphaned batch goes on, finds its client gone and rolls back

    assert '"status": "completed"' in finish(resumed)
    assert query(url, "SELECT seen, new, status FROM harvest_harvestrun") == [(3000, 3000, "completed")]
    assert query(url, "SELECT count(*) FROM harvest_service") == [(3000,)]


def status(url: str, run: int) -> tuple[str, str]:
    [row] = query(url, f"SELECT status, message FROM harvest_harvestrun WHERE id = {run}")
    return row


def test_a_killed_run_is_marked_stopped_by_the_next_run_and_resumes(tmp_path, own_database) -> None:
    """Nothing runs a run whose process was killed: it is not left "running" for ever."""
    url = migrated(own_database)
    big = write_lines(tmp_path / "big.json", [line(r) for r in many(12_000)])
    small = write_lines(tmp_path / "small.json", [line(r) for r in many(10, start="203.0.113.0")])
    killed = manage(url, "harvest", "--file", str(big), "--batch-size", "50")
    kill_after_line(killed, url, 1_000)
    assert status(url, 1)[0] == "running"  # nothing could record the kill

    assert run_json(url, "harvest", "--file", str(small))["status"] == "completed"

    state, message = status(url, 1)
    assert state == "stopped"
    assert "no process was running it" in message and "--resume 1" in message
    with holding_the_lock(url):
        resumed = manage(url, "harvest", "--resume", "1", "--json")
        assert wait_for_waiting(resumed) == 1
        assert status(url, 1) == ("running", "")  # a process runs it again, waiting its turn
    result = json.loads(finish(resumed))
    assert (result["status"], result["seen"], result["new"]) == ("completed", 12_000, 12_000)


def test_a_run_that_waits_or_writes_is_never_marked_stopped(tmp_path, own_database) -> None:
    """A run marked running that does not hold the harvest lock may be waiting for it, alive: only
    a run no process runs at all is marked stopped."""
    url = migrated(own_database)
    a = write_lines(tmp_path / "a.json", [line(r) for r in many(300)])
    b = write_lines(tmp_path / "b.json", [line(r) for r in many(300, start="203.0.113.0")])
    big = write_lines(tmp_path / "big.json", [line(r) for r in many(20_000, start="198.18.0.0")])

    with holding_the_lock(url):
        waiting = manage(url, "harvest", "--file", str(a), "--json")
        run = wait_for_waiting(waiting)
        starting = manage(url, "harvest", "--file", str(b), "--json")
        wait_for_waiting(starting)  # it looked at the runs marked running before it began to wait
        assert status(url, run) == ("running", "")
    finish(waiting)
    finish(starting)

    writer, writing = manage(url, "harvest", "--file", str(big), "--batch-size", "10"), 3
    deadline = time.monotonic() + 120
    while not query(url, f"SELECT 1 FROM harvest_harvestrun WHERE id = {writing} AND seen >= 200"):
        assert time.monotonic() < deadline and writer.poll() is None, "the writer wrote nothing"
        time.sleep(0.01)
    third = manage(url, "harvest", "--file", str(a), "--json")
    wait_for_waiting(third, holder=writing)
    assert status(url, writing) == ("running", "")
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    finish(third)
    result = run_json(url, "harvest", "--resume", str(writing))
    assert (result["status"], result["seen"], result["new"]) == ("completed", 20_000, 20_000)


@pytest.mark.django_db(transaction=True)
def test_an_interrupt_that_leaves_a_query_in_flight_still_ends_with_the_interrupt_and_the_locks_given_up(
    tmp_path,
) -> None:
    """Ctrl-C can land between psycopg sending a query and reading its answer: the connection is
    then busy, and the locks' own release ("another command is already in progress") replaced
    the interrupt with an error, so `harvest` said the run 'stopped on an error it could not
    record' instead of 'interrupted' (exit 1, not 130)."""
    from django.db import connection

    from harvest import services
    from harvest.locking import harvest_lock, unowned, writing_run

    run = services.harvest_file_start(path=write_lines(tmp_path / "f.json", [line(r) for r in many(3)]))
    with pytest.raises(KeyboardInterrupt), harvest_lock(run.pk):
        assert writing_run() == run.pk
        if connection.vendor == "postgresql":
            # Sent, its answer unread; a closed connection alone would keep the keys until it ends.
            connection.connection.pgconn.send_query(b"SELECT pg_sleep(60)")
        raise KeyboardInterrupt

    deadline = time.monotonic() + 5  # the server ends the session a moment after the client
    while writing_run() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writing_run() is None
    with unowned(run.pk) as free:
        assert free
