"""The harvest tasks run through django-q2 (synchronously in tests) and call the real services."""

import ast
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import Schedule
from django_q.scheduler import scheduler
from django_q.signing import SignedPackage
from django_q.tasks import async_task, result

from harvest import locking
from harvest.locking import PG_LOCK_KEY, sqlite_lock_path
from harvest.models import Classification, HarvestRun, Service
from tests.factories import line, many, write_lines
from tests.standins.shodan_server import ShodanStandIn

pytestmark = pytest.mark.django_db


def test_the_harvest_task_runs_a_plan_against_shodan(shodan_standin: ShodanStandIn, plan_file) -> None:
    task_id = async_task("harvest.tasks.harvest_plan", plan=plan_file("port:104"), max_credits=50)
    summary = result(task_id)
    assert summary["status"] == "completed"
    assert summary["accepted"] > 0 and summary["credits_spent"] > 0
    run = HarvestRun.objects.get()
    assert (run.source, run.status) == ("search", "completed")
    assert Service.objects.filter(port=104).count() == summary["new"]


def test_the_classify_task_classifies_what_is_pending(tmp_path) -> None:
    from harvest import services

    path = write_lines(tmp_path / "f.json", [line(r) for r in many(5)])
    services.harvest_execute(run=services.harvest_file_start(path=path))
    first = result(async_task("harvest.tasks.classify_pending"))
    again = result(async_task("harvest.tasks.classify_pending"))
    assert Classification.objects.filter(current=True).count() == 5
    assert (first["classified"], again["classified"]) == (5, 0)


def test_a_resume_queued_twice_reports_the_run_the_first_one_completed(tmp_path) -> None:
    """The admin's Resume queues a task per click: two clicks, or two staff, queue two. The second
    finds the run completed by the first and reports it, instead of failing (and, on the ORM
    broker, being delivered again up to max_attempts)."""
    from harvest import services

    path = write_lines(tmp_path / "f.json", [line(r) for r in many(3)])
    run = services.harvest_file_start(path=path)
    first = result(async_task("harvest.tasks.harvest_resume", run.pk))
    second = result(async_task("harvest.tasks.harvest_resume", run.pk))
    assert isinstance(second, dict), second
    assert first["status"] == second["status"] == "completed"
    assert (second["run"], second["accepted"], second["new"]) == (run.pk, 3, 3)


@pytest.mark.django_db(transaction=True)  # as in a worker: the timeout may land inside a batch's transaction
def test_a_harvest_the_worker_stops_at_its_timeout_is_marked_stopped_and_resumable(
    shodan_standin: ShodanStandIn, plan_file
) -> None:
    # django-q2 ends a task at Q_CLUSTER["timeout"] by raising TimeoutException, a SystemExit, in it.
    shodan_standin.set_page_delay(0.3)
    with pytest.raises(SystemExit):
        async_task(
            "harvest.tasks.harvest_plan",
            plan=plan_file("port:104", "port:2575"),
            max_credits=50,
            q_options={"timeout": 1},
        )
    run = HarvestRun.objects.get()
    assert run.status == HarvestRun.Status.STOPPED
    assert "timeout" in run.message and "--resume" in run.message
    assert run.finished_at is not None
    shodan_standin.set_page_delay(0)
    summary = result(async_task("harvest.tasks.harvest_resume", run.pk))
    assert summary["status"] == "completed"


@pytest.mark.django_db(transaction=True)  # the scheduler closes the connection it starts with
def test_a_scheduled_harvest_delivered_again_goes_on_with_its_run_instead_of_paying_again(
    shodan_standin: ShodanStandIn, plan_file, settings, monkeypatch
) -> None:
    # The ORM broker delivers a task again when it was not acknowledged: after a failure (the
    # timeout among them, up to Q_CLUSTER["max_attempts"]) or when its worker died.
    settings.MEDEXPO_HARVEST_PLAN = plan_file("port:104", "port:2575")
    settings.MEDEXPO_HARVEST_MAX_CREDITS = 4
    call_command("setup_schedules", stdout=StringIO())
    monkeypatch.setattr(Conf, "SYNC", False)
    broker = ORM(list_key="harvest-redelivery")
    scheduler(broker=broker)
    packages = []
    while delivered := broker.dequeue():
        packages += [SignedPackage.loads(p) for _, p in delivered]
    task = next(t for t in packages if t["func"] == "harvest.tasks.harvest_plan")

    shodan_standin.set_page_delay(0.4)
    with pytest.raises(SystemExit):  # the first delivery ends at its timeout
        async_task(task["func"], *task["args"], **task["kwargs"], sync=True, timeout=1)
    recorded_first = HarvestRun.objects.get().credits_spent  # a page in flight at the timeout is lost
    assert 0 < recorded_first < 4
    shodan_standin.set_page_delay(0)
    summary = result(async_task(task["func"], *task["args"], **task["kwargs"], sync=True))  # delivered again

    run = HarvestRun.objects.get()
    assert summary["run"] == run.pk and summary["status"] == "stopped"  # at its credit limit
    assert run.credits_spent == 4
    assert shodan_standin.credits_spent <= 4 + 1


@pytest.mark.django_db(transaction=True)
def test_a_timeout_that_lands_inside_a_query_still_marks_the_run_stopped(tmp_path) -> None:
    from django.db import connection

    from harvest import services

    path = write_lines(tmp_path / "banners.json", [line(r) for r in many(3000)])
    run = services.harvest_file_start(path=path)

    def timeout_inside_a_query(position: int) -> None:
        # As when django-q2's timeout arrives while the connection waits for a query's answer:
        # the query is sent, its result never read, and the SystemExit unwinds from there.
        # (SQLite runs a query in one C call: the interrupt can only land between queries.)
        if position > 0:
            if connection.vendor == "postgresql":
                connection.ensure_connection()
                connection.connection.pgconn.send_query(b"SELECT pg_sleep(0.2)")
            raise SystemExit("Task exceeded maximum timeout value (1 seconds)")

    with pytest.raises(SystemExit):
        services.harvest_execute(run=run, progress=timeout_inside_a_query, batch_size=100)
    run.refresh_from_db()
    assert run.status == HarvestRun.Status.STOPPED and "timeout" in run.message
    summary = services.harvest_execute(run=run)
    assert summary.status == HarvestRun.Status.COMPLETED and Service.objects.count() == 3000


def test_a_plan_file_named_relative_to_where_setup_ran_is_found_by_a_worker_started_elsewhere(
    shodan_standin: ShodanStandIn, plan_file, settings, monkeypatch, tmp_path
) -> None:
    """setup_schedules checks MEDEXPO_HARVEST_PLAN from its own directory; the weekly task used to
    look for the same relative path from the worker's, and failed there a week later."""
    path = plan_file("port:104")
    monkeypatch.chdir(tmp_path)
    settings.MEDEXPO_HARVEST_PLAN = os.path.basename(path)
    call_command("setup_schedules", stdout=StringIO())
    monkeypatch.chdir(tmp_path.parent)  # qcluster runs from another directory
    schedule = Schedule.objects.get(name="harvest: search plan")
    summary = result(async_task(schedule.func, **ast.literal_eval(schedule.kwargs)))  # as the scheduler reads it
    assert isinstance(summary, dict), summary
    assert summary["status"] == "completed" and summary["accepted"] > 0


@contextmanager
def another_run_writing() -> Iterator[None]:
    """Hold the harvest lock of the test database, as another run writing would."""
    if connection.vendor == "postgresql":
        db = connection.settings_dict
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"], autocommit=True
        ) as other:
            other.execute("SELECT pg_advisory_lock(%s, %s)", list(PG_LOCK_KEY))
            yield
        return
    path = sqlite_lock_path(str(connection.settings_dict["NAME"]))
    if path is None:  # an in-memory database: the lock is this process's
        with locking._in_process:
            yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.mark.django_db(transaction=True)  # as in a worker
def test_a_harvest_whose_timeout_comes_while_it_waits_for_another_run_is_marked_stopped(
    shodan_standin: ShodanStandIn, plan_file
) -> None:
    """The weekly harvest can fire while another run writes (a long import by hand). When the task's
    timeout came before the lock, its new run stayed 'running' with no word of why, for ever on the
    Redis broker, which does not deliver the task again."""
    with another_run_writing(), pytest.raises(SystemExit):
        async_task("harvest.tasks.harvest_plan", plan=plan_file("port:104"), max_credits=5, q_options={"timeout": 1})
    run = HarvestRun.objects.get()
    assert run.status == HarvestRun.Status.STOPPED and run.finished_at is not None
    assert "timeout" in run.message and "waiting for another harvest" in run.message and "--resume" in run.message
    assert run.credits_spent == 0 and shodan_standin.credits_spent == 0
    summary = result(async_task("harvest.tasks.harvest_resume", run.pk))
    assert summary["status"] == "completed" and summary["accepted"] > 0
