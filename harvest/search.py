"""Harvest through Shodan's search API: a query plan, query by query and page by page.

The credit rule applied (Shodan's API documentation for /shodan/host/search): a search costs
1 query credit per page of 100 results when the query has a filter or the page is beyond the
first; /shodan/host/count and /api-info are free. Every query of a run carries a `country:`
filter, so every page costs 1 credit and a query of N results costs ceil(N / 100) credits.

A page is the unit of resume: after each page the source emits a checkpoint
{"query": index of the next query, "page": its next page}, which commits with the page's
banners and the credits spent so far. A resumed run starts from there, so no committed page is
ever bought twice. The page being bought is counted in the run's credits before its request is
sent: Shodan charges it even if the process dies waiting, and the resumed run buys it again.
Before its first page a query is counted (free), and a query with no results costs nothing.

A credit limit (--max-credits) belongs to the run, in credits spent by the whole run: a resumed
run gets what is left of it, not a new one, unless it is given more explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

from django.conf import settings

from harvest import shodan_client
from harvest.ingest import Checkpoint
from harvest.locking import writing_run
from harvest.models import HarvestRun
from harvest.plans import PlanError, country_filter, plan_load, query_filters
from harvest.records import MAX_RECORD_BYTES, Reason, RecordError, record_from_object
from harvest.services import HarvestError, HarvestStopped, ProgressFn, register_source
from harvest.shodan_client import ShodanError

# A page is the unit of resume: commit after every page that brought anything, so a run killed
# at any moment buys at most the page in flight again.
SEARCH_BATCH_SIZE = 1
T = TypeVar("T")
COUNT_FACETS = ["port:10", "org:10", "product:10"]
QUERY_FAILED = "query_failed"
# Shodan served an empty page where its total promised results: the query ends there, short.
SHORT_RESULTS = "short_results"
# Reported like rejections, with a position, but counted apart (HarvestRun.query_errors): a query
# is not a record read.
QUERY_ERROR_DESCRIPTIONS = {
    QUERY_FAILED: "Shodan refused the query (a bad filter, a query it cannot run)",
    SHORT_RESULTS: "a page came back empty before the results Shodan's total promised",
}
# Errors after which no further call can succeed until someone acts (new key, more credits, a
# better plan) or Shodan recovers: the run stops and can be resumed.
STOPPING_ERRORS = {
    ShodanError.INVALID_KEY,
    ShodanError.NO_KEY,
    ShodanError.NO_CREDITS,
    ShodanError.ACCESS_DENIED,
    ShodanError.RETRIES_EXHAUSTED,
}


def credits_for_page(*, query: str, page: int) -> int:
    """Query credits one search page costs under Shodan's rule (see the module docstring)."""
    return 1 if query_filters(query) or page > 1 else 0


# --- starting and sizing a search run -------------------------------------------------------


def harvest_search_start(
    *, plan: str, country: str = "", max_credits: int | None = None, occurrence: str = ""
) -> HarvestRun:
    """Create a run for a query plan. The queries, with the country filter, are fixed on the run,
    so a resumed run asks exactly what the first one did even if the plan files changed.

    `occurrence` names one firing of a schedule: the run already started for it is returned
    instead, for the caller to go on with. django-q2 delivers a task again when it failed or its
    worker died, and a new run would buy the pages the first one paid for again."""
    if occurrence:
        existing = HarvestRun.objects.filter(source=HarvestRun.Source.SEARCH, options__occurrence=occurrence)
        if (run := existing.order_by("pk").first()) is not None:
            return run
    try:
        loaded = plan_load(name=plan)
        code = country_filter(country or settings.MEDEXPO_COUNTRY)
    except PlanError as exc:
        raise HarvestError(str(exc)) from None
    _check_budget(max_credits)
    queries = [q.with_country(code) for q in loaded.queries]
    return HarvestRun.objects.create(
        source=HarvestRun.Source.SEARCH,
        plan=loaded.name,
        target="\n".join(queries),
        country=code,
        options={
            "queries": queries,
            "labels": [q.label for q in loaded.queries],
            "credit_limit": max_credits,
            **({"occurrence": occurrence} if occurrence else {}),
        },
    )


def harvest_search_set_budget(*, run: HarvestRun, max_credits: int | None) -> HarvestRun:
    """Let a search run spend `max_credits` more than it has spent so far (None: no limit). This
    is how a run stopped at its limit goes on; a plain resume keeps the limit the run has."""
    _check_budget(max_credits)
    if writing_run() == run.pk:
        # N more than spent so far: the process writing the run spends on while this one would
        # wait for it, and the limit would be spent before this one began.
        raise HarvestError(f"run {run.pk} is being written right now; once it stops, resume it with --max-credits")
    limit = None if max_credits is None else run.credits_spent + max_credits
    run.options = {**run.options, "credit_limit": limit}
    run.save(update_fields=["options", "updated_at"])
    return run


def _check_budget(max_credits: int | None) -> None:
    if max_credits is not None and max_credits < 0:
        raise HarvestError("--max-credits must be 0 or more")


def harvest_search_count(
    *, plan: str, country: str = "", max_credits: int | None = None, progress: ProgressFn | None = None
) -> dict:
    """What a plan would cost, from Shodan's free count call: per query the total, pages, credits
    and facets (port, org, product), and the credits left on the key; with `max_credits`, whether
    a run capped there would fetch the whole plan, or in which query it would stop. Spends no
    credits."""
    try:
        loaded = plan_load(name=plan)
        code = country_filter(country or settings.MEDEXPO_COUNTRY)
    except PlanError as exc:
        raise HarvestError(str(exc)) from None
    _check_budget(max_credits)
    info = _stop_to_error(shodan_client.api_info)
    rows = []
    for index, item in enumerate(loaded.queries):
        rows.append(_count_row(item.with_country(code), item.label))
        if progress is not None:
            progress(index + 1)
    counted = [r for r in rows if r["error"] is None]
    credits = sum(r["credits"] for r in counted)
    return {
        "plan": loaded.name,
        "country": code,
        "queries": rows,
        "total": sum(r["total"] for r in counted),
        "pages": sum(r["pages"] for r in counted),
        "credits": credits,
        "failed": len(rows) - len(counted),
        "credits_left": info.query_credits,
        "api_plan": info.plan,
        "fits": credits <= info.query_credits,
        "credits_spent": 0,
        "cap": None if max_credits is None else credit_cap(rows, max_credits),
    }


def credit_cap(rows: list[dict], max_credits: int) -> dict:
    """Where a run capped at `max_credits` would stop, from counted rows in plan order: a run buys
    the queries' pages in that order until the next would pass the cap. Queries whose count failed
    cost nothing here (their cost is unknown: their rows say 0 credits)."""
    spent = 0
    for number, row in enumerate(rows, 1):
        spent += row["credits"]
        if spent > max_credits:
            return {"max_credits": max_credits, "fits": False, "stops_in_query": number, "label": row["label"]}
    return {"max_credits": max_credits, "fits": True, "stops_in_query": None, "label": None}


def _count_row(query: str, label: str) -> dict:
    row = {"label": label, "query": query, "total": 0, "pages": 0, "credits": 0, "facets": {}, "error": None}
    try:
        result = shodan_client.count(query, COUNT_FACETS)
    except ShodanError as exc:
        if exc.kind in STOPPING_ERRORS:
            raise HarvestError(str(exc)) from None
        row["error"] = str(exc)
        return row
    row["total"] = result.total
    row["pages"] = result.pages
    row["credits"] = sum(credits_for_page(query=query, page=p) for p in range(1, result.pages + 1))
    row["facets"] = {
        name: [{"value": v.value, "count": v.count} for v in values] for name, values in result.facets.items()
    }
    return row


def _stop_to_error(call: Callable[[], T]) -> T:
    try:
        return call()
    except ShodanError as exc:
        raise HarvestError(str(exc)) from None


# --- the source ------------------------------------------------------------------------------


@register_source(HarvestRun.Source.SEARCH)
def _search_source(run: HarvestRun, progress: ProgressFn | None) -> Iterator:
    return _SearchRun(run, progress).events()


class _SearchRun:
    """One invocation of a search run: reads from the checkpoint, pays page by page."""

    def __init__(self, run: HarvestRun, progress: ProgressFn | None) -> None:
        self.run = run
        self.progress = progress
        self.queries: list[str] = list(run.options.get("queries", []))
        self.query = int(run.checkpoint.get("query", 0))
        self.page = int(run.checkpoint.get("page", 1))
        self.spent = run.credits_spent
        # Runs started before the limit was stored kept their first --max-credits: the safe reading.
        self.limit: int | None = run.options.get("credit_limit", run.options.get("max_credits"))
        self.credits_left = 0
        self.counted = 0  # the count's total for the query whose first page is next

    def events(self) -> Iterator:
        if not self.queries:
            raise HarvestError(f"run {self.run.pk} has no queries")
        try:
            self.credits_left = self._call(shodan_client.api_info).query_credits
        except _QueryFailed as failed:
            raise HarvestStopped(f"cannot read the credits left: {failed}") from None
        while self.query < len(self.queries):
            if self.page == 1:
                self.counted = yield from self._count()
                if self.counted == 0:
                    yield from self._next_query()
                    continue
            yield from self._fetch_page()
            if self.progress is not None:
                self.progress(self.query)

    def _count(self) -> Generator[tuple, None, int]:
        try:
            return self._call(shodan_client.count, self.queries[self.query]).total
        except _QueryFailed as failed:
            yield failed.event
            return 0

    def _fetch_page(self) -> Iterator:
        query = self.queries[self.query]
        cost = credits_for_page(query=query, page=self.page)
        self._check_credits(cost)
        try:
            result = self._buy_page(query, cost)
        except ShodanError as exc:
            yield self._checkpoint()  # what was paid commits even if the run stops here
            yield self._failed(exc).event
            yield from self._next_query()
            return
        yield from _page_events(result, self.query + 1, self.page)
        # The page's own total, the latest word; a first page whose total is 0 where the count
        # just found results is served short too.
        promised, by = (result.total, "total") if result.total else (self.counted if self.page == 1 else 0, "count")
        if not result.banners and (self.page - 1) * shodan_client.PAGE_SIZE < promised:
            # Buying further pages would likely bring nothing either; the run goes on, on record.
            yield (
                "error",
                f"query {self.query + 1} page {self.page}",
                SHORT_RESULTS,
                f"page {self.page} came back empty, though Shodan's {by} promised {promised} results "
                f"({shodan_client.pages_for(promised)} pages); the rest of this query was not served",
            )
        if self.page >= result.pages or not result.banners:
            yield from self._next_query()
        else:
            self.page += 1
            yield self._checkpoint()

    def _buy_page(self, query: str, cost: int) -> shodan_client.SearchPage:
        # A bad answer is retried and paid again: no more often than the limit and the key allow.
        room = self.credits_left if self.limit is None else min(self.credits_left, self.limit - self.spent)

        def charged(answers: int) -> None:
            # Shodan charges a request it answers even if this process is killed waiting for it, and
            # the resumed run buys the page again: counted before it is sent, the page in flight
            # stays counted (and the run's limit holds) whatever happens next; one refused is
            # uncounted again while the run waits to retry it. The page's checkpoint then writes
            # what was really paid.
            HarvestRun.objects.filter(pk=self.run.pk).update(credits_spent=self.spent + cost * answers)

        try:
            result = shodan_client.search_page(
                query, self.page, max_answers=room // cost if cost else None, charged=charged if cost else None
            )
        except ShodanError as exc:
            self._pay(cost * exc.answered)  # answers we could not use were charged all the same
            raise
        self._pay(cost * result.answers)
        return result

    def _pay(self, credits: int) -> None:
        self.spent += credits
        self.credits_left -= credits

    def _next_query(self) -> Iterator:
        self.query += 1
        self.page = 1
        yield self._checkpoint()

    def _checkpoint(self) -> tuple:
        return ("checkpoint", Checkpoint({"query": self.query, "page": self.page}, credits_spent=self.spent))

    def _where(self) -> str:
        return f"query {self.query + 1} of {len(self.queries)} page {self.page}"

    def _check_credits(self, cost: int) -> None:
        resume = f"resume with: manage.py harvest --resume {self.run.pk}"
        if self.limit is not None and self.spent + cost > self.limit:
            raise HarvestStopped(
                f"--max-credits reached: {self.spent} of the {self.limit} credits this run may spend; "
                f"next: {self._where()}; allow N more with: manage.py harvest --resume {self.run.pk} --max-credits N"
            )
        if cost > self.credits_left:
            raise HarvestStopped(
                f"no query credits left on the Shodan key ({self.credits_left}); next: {self._where()}; "
                f"{resume} once credits are topped up"
            )

    def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except ShodanError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: ShodanError) -> _QueryFailed:
        """The failure of this query to report, or HarvestStopped when no further call can succeed."""
        if exc.kind in STOPPING_ERRORS:
            raise HarvestStopped(
                f"{exc}; stopped at {self._where()}; resume with: manage.py harvest --resume {self.run.pk}"
            ) from None
        # Anything else concerns this query alone (a query Shodan refuses): report, go on.
        return _QueryFailed(("error", f"query {self.query + 1} page {self.page}", QUERY_FAILED, str(exc)))


class _QueryFailed(Exception):  # noqa: N818 - internal control flow
    def __init__(self, event: tuple) -> None:
        super().__init__(event[3])
        self.event = event


def _page_events(result: shodan_client.SearchPage, query_no: int, page: int) -> Iterator:
    for index, banner in enumerate(result.banners, 1):
        position = f"query {query_no} page {page} item {index}"
        if banner.too_large:
            yield (
                "reject",
                position,
                Reason.TOO_LARGE,
                f"record of {banner.size} characters, limit {MAX_RECORD_BYTES}",
            )
        elif not isinstance(banner.value, dict):
            yield ("reject", position, Reason.NOT_OBJECT, f"JSON {type(banner.value).__name__}, expected an object")
        else:
            try:
                yield ("record", position, record_from_object(banner.value, banner.raw))
            except RecordError as exc:
                yield ("reject", position, exc.reason, exc.detail)
