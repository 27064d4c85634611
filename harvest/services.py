"""Harvest services: start, drive and resume runs; read what was stored."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone
from django_q.tasks import async_task
from psycopg.pq import TransactionStatus

from harvest.ingest import BatchWriter, Checkpoint
from harvest.locking import close_connection, harvest_lock, run_owned, unowned, writing_run
from harvest.models import HarvestRun, Service
from harvest.plans import PlanError, country_filter
from harvest.readers import file_events, file_identity
from medexpo.lib.collector import fewer_collections
from medexpo.lib.prefetch import prefetch
from medexpo.lib.text import one_line

logger = logging.getLogger(__name__)


class HarvestError(Exception):
    """A run cannot start or resume; the message is for the user."""


class HarvestStopped(Exception):  # noqa: N818 - a normal outcome, not an error
    """A source stopped on purpose (credits spent, invalid key); the run can be resumed later."""


ProgressFn = Callable[[int], None]

# Sources register how to produce events for a run: (run, progress) -> events.
EventSource = Callable[[HarvestRun, ProgressFn | None], Iterable]
SOURCES: dict[str, EventSource] = {}
# Sources whose reading may run ahead of the database in a thread. Not the search API: a page
# fetched ahead and lost in a crash would be paid for twice.
READ_AHEAD: set[str] = set()


def register_source(name: str, *, read_ahead: bool = False) -> Callable[[EventSource], EventSource]:
    def decorator(fn: EventSource) -> EventSource:
        SOURCES[name] = fn
        if read_ahead:
            READ_AHEAD.add(name)
        return fn

    return decorator


@register_source(HarvestRun.Source.FILE, read_ahead=True)
def _file_source(run: HarvestRun, progress: ProgressFn | None) -> Iterator:
    return file_events(Path(run.target), run.checkpoint, hosts=False, progress=progress)


@register_source(HarvestRun.Source.HOSTS, read_ahead=True)
def _hosts_source(run: HarvestRun, progress: ProgressFn | None) -> Iterator:
    return file_events(Path(run.target), run.checkpoint, hosts=True, progress=progress)


def harvest_file_start(*, path: str | Path, hosts: bool = False, country: str = "") -> HarvestRun:
    """Create a run for a `shodan download` file (or a file of host lookups with `hosts`)."""
    if not str(path):
        raise HarvestError("no file given")
    path = Path(path).resolve()
    if path.is_dir():
        raise HarvestError(f"{path} is a folder, not a file")
    if not path.is_file():
        # A named pipe or a device exists, and reading one could wait or go on for ever.
        raise HarvestError(f"{path} is not a regular file" if path.exists() else f"no such file: {path}")
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes Python keeps as lone surrogates, which no database column stores
        raise HarvestError(f"{path}: the file name is not valid UTF-8; rename the file") from None
    try:
        code = country_filter(country) if country else ""
    except PlanError as exc:
        raise HarvestError(str(exc)) from None
    try:
        identity = file_identity(path)  # reads a sample of the file
    except OSError as exc:
        raise HarvestError(f"{path} cannot be read: {exc.strerror or exc}") from None
    return HarvestRun.objects.create(
        source=HarvestRun.Source.HOSTS if hosts else HarvestRun.Source.FILE,
        target=str(path),
        country=code,
        options={"file": identity},
    )


def harvest_run_get_resumable(*, run_id: int) -> HarvestRun:
    try:
        run = HarvestRun.objects.get(pk=run_id)
    except HarvestRun.DoesNotExist:
        raise HarvestError(f"there is no harvest run {run_id}") from None
    if not run.is_resumable:
        raise HarvestError(f"run {run_id} has completed; start a new run instead")
    if run.source in (HarvestRun.Source.FILE, HarvestRun.Source.HOSTS):
        path = Path(run.target)
        if not path.is_file():
            raise HarvestError(f"run {run_id} read {path}, which is gone")
        # Every part of the identity the run stored: runs started before mtime_ns or the content
        # sample have none, and are checked by what they have.
        try:
            current, stored = file_identity(path), run.options.get("file", {})
        except OSError as exc:
            raise HarvestError(f"run {run_id} read {path}, which cannot be read now: {exc.strerror or exc}") from None
        if not stored or any(current.get(key) != value for key, value in stored.items()):
            raise HarvestError(f"run {run_id}: {path} has changed since the run started; start a new run")
    return run


def harvest_run_enqueue_resume(*, run: HarvestRun) -> None:
    """Resume a run in the background (a qcluster worker). Nothing here writes, so the task is
    handed over at once, and a broker that cannot take it is a HarvestError, not a server error."""
    run = harvest_run_get_resumable(run_id=run.pk)
    if writing_run() == run.pk:
        raise HarvestError(f"run {run.pk} is being written right now; it needs no resume")
    if harvest_run_is_being_run(run_id=run.pk):
        raise HarvestError(f"run {run.pk} is being run right now (it waits for another harvest); it needs no resume")
    try:
        async_task("harvest.tasks.harvest_resume", run.pk, task_name=f"resume run {run.pk}")
    except Exception as exc:  # the broker's own errors: redis, or the database of the ORM broker
        raise HarvestError(
            f"run {run.pk} could not be handed to the task queue ({type(exc).__name__}: {one_line(str(exc))[:200]}); "
            f"is qcluster's broker running? The run is unchanged: resume it with manage.py harvest --resume {run.pk}"
        ) from exc


def harvest_execute(
    *,
    run: HarvestRun,
    progress: ProgressFn | None = None,
    batch_size: int | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> HarvestRun:
    """Drive a new or resumed run to its end. Each batch commits with its checkpoint.

    One run writes at a time (harvest/locking.py): while another holds the lock, this one waits,
    after telling `on_wait` (or the log) why. It then continues from its checkpoint as stored,
    which another process may have moved on, or completed, in the meantime."""
    locked = False
    try:
        with run_owned(run.pk):
            # Before waiting: a run this process is about to write is not one that nobody runs.
            _reclaim_abandoned(run)
            harvest_runs_stop_abandoned()
            with harvest_lock(run.pk, on_wait=lambda: (on_wait or logger.warning)(_waiting_message(run))):
                locked = True
                run.refresh_from_db()
                if run.status == HarvestRun.Status.COMPLETED:
                    return run
                with fewer_collections():
                    return _execute(run, progress, batch_size)
    except (KeyboardInterrupt, SystemExit) as stop:
        if not locked:
            _interrupted_waiting(run, stop)
        raise


def harvest_writing_run() -> int | None:
    """The run writing right now, if any (one at a time); others marked running wait for it."""
    return writing_run()


def harvest_run_is_being_run(*, run_id: int) -> bool:
    """Whether a process runs run `run_id` now, writing it or waiting to."""
    with unowned(run_id) as free:
        return not free


def harvest_runs_stop_abandoned() -> list[int]:
    """Mark stopped every run marked running that no process runs any more: its process was
    killed (kill -9, out of memory, a power cut) or its django-q2 worker died, and nothing could
    record it. A run that is writing, or waiting for the harvest lock, is never marked. Returns
    the runs marked."""
    marked = []
    for pk in HarvestRun.objects.filter(status=HarvestRun.Status.RUNNING).values_list("pk", flat=True):
        with unowned(pk) as free:
            if free and _stop_if_running(pk, _abandoned_message(pk)):
                marked.append(pk)
    if marked:
        logger.warning("harvest runs %s were marked running with no process behind them: marked stopped", marked)
    return marked


def _abandoned_message(run_id: int) -> str:
    return (
        "interrupted: no process was running it any more (killed, or its worker or machine stopped); "
        f"resume with --resume {run_id}"
    )


def _reclaim_abandoned(run: HarvestRun) -> None:
    """A run this process has taken up is running again if all that stopped it was being found
    with no process behind it: found so in the instant between its creation and run_owned, or
    found so before and now resumed."""
    HarvestRun.objects.filter(pk=run.pk, status=HarvestRun.Status.STOPPED, message=_abandoned_message(run.pk)).update(
        status=HarvestRun.Status.RUNNING, message="", finished_at=None, updated_at=timezone.now()
    )


def _stop_if_running(run_id: int, message: str) -> bool:
    now = timezone.now()
    return bool(
        HarvestRun.objects.filter(pk=run_id, status=HarvestRun.Status.RUNNING).update(
            status=HarvestRun.Status.STOPPED, message=message[:2000], finished_at=now, updated_at=now
        )
    )


def _interrupted_waiting(run: HarvestRun, stop: BaseException) -> None:
    """Ctrl-C, or django-q2's timeout, before the run got the lock. A run marked running that no
    other process runs (a new one, or one interrupted before) is marked stopped, as an interrupted
    run is; a stopped or failed one keeps its reason, and one run elsewhere (the same run resumed
    twice) is left to that process."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        # It may land while the connection waits for the lock (a query in flight leaves it
        # unusable) or between the lock's keys: closing the connection gives up what it holds.
        close_connection()
    with unowned(run.pk) as free:
        if free:
            _stop_if_running(run.pk, f"{_interrupted(stop)} while waiting for another harvest; resume with --resume")


def _interrupted(stop: BaseException) -> str:
    """Ctrl-C says nothing; django-q2's timeout says why ("Task exceeded maximum timeout value")."""
    return f"interrupted ({stop})" if str(stop) else "interrupted"


def _waiting_message(run: HarvestRun) -> str:
    writing = writing_run()
    named = f" (run {writing})" if writing is not None else ""
    return f"run {run.pk} waits: another harvest is writing to this database{named}; it goes on when that one ends"


def _execute(run: HarvestRun, progress: ProgressFn | None, batch_size: int | None) -> HarvestRun:
    _mark(run, HarvestRun.Status.RUNNING, "")
    outside_transactions = connection.get_autocommit() and not connection.in_atomic_block
    # The writer thread lets the source read on while a batch commits: not the search API, whose
    # next page would be bought before the page before it is stored (and bought again if the
    # process died then).
    pipelined = None if run.source in READ_AHEAD else False
    writer = BatchWriter(run, batch_size or settings.HARVEST_BATCH_SIZE, pipelined=pipelined)
    last = Checkpoint(run.checkpoint)
    marks = writer.mark()
    try:
        events = SOURCES[run.source](run, progress)
        # Reading ahead in a thread pays only while the database work holds up this thread; with
        # the pipelined writer it would only compete for the GIL.
        if run.source in READ_AHEAD and not writer.pipelined:
            events = prefetch(events)
        for event in events:
            kind = event[0]
            if kind == "record":
                writer.add(event[1], event[2])
            elif kind == "line":
                if writer.pending >= writer.batch_size:
                    writer.flush(Checkpoint({"line": event[1], "offset": event[2]}))
                last = event
                marks = writer.mark()
            elif kind == "reject":
                writer.reject(event[1], event[2], event[3])
            elif kind == "error":
                writer.note_error(event[1], event[2], event[3])
            else:
                last = event[1]
                writer.maybe_flush(last)
                marks = writer.mark()
        last = _checkpoint(last)
        writer.flush(last)
        writer.close()
    except HarvestStopped as stop:
        # A source stops between events: keep what its last checkpoint covers; the rest is read
        # again on resume.
        writer.rewind(marks)
        writer.flush(_checkpoint(last))
        writer.close()
        return _mark(run, HarvestRun.Status.STOPPED, str(stop))
    except (KeyboardInterrupt, SystemExit) as stop:
        # Ctrl-C, or django-q2 ending the task at Q_CLUSTER["timeout"] (its TimeoutException is a
        # SystemExit). It may arrive anywhere, even inside a flush: write nothing more. A batch already
        # handed to the writer commits whole with its checkpoint; resuming reads everything after it again.
        _stopped_by_interrupt(run, writer, stop, outside_transactions)
        raise
    except Exception as exc:
        behind = _interrupt_behind(exc)
        if behind is not None:
            # The interrupt landed inside a commit, between the COMMIT's sending and its answer:
            # Django's clean-up of the block then failed on the busy connection, and its error
            # took the interrupt's place. The run stopped, as for any interrupt.
            _stopped_by_interrupt(run, writer, behind, outside_transactions)
            raise behind from None
        _close_after_failure(writer)
        _mark_on_usable_connection(run, HarvestRun.Status.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    return _mark(run, HarvestRun.Status.COMPLETED, "")


def _stopped_by_interrupt(run: HarvestRun, writer: BatchWriter, stop: BaseException, outside: bool) -> None:
    _close_after_failure(writer)
    if outside:
        _leave_half_made_transaction()
    _mark_on_usable_connection(run, HarvestRun.Status.STOPPED, f"{_interrupted(stop)}; resume with --resume")


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | SystemExit | None:
    """The Ctrl-C or timeout during whose handling `exc` was raised, if any."""
    seen: set[int] = set()
    cause = exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt | SystemExit):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


def _mark_on_usable_connection(run: HarvestRun, status: str, message: str) -> None:
    try:
        _mark(run, status, message)
    except DatabaseError:
        # The error or interrupt landed while the connection waited for a query's answer: that
        # connection is unusable ("another command is already in progress"). Closing it also gives
        # up its lock at once, instead of when the worker's process next uses it; a new one says why.
        close_connection()
        _mark(run, status, message)


def _checkpoint(last: Checkpoint | tuple) -> Checkpoint:
    """A checkpoint event's payload, or a file's ("line", line, offset) event as a checkpoint."""
    if isinstance(last, tuple):
        return Checkpoint({"line": last[1], "offset": last[2]})
    return last


def _leave_half_made_transaction() -> None:
    """An interrupt that lands inside Django's opening or closing of a batch's transaction leaves
    the connection in a transaction nothing will commit (autocommit off, the block's bookkeeping
    half done): what is written next, the run's stop mark, would be lost at exit. Roll that
    transaction back (its batch is read again on resume) and return to autocommit. Django's own
    flags are not enough: the driver begins first (SQLite's BEGIN, psycopg's autocommit off), and
    a signal that arrives during it is raised before Django records that it did."""
    if connection.get_autocommit() and not connection.in_atomic_block and not _driver_in_transaction():
        return
    connection.atomic_blocks.clear()
    connection.savepoint_ids.clear()
    connection.in_atomic_block = False
    try:
        connection.rollback()
        connection.set_autocommit(True)
    except DatabaseError:  # a query in flight: the connection is unusable; a new one starts clean
        close_connection()


def _driver_in_transaction() -> bool:
    """Whether the database driver's connection is in, or will open, a transaction."""
    raw = connection.connection
    if raw is None:
        return False
    if connection.vendor == "sqlite":
        return bool(raw.in_transaction or raw.isolation_level is not None)
    if connection.vendor == "postgresql":
        return not raw.autocommit or raw.info.transaction_status != TransactionStatus.IDLE
    return False


def _close_after_failure(writer: BatchWriter) -> None:
    """Let a batch in flight end before the run is marked; the error being raised is the one to report."""
    try:
        writer.close()
    except Exception:  # noqa: BLE001, S110 - the run is failing already; its first error is reported
        pass


def _mark(run: HarvestRun, status: str, message: str) -> HarvestRun:
    run.status = status
    run.message = message[:2000]
    run.finished_at = None if status == HarvestRun.Status.RUNNING else timezone.now()
    run.save(update_fields=["status", "message", "finished_at", "updated_at"])
    return run


def harvest_run_summary(*, run: HarvestRun, examples: int = 5) -> dict:
    """What a run did, as JSON-able data: counts, rejected records by reason with example
    positions, and apart from them a search's query errors: `seen` is `accepted` plus `rejected`."""
    run.refresh_from_db()

    def by_reason(counts: dict) -> dict:
        reasons = {}
        for reason, count in counts.items():
            rows = run.rejections.filter(reason=reason).values_list("position", "detail")[:examples]
            reasons[reason] = {"count": count, "examples": [{"position": p, "detail": d} for p, d in rows]}
        return reasons

    return {
        "run": run.pk,
        "source": run.source,
        "target": run.target,
        "status": run.status,
        "message": run.message,
        "seen": run.seen,
        "accepted": run.accepted,
        "new": run.new,
        "updated": run.updated,
        "unchanged": run.unchanged,
        "rejected": dict(run.rejected),
        "rejections": by_reason(run.rejected),
        "query_errors": by_reason(run.query_errors),
        "credits_spent": run.credits_spent,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


class ExportedService(NamedTuple):
    """What an export enricher learns of each service of a batch."""

    pk: int
    host_id: int


# Other parts (classification, disclosure's owners) add columns to the export by registering a
# function that fills a batch of rows in place: fn(services, rows). Registered in AppConfig.ready().
ExportEnricher = Callable[[list[ExportedService], list[dict]], None]
EXPORT_ENRICHERS: list[ExportEnricher] = []


def register_export_enricher(fn: ExportEnricher) -> ExportEnricher:
    if fn not in EXPORT_ENRICHERS:
        EXPORT_ENRICHERS.append(fn)
    return fn


# Plain values, not model instances: building a model for every row was most of an export's time.
# Banners and raw records (up to a megabyte each) are not exported: they stay in the database.
_EXPORT_COLUMNS = (
    "pk",
    "host_id",
    "host__ip",
    "port",
    "transport",
    "product",
    "version",
    "module",
    "host__org",
    "host__asn",
    "host__country",
    "host__hostnames",
    "first_seen",
    "last_seen",
)


def service_count() -> int:
    return Service.objects.count()


def service_export_rows(*, chunk_size: int = 2000) -> Iterator[dict]:
    """Every stored service as a plain dict, streamed in primary-key order, in batches."""
    last_pk = 0
    while True:
        batch = list(Service.objects.filter(pk__gt=last_pk).order_by("pk").values_list(*_EXPORT_COLUMNS)[:chunk_size])
        if not batch:
            return
        keys = [ExportedService(values[0], values[1]) for values in batch]
        rows = [_export_row(values) for values in batch]
        for enrich in EXPORT_ENRICHERS:
            enrich(keys, rows)
        yield from rows
        last_pk = batch[-1][0]


def _export_row(values: tuple) -> dict:
    _pk, _host_id, ip, port, transport, product, version, module, org, asn, country, hostnames, first, last = values
    return {
        "ip": ip,
        "port": port,
        "transport": transport,
        "product": product,
        "version": version,
        "module": module,
        "org": org,
        "asn": asn,
        "country": country,
        "hostnames": hostnames,
        "first_seen": first.isoformat(),
        "last_seen": last.isoformat(),
    }
