"""Write validated banners to the database in batches, each batch one transaction with its checkpoint.

A batch, its rejections, the run's counters and the run's checkpoint commit together, so a run
killed at any moment (kill -9 included) resumes from the last checkpoint with nothing lost and
nothing counted twice. Within a batch, records are applied in input order to an in-memory state
of each host and service, so the result is the same whatever the batch boundaries are.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

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
            counts = self._write_batch()
            self._write_rejections(counts)
            self._save_run(counts, checkpoint)
        self._records.clear()
        self._rejections.clear()
        self._seen = 0

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
            if outcome == Reason.DUPLICATE:
                self._rejections.append((position, Reason.DUPLICATE, Reason.DESCRIPTIONS[Reason.DUPLICATE]))
            else:
                counts[outcome] += 1
        self._save_hosts(hosts)
        self._save_services(services, hosts, history)
        return counts

    def _load_hosts(self, ips: set[str]) -> dict[str, _HostState]:
        rows = Host.objects.filter(ip__in=ips).values_list(
            "id", "ip", "first_seen", "last_seen", "org", "isp", "asn", "country", "hostnames", "os"
        )
        return {row[1]: _HostState(*row) for row in rows}

    def _load_services(self, hosts: dict[str, _HostState]) -> dict[tuple, _ServiceState]:
        by_id = {h.id: h.ip for h in hosts.values()}
        rows = Service.objects.filter(host_id__in=by_id).values_list(
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
        new = [h for h in hosts.values() if h.id is None]
        if new:
            created = Host.objects.bulk_create(
                [
                    Host(
                        ip=h.ip,
                        org=h.org,
                        isp=h.isp,
                        asn=h.asn,
                        country=h.country,
                        hostnames=h.hostnames,
                        os=h.os,
                        first_seen=h.first_seen,
                        last_seen=h.last_seen,
                    )
                    for h in new
                ]
            )
            for state, obj in zip(new, created, strict=True):
                state.id = obj.pk
        dirty = [h for h in hosts.values() if h.dirty and h.id is not None and h not in new]
        if dirty:
            table = Host._meta.db_table
            hostnames_field = Host._meta.get_field("hostnames")
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"UPDATE {table} SET org=%s, isp=%s, asn=%s, country=%s, hostnames=%s, os=%s, "  # noqa: S608
                    "first_seen=%s, last_seen=%s WHERE id=%s",
                    [
                        (
                            h.org,
                            h.isp,
                            h.asn,
                            h.country,
                            hostnames_field.get_db_prep_save(h.hostnames, connection),
                            h.os,
                            h.first_seen,
                            h.last_seen,
                            h.id,
                        )
                        for h in dirty
                    ],
                )

    def _save_services(self, services: dict, hosts: dict[str, _HostState], history: list) -> None:
        new = [s for s in services.values() if s.id is None]
        if new:
            created = Service.objects.bulk_create([_new_service(s, hosts, self.run.pk) for s in new])
            for state, obj in zip(new, created, strict=True):
                state.id = obj.pk
        self._fill_history_content(history, services)
        if history:
            ServiceBanner.objects.bulk_create(history)
        table = Service._meta.db_table
        rewrite = [s for s in services.values() if s.record is not None and s not in new]
        seen_only = [s for s in services.values() if s.dirty and s.record is None and s not in new]
        touched = [s.id for s in services.values() if s.touched and not s.dirty and s not in new]
        with connection.cursor() as cursor:
            if rewrite:
                cursor.executemany(
                    f"UPDATE {table} SET product=%s, version=%s, module=%s, banner=%s, raw=%s, "  # noqa: S608
                    "banner_hash=%s, first_seen=%s, last_seen=%s, banner_since=%s, last_run_id=%s WHERE id=%s",
                    [
                        (
                            s.record.product,
                            s.record.version,
                            s.record.module,
                            s.record.banner,
                            s.record.raw,
                            s.banner_hash,
                            s.first_seen,
                            s.last_seen,
                            s.banner_since,
                            self.run.pk,
                            s.id,
                        )
                        for s in rewrite
                    ],
                )
            if seen_only:
                cursor.executemany(
                    f"UPDATE {table} SET first_seen=%s, last_seen=%s, banner_since=%s, last_run_id=%s "  # noqa: S608
                    "WHERE id=%s",
                    [(s.first_seen, s.last_seen, s.banner_since, self.run.pk, s.id) for s in seen_only],
                )
        if touched:
            Service.objects.filter(id__in=touched).update(last_run_id=self.run.pk)

    def _fill_history_content(self, history: list[ServiceBanner], services: dict) -> None:
        """History rows of a stored banner need its text, read only for the services that changed."""
        by_key = {}
        for item in history:
            key = item._medexpo_key  # type: ignore[attr-defined]
            state = services[key]
            item.service_id = state.id
            item.run_id = self.run.pk
            if item.raw == "":
                by_key.setdefault(state.id, []).append(item)
        if by_key:
            for sid, banner, raw in Service.objects.filter(id__in=by_key).values_list("id", "banner", "raw"):
                for item in by_key[sid]:
                    item.banner, item.raw = banner, raw

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
        state.last_seen = ts
        state.dirty = _take_host_fields(state, record) or state.dirty or ts > state.last_seen


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


def _new_service(state: _ServiceState, hosts: dict[str, _HostState], run_id: int) -> Service:
    record = state.record
    assert record is not None
    return Service(
        host_id=hosts[state.host_ip].id,
        port=state.port,
        transport=state.transport,
        product=record.product,
        version=record.version,
        module=record.module,
        banner=record.banner,
        raw=record.raw,
        banner_hash=state.banner_hash,
        first_seen=state.first_seen,
        last_seen=state.last_seen,
        banner_since=state.banner_since,
        last_run_id=run_id,
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
