"""The real `shodan` client, through harvest.shodan_client, against the stand-in on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harvest import shodan_client
from harvest.records import records_from_host_line
from harvest.shodan_client import ShodanError
from medexpo.lib.http import Session, backoff_delays, scrub
from tests.harvest.conftest import STANDIN_KEY
from tests.standins.shodan_server import ShodanStandIn

DICOM_NL = "port:104 country:NL"


def test_it_reads_the_credits_left(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.set_credits(37)
    info = shodan_client.api_info()
    assert info.query_credits == 37
    assert info.plan == "standin"


def test_it_counts_with_facets_for_free(shodan_standin: ShodanStandIn) -> None:
    expected = len(shodan_standin.search(DICOM_NL))
    result = shodan_client.count(DICOM_NL, ["port:10", "org:10", "product:10"])
    assert result.total == expected > 100
    assert result.pages == (expected + 99) // 100
    assert result.facets["port"][0].value == "104"
    assert result.facets["port"][0].count == expected
    assert shodan_standin.credits_spent == 0
    assert shodan_standin.credits == 1000


def test_it_fetches_pages_of_full_banners(shodan_standin: ShodanStandIn) -> None:
    expected = shodan_standin.search(DICOM_NL)
    first = shodan_client.search_page(DICOM_NL, 1)
    last = shodan_client.search_page(DICOM_NL, first.pages)
    assert first.total == len(expected)
    assert len(first.banners) == 100
    assert len(last.banners) == len(expected) - 100 * (first.pages - 1)
    assert json.loads(first.banners[0].raw) == expected[0]
    assert first.banners[0].value["port"] == 104
    assert shodan_standin.credits_spent == 2
    assert shodan_standin.pages[(DICOM_NL, 1)] == 1


def test_it_looks_up_a_host(shodan_standin: ShodanStandIn) -> None:
    lookup = shodan_client.host("198.18.0.5")
    assert lookup.ports == (104,)
    assert json.loads(lookup.raw)["data"][0]["ip_str"] == "198.18.0.5"
    # The raw lookup is a line of the --hosts file format.
    good, bad = records_from_host_line(lookup.raw.encode())
    assert [(r.ip, r.port) for r in good] == [("198.18.0.5", 104)] and bad == []


def test_it_reports_a_host_without_information_as_permanent(shodan_standin: ShodanStandIn) -> None:
    with pytest.raises(ShodanError) as caught:
        shodan_client.host("203.0.113.250")
    assert caught.value.kind == ShodanError.NOT_FOUND
    assert caught.value.permanent


def test_it_backs_off_on_429_then_succeeds(shodan_standin: ShodanStandIn, settings) -> None:
    settings.SHODAN_BACKOFF = 0.1
    shodan_standin.fail(429, times=2)
    page = shodan_client.search_page(DICOM_NL, 1)
    assert len(page.banners) == 100
    seen = shodan_standin.requests_to("/shodan/host/search")
    assert [r.status for r in seen] == [429, 429, 200]
    # Exponential: about 0.1 s then 0.2 s (with +-20 % jitter), less a little arrival jitter at the
    # stand-in; without back-off the retries arrive within a few ms.
    assert seen[1].at - seen[0].at >= 0.06
    assert seen[2].at - seen[1].at >= 0.12


@pytest.mark.parametrize("status,header", [(429, "Retry-After"), (503, "Retry-After"), (429, "retry-after")])
def test_it_waits_as_long_as_retry_after_says(shodan_standin: ShodanStandIn, status: int, header: str) -> None:
    """A 429 or 503 that says when to come back was retried after the usual backoff (here 20 ms),
    asking again while Shodan had said to wait: with a busy key, every retry was spent that way and
    the run stopped."""
    shodan_standin.fail(status, times=1, headers={header: "1"})
    assert len(shodan_client.search_page(DICOM_NL, 1).banners) == 100
    seen = shodan_standin.requests_to("/shodan/host/search")
    assert [r.status for r in seen] == [status, 200]
    assert seen[1].at - seen[0].at >= 0.95


@pytest.mark.parametrize("value", ["", "soon", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_retry_after_it_cannot_use_means_the_usual_backoff(shodan_standin: ShodanStandIn, value: str) -> None:
    shodan_standin.fail(429, times=1, headers={"Retry-After": value})
    started = time.monotonic()
    assert len(shodan_client.search_page(DICOM_NL, 1).banners) == 100
    assert time.monotonic() - started < 0.5


def test_a_retry_after_beyond_the_longest_wait_stops_at_once(shodan_standin: ShodanStandIn) -> None:
    """Asked to come back in an hour, retrying within seconds only spends the retries (and holds a
    worker): the call gives up at once, saying how long Shodan asked to wait."""
    shodan_standin.fail(429, times=1, headers={"Retry-After": "3600"})
    started = time.monotonic()
    with pytest.raises(ShodanError) as caught:
        shodan_client.search_page(DICOM_NL, 1)
    assert time.monotonic() - started < 0.5
    assert caught.value.kind == ShodanError.RETRIES_EXHAUSTED
    assert "Shodan asks to wait 3600 s" in str(caught.value)
    assert len(shodan_standin.requests_to("/shodan/host/search")) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_it_retries_a_server_error(shodan_standin: ShodanStandIn, status: int) -> None:
    shodan_standin.fail(status, times=3, path="/shodan/host/count")
    assert shodan_client.count(DICOM_NL).total > 0
    assert [r.status for r in shodan_standin.requests_to("/shodan/host/count")] == [status, status, status, 200]


def test_it_retries_a_slow_answer(shodan_standin: ShodanStandIn, settings) -> None:
    settings.SHODAN_TIMEOUT = 0.3
    shodan_client.reset()
    shodan_standin.slow(1.0, times=1, path="/api-info")
    assert shodan_client.api_info().query_credits == 1000
    assert len(shodan_standin.requests_to("/api-info")) == 2


def _answered(server: ShodanStandIn) -> None:
    """Wait until the stand-in has answered every request (a slow one after the client gave up)."""
    deadline = time.monotonic() + 10
    while any(r.status == -1 for r in server.state.requests) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_search_answered_after_the_timeout_counts_as_paid(shodan_standin: ShodanStandIn, settings) -> None:
    # Shodan answers (and charges) a search the client stopped waiting for: it counts, and
    # max_answers bounds it like any other paid answer.
    settings.SHODAN_TIMEOUT = 0.3
    shodan_client.reset()
    shodan_standin.slow(0.6, times=1)
    page = shodan_client.search_page(DICOM_NL, 1)
    _answered(shodan_standin)
    assert len(page.banners) == 100
    assert page.answers == 2 == shodan_standin.credits_spent
    shodan_standin.slow(0.6, times=5)
    with pytest.raises(ShodanError) as caught:
        shodan_client.search_page(DICOM_NL, 2, max_answers=1)
    _answered(shodan_standin)
    assert caught.value.kind == ShodanError.RETRIES_EXHAUSTED
    assert caught.value.answered == 1 == shodan_standin.credits_spent - 2


def test_an_answer_cut_in_the_middle_counts_as_paid(shodan_standin: ShodanStandIn) -> None:
    # The 200 and half the page arrived: Shodan charged it, and it is retried like a garbled one.
    shodan_standin.cut(times=1, mid_answer=True)
    page = shodan_client.search_page(DICOM_NL, 1)
    assert len(page.banners) == 100
    assert [r.status for r in shodan_standin.requests_to("/shodan/host/search")] == [200, 200]
    assert page.answers == 2 == shodan_standin.credits_spent


def test_it_retries_a_cut_connection(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.cut(times=2)
    page = shodan_client.search_page(DICOM_NL, 2)
    assert page.page == 2 and page.banners
    assert [r.status for r in shodan_standin.requests_to("/shodan/host/search")] == [0, 0, 200]


def test_it_gives_up_after_the_configured_retries(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.fail(503, times=10)
    with pytest.raises(ShodanError) as caught:
        shodan_client.search_page(DICOM_NL, 1)
    assert caught.value.kind == ShodanError.RETRIES_EXHAUSTED
    assert "gave up after 3 retries" in str(caught.value)
    assert len(shodan_standin.requests_to("/shodan/host/search")) == 4


@pytest.mark.parametrize("status,body", [(503, {"detail": "Service Unavailable"}), (429, {"message": "slow down"})])
def test_it_retries_a_429_or_5xx_whose_body_has_no_error_key(
    shodan_standin: ShodanStandIn, status: int, body: dict
) -> None:
    # The library raises only on 401, 403, 502, a body that is not JSON or one with "error".
    shodan_standin.fail(status, times=1, body=body)
    page = shodan_client.search_page(DICOM_NL, 2)
    assert len(page.banners) == 100 and page.answers == 1
    assert [r.status for r in shodan_standin.requests_to("/shodan/host/search")] == [status, 200]
    shodan_standin.fail(status, times=10, body=body)
    with pytest.raises(ShodanError) as caught:
        shodan_client.search_page(DICOM_NL, 2)
    assert caught.value.kind == ShodanError.RETRIES_EXHAUSTED
    assert caught.value.answered == 0


def test_it_retries_an_answer_of_the_wrong_shape_and_counts_it(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.garble([], times=1)
    page = shodan_client.search_page(DICOM_NL, 1)
    assert len(page.banners) == 100
    assert page.answers == 2 == shodan_standin.credits_spent  # Shodan charged the bad answer too


@pytest.mark.parametrize("body", [{}, {"matches": []}, {"total": 230}, {"total": "230", "matches": []}])
def test_it_retries_a_page_without_its_matches_or_total_and_counts_it(shodan_standin: ShodanStandIn, body) -> None:
    # Shodan always sends both; an answer without them is cut or garbled, not an empty page.
    shodan_standin.garble(body, times=1)
    page = shodan_client.search_page(DICOM_NL, 1)
    assert len(page.banners) == 100 and page.total == len(shodan_standin.search(DICOM_NL))
    assert page.answers == 2 == shodan_standin.credits_spent


@pytest.mark.parametrize("body", [{}, {"matches": []}, {"total": None}])
def test_it_retries_a_count_without_a_total(shodan_standin: ShodanStandIn, body) -> None:
    shodan_standin.garble(body, times=1, path="/shodan/host/count")
    assert shodan_client.count(DICOM_NL).total == len(shodan_standin.search(DICOM_NL))
    assert [r.status for r in shodan_standin.requests_to("/shodan/host/count")] == [200, 200]


@pytest.mark.parametrize("body", [{}, {"plan": "dev"}, {"query_credits": "100"}, {"query_credits": None}])
def test_it_retries_api_info_without_the_query_credits(shodan_standin: ShodanStandIn, body) -> None:
    # A proxy's {} taken for 0 credits would stop a run with "no query credits left".
    shodan_standin.set_credits(77)
    shodan_standin.garble(body, times=1, path="/api-info")
    assert shodan_client.api_info().query_credits == 77
    assert [r.status for r in shodan_standin.requests_to("/api-info")] == [200, 200]


def test_it_buys_a_page_at_most_as_often_as_allowed(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.garble({"total": 5, "matches": "none"}, times=10)
    with pytest.raises(ShodanError) as caught:
        shodan_client.search_page(DICOM_NL, 1, max_answers=2)
    assert caught.value.kind == ShodanError.RETRIES_EXHAUSTED
    assert caught.value.answered == 2 == shodan_standin.credits_spent
    assert len(shodan_standin.requests_to("/shodan/host/search")) == 2


def test_it_stops_at_once_on_an_invalid_key(shodan_standin: ShodanStandIn, settings) -> None:
    settings.SHODAN_API_KEY = "wrong-key-abcdef"
    with pytest.raises(ShodanError) as caught:
        shodan_client.api_info()
    assert caught.value.kind == ShodanError.INVALID_KEY
    assert caught.value.permanent
    assert "Invalid API key" in str(caught.value)
    assert "wrong-key-abcdef" not in str(caught.value)
    assert len(shodan_standin.requests_to("/api-info")) == 1


def test_it_recognises_exhausted_credits(shodan_standin: ShodanStandIn) -> None:
    shodan_standin.set_credits(0)
    with pytest.raises(ShodanError) as caught:
        shodan_client.search_page(DICOM_NL, 1)
    assert caught.value.kind == ShodanError.NO_CREDITS
    assert caught.value.permanent
    assert shodan_standin.pages == {}


def test_a_plan_without_filters_is_access_denied_not_an_invalid_key(shodan_standin: ShodanStandIn) -> None:
    """Shodan answers a search with a filter on a plan without them with 401 'Please upgrade your
    API plan to use filters or paging.': the key is good, and checking it does not help."""
    shodan_standin.without_filters()
    with pytest.raises(ShodanError) as caught:
        shodan_client.search_page(DICOM_NL, 1)
    assert caught.value.kind == ShodanError.ACCESS_DENIED
    assert caught.value.permanent
    assert "plan does not allow" in str(caught.value) and "upgrade your API plan" in str(caught.value)
    assert "SHODAN_API_KEY" not in str(caught.value)
    assert len(shodan_standin.requests_to("/shodan/host/search")) == 1


def test_it_refuses_to_run_without_a_key(settings) -> None:
    settings.SHODAN_API_KEY = ""
    shodan_client.reset()
    with pytest.raises(ShodanError) as caught:
        shodan_client.api_info()
    assert caught.value.kind == ShodanError.NO_KEY


def test_it_reports_a_refused_query_as_permanent(shodan_standin: ShodanStandIn) -> None:
    with pytest.raises(ShodanError) as caught:
        shodan_client.count("vuln:CVE-2020-0001 country:NL")
    assert caught.value.kind == ShodanError.BAD_REQUEST
    assert "unknown filter" in str(caught.value)


@pytest.mark.django_db  # on PostgreSQL the pace is kept in the database (harvest/pacing.py)
def test_it_paces_requests(shodan_standin: ShodanStandIn, settings) -> None:
    settings.SHODAN_REQUEST_INTERVAL = 0.15
    for _ in range(3):
        shodan_client.api_info()
    seen = shodan_standin.requests_to("/api-info")
    # Arrival times at the stand-in, which may lag the client's sends by a few ms on a busy
    # machine; unpaced requests on loopback arrive within a few ms of each other.
    assert len(seen) == 3
    assert all(b.at - a.at >= 0.10 for a, b in zip(seen, seen[1:], strict=False))


def test_it_sends_the_key_only_as_the_query_parameter(shodan_standin: ShodanStandIn) -> None:
    shodan_client.count(DICOM_NL)
    assert all(f"key={STANDIN_KEY}" in url for url in shodan_standin.state.raw_urls)
    assert all("key" not in r.params for r in shodan_standin.state.requests)


@pytest.fixture
def broken_header_server() -> Iterator[str]:
    """A server on 127.0.0.1 whose answers carry a header line without a colon, which urllib3
    reports in a warning that quotes the whole URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    body = json.dumps({"plan": "x", "query_credits": 5, "scan_credits": 0}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    answer = head.encode() + b"Connection: close\r\nX-Broken header line\r\n\r\n" + body

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_the_key_stays_out_of_urllib3_warnings(broken_header_server: str, settings, caplog, capfd) -> None:
    key = "sk-header-test-0123456789"
    settings.SHODAN_API_URL = broken_header_server
    settings.SHODAN_API_KEY = key
    settings.SHODAN_REQUEST_INTERVAL = 0.0
    shodan_client.reset()
    caplog.set_level(logging.WARNING)
    try:
        assert shodan_client.api_info().query_credits == 5
    finally:
        shodan_client.reset()
    assert "Failed to parse headers" in caplog.text  # urllib3.connection's warning, URL and all
    assert "key=***" in caplog.text
    assert key not in caplog.text + capfd.readouterr().err  # the console handler writes to stderr


def test_scrub_removes_keys_from_messages() -> None:
    text = "HTTPConnectionPool: Max retries exceeded with url: /shodan/host/search?query=x&key=SECRET123&page=2"
    assert "SECRET123" not in scrub(text)
    assert "key=***" in scrub(text)
    assert scrub("token SECRET123 leaked", "SECRET123") == "token *** leaked"


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = list(backoff_delays(retries=6, base=1.0, cap=10.0))
    assert len(delays) == 6
    assert 0.8 <= delays[0] <= 1.2
    assert 3.2 <= delays[2] <= 4.8
    assert all(d <= 12.0 for d in delays)
    assert delays[5] >= 8.0


def test_facet_values_reach_terminals_without_control_characters(shodan_standin: ShodanStandIn) -> None:
    hostile = "Evil\x1b[2J\x1b]0;pwned\x07httpd"
    shodan_standin.add({"ip_str": "198.51.100.66", "port": 61999, "product": hostile, "data": "x"})
    result = shodan_client.count("port:61999", ["product"])
    assert [v.value for v in result.facets["product"]] == ["Evil?[2J?]0;pwned?httpd"]


def test_an_http_session_needs_a_timeout() -> None:
    with pytest.raises(ValueError, match="positive timeout"):
        Session(timeout=0)
    session = Session(timeout=2.5)
    assert session.timeout == 2.5
    assert session.headers["User-Agent"].startswith("medexpo")


def test_the_stand_in_runs_on_its_own_for_trying_plans_by_hand(settings) -> None:
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.shodan_server", "--key", "k1", "--credits", "42"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = re.search(r"SHODAN_API_URL=(http://127\.0\.0\.1:\d+) SHODAN_API_KEY=k1\s+\((\d+) banners", first)
        assert url is not None, first
        assert int(url.group(2)) == 6000  # the bundled sample corpus
        settings.SHODAN_API_URL, settings.SHODAN_API_KEY = url.group(1), "k1"
        assert shodan_client.api_info().query_credits == 42
    finally:
        proc.terminate()
        proc.wait(timeout=10)
