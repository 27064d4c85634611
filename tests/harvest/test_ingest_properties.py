"""Properties of the merge, on the real database: for any sequence of banners (a few services,
banners and moments, so that ties, out-of-order lines and repeated lines are common), the stored
result does not depend on the batch size, and reading the same file again changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvest import services
from harvest.models import HarvestRun, Host, Service, ServiceBanner
from tests.factories import banner, line, write_lines

pytestmark = pytest.mark.django_db

records = st.lists(
    st.tuples(
        st.sampled_from(["192.0.2.1", "192.0.2.2"]),
        st.sampled_from([80, 104]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=1, max_value=4),  # the day: few moments, so ties happen
        st.sampled_from(["", "Org X", "Org Y"]),  # the host's organisation; empty must not blank it
        st.sampled_from([[], ["a.example"], ["b.example"]]),
    ),
    min_size=1,
    max_size=14,
)


def _line(ip: str, port: int, data: str, day: int, org: str, hostnames: list) -> bytes:
    return line(banner(ip, port, data=data, timestamp=f"2026-01-0{day}T00:00:00", org=org, hostnames=hostnames))


class _Rollback(Exception):  # noqa: N818 - control flow: undo one attempt
    pass


def harvest(path: Path, batch_size: int) -> HarvestRun:
    return services.harvest_execute(run=services.harvest_file_start(path=path), batch_size=batch_size)


def stored() -> tuple[list, list, list]:
    hosts = sorted(Host.objects.values_list("ip", "org", "hostnames", "first_seen", "last_seen"))
    current = sorted(
        (*row[:-1], json.loads(row[-1])["hostnames"])  # the current record's names: attribution reads them
        for row in Service.objects.values_list(
            "host__ip", "port", "banner", "first_seen", "last_seen", "banner_since", "raw"
        )
    )
    history = sorted(
        ServiceBanner.objects.values_list("service__host__ip", "service__port", "banner", "first_seen", "last_seen")
    )
    return hosts, current, history


def outcome(path: Path, batch_size: int, *, again: bool = False) -> tuple:
    """The stored result and the run's counts, rolled back afterwards."""
    result: tuple = ()
    try:
        with transaction.atomic():
            run = harvest(path, batch_size)
            counts = (run.new, run.updated, run.unchanged, run.rejected)
            result = (stored(), counts)
            if again:
                rerun = harvest(path, batch_size)
                result = (*result, stored(), (rerun.new, rerun.updated, rerun.rejected))
            raise _Rollback
    except _Rollback:
        pass
    return result


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=records, batch_size=st.integers(min_value=1, max_value=4))
def test_the_result_depends_on_the_banners_alone(tmp_path, items, batch_size) -> None:
    lines = [_line(*item) for item in items]
    path = write_lines(tmp_path / "f.json", lines)

    state, counts, state_again, counts_again = outcome(path, batch_size, again=True)
    assert outcome(path, 1000) == (state, counts)  # one batch or many: the same

    assert state_again == state  # reading the file again changes nothing
    new, updated, rejected = counts_again
    assert (new, updated) == (0, 0)
    # A repeated line is a duplicate when it repeats a banner's latest known sighting; one inside
    # a window already known counts as unchanged. Either way nothing is stored twice.
    assert rejected.keys() <= {"duplicate"}

    _, current, history = state
    assert len(current) == len({(item[0], item[1]) for item in items})
    assert len(history) == len(set(history))  # no banner is history twice over the same time


def empty_tables() -> None:
    ServiceBanner.objects.all().delete()
    Service.objects.all().delete()
    Host.objects.all().delete()
    HarvestRun.objects.all().delete()


@pytest.mark.django_db(transaction=True)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=records, batch_size=st.integers(min_value=1, max_value=4))
def test_the_pipelined_writer_gives_the_same_result(tmp_path, items, batch_size) -> None:
    """Outside a transaction on PostgreSQL each batch is written by the writer thread while the
    next is prepared from the state of the one in flight."""
    lines = [_line(*item) for item in items]
    path = write_lines(tmp_path / "f.json", lines)
    empty_tables()
    harvest(path, 1000)
    expected = stored()
    empty_tables()
    harvest(path, batch_size)
    assert stored() == expected
    rerun = harvest(path, batch_size)
    assert (rerun.new, rerun.updated) == (0, 0) and stored() == expected
