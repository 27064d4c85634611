"""`manage.py harvest --plan`: the search source end to end, with the real shodan client talking
to the stand-in over a socket, and the real database."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections

from harvest import search, services, shodan_client
from harvest.models import HarvestRun, Host, Rejection, Service
from harvest.plans import plan_load
from harvest.records import RecordError, record_from_object
from harvest.search import credits_for_page
from tests.conftest import ROOT
from tests.factories import minimal_banner
from tests.harvest.conftest import STANDIN_KEY
from tests.harvest.processes import holding_the_lock
from tests.harvest.processes import query as sql
from tests.standins.shodan_server import ShodanStandIn

pytestmark = pytest.mark.django_db


def harvest(*args: str) -> tuple[dict, str]:
    """Run the command with --json; the parsed summary and everything it printed."""
    out, err = io.StringIO(), io.StringIO()
    call_command("harvest", *args, "--json", stdout=out, stderr=err)
    return json.loads(out.getvalue()), out.getvalue() + err.getvalue()


def plan_queries(plan: str, country: str = "NL") -> list[str]:
    return [q.with_country(country) for q in plan_load(name=plan).queries]


def expected_services(server: ShodanStandIn, queries: list[str]) -> set[tuple]:
    keys = set()
    for query in queries:
        for item in server.search(query):
            try:
                keys.add(record_from_object(item, json.dumps(item)).key)
            except RecordError:
                pass
    return keys


def expected_pages(server: ShodanStandIn, queries: list[str]) -> dict[tuple[str, int], int]:
    pages = {}
    for query in queries:
        total = len(server.search(query))
        for page in range(1, (total + 99) // 100 + 1):
            pages[(query, page)] = 1
    return pages


def stored() -> set[tuple]:
    return set(Service.objects.values_list("host__ip", "port", "transport"))


def snapshot() -> dict[tuple, tuple]:
    rows = Service.objects.values_list("host__ip", "port", "transport", "banner_hash", "raw", "first_seen")
    return {row[:3]: row[3:] for row in rows}


def test_credit_rule_charges_filtered_and_later_pages() -> None:
    assert credits_for_page(query="port:104 country:NL", page=1) == 1
    assert credits_for_page(query='"Orthanc"', page=1) == 0
    assert credits_for_page(query='"Orthanc"', page=2) == 1
    assert credits_for_page(query='"a:b" words', page=1) == 0  # a colon inside quotes is no filter
    assert credits_for_page(query='-product:"nginx" x', page=1) == 1


def test_it_harvests_a_plan_end_to_end(shodan_standin: ShodanStandIn) -> None:
    queries = plan_queries("ports")
    want = expected_services(shodan_standin, queries)
    summary, _ = harvest("--plan", "ports")
    assert summary["status"] == "completed", summary["message"]
    assert stored() == want
    assert len(want) >= 338
    assert shodan_standin.pages == expected_pages(shodan_standin, queries)
    assert (
        summary["credits_spent"]
        == shodan_standin.credits_spent
        == sum(expected_pages(shodan_standin, queries).values())
    )
    assert summary["rejected"]["invalid_address"] >= 1
    assert summary["accepted"] == len(want)
    run = HarvestRun.objects.get(pk=summary["run"])
    assert run.source == "search" and run.plan == "ports" and run.country == "NL"
    assert run.options["queries"] == queries
    assert all(q.endswith(" country:NL") for q in queries)
    rejection = Rejection.objects.get(run=run, reason="invalid_address")
    assert rejection.position.startswith("query 1 page ")
    dicom = Service.objects.get(host__ip="198.18.0.5", port=104)
    assert json.loads(dicom.raw) == next(b for b in shodan_standin.banners if b.get("ip_str") == "198.18.0.5")
    assert dicom.module == "dicom"
    assert not Host.objects.filter(ip__startswith="198.18.40.").exists()  # the German ones


def test_it_stores_real_shared_banners_with_another_country(shodan_standin: ShodanStandIn, plan_file) -> None:
    summary, _ = harvest("--plan", plan_file("port:22", '"OpenSSH"'), "--country", "us")
    assert summary["status"] == "completed"
    service = Service.objects.get(port=22)
    assert service.host.ip == "123.45.6.7"
    assert service.product == "OpenSSH"
    assert HarvestRun.objects.get().country == "US"
    # Two queries matched the same banner: stored once; the second sighting is overlap between
    # queries, counted as unchanged, not rejected.
    assert (summary["new"], summary["unchanged"], summary["accepted"], summary["rejected"]) == (1, 1, 2, {})


def test_count_only_spends_nothing(shodan_standin: ShodanStandIn) -> None:
    queries = plan_queries("ports")
    summary, _ = harvest("--plan", "ports", "--count-only")
    assert shodan_standin.credits_spent == 0
    assert shodan_standin.credits == 1000
    assert shodan_standin.requests_to("/shodan/host/search") == []
    assert not HarvestRun.objects.exists()
    assert summary["credits_spent"] == 0
    assert summary["credits"] == sum(expected_pages(shodan_standin, queries).values())
    assert summary["credits_left"] == 1000 and summary["fits"]
    row = summary["queries"][0]
    assert row["query"] == "port:104 country:NL"
    assert row["total"] == len(shodan_standin.search("port:104 country:NL"))
    assert row["pages"] == row["credits"] == (row["total"] + 99) // 100
    assert row["facets"]["port"] == [{"value": "104", "count": row["total"]}]


def test_count_only_says_whether_the_credits_left_cover_the_plan_to_the_credit(shodan_standin: ShodanStandIn) -> None:
    needed = sum(expected_pages(shodan_standin, plan_queries("ports")).values())
    shodan_standin.set_credits(needed)
    assert harvest("--plan", "ports", "--count-only")[0]["fits"] is True
    shodan_standin.set_credits(needed - 1)
    assert harvest("--plan", "ports", "--count-only")[0]["fits"] is False


def test_count_only_prints_a_table(shodan_standin: ShodanStandIn) -> None:
    out = io.StringIO()
    call_command("harvest", "--plan", "ports", "--count-only", stdout=out)
    text = out.getvalue()
    total_pages = sum(expected_pages(shodan_standin, plan_queries("ports")).values())
    assert "port:104 country:NL" in text
    assert any(line.split()[:1] == ["total"] and line.split()[-1] == str(total_pages) for line in text.splitlines())
    assert "query credits left on the key: 1000 (enough" in text
    assert shodan_standin.credits_spent == 0


def test_count_only_says_where_a_credit_cap_would_stop_the_run(shodan_standin: ShodanStandIn) -> None:
    """--max-credits with --count-only was ignored without a word; it now says whether a run capped
    there fetches the whole plan, and in which query it would stop, as a real run then does."""
    queries = plan_queries("ports")
    bought = expected_pages(shodan_standin, queries)  # (query, page): 1 credit each
    pages = [sum(1 for q, _ in bought if q == query) for query in queries]
    assert pages[0] > 0 and pages[1] > 0 and sum(pages) > pages[0] + pages[1]
    cap = pages[0] + pages[1]  # the first two queries whole

    counted, _ = harvest("--plan", "ports", "--count-only", "--max-credits", str(cap))
    whole, _ = harvest("--plan", "ports", "--count-only", "--max-credits", str(sum(pages)))
    out = io.StringIO()
    call_command("harvest", "--plan", "ports", "--count-only", "--max-credits", str(cap), stdout=out)
    assert shodan_standin.credits_spent == 0
    run, _ = harvest("--plan", "ports", "--max-credits", str(cap))

    stop = counted["cap"]["stops_in_query"]
    assert counted["cap"]["fits"] is False and counted["cap"]["max_credits"] == cap and stop >= 3
    assert counted["cap"]["label"] == plan_load(name="ports").queries[stop - 1].label
    assert run["status"] == "stopped" and run["credits_spent"] == cap
    assert HarvestRun.objects.get().checkpoint == {"query": stop - 1, "page": 1}  # where the real run stopped
    assert whole["cap"] == {"max_credits": sum(pages), "fits": True, "stops_in_query": None, "label": None}
    assert f"--max-credits {cap}: NOT enough for the whole plan; a run would stop in query {stop} (" in out.getvalue()


def test_ctrl_c_during_count_only_says_nothing_was_spent_and_exits_with_130(
    shodan_standin: ShodanStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting the medical plan takes minutes at 1 request/s, and Ctrl-C in it ended in a
    KeyboardInterrupt traceback through the client instead of the line and status of an
    interrupted run."""
    real, calls = shodan_client.count, []

    def count(*args: Any, **kwargs: Any) -> shodan_client.CountResult:
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shodan_client, "count", count)
    out = io.StringIO()
    with pytest.raises(CommandError, match="^interrupted: nothing was spent") as caught:
        call_command("harvest", "--plan", "ports", "--count-only", "--json", stdout=out)
    assert caught.value.returncode == 130
    assert out.getvalue() == ""
    assert shodan_standin.credits_spent == 0 and not HarvestRun.objects.exists()


def test_count_only_needs_a_plan(shodan_standin: ShodanStandIn) -> None:
    with pytest.raises(CommandError, match="--count-only needs --plan"):
        call_command("harvest", "--resume", "1", "--count-only")


def test_max_credits_caps_the_run_and_a_resume_can_allow_more(shodan_standin: ShodanStandIn) -> None:
    queries = plan_queries("ports")
    summary, _ = harvest("--plan", "ports", "--max-credits", "2")
    assert summary["status"] == "stopped"
    assert "--max-credits reached: 2 of the 2 credits" in summary["message"]
    assert summary["credits_spent"] == shodan_standin.credits_spent == 2
    run_id = summary["run"]
    assert f"--resume {run_id} --max-credits N" in summary["message"]
    # The limit belongs to the run: a plain resume buys nothing more.
    summary, _ = harvest("--resume", str(run_id))
    assert summary["status"] == "stopped"
    assert summary["credits_spent"] == shodan_standin.credits_spent == 2
    # --max-credits N on a resume allows N more than spent so far.
    summary, _ = harvest("--resume", str(run_id), "--max-credits", "1")
    assert summary["status"] == "stopped"
    assert summary["credits_spent"] == shodan_standin.credits_spent == 3
    summary, _ = harvest("--resume", str(run_id), "--max-credits", "1000")
    assert summary["status"] == "completed"
    assert stored() == expected_services(shodan_standin, queries)
    assert shodan_standin.pages == expected_pages(shodan_standin, queries)  # every page bought once
    assert summary["credits_spent"] == shodan_standin.credits_spent


def test_the_summary_of_a_run_stopped_at_its_limit_does_not_advise_a_plain_resume(
    shodan_standin: ShodanStandIn,
) -> None:
    # A plain --resume keeps the run's limit and stops at once: the way on is --max-credits N.
    out = io.StringIO()
    call_command("harvest", "--plan", "ports", "--max-credits", "1", stdout=out)
    run_id = HarvestRun.objects.get().pk
    printed = out.getvalue()
    assert f"allow N more with: manage.py harvest --resume {run_id} --max-credits N" in printed
    assert f"resume with: python manage.py harvest --resume {run_id}\n" not in printed


def _interrupt_page(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Ctrl-C while the `call`-th search page is being fetched (before it reaches Shodan)."""
    real = shodan_client.search_page
    calls = []

    def search_page(*args: Any, **kwargs: Any) -> shodan_client.SearchPage:
        calls.append(args)
        if len(calls) == call:
            monkeypatch.setattr(shodan_client, "search_page", real)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shodan_client, "search_page", search_page)


def test_an_interrupted_capped_run_resumes_to_the_uninterrupted_result(
    shodan_standin: ShodanStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = harvest("--plan", "ports", "--max-credits", "5")
    assert reference["status"] == "stopped" and reference["credits_spent"] == 5
    want = stored()
    Host.objects.all().delete()
    shodan_standin.state.pages.clear()

    _interrupt_page(monkeypatch, 3)
    with pytest.raises(CommandError, match="interrupted"):
        harvest("--plan", "ports", "--max-credits", "5")
    run = HarvestRun.objects.latest("pk")
    assert run.credits_spent == 2
    resumed, _ = harvest("--resume", str(run.pk))
    assert resumed["status"] == "stopped"
    assert resumed["credits_spent"] == shodan_standin.credits_spent == 5
    assert stored() == want


def test_batch_size_is_refused_with_a_plan(shodan_standin: ShodanStandIn) -> None:
    with pytest.raises(CommandError, match="--batch-size does not apply to --plan"):
        call_command("harvest", "--plan", "ports", "--batch-size", "1000")
    assert not HarvestRun.objects.exists()
    assert shodan_standin.state.requests == []


def test_a_search_resume_ignores_batch_size_and_commits_every_page(
    shodan_standin: ShodanStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = harvest("--plan", "ports", "--max-credits", "1")
    run_id = str(first["run"])
    _interrupt_page(monkeypatch, 4)
    err = io.StringIO()
    with pytest.raises(CommandError, match="interrupted"):
        call_command("harvest", "--resume", run_id, "--max-credits", "100", "--batch-size", "1000", stderr=err)
    run = HarvestRun.objects.get()
    assert run.credits_spent == shodan_standin.credits_spent == 4  # the 3 pages bought before Ctrl-C
    assert "--batch-size is ignored" in err.getvalue()
    resumed, _ = harvest("--resume", run_id, "--batch-size", "1000")
    assert resumed["status"] == "completed"
    assert stored() == expected_services(shodan_standin, plan_queries("ports"))
    assert shodan_standin.pages == expected_pages(shodan_standin, plan_queries("ports"))  # none bought twice


def test_zero_credits_on_the_key_stops_before_paying(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.set_credits(0)
    summary, _ = harvest("--plan", "ports")
    assert summary["status"] == "stopped"
    assert "no query credits left" in summary["message"]
    assert shodan_standin.requests_to("/shodan/host/search") == []


def test_exhausted_credits_stop_and_a_resume_after_topping_up_matches_a_reference_run(
    shodan_standin: ShodanStandIn,
) -> None:
    queries = plan_queries("medical")
    reference, _ = harvest("--plan", "medical")
    assert reference["status"] == "completed"
    want = snapshot()
    reference_pages = shodan_standin.pages
    Host.objects.all().delete()
    shodan_standin.state.pages.clear()

    shodan_standin.exhaust_after(3)  # /api-info still says 1000: someone else spends the rest
    first, _ = harvest("--plan", "medical")
    assert first["status"] == "stopped"
    assert "no query credits left" in first["message"]
    assert "--resume" in first["message"]
    assert first["credits_spent"] == 3
    run = HarvestRun.objects.get(pk=first["run"])
    assert run.status == HarvestRun.Status.STOPPED and run.checkpoint

    shodan_standin.exhaust_after(None)  # topped up
    resumed, _ = harvest("--resume", str(first["run"]))
    assert resumed["status"] == "completed"
    got = snapshot()
    assert set(got) == set(want) == expected_services(shodan_standin, queries)
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}  # same banners
    assert shodan_standin.pages == reference_pages  # no page fetched twice
    assert resumed["credits_spent"] == reference["credits_spent"]


def test_a_search_run_resumed_weeks_later_keeps_the_banners_crawled_since_it_started(
    shodan_standin: ShodanStandIn,
) -> None:
    """Credits run out and come back next month: the pages a resume buys hold banners crawled
    after the run started, which are not dated in the future."""
    queries = plan_queries("medical")
    shodan_standin.exhaust_after(3)
    first, _ = harvest("--plan", "medical")
    assert first["status"] == "stopped"
    newest = max(Service.objects.values_list("last_seen", flat=True))
    HarvestRun.objects.filter(pk=first["run"]).update(started_at=newest - timedelta(days=30))

    shodan_standin.exhaust_after(None)
    resumed, _ = harvest("--resume", str(first["run"]))
    assert resumed["status"] == "completed"
    assert resumed["rejected"].get("future_timestamp") is None
    assert stored() == expected_services(shodan_standin, queries)


def test_an_invalid_key_stops_with_a_clear_message(shodan_standin: ShodanStandIn, settings) -> None:
    settings.SHODAN_API_KEY = "not-the-key-0042"
    summary, output = harvest("--plan", "ports")
    assert summary["status"] == "stopped"
    assert "refused the API key" in summary["message"] and "SHODAN_API_KEY" in summary["message"]
    assert "not-the-key-0042" not in output
    assert "not-the-key-0042" not in HarvestRun.objects.get().message
    settings.SHODAN_API_KEY = STANDIN_KEY
    summary, _ = harvest("--resume", str(summary["run"]))
    assert summary["status"] == "completed"
    assert stored() == expected_services(shodan_standin, plan_queries("ports"))


def test_transient_failures_during_a_run_are_retried(shodan_standin: ShodanStandIn) -> None:
    # Three failures in a row on one request, within the 3 retries allowed.
    shodan_standin.fail(429, times=2)
    shodan_standin.cut(times=1)
    shodan_standin.fail(503, times=2, path="/shodan/host/count")
    shodan_standin.fail(502, times=1, path="/shodan/host/count")
    summary, _ = harvest("--plan", "ports")
    assert summary["status"] == "completed", summary["message"]
    assert stored() == expected_services(shodan_standin, plan_queries("ports"))
    assert [r.status for r in shodan_standin.requests_to("/shodan/host/search")][:4] == [429, 429, 0, 200]
    assert [r.status for r in shodan_standin.requests_to("/shodan/host/count")][:4] == [503, 503, 502, 200]
    assert shodan_standin.pages == expected_pages(shodan_standin, plan_queries("ports"))


def test_retries_exhausted_stop_the_run_resumably(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.fail(503, times=4)  # 1 try + 3 retries
    summary, _ = harvest("--plan", "ports")
    assert summary["status"] == "stopped"
    assert "gave up after 3 retries" in summary["message"]
    # Each request was counted while in flight; none was answered, so none stays counted.
    assert summary["credits_spent"] == shodan_standin.credits_spent == 0
    assert HarvestRun.objects.get().credits_spent == 0
    summary, _ = harvest("--resume", str(summary["run"]))
    assert summary["status"] == "completed"
    assert stored() == expected_services(shodan_standin, plan_queries("ports"))


@pytest.mark.parametrize("status,body", [(503, {"detail": "Service Unavailable"}), (429, {"message": "slow down"})])
def test_a_429_or_5xx_without_an_error_key_is_retried_not_taken_for_a_page(
    shodan_standin: ShodanStandIn, plan_file, status: int, body: dict
) -> None:
    queries = ["port:104 country:NL"]
    shodan_standin.fail(status, times=1, body=body)
    summary, _ = harvest("--plan", plan_file("port:104"))
    assert summary["status"] == "completed", summary["message"]
    assert stored() == expected_services(shodan_standin, queries)
    assert summary["credits_spent"] == shodan_standin.credits_spent == len(expected_pages(shodan_standin, queries))


def test_a_paid_page_of_the_wrong_shape_is_bought_again_and_counted(shodan_standin: ShodanStandIn, plan_file) -> None:
    queries = ["port:104 country:NL"]
    shodan_standin.garble([], times=1)
    summary, _ = harvest("--plan", plan_file("port:104"))
    assert summary["status"] == "completed", summary["message"]
    assert "query_failed" not in summary["rejected"]
    assert stored() == expected_services(shodan_standin, queries)
    assert summary["credits_spent"] == shodan_standin.credits_spent == len(expected_pages(shodan_standin, queries)) + 1


def test_answers_without_matches_or_total_are_not_taken_for_the_end_of_a_query(
    shodan_standin: ShodanStandIn, plan_file
) -> None:
    queries = ["port:104 country:NL"]
    shodan_standin.garble({"matches": []}, times=1, path="/shodan/host/count")
    shodan_standin.garble({}, times=1)
    summary, _ = harvest("--plan", plan_file("port:104"))
    assert summary["status"] == "completed", summary["message"]
    assert stored() == expected_services(shodan_standin, queries)
    assert summary["credits_spent"] == shodan_standin.credits_spent == len(expected_pages(shodan_standin, queries)) + 1


@pytest.mark.parametrize("fault", ["timeout", "cut mid-answer"])
def test_pages_answered_after_the_timeout_or_cut_count_in_the_credits_and_the_cap(
    shodan_standin: ShodanStandIn, plan_file, settings, fault: str
) -> None:
    # Shodan charges a search it answers after the client stopped waiting, or whose answer was
    # cut on the way: with a cap of 3 the key must not pay for more than 3 pages, and the run
    # must say what the key paid.
    settings.SHODAN_TIMEOUT = 0.3
    shodan_client.reset()
    queries = ["port:104 country:NL"]
    if fault == "timeout":
        shodan_standin.slow(0.6, times=2)
    else:
        shodan_standin.cut(times=2, mid_answer=True)
    summary, _ = harvest("--plan", plan_file("port:104"), "--max-credits", "3")
    _all_answered(shodan_standin)
    assert summary["status"] == "stopped", summary["message"]
    assert summary["credits_spent"] == shodan_standin.credits_spent == 3
    summary, _ = harvest("--resume", str(summary["run"]), "--max-credits", "100")
    assert summary["status"] == "completed", summary["message"]
    assert stored() == expected_services(shodan_standin, queries)
    assert summary["credits_spent"] == shodan_standin.credits_spent == len(expected_pages(shodan_standin, queries)) + 2


def _all_answered(server: ShodanStandIn) -> None:
    deadline = time.monotonic() + 10
    while any(r.status == -1 for r in server.state.requests) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_paid_page_that_came_back_empty_commits_its_credit_at_once(shodan_standin: ShodanStandIn, plan_file) -> None:
    # Query 1 is counted, but its paid page comes back empty (the results changed in between):
    # the run goes on with query 2. Interrupted there (as by kill -9: nothing more is written),
    # the credit must already be stored, or a resume buys that page again unaccounted.
    queries = ["port:104 country:NL", "port:2575 country:NL"]
    shodan_standin.garble({"total": len(shodan_standin.search(queries[0])), "matches": []}, times=1)
    run = search.harvest_search_start(plan=plan_file("port:104", "port:2575"), max_credits=10)

    def interrupt_at_query_2(query_index: int) -> None:
        if query_index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        services.harvest_execute(run=run, progress=interrupt_at_query_2, batch_size=search.SEARCH_BATCH_SIZE)
    run.refresh_from_db()
    assert (run.credits_spent, run.checkpoint) == (1, {"query": 1, "page": 1})
    assert shodan_standin.credits_spent == 1
    summary, _ = harvest("--resume", str(run.pk))
    assert summary["status"] == "completed", summary["message"]
    assert shodan_standin.pages[(queries[0], 1)] == 1  # not bought again
    assert summary["credits_spent"] == shodan_standin.credits_spent


def test_a_query_shodan_serves_short_of_its_total_is_reported(shodan_standin: ShodanStandIn, plan_file) -> None:
    """An empty page where the total promised results ended the query as if it were done, and the
    run completed with nothing on record that part of the query's results never came."""
    shodan_standin.garble({"total": 250, "matches": []}, times=1)
    summary, _ = harvest("--plan", plan_file("port:104", "port:2575"), "--max-credits", "10")
    assert summary["status"] == "completed", summary["message"]
    assert summary["rejected"] == {}
    assert summary["query_errors"]["short_results"]["count"] == 1
    rejection = Rejection.objects.get()
    assert rejection.position == "query 1 page 1"
    assert "page 1 came back empty" in rejection.detail and "250 results" in rejection.detail
    assert ("port:2575 country:NL", 1) in shodan_standin.pages  # the run went on with the next query


def test_a_first_page_that_says_no_results_where_the_count_found_some_is_reported(
    shodan_standin: ShodanStandIn, plan_file
) -> None:
    """The run counts a query (free) before buying its first page. A first page that came back
    empty with a total of 0 where the count had just found results ended the query as done: the
    run completed with nothing on record that the query's results never came."""
    shodan_standin.garble({"total": 0, "matches": []}, times=1)
    summary, _ = harvest("--plan", plan_file("port:104", "port:2575"))
    assert summary["status"] == "completed", summary["message"]
    total = len(shodan_standin.search("port:104 country:NL"))
    short = summary["query_errors"]["short_results"]
    assert short["count"] == 1 and short["examples"][0]["position"] == "query 1 page 1"
    assert f"Shodan's count promised {total} results" in short["examples"][0]["detail"]
    assert ("port:2575 country:NL", 1) in shodan_standin.pages


def test_bad_answers_stop_the_run_within_its_cap_and_their_credits_count(
    shodan_standin: ShodanStandIn, plan_file
) -> None:
    plan = plan_file("port:104")
    shodan_standin.garble([], times=10)
    summary, _ = harvest("--plan", plan, "--max-credits", "2")
    assert summary["status"] == "stopped"
    assert "stopped at query 1 of 1 page 1" in summary["message"]
    assert summary["credits_spent"] == shodan_standin.credits_spent == 2  # two answers bought, not the 4 tries
    shodan_standin.state.faults.clear()
    summary, _ = harvest("--resume", str(summary["run"]), "--max-credits", "100")
    assert summary["status"] == "completed"
    assert stored() == expected_services(shodan_standin, ["port:104 country:NL"])
    assert summary["credits_spent"] == shodan_standin.credits_spent


def test_a_refused_query_is_reported_and_the_others_are_harvested(shodan_standin: ShodanStandIn, plan_file) -> None:
    summary, _ = harvest("--plan", plan_file("vuln:CVE-2019-0708", "port:2575"))
    assert summary["status"] == "completed"
    assert summary["rejected"] == {}
    failed = summary["query_errors"]["query_failed"]
    assert failed["count"] == 1
    assert failed["examples"][0]["position"] == "query 1 page 1"
    assert "unknown filter" in failed["examples"][0]["detail"]
    assert {port for _, port, _ in stored()} == {2575}


def test_query_errors_are_counted_apart_from_the_records_read_and_rejected(
    shodan_standin: ShodanStandIn, plan_file
) -> None:
    """A refused query, or a page served short, counted among the run's rejected records but not
    among those read: `seen` was short of accepted plus rejected, as a file run's never is."""
    shodan_standin.garble({"total": 250, "matches": []}, times=1)  # the first page: port:2575's
    out = io.StringIO()
    call_command("harvest", "--plan", plan_file("port:2575", "vuln:CVE-2019-0708", "port:104"), stdout=out)
    run = HarvestRun.objects.get()
    summary = services.harvest_run_summary(run=run)
    assert summary["status"] == "completed", summary["message"]
    assert summary["rejected"], "the corpus has invalid records: both kinds of count are exercised"
    assert summary["seen"] == summary["accepted"] + sum(summary["rejected"].values())
    assert set(summary["rejections"]) == set(summary["rejected"])
    assert run.query_errors == {"query_failed": 1, "short_results": 1}
    errors = summary["query_errors"]
    assert {reason: info["count"] for reason, info in errors.items()} == run.query_errors
    assert errors["query_failed"]["examples"][0]["position"] == "query 2 page 1"
    assert errors["short_results"]["examples"][0]["position"] == "query 1 page 1"
    text = out.getvalue()
    assert f"  {'read':<12}{summary['seen']:>10}" in text
    assert f"  {'rejected':<12}{sum(summary['rejected'].values()):>10}" in text
    assert f"  {'query errors':<12}{2:>10}" in text
    assert "query_failed" in text and "short_results" in text


def test_the_key_never_appears_in_output_or_logs(shodan_standin: ShodanStandIn, caplog, capsys) -> None:
    caplog.set_level(logging.DEBUG)
    shodan_standin.cut(times=5)
    shodan_standin.slow(2.0, times=1, path="/shodan/host/count")
    summary, output = harvest("--plan", "ports")
    out = io.StringIO()
    call_command("harvest", "--resume", str(summary["run"]), stdout=out, stderr=out)
    captured = capsys.readouterr()
    everything = output + out.getvalue() + captured.out + captured.err + caplog.text
    assert "gave up" in summary["message"]
    for run in HarvestRun.objects.all():
        everything += run.message + json.dumps(run.options) + json.dumps(run.checkpoint)
    everything += "".join(Rejection.objects.values_list("detail", flat=True))
    assert STANDIN_KEY not in everything
    assert STANDIN_KEY[-8:] not in everything


def test_a_negative_credit_cap_is_refused(shodan_standin: ShodanStandIn) -> None:
    with pytest.raises(CommandError, match="--max-credits must be 0 or more"):
        call_command("harvest", "--plan", "ports", "--max-credits", "-1")
    assert not HarvestRun.objects.exists()


def test_a_negative_credit_cap_is_refused_by_count_only_too(shodan_standin: ShodanStandIn) -> None:
    # --count-only took it and answered that a run capped at -1 would stop in query 1, for a cap
    # that --plan refuses.
    with pytest.raises(CommandError, match="--max-credits must be 0 or more"):
        call_command("harvest", "--plan", "ports", "--count-only", "--max-credits", "-1")
    assert shodan_standin.state.requests == []


def test_an_unknown_plan_is_refused(shodan_standin: ShodanStandIn) -> None:
    with pytest.raises(CommandError, match="there is no plan 'nosuch'; plans: .*ports"):
        call_command("harvest", "--plan", "nosuch")
    assert not HarvestRun.objects.exists()


def test_a_plan_without_queries_is_refused_before_a_run_or_a_schedule(
    shodan_standin: ShodanStandIn, tmp_path, settings
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text('name = "empty"\n')
    with pytest.raises(CommandError, match="the plan has no queries"):
        call_command("harvest", "--plan", str(empty))
    with pytest.raises(CommandError, match="the plan has no queries"):
        call_command("harvest", "--plan", str(empty), "--count-only")
    assert not HarvestRun.objects.exists()  # no failed run left behind
    settings.MEDEXPO_HARVEST_PLAN = str(empty)
    with pytest.raises(CommandError, match="the plan has no queries"):
        call_command("setup_schedules", stdout=io.StringIO())  # not a weekly task that can only fail


def test_a_plan_with_a_nul_in_a_query_is_refused_before_a_run(shodan_standin: ShodanStandIn, tmp_path) -> None:
    odd = tmp_path / "odd.toml"
    odd.write_text('[[query]]\nquery = "port:104 \\u0000"\n')
    with pytest.raises(CommandError, match="odd.toml query #1: .*control character"):
        call_command("harvest", "--plan", str(odd))
    assert not HarvestRun.objects.exists()
    assert shodan_standin.state.requests == []


# --- kill -9 ----------------------------------------------------------------------------------


def _env(tmp: Path, db: Path, server: ShodanStandIn) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHODAN_", "DJANGO_"))}
    env.update(
        DEBUG="1",
        MEDEXPO_DATA_DIR=str(tmp),
        DATABASE_URL=f"sqlite:///{db}",
        SHODAN_API_URL=server.url,
        SHODAN_API_KEY=STANDIN_KEY,
        SHODAN_REQUEST_INTERVAL="0",
        SHODAN_TIMEOUT="10",
        MEDEXPO_COUNTRY="NL",
    )
    return env


def _manage(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _kill_when(env: dict, args: list[str], ready: Callable[[], bool], what: str) -> None:
    """Start `harvest ARGS` and kill it with SIGKILL as soon as `ready()` (within 60 s)."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "harvest", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready(), f"{what} in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def _services(db: Path) -> set[tuple]:
    with sqlite3.connect(db) as conn:
        return set(
            conn.execute(
                "SELECT h.ip, s.port, s.transport, s.banner_hash FROM harvest_service s "
                "JOIN harvest_host h ON h.id = s.host_id"
            )
        )


def _checkpoint(db: Path) -> dict:
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute("SELECT checkpoint FROM harvest_harvestrun").fetchone()
    return json.loads(row[0]) if row else {}


def test_a_run_killed_with_sigkill_resumes_to_the_reference_result(shodan_standin: ShodanStandIn, tmp_path) -> None:
    template = tmp_path / "template.sqlite3"
    migrated = _manage(_env(tmp_path, template, shodan_standin), "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr
    reference_db, killed_db = tmp_path / "reference.sqlite3", tmp_path / "killed.sqlite3"
    reference_db.write_bytes(template.read_bytes())
    killed_db.write_bytes(template.read_bytes())

    done = _manage(_env(tmp_path, reference_db, shodan_standin), "harvest", "--plan", "ports", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    reference_pages = shodan_standin.pages
    shodan_standin.state.pages.clear()

    shodan_standin.set_page_delay(1.0)
    env = _env(tmp_path, killed_db, shodan_standin)
    _kill_when(env, ["--plan", "ports", "--json"], lambda: bool(_checkpoint(killed_db)), "no checkpoint committed")
    committed = _checkpoint(killed_db)
    queries = plan_queries("ports")
    assert committed["query"] < len(queries), "the run ended before it was killed"
    position = (committed["query"], committed["page"])
    committed_pages = {(q, p) for q, p in reference_pages if (queries.index(q), p) < position}
    assert committed_pages, "nothing was committed before the kill"

    shodan_standin.set_page_delay(0)
    resumed = _manage(env, "harvest", "--resume", "1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "completed"
    assert _services(killed_db) == _services(reference_db)
    assert len(_services(reference_db)) >= 338
    # No committed page was bought again. Only the page in flight at the kill may have been: it
    # was paid (the stand-in, like Shodan, charges a page it answers after the client died) but
    # lost with the process, so the resumed run buys it again.
    assert all(shodan_standin.pages[page] == 1 for page in committed_pages)
    twice = {page for page, n in shodan_standin.pages.items() if n > 1}
    assert twice <= {(queries[committed["query"]], committed["page"])}
    assert set(shodan_standin.pages) == set(reference_pages)


def test_a_page_in_flight_when_the_run_is_killed_counts_in_its_credits_and_its_cap(
    shodan_standin: ShodanStandIn, tmp_path
) -> None:
    """Shodan charges a page it answers after the client died, and the resumed run buys it again.
    That first purchase went uncounted: the run said it spent less than the key paid, and went
    past its --max-credits by a page for every kill."""
    env = _env(tmp_path, tmp_path / "killed.sqlite3", shodan_standin)
    assert _manage(env, "migrate", "-v0").returncode == 0
    shodan_standin.set_page_delay(1.5)
    _kill_when(
        env,
        ["--plan", "ports", "--max-credits", "3", "--json"],
        lambda: bool(shodan_standin.requests_to("/shodan/host/search")),
        "no page was asked for",
    )
    _all_answered(shodan_standin)
    first = plan_queries("ports")[0]
    assert shodan_standin.pages == {(first, 1): 1}  # charged, though nobody read the answer

    shodan_standin.set_page_delay(0)
    resumed = _manage(env, "harvest", "--resume", "1", "--json")
    assert resumed.returncode == 3, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "stopped" and "--max-credits reached" in summary["message"]
    assert summary["credits_spent"] == shodan_standin.credits_spent == 3
    assert shodan_standin.pages == {(first, 1): 2, (first, 2): 1}


def _credits_spent(db: Path) -> int:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute("SELECT credits_spent FROM harvest_harvestrun").fetchone()[0]


def test_a_run_killed_while_it_waits_to_retry_a_page_counts_only_what_was_paid(
    shodan_standin: ShodanStandIn, tmp_path
) -> None:
    """A page is counted before its request is sent; one refused with a 503 (not charged) stayed
    counted while the run waited to ask again. Killed in that wait (seconds, or as long as
    Retry-After asks), the run said it had spent a credit the key never paid, and its
    --max-credits ended a page early."""
    db = tmp_path / "killed.sqlite3"
    env = _env(tmp_path, db, shodan_standin)
    assert _manage(env, "migrate", "-v0").returncode == 0
    shodan_standin.fail(503, times=1, headers={"Retry-After": "30"})

    def waiting() -> bool:
        refused = [r for r in shodan_standin.requests_to("/shodan/host/search") if r.status == 503]
        return bool(refused) and time.monotonic() - refused[0].at > 1.0

    _kill_when(env, ["--plan", "ports", "--max-credits", "3", "--json"], waiting, "the page was not refused")
    assert shodan_standin.credits_spent == 0
    assert _credits_spent(db) == 0

    resumed = _manage(env, "harvest", "--resume", "1", "--json")
    assert resumed.returncode == 3, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["credits_spent"] == shodan_standin.credits_spent == 3
    assert len(shodan_standin.pages) == 3


def test_a_run_that_stops_exits_with_status_3_for_scripts(shodan_standin: ShodanStandIn, tmp_path) -> None:
    env = _env(tmp_path, tmp_path / "exit.sqlite3", shodan_standin)
    assert _manage(env, "migrate", "-v0").returncode == 0
    stopped = _manage(env, "harvest", "--plan", "ports", "--max-credits", "1", "--json")
    assert stopped.returncode == 3, stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "stopped"
    done = _manage(env, "harvest", "--resume", "1", "--max-credits", "1000", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed"
    failed = _manage(env, "harvest", "--file", str(tmp_path / "missing.json"))
    assert failed.returncode == 1


@pytest.mark.django_db(transaction=True)
def test_no_page_is_bought_while_the_page_before_is_uncommitted(shodan_standin: ShodanStandIn, plan_file) -> None:
    """A page bought while the one before it is still being written would be lost with it, and
    paid for twice, if the process died then: a search run writes each page before the next."""
    plan = plan_file("port:104")
    query = plan_queries(plan)[0]
    assert len(shodan_standin.search(query)) > 200  # three pages at least
    if connection.vendor != "postgresql":
        # No writer thread on SQLite: each page is written on the caller's thread before the next.
        harvest("--plan", plan)
        assert shodan_standin.pages == expected_pages(shodan_standin, [query])
        return

    blocker = psycopg.connect(**_psycopg_params(), autocommit=False)
    blocker.execute("LOCK TABLE harvest_host IN SHARE MODE")  # holds up the insert of page 1's hosts
    failures: list[BaseException] = []

    def run() -> None:
        try:
            harvest("--plan", plan)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while (query, 1) not in shodan_standin.pages and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)  # time enough to buy page 2, were it allowed
        bought_while_blocked = dict(shodan_standin.pages)
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(timeout=60)
    assert not failures
    assert bought_while_blocked == {(query, 1): 1}
    assert shodan_standin.pages == expected_pages(shodan_standin, [query])


def _psycopg_params() -> dict:
    db = connection.settings_dict
    return {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"], "dbname": db["NAME"]}


def test_a_key_refused_in_the_middle_of_a_run_stops_it_resumably(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.fail(401, times=1)  # the key stops working after the credits were read
    summary, _ = harvest("--plan", "ports")
    assert summary["status"] == "stopped"
    assert "refused the API key" in summary["message"] and search.QUERY_FAILED not in summary["rejected"]
    summary, _ = harvest("--resume", str(summary["run"]))
    assert summary["status"] == "completed"
    assert stored() == expected_services(shodan_standin, plan_queries("ports"))


HOSTILE_ERROR = "bad filter \x1b]0;owned\x07\x1b[2J\u202eevil\r\n  accepted 999"


@pytest.mark.parametrize(
    ("status", "path", "count_only"),
    [
        (400, "/shodan/host/search", False),  # a rejection's detail in the summary table
        (401, "/shodan/host/search", False),  # the message of a stopped run
        (400, "/shodan/host/count", True),  # a failed query in the --count-only table
    ],
)
def test_text_from_shodan_reaches_the_terminal_with_its_controls_shown(
    shodan_standin: ShodanStandIn, plan_file, status: int, path: str, count_only: bool
) -> None:
    """Shodan's error text went to the terminal as it came: an escape sequence in it retitled the
    window or cleared the screen, a bidi override reversed what followed, and a newline began a
    line that looked like one of the summary's."""
    shodan_standin.fail(status, path=path, body={"error": HOSTILE_ERROR})
    out = io.StringIO()
    call_command("harvest", "--plan", plan_file("port:104"), *(["--count-only"] if count_only else []), stdout=out)
    text = out.getvalue()
    assert "bad filter \\x1b]0;owned\\x07\\x1b[2J\\u202eevil\\r\\n  accepted 999" in text
    assert not any(char in text for char in "\x1b\x07\u202e\r")


def test_more_credits_for_a_run_another_process_is_writing_are_refused(
    shodan_standin: ShodanStandIn, tmp_path: Path, own_database: str
) -> None:
    """The new limit was what the run had spent when the command started plus N, stored before
    the command waited for the process writing the run; that one went on spending to its old
    limit, and the resume then stopped at once ("100 of the 70 credits")."""
    env = _env(tmp_path, tmp_path / "unused.sqlite3", shodan_standin) | {"DATABASE_URL": own_database}
    assert _manage(env, "migrate", "-v0").returncode == 0
    run = json.loads(_manage(env, "harvest", "--plan", "ports", "--max-credits", "1", "--json").stdout)["run"]

    def limit() -> int:
        options = sql(own_database, f"SELECT options FROM harvest_harvestrun WHERE id = {run}")[0][0]
        return (json.loads(options) if isinstance(options, str) else options)["credit_limit"]

    with holding_the_lock(own_database, run=run):
        refused = _manage(env, "harvest", "--resume", str(run), "--max-credits", "5", timeout=60)
    assert refused.returncode == 1
    assert f"run {run} is being written right now; once it stops, resume it with --max-credits" in refused.stderr
    assert (limit(), shodan_standin.credits_spent) == (1, 1)
    allowed = _manage(env, "harvest", "--resume", str(run), "--max-credits", "1", "--json")
    assert (json.loads(allowed.stdout)["credits_spent"], limit()) == (2, 2)


def test_runs_stored_before_have_their_query_errors_moved_out_of_the_rejected_records() -> None:
    from django.apps import apps

    migration = importlib.import_module("harvest.migrations.0008_harvestrun_query_errors")
    old = HarvestRun.objects.create(
        source="search", seen=5, accepted=4, rejected={"invalid_address": 1, "query_failed": 2, "short_results": 1}
    )
    clean = HarvestRun.objects.create(source="search", seen=1, accepted=1)
    file_run = HarvestRun.objects.create(source="file", seen=2, accepted=1, rejected={"not_json": 1})
    migration.move_query_errors(apps, None)
    old.refresh_from_db()
    assert (old.rejected, old.query_errors) == ({"invalid_address": 1}, {"query_failed": 2, "short_results": 1})
    assert old.seen == old.accepted + old.rejected_total
    assert HarvestRun.objects.get(pk=clean.pk).query_errors == {}
    assert HarvestRun.objects.get(pk=file_run.pk).rejected == {"not_json": 1}
    migration.move_back(apps, None)
    old.refresh_from_db()
    assert old.rejected == {"invalid_address": 1, "query_failed": 2, "short_results": 1}


def test_the_hospitals_plan_asks_shodan_each_name_as_written_and_always_with_the_country(
    shodan_standin: ShodanStandIn,
) -> None:
    shodan_standin.add(
        minimal_banner(
            "198.51.100.77", 443, "HTTP/1.1 200 OK", timestamp="2026-01-05T00:00:00", org="Máxima Medisch Centrum"
        )
    )
    summary, _ = harvest("--plan", "hospitals")
    assert summary["status"] == "completed", summary["message"]
    run = HarvestRun.objects.get(pk=summary["run"])
    asked = [r.params["query"] for r in shodan_standin.requests_to("/shodan/host/count")]
    assert asked == run.options["queries"] == plan_queries("hospitals")
    assert all(q.endswith(" country:NL") and q.count("country:") == 1 for q in asked)
    assert 'org:"Máxima Medisch Centrum" country:NL' in asked
    assert Service.objects.filter(host__ip="198.51.100.77", port=443).exists()
