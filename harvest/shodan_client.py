"""Shodan's REST API through the official `shodan` package, isolated behind plain functions.

Each function is one upstream call and returns our own small dataclasses. Everything that can go
wrong becomes a `ShodanError` that says whether trying again can help (`permanent`) and what
kind of problem it is (`kind`), so callers never see the library's exceptions.

Pacing and retries are ours: the library's own rate limiter is switched off (it sleeps in a busy
loop and knows nothing of retries), requests with one key are spaced by `SHODAN_REQUEST_INTERVAL`
seconds (Shodan allows 1 request per second per key) through a `Pacer` (the harvest app installs
one that every process using the database shares, harvest/pacing.py), and rate limits (429),
server errors (5xx), timeouts, cut connections and 2xx answers we cannot read are retried
`SHODAN_MAX_RETRIES` times with exponential backoff. Shodan charges a paid search for every 2xx
answer, and for a request it answers after we stopped waiting (a timeout), so a search page
reports how many it took, and a caller can bound them.

The API key is a secret: it is sent as Shodan requires (`?key=`), and scrubbed from every
message this module produces.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import requests
import shodan
from django.conf import settings

from medexpo.lib.http import Session, backoff_delays, protect_logs, retry_after_seconds, scrub

PAGE_SIZE = 100  # Shodan returns search results in pages of 100
MAX_BANNER_CHARS = 1024 * 1024  # a banner bigger than this is not kept (see records.MAX_RECORD_BYTES)
NO_CREDITS_TEXT = "insufficient query credits"
# The longest Retry-After a 429 or 5xx is waited for, as the longest backoff; asked to wait
# longer, the call gives up at once.
MAX_RETRY_AFTER = 60.0
# Shodan's 401 for a plan without search filters or paging ("Please upgrade your API plan to use
# filters or paging."): the key is good, its plan is not (https://github.com/achillean/shodan-python/issues/31).
NO_FILTERS_TEXT = "upgrade your api plan to use filters"
# A pacer never puts a request more than this many intervals ahead: a slot further off was left by
# a clock that has since been set back, and would hold every request for as long.
MAX_SLOTS_AHEAD = 100

# urllib3 logs request URLs, ?key= included: each request at DEBUG, a malformed answer at WARNING.
protect_logs("urllib3", "requests")


class ShodanError(Exception):
    """A failed Shodan call. `permanent` errors will fail again if retried as they are.
    `answered` is the number of answers the call paid for but could not use (2xx answers, and
    requests that timed out, which Shodan answers all the same): a paid search was charged for each."""

    INVALID_KEY = "invalid_key"
    NO_KEY = "no_key"
    NO_CREDITS = "no_credits"
    ACCESS_DENIED = "access_denied"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    SERVER = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    BAD_RESPONSE = "bad_response"
    RETRIES_EXHAUSTED = "retries_exhausted"

    def __init__(self, message: str, *, kind: str, permanent: bool, answered: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.permanent = permanent
        self.answered = answered


@dataclass(frozen=True, slots=True)
class ApiInfo:
    plan: str
    query_credits: int
    scan_credits: int


@dataclass(frozen=True, slots=True)
class FacetValue:
    value: str
    count: int


@dataclass(frozen=True, slots=True)
class CountResult:
    query: str
    total: int
    facets: dict[str, tuple[FacetValue, ...]]

    @property
    def pages(self) -> int:
        return pages_for(self.total)


@dataclass(frozen=True, slots=True)
class RawBanner:
    """One search match as Shodan sent it: the parsed value and its JSON text. A match over
    MAX_BANNER_CHARS keeps only its size (`value` None, `raw` empty), for the caller to reject."""

    value: object
    raw: str
    size: int

    @property
    def too_large(self) -> bool:
        return self.size > MAX_BANNER_CHARS


@dataclass(frozen=True, slots=True)
class SearchPage:
    query: str
    page: int
    total: int
    banners: tuple[RawBanner, ...]
    answers: int = 1  # answers it took, each charged: more than 1 when a bad or late one was retried

    @property
    def pages(self) -> int:
        return pages_for(self.total)


@dataclass(frozen=True, slots=True)
class HostLookup:
    ip: str
    ports: tuple[int, ...]
    raw: str  # the whole lookup as JSON text, the shape `harvest --hosts` reads


def pages_for(total: int) -> int:
    return math.ceil(max(total, 0) / PAGE_SIZE)


# --- the calls --------------------------------------------------------------------------------


def api_info() -> ApiInfo:
    """The plan and the query and scan credits left on the key. Free.

    # Reference: https://developer.shodan.io/api (API Plan Information: GET /api-info)
    """
    data, _ = _call(
        lambda api: api.info(), valid=_has_credits, invalid="/api-info did not answer with the key's query credits"
    )
    return ApiInfo(
        plan=str(data.get("plan") or "")[:40],
        query_credits=_int(data.get("query_credits")),
        scan_credits=_int(data.get("scan_credits")),
    )


def count(query: str, facets: list[str] | None = None) -> CountResult:
    """The number of results of a search, with summary facets (e.g. port, org, product). Free:
    it costs no query credits whatever the query.

    # Reference: https://developer.shodan.io/api (Search Shodan without Results: GET /shodan/host/count)
    """
    data, _ = _call(
        lambda api: api.count(query, facets=facets or None),
        valid=_has_total,
        invalid="count did not answer with a total",
    )
    return CountResult(query=query, total=_int(data.get("total")), facets=_facets(data.get("facets")))


def search_page(
    query: str, page: int, *, max_answers: int | None = None, charged: Callable[[int], None] | None = None
) -> SearchPage:
    """One page (up to 100 banners, full records) of a search.

    Costs 1 query credit when the query has a filter (ours always have `country:`) or the page is
    beyond the first, for each 2xx answer and each request that timed out (Shodan answers it
    after we stopped waiting): a bad or late one retried is paid again. `max_answers` bounds the
    answers bought (None: as many as the retries allow). `charged(n)` tells a caller that keeps
    accounts how many answers to count as paid should this process die now: just before each
    request is sent, those paid so far and that one (Shodan charges it even if nobody is left to
    read the answer); before a wait to try again, those paid so far.
    # Reference: https://developer.shodan.io/api (Shodan Search: GET /shodan/host/search)
    """
    if page < 1:
        raise ValueError("Shodan pages start at 1")
    data, answers = _call(
        lambda api: api.search(query, page=page, minify=False),
        valid=_is_page,
        invalid="search did not answer with a total and a list of matches",
        max_answers=max_answers,
        charged=charged,
    )
    banners = tuple(_raw_banner(item) for item in data["matches"])
    return SearchPage(query=query, page=page, total=_int(data.get("total")), banners=banners, answers=answers)


def host(ip: str) -> HostLookup:
    """Every banner Shodan holds for one address (its current services).

    # Reference: https://developer.shodan.io/api (Host Information: GET /shodan/host/{ip})
    """
    data, _ = _call(lambda api: api.host(ip), valid=_is_object, invalid="host lookup did not answer with an object")
    ports = tuple(p for p in data.get("ports", []) if isinstance(p, int) and not isinstance(p, bool))
    return HostLookup(ip=ip, ports=ports, raw=json.dumps(data, ensure_ascii=True))


# --- plumbing ---------------------------------------------------------------------------------


class Pacer(Protocol):
    """Spaces the requests of each API key, however many threads or processes send them."""

    def reserve(self, key_id: str, interval: float) -> float:
        """Take the next free slot of the key `key_id` (a hash of the key and the API's URL, see
        key_id) for a request, the one after it `interval` seconds later; return the seconds to
        wait before sending it. Called right before each request; holds nothing while one waits."""
        ...

    def reset(self) -> None:
        """Forget what is held (settings changed, tests)."""
        ...


def next_slot(taken_until: float | None, now: float, interval: float) -> tuple[float, float]:
    """A key's slot for a request at `now`, when earlier requests took the slots until `taken_until`:
    (the time the following request may be sent, the seconds this one waits)."""
    slot = now if taken_until is None else min(max(taken_until, now), now + interval * MAX_SLOTS_AHEAD)
    return slot + interval, slot - now


class ProcessPacer:
    """Paces the requests of this process only: what a process shares with no other (the default,
    and the pacer's choice for an in-memory database)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken_until: dict[str, float] = {}

    def reserve(self, key_id: str, interval: float) -> float:
        with self._lock:
            self._taken_until[key_id], wait = next_slot(self._taken_until.get(key_id), time.monotonic(), interval)
        return wait

    def reset(self) -> None:
        with self._lock:
            self._taken_until.clear()


_pacer: Pacer = ProcessPacer()
_cached: tuple[tuple, shodan.Shodan] | None = None


def use_pacer(pacer: Pacer) -> None:
    """Pace every request of this process through `pacer` from now on."""
    global _pacer
    _pacer = pacer


def key_id(api: shodan.Shodan) -> str:
    """Names the key and the API it is used with (a stand-in's key paces apart from Shodan's) without
    giving the key away: it is stored and compared, never the key."""
    return hashlib.sha256(f"{api.base_url}\n{api.api_key}".encode()).hexdigest()


def _api() -> shodan.Shodan:
    global _cached
    key = settings.SHODAN_API_KEY
    if not key:
        raise ShodanError(
            "no Shodan API key: set SHODAN_API_KEY (or SHODAN_API_KEY_FILE)", kind=ShodanError.NO_KEY, permanent=True
        )
    identity = (key, settings.SHODAN_API_URL, settings.SHODAN_TIMEOUT)
    if _cached is None or _cached[0] != identity:
        api = shodan.Shodan(key)
        if settings.SHODAN_API_URL:
            api.base_url = settings.SHODAN_API_URL.rstrip("/")
        api.api_rate_limit = 0  # we pace and retry ourselves
        # The library offers no timeout; its requests session is replaced by ours, which has one.
        api._session = Session(timeout=settings.SHODAN_TIMEOUT)
        _cached = (identity, api)
    return _cached[1]


def _pace(key: str) -> None:
    """Wait so that the key's requests are at least SHODAN_REQUEST_INTERVAL seconds apart."""
    interval = settings.SHODAN_REQUEST_INTERVAL
    if interval <= 0:
        return  # nothing to space: no pacer is asked (it may query the database)
    wait = _pacer.reserve(key, interval)
    if wait > 0:
        time.sleep(wait)


def _call(
    fn: Callable[[shodan.Shodan], Any],
    *,
    valid: Callable[[Any], bool],
    invalid: str,
    max_answers: int | None = None,
    charged: Callable[[int], None] | None = None,
) -> tuple[Any, int]:
    """fn's answer once it is `valid`, and the number of answers that took (2xx ones and
    timeouts, each charged for a paid search). Retryable errors, a 2xx answer that is not `valid`
    among them, are retried until the retries run out or `max_answers` answers were bought."""
    api = _api()
    key = key_id(api)
    retries = settings.SHODAN_MAX_RETRIES
    delays = backoff_delays(retries=retries, base=_backoff_base())
    answers = 0
    while True:
        _pace(key)
        if charged is not None:
            charged(answers + 1)
        try:
            data = fn(api)
            error = _answer_error(api, data, valid, invalid)
        except shodan.APIError as exc:
            error = _classify(api, str(exc), exc.__context__)
        # Shodan charges a paid search it answers, whether or not we can use the answer (one cut
        # short after its status has a 2xx status too), and it answers one we stopped waiting for
        # as well: a timeout counts as a paid answer.
        answers += _is_2xx(api._session.last_status) or (error is not None and error.kind == ShodanError.TIMEOUT)
        if error is None:
            return data, answers
        error.answered = answers
        if error.permanent:
            raise error
        if answers == max_answers:
            raise _gave_up(error, f"gave up after {answers} paid answers, as many as allowed", answers)
        delay = next(delays, None)
        if delay is None:
            raise _gave_up(error, f"gave up after {retries} retries", answers)
        asked = _retry_after(api, error)
        if asked is not None and asked > MAX_RETRY_AFTER:
            # Retries within a minute would only be spent (and hold a worker): the run stops, resumably.
            raise _gave_up(error, f"Shodan asks to wait {asked:.0f} s", answers)
        if charged is not None:
            charged(answers)  # a refused request was not charged: not counted while we wait
        time.sleep(max(delay, asked or 0.0))


def _answer_error(api: shodan.Shodan, data: object, valid: Callable[[Any], bool], invalid: str) -> ShodanError | None:
    """What is wrong with an answer the library returned, if anything."""
    if not _is_2xx(api._session.last_status):
        # The library raises only on 401, 403, 502, a body that is not JSON or one with an "error"
        # key: a 429 or 503 with another body comes back as if it were data.
        return _classify(api, json.dumps(data), None)
    if not valid(data):
        # Usually a body cut short or garbled on the way: worth a retry.
        return ShodanError(invalid, kind=ShodanError.BAD_RESPONSE, permanent=False)
    return None


def _retry_after(api: shodan.Shodan, error: ShodanError) -> float | None:
    """The seconds a 429 or 5xx asked us to wait (Retry-After), if it said so usably."""
    if error.kind not in (ShodanError.RATE_LIMITED, ShodanError.SERVER):
        return None
    return retry_after_seconds(api._session.last_headers.get("Retry-After", ""))


def _gave_up(error: ShodanError, why: str, answers: int) -> ShodanError:
    return ShodanError(f"{error} ({why})", kind=ShodanError.RETRIES_EXHAUSTED, permanent=False, answered=answers)


def _is_2xx(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _is_object(data: object) -> bool:
    return isinstance(data, dict)


def _has_int(data: object, key: str) -> bool:
    value = data.get(key) if isinstance(data, dict) else None
    return isinstance(value, int) and not isinstance(value, bool)


def _has_credits(data: object) -> bool:
    # Taken for 0, a garbled answer would stop a run with "no query credits left" on a key that has them.
    return _has_int(data, "query_credits")


def _has_total(data: object) -> bool:
    # Shodan always sends the total: without it an answer was cut or garbled, and taking it for
    # 0 would skip the query (or its remaining pages) without a word.
    return _has_int(data, "total")


def _is_page(data: object) -> bool:
    return isinstance(data, dict) and _has_total(data) and isinstance(data.get("matches"), list)


def _backoff_base() -> float:
    # The first retry waits this long, then twice as long each time. Shodan's own limit is
    # 1 request/second, so waiting at least that long is the least a retry should do.
    return float(getattr(settings, "SHODAN_BACKOFF", max(1.0, settings.SHODAN_REQUEST_INTERVAL)))


def _classify(api: shodan.Shodan, message: str, cause: BaseException | None) -> ShodanError:
    """The error for the last answer's status, with `message` (the library's, or the body) and the
    exception that caused it when there was no answer."""
    session: Session = api._session
    status = session.last_status
    text = scrub(message, api.api_key)[:300]
    if NO_CREDITS_TEXT in text.lower():
        return ShodanError(f"Shodan: no query credits left ({text})", kind=ShodanError.NO_CREDITS, permanent=True)
    if status is None:
        if isinstance(cause, requests.Timeout):
            return ShodanError(
                f"Shodan did not answer within {session.timeout:g} s", kind=ShodanError.TIMEOUT, permanent=False
            )
        what = type(cause).__name__ if cause is not None else "no answer"
        return ShodanError(f"connection to Shodan failed ({what})", kind=ShodanError.CONNECTION, permanent=False)
    if status == 401 and NO_FILTERS_TEXT in text.lower():
        return ShodanError(
            f"Shodan denied access ({status}): the key's plan does not allow this call ({text})",
            kind=ShodanError.ACCESS_DENIED,
            permanent=True,
        )
    if status == 401:
        return ShodanError(
            f"Shodan refused the API key (401: {text}); check SHODAN_API_KEY",
            kind=ShodanError.INVALID_KEY,
            permanent=True,
        )
    if status == 429:
        return ShodanError("Shodan rate limit (429)", kind=ShodanError.RATE_LIMITED, permanent=False)
    if status >= 500:
        return ShodanError(f"Shodan server error ({status})", kind=ShodanError.SERVER, permanent=False)
    if status == 403:
        return ShodanError(
            f"Shodan denied access (403): the key's plan does not allow this call ({text})",
            kind=ShodanError.ACCESS_DENIED,
            permanent=True,
        )
    if status == 404:
        return ShodanError(f"Shodan has no information ({text})", kind=ShodanError.NOT_FOUND, permanent=True)
    if 200 <= status < 300:
        # A 2xx whose body is not the JSON we expect, or was cut short on the way: worth a retry.
        what = f"cut short: {type(cause).__name__}" if isinstance(cause, requests.RequestException) else text
        return ShodanError(f"unreadable answer from Shodan ({what})", kind=ShodanError.BAD_RESPONSE, permanent=False)
    return ShodanError(f"Shodan refused the request ({status}: {text})", kind=ShodanError.BAD_REQUEST, permanent=True)


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value):
        return max(int(value), 0)
    return 0


def _facets(value: object) -> dict[str, tuple[FacetValue, ...]]:
    if not isinstance(value, dict):
        return {}
    facets = {}
    for name, items in list(value.items())[:20]:
        if not isinstance(items, list):
            continue
        facets[str(name)[:40]] = tuple(
            FacetValue(value=_printable(str(item.get("value"))[:255]), count=_int(item.get("count")))
            for item in items[:100]
            if isinstance(item, dict)
        )
    return facets


def _printable(text: str) -> str:
    # Facet values (products, organisations) are written by strangers and end up on terminals:
    # no escape sequences or other control characters.
    return "".join(c if c.isprintable() else "?" for c in text)


def _raw_banner(item: object) -> RawBanner:
    raw = json.dumps(item, ensure_ascii=True)
    if len(raw) > MAX_BANNER_CHARS:
        return RawBanner(value=None, raw="", size=len(raw))
    return RawBanner(value=item, raw=raw, size=len(raw))


def reset() -> None:
    """Forget the cached client and what the pacer holds (settings changed, tests)."""
    global _cached
    _cached = None
    _pacer.reset()
