"""Shodan allows one request per second per API key, whoever sends it: requests with one key are
paced across every process that uses the database (harvest/pacing.py), not only within one.

Real `manage.py harvest` processes (a search run, counts) on a database of their own send their
requests to the stand-in on 127.0.0.1, which records when each arrives and with which key.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connection, transaction

from harvest import shodan_client
from harvest.models import HarvestRun
from tests.harvest.conftest import STANDIN_KEY, medical_banners
from tests.harvest.processes import manage
from tests.standins.shodan_server import Seen, ShodanStandIn

OTHER_KEY = "sk-standin-other-fedcba9876543210"
INTERVAL = 0.25
# Arrival times lag the sends by a few ms, more on a busy machine: a request sent on time may
# arrive late, and the next one on time, closer than the interval by that lag.
TOLERANCE = 0.1
# Each process sends 9 requests (the credits, then a count per query: 2 s at INTERVAL), and the
# search run a page more for each that costs a credit.
QUERIES = 8


@pytest.fixture
def standin() -> Iterator[ShodanStandIn]:
    with ShodanStandIn(medical_banners(), key=STANDIN_KEY, other_keys=(OTHER_KEY,)) as server:
        yield server


def _migrated(url: str) -> str:
    migrate = manage(url, "migrate", "-v0")
    assert migrate.wait(timeout=300) == 0, migrate.stderr.read().decode()
    return url


def _closest(earlier: list[Seen], later: list[Seen]) -> float:
    return min(abs(b.at - a.at) for a, b in itertools.product(earlier, later))


def _spacings(seen: list[Seen]) -> list[float]:
    times = sorted(s.at for s in seen)
    return [b - a for a, b in itertools.pairwise(times)]


def test_requests_with_one_key_are_paced_across_processes_and_other_keys_are_not_held_up(
    standin: ShodanStandIn, own_database: str, plan_file
) -> None:
    url = _migrated(own_database)
    plan = plan_file(*[f"port:{port}" for port in range(100, 100 + QUERIES)])
    env = {"SHODAN_API_URL": standin.url, "SHODAN_REQUEST_INTERVAL": str(INTERVAL), "MEDEXPO_COUNTRY": "NL"}
    count = ["harvest", "--plan", plan, "--count-only", "--json"]
    procs = [
        # A search run (its pages written in transactions) and a count beside it, with one key...
        manage(url, "harvest", "--plan", plan, "--json", env={**env, "SHODAN_API_KEY": STANDIN_KEY}),
        manage(url, *count, env={**env, "SHODAN_API_KEY": STANDIN_KEY}),
        # ... and a count with another key.
        manage(url, *count, env={**env, "SHODAN_API_KEY": OTHER_KEY}),
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        outs.append(json.loads(out))
    assert outs[0]["status"] == "completed" and outs[0]["credits_spent"] == standin.credits_spent > 0
    seen = standin.state.requests
    one, other = [s for s in seen if s.key == 0], [s for s in seen if s.key == 1]
    assert len(one) == 2 * (QUERIES + 1) + standin.credits_spent and len(other) == QUERIES + 1
    assert all(s.status == 200 for s in seen)
    # Both processes with the first key sent at once: never two of their requests closer than the interval.
    assert min(_spacings(one)) >= INTERVAL - TOLERANCE, _spacings(one)
    assert min(_spacings(other)) >= INTERVAL - TOLERANCE
    # The other key's requests went out meanwhile, between those of the first, not after them.
    assert other[0].at < one[-1].at and one[0].at < other[-1].at, "the processes did not overlap; nothing was shown"
    assert _closest(one, other) < INTERVAL - TOLERANCE


@pytest.mark.django_db(transaction=True)
def test_a_request_made_inside_a_transaction_paces_other_connections_without_waiting_for_its_commit(
    shodan_standin: ShodanStandIn, settings
) -> None:
    """A search run writes its pages in transactions on the caller's connection: the slot a
    request takes there is seen at once by others, and holds nothing they wait for until the commit."""
    settings.SHODAN_REQUEST_INTERVAL = INTERVAL
    done = threading.Event()

    def from_another_connection() -> None:
        try:
            shodan_client.api_info()
            done.set()
        finally:
            shodan_client.reset()  # this thread's pacing connection, if it opened one
            connection.close()

    with transaction.atomic():
        HarvestRun.objects.create(source=HarvestRun.Source.FILE, target="written in this transaction")
        shodan_client.api_info()
        other = threading.Thread(target=from_another_connection)
        other.start()
        assert done.wait(timeout=10), "the other connection waited for this transaction"
        shodan_client.api_info()
    other.join()
    seen = shodan_standin.requests_to("/api-info")
    assert len(seen) == 3
    assert min(_spacings(seen)) >= INTERVAL - TOLERANCE


@pytest.mark.django_db(transaction=True)
def test_pacing_goes_on_after_ctrl_c_lands_while_it_waits_for_the_database_or_its_slot(
    shodan_standin: ShodanStandIn, settings
) -> None:
    """Ctrl-C that lands while the pacing query waits (PostgreSQL: another session holds the key's
    row) or while a request waits for its slot (SQLite's test database is in memory: its requests
    are paced within the process) leaves nothing behind: the next request is paced as usual."""
    import signal

    import psycopg

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    def interrupted_request(after: float) -> None:
        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, after)
        try:
            with pytest.raises(KeyboardInterrupt):
                shodan_client.api_info()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    settings.SHODAN_REQUEST_INTERVAL = INTERVAL
    shodan_client.api_info()  # the key's row exists; the next slot is INTERVAL away
    if connection.vendor == "postgresql":
        db = connection.settings_dict
        with psycopg.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]) as holder:
            holder.execute("SELECT * FROM harvest_shodanpace FOR UPDATE")
            interrupted_request(0.5)
    else:
        interrupted_request(INTERVAL / 4)  # in the wait for its slot
    started = time.monotonic()
    shodan_client.api_info()
    shodan_client.api_info()
    assert time.monotonic() - started < 5
    seen = shodan_standin.requests_to("/api-info")
    assert len(seen) == 3
    assert min(_spacings(seen)) >= INTERVAL - TOLERANCE
