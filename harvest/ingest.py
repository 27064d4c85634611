"""Write validated banners to the database in batches, each batch one transaction with its checkpoint.

A batch, its rejections, the run's counters and the run's checkpoint commit together, so a run
killed at any moment (kill -9 included) resumes from the last checkpoint with nothing lost and
nothing counted twice. Within a batch, records are applied in input order to an in-memory state
of each host and service, so the result is the same whatever the batch boundaries are.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import reset_queries, transaction
from django.utils import timezone

from harvest import bulk
from harvest.models import HarvestRun, Host, Rejection, Service, ServiceBanner
from harvest.records import BannerRecord, Reason

REJECTION_ROWS_PER_REASON = 1000  # beyond this a reason is only counted


@dataclass(slots=True)
class _HostState:
    id: int | None
    ip: str
    first_seen: datetime
    last_seen: datetime
    org: str = ""
    isp: str = ""
    asn: int | None = None
    country: str = ""
    hostnames: list = field(default_factory=list)
    os: str = ""
    dirty: bool = False


@dataclass(slots=True)
class _ServiceState:
    id: int | None
    host_ip: str
    port: int
    transport: str
    banner_hash: str
    first_seen: datetime
    last_seen: datetime
    banner_since: datetime
    last_run_id: int | None
    record: BannerRecord | None = None  # set when the stored content must be rewritten
    dirty: bool = False  # first/last seen or content changed
    touched: bool = False  # only last_run changed
    is_new: bool = False  # inserted by this batch


@dataclass(slots=True)
class Checkpoint:
    """Where a source can be resumed from, plus run fields that commit with the batch."""

    state: dict
    credits_spent: int | None = None


class BatchWriter:
    def __init__(self, run: HarvestRun, batch_size: int) -> None:
        self.run = run
        self.batch_size = batch_size
        self.fallback_ts = run.started_at
        self._records: list[tuple[str, BannerRecord]] = []
        self._rejections: list[tuple[str, str, str]] = []
        self._seen = 0
        self._dt: Callable = bulk.datetime_adapter()

    @property
    def pending(self) -> int:
        return len(self._records) + len(self._rejections)

    def add(self, position: str, record: BannerRecord) -> None:
        self._seen += 1
        self._records.append((position, record))

    def reject(self, position: str, reason: str, detail: str = "") -> None:
        self._seen += 1
        self._rejections.append((position, reason, detail or Reason.DESCRIPTIONS.get(reason, "")))

    def note_error(self, position: str, reason: str, detail: str) -> None:
        """A problem with the input as a whole (a truncated file): reported, but not a record."""
        self._rejections.append((position, reason, detail))

    def mark(self) -> tuple[int, int, int]:
        return (len(self._records), len(self._rejections), self._seen)

    def rewind(self, mark: tuple[int, int, int]) -> None:
        """Forget what came after a checkpoint: a resumed run reads it again."""
        del self._records[mark[0] :]
        del self._rejections[mark[1] :]
        self._seen = mark[2]

    def maybe_flush(self, checkpoint: Checkpoint) -> bool:
        if self.pending >= self.batch_size:
            self.flush(checkpoint)
            return True
        return False

    def flush(self, checkpoint: Checkpoint) -> None:
        with transaction.atomic():
            bulk.tune_batch_transaction()
            counts = self._write_batch()
            self._write_rejections(counts)
            self._save_run(counts, checkpoint)
        self._records.clear()
        self._rejections.clear()
        self._seen = 0
        reset_queries()  # with DEBUG on, Django would keep every batch's SQL in memory

    # --- the batch ----------------------------------------------------------------------

    def _write_batch(self) -> Counter:
        counts: Counter = Counter()
        if not self._records:
            return counts
        hosts = self._load_hosts({r.ip for _, r in self._records})
        services = self._load_services(hosts)
        history: list[ServiceBanner] = []
        for position, record in self._records:
            ts = record.timestamp or self.fallback_ts
            _apply_host(hosts, record, ts)
            outcome = self._apply_service(services, record, ts, history)
            if outcome == Reason.DUPLICATE and self.run.source == HarvestRun.Source.SEARCH:
                # Two queries of a plan returning the same banner is normal overlap, not bad input.
                counts["unchanged"] += 1
            elif outcome == Reason.DUPLICATE:
                self._rejections.append((position, Reason.DUPLICATE, Reason.DESCRIPTIONS[Reason.DUPLICATE]))
            else:
                counts[outcome] += 1
        self._save_hosts(hosts)
        self._save_services(services, hosts, history)
        return counts

    def _load_hosts(self, ips: set[str]) -> dict[str, _HostState]:
        rows: Iterable[tuple]
        if bulk.is_postgres():
            rows = bulk.pg_select_any(
                "SELECT id, host(ip), first_seen, last_seen, org, isp, asn, country, hostnames, os "
                "FROM harvest_host WHERE ip = ANY(%s::inet[])",
                ips,
            )
        else:
            rows = Host.objects.filter(ip__in=ips).values_list(
                "id", "ip", "first_seen", "last_seen", "org", "isp", "asn", "country", "hostnames", "os"
            )
        return {row[1]: _HostState(*row) for row in rows}

    def _load_services(self, hosts: dict[str, _HostState]) -> dict[tuple, _ServiceState]:
        by_id = {h.id: h.ip for h in hosts.values() if h.id is not None}
        rows: Iterable[tuple]
        columns = (
            "id",
            "host_id",
            "port",
            "transport",
            "banner_hash",
            "first_seen",
            "last_seen",
            "banner_since",
            "last_run_id",
        )
        if bulk.is_postgres():
            rows = bulk.pg_select_any(
                f"SELECT {', '.join(columns)} FROM harvest_service WHERE host_id = ANY(%s)",  # noqa: S608
                by_id,
            )
        else:
            rows = Service.objects.filter(host_id__in=by_id).values_list(*columns)
        services = {}
        for sid, host_id, port, transport, bhash, first, last, since, last_run in rows:
            ip = by_id[host_id]
            services[(ip, port, transport)] = _ServiceState(
                sid, ip, port, transport, bhash, first, last, since, last_run
            )
        return services

    def _apply_service(self, services: dict, record: BannerRecord, ts: datetime, history: list) -> str:
        run_id = self.run.pk
        state = services.get(record.key)
        if state is None:
            services[record.key] = _ServiceState(
                None, record.ip, record.port, record.transport, record.banner_hash, ts, ts, ts, run_id, record, True
            )
            return "new"
        same_banner = state.banner_hash == record.banner_hash
        if state.last_run_id == run_id and ts == state.last_seen and same_banner:
            return Reason.DUPLICATE
        if ts > state.last_seen or (ts == state.last_seen and not same_banner):
            # A newer banner: it becomes the current one, the old one goes to history if it differs.
            if not same_banner:
                history.append(_history_of_current(state))
                state.banner_since = ts
            state.banner_hash = record.banner_hash
            state.last_seen = ts
            state.record = record
            changed = True
        elif same_banner:
            # The current banner seen earlier than we knew.
            changed = ts < state.banner_since or ts < state.first_seen
            state.banner_since = min(state.banner_since, ts)
            state.first_seen = min(state.first_seen, ts)
        else:
            # An older, different banner (files need not be in time order): it is history.
            history.append(_history_of_record(record, ts))
            state.first_seen = min(state.first_seen, ts)
            changed = True
        state.last_run_id = run_id
        state.touched = True
        state.dirty = state.dirty or changed
        return "updated" if changed else "unchanged"

    # --- writes -------------------------------------------------------------------------

    def _save_hosts(self, hosts: dict[str, _HostState]) -> None:
        table = Host._meta.db_table
        new = [h for h in hosts.values() if h.id is None]
        ids = bulk.insert_rows(table, _HOST_COLUMNS, [_host_row(h, self._dt) for h in new])
        for state, pk in zip(new, ids, strict=True):
            state.id = pk
            state.dirty = False
        dirty = [h for h in hosts.values() if h.dirty]
        bulk.update_rows(table, _HOST_COLUMNS[1:], [(h.id, *_host_row(h, self._dt)[1:]) for h in dirty])

    def _save_services(self, services: dict, hosts: dict[str, _HostState], history: list) -> None:
        table = Service._meta.db_table
        run_id = self.run.pk
        new = [s for s in services.values() if s.id is None]
        rows = [(hosts[s.host_ip].id, s.port, s.transport, *_content(s, self._dt), run_id) for s in new]
        for state, pk in zip(new, bulk.insert_rows(table, _SERVICE_INSERT, rows), strict=True):
            state.id = pk
            state.is_new = True
        self._save_history(history, services)
        old = [s for s in services.values() if not s.is_new]
        bulk.update_rows(
            table, _SERVICE_REWRITE, [(s.id, *_content(s, self._dt), run_id) for s in old if s.record is not None]
        )
        bulk.update_rows(
            table,
            ("first_seen", "last_seen", "banner_since", "last_run_id"),
            [
                (
                    s.id,
                    self._dt(s.first_seen),
                    self._dt(s.last_seen),
                    self._dt(s.banner_since),
                    run_id,
                )
                for s in old
                if s.dirty and s.record is None
            ],
        )
        bulk.set_column(table, "last_run_id", run_id, [s.id for s in old if s.touched and not s.dirty])

    def _save_history(self, history: list[ServiceBanner], services: dict) -> None:
        """History rows of a stored banner need its text, read only for the services that changed."""
        if not history:
            return
        from_db: dict[int, list[ServiceBanner]] = {}
        for item in history:
            item.service_id = services[item._medexpo_key].id  # type: ignore[attr-defined]
            if item.raw == "":
                from_db.setdefault(item.service_id, []).append(item)
        if from_db:
            for sid, banner, raw in Service.objects.filter(id__in=from_db).values_list("id", "banner", "raw"):
                for item in from_db[sid]:
                    item.banner, item.raw = banner, raw
        bulk.insert_rows(
            ServiceBanner._meta.db_table,
            ("service_id", "banner", "raw", "banner_hash", "first_seen", "last_seen", "run_id"),
            [
                (
                    h.service_id,
                    h.banner,
                    h.raw,
                    h.banner_hash,
                    self._dt(h.first_seen),
                    self._dt(h.last_seen),
                    self.run.pk,
                )
                for h in history
            ],
        )

    def _write_rejections(self, counts: Counter) -> None:
        if not self._rejections:
            return
        stored = Counter(self.run.rejected)
        rows = []
        for position, reason, detail in self._rejections:
            if stored[reason] < REJECTION_ROWS_PER_REASON:
                rows.append(Rejection(run_id=self.run.pk, position=position[:100], reason=reason, detail=detail[:500]))
            stored[reason] += 1
            counts[f"rejected:{reason}"] += 1
        Rejection.objects.bulk_create(rows)

    def _save_run(self, counts: Counter, checkpoint: Checkpoint) -> None:
        run = self.run
        rejected = Counter(run.rejected)
        for key, value in counts.items():
            if key.startswith("rejected:"):
                rejected[key.removeprefix("rejected:")] += value
        run.rejected = dict(sorted(rejected.items()))
        run.seen += self._seen
        run.new += counts["new"]
        run.updated += counts["updated"]
        run.unchanged += counts["unchanged"]
        run.accepted = run.new + run.updated + run.unchanged
        run.checkpoint = checkpoint.state
        if checkpoint.credits_spent is not None:
            run.credits_spent = checkpoint.credits_spent
        run.updated_at = timezone.now()
        run.save(
            update_fields=[
                "rejected",
                "seen",
                "new",
                "updated",
                "unchanged",
                "accepted",
                "checkpoint",
                "credits_spent",
                "updated_at",
            ]
        )


def _apply_host(hosts: dict[str, _HostState], record: BannerRecord, ts: datetime) -> None:
    state = hosts.get(record.ip)
    if state is None:
        state = hosts[record.ip] = _HostState(None, record.ip, ts, ts, dirty=True)
        _take_host_fields(state, record)
        return
    if ts < state.first_seen:
        state.first_seen = ts
        state.dirty = True
    if ts >= state.last_seen:
        newer = ts > state.last_seen
        state.last_seen = ts
        state.dirty = _take_host_fields(state, record) or newer or state.dirty


def _take_host_fields(state: _HostState, record: BannerRecord) -> bool:
    """The newest record wins, but an empty field never blanks a known value."""
    before = (state.org, state.isp, state.asn, state.country, state.hostnames, state.os)
    state.org = record.org or state.org
    state.isp = record.isp or state.isp
    state.asn = record.asn if record.asn is not None else state.asn
    state.country = record.country or state.country
    if record.hostnames:
        state.hostnames = sorted(set(state.hostnames) | set(record.hostnames))[:64]
    state.os = record.os or state.os
    return before != (state.org, state.isp, state.asn, state.country, state.hostnames, state.os)


_HOST_COLUMNS = ("ip", "org", "isp", "asn", "country", "hostnames", "os", "first_seen", "last_seen")
_SERVICE_REWRITE = (
    "product",
    "version",
    "module",
    "banner",
    "raw",
    "banner_hash",
    "first_seen",
    "last_seen",
    "banner_since",
    "last_run_id",
)
_SERVICE_INSERT = ("host_id", "port", "transport", *_SERVICE_REWRITE)


def _host_row(h: _HostState, dt: Callable) -> tuple:
    return (
        h.ip,
        h.org,
        h.isp,
        h.asn,
        h.country,
        json.dumps(h.hostnames),
        h.os,
        dt(h.first_seen),
        dt(h.last_seen),
    )


def _content(s: _ServiceState, dt: Callable) -> tuple:
    """The stored content of a service, without last_run_id (the caller adds it)."""
    r = s.record
    assert r is not None
    return (
        r.product,
        r.version,
        r.module,
        r.banner,
        r.raw,
        s.banner_hash,
        dt(s.first_seen),
        dt(s.last_seen),
        dt(s.banner_since),
    )


def _history_of_current(state: _ServiceState) -> ServiceBanner:
    """The service's current banner, superseded. Its text comes from the batch or the database."""
    if state.record is not None:
        item = _history_of_record(state.record, state.banner_since)
        item.last_seen = state.last_seen
    else:
        item = ServiceBanner(
            banner="", raw="", banner_hash=state.banner_hash, first_seen=state.banner_since, last_seen=state.last_seen
        )
    item._medexpo_key = (state.host_ip, state.port, state.transport)  # type: ignore[attr-defined]
    return item


def _history_of_record(record: BannerRecord, ts: datetime) -> ServiceBanner:
    item = ServiceBanner(
        banner=record.banner, raw=record.raw, banner_hash=record.banner_hash, first_seen=ts, last_seen=ts
    )
    item._medexpo_key = record.key  # type: ignore[attr-defined]
    return item
