"""Write validated banners to the database in batches, each batch one transaction with its checkpoint.

A batch, its rejections, the run's counters and the run's checkpoint commit together, so a run
killed at any moment (kill -9 included) resumes from the last checkpoint with nothing lost and
nothing counted twice. Within a batch, records are applied in input order to an in-memory state
of each host and service, so the result is the same whatever the batch boundaries are.

A batch is handled in two steps: *prepare* (read the stored state of the batch's hosts and
services, apply the records in memory, allocate ids, and turn every write into plain rows) and
*apply* (write those rows, the rejections and the run's counters and checkpoint in one
transaction). On PostgreSQL, outside a surrounding transaction and unless the caller says
otherwise (a search run does), apply runs in a writer thread on its own connection while the next
batch is prepared, so parsing and merging in Python overlap the database's work. Batches still
commit one at a time and in order. The next batch reads the hosts
and services of the batch still being written from memory (the state after it), and everything
else from the database, which the batch in flight does not touch.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from django.db import connection, reset_queries, transaction
from django.utils import timezone

from harvest import bulk
from harvest.locking import hold_batch_key
from harvest.models import HarvestRun, Host, Rejection, Service, ServiceBanner
from harvest.records import MAX_HOSTNAMES, BannerRecord, Reason

REJECTION_ROWS_PER_REASON = 1000  # beyond this a reason is only counted
# Shodan dates a banner when it crawled it, so a later date is false: taken, it would stay the
# service's current banner until then and file every real sighting as an older one. A day's
# margin allows for clocks that drift (what it is measured from: BatchWriter.__init__).
FUTURE_MARGIN = timedelta(days=1)
# _apply_service's outcome for an update that replaced the banner, certificate or HTTP title (counted
# as "updated"): with a new service, it marks the host changed (Host.changed_at).
REPLACED = "replaced"


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
    changed_at: datetime | None = None
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
    identity_hash: str | None  # of the current record; None: not known (stored before it was kept)
    record: BannerRecord | None = None  # set when the stored content must be rewritten
    dirty: bool = False  # first/last seen or content changed
    touched: bool = False  # only last_run changed
    is_new: bool = False  # inserted by this batch
    # Its earlier banners: those this writer added (stored or not yet), and once `history_loaded`
    # also those read from the database. Read only when an older, different banner turns up.
    history: list[_History] = field(default_factory=list)
    history_loaded: bool = False


@dataclass(slots=True)
class _History:
    """A banner a service showed before its current one, over [first_seen, last_seen]."""

    id: int | None  # None until the batch that adds it is planned
    banner_hash: str
    first_seen: datetime
    last_seen: datetime
    run_id: int | None  # the run that saw it at last_seen
    record: BannerRecord | None = None  # its text; None: the service's stored banner, read on apply
    touched: bool = False  # a stored row whose window or run changed


@dataclass(slots=True)
class Checkpoint:
    """Where a source can be resumed from, plus run fields that commit with the batch."""

    state: dict
    credits_spent: int | None = None


@dataclass(slots=True)
class _Plan:
    """Everything one batch writes, as plain rows: applying it reads no in-memory state."""

    host_inserts: list[tuple] = field(default_factory=list)
    host_payload: bytes | None = None  # the inserts in COPY's binary format, on PostgreSQL
    host_updates: list[tuple] = field(default_factory=list)
    service_inserts: list[tuple] = field(default_factory=list)
    service_payload: bytes | None = None
    history: list[ServiceBanner] = field(default_factory=list)
    history_touches: list[tuple] = field(default_factory=list)
    service_rewrites: list[tuple] = field(default_factory=list)
    service_sightings: list[tuple] = field(default_factory=list)
    service_touches: list[int] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    run_fields: dict = field(default_factory=dict)


class BatchWriter:
    def __init__(self, run: HarvestRun, batch_size: int, *, pipelined: bool | None = None) -> None:
        self.run = run
        self.batch_size = batch_size
        self.fallback_ts = run.started_at
        # A file is fixed when its run starts, so every attempt judges by that start. A search
        # buys its pages as it goes: a run resumed weeks later (credits come back monthly) buys
        # banners crawled since, which only the time of this attempt tells from false dates.
        self.reference_ts, self._reference = run.started_at, "the run started"
        if run.source == HarvestRun.Source.SEARCH:
            self.reference_ts, self._reference = max(run.started_at, timezone.now()), "this attempt of the run began"
        self.latest_ts = self.reference_ts + FUTURE_MARGIN
        self._records: list[tuple[int | str, BannerRecord]] = []
        # (position, reason, detail, is_record): a query's error is reported like a rejection but
        # counted apart (HarvestRun.query_errors), since it is not a record read.
        self._rejections: list[tuple[str, str, str, bool]] = []
        self._seen = 0
        self._dt: Callable = bulk.datetime_adapter()
        # The state of the previous batch's hosts and services, after it.
        self._carry_hosts: dict[str, _HostState] = {}
        self._carry_services: dict[tuple, _ServiceState] = {}
        self._batch_services: dict[tuple, _ServiceState] = {}  # the batch being prepared
        if pipelined is None:
            pipelined = bulk.is_postgres() and not connection.in_atomic_block
        self._writer: _Writer | None = _Writer() if pipelined else None
        self.pipelined = pipelined

    @property
    def pending(self) -> int:
        return len(self._records) + len(self._rejections)

    def add(self, position: int | str, record: BannerRecord) -> None:
        """`position`: a line number, or a text such as "query 'x' page 2 item 3"."""
        if record.timestamp is not None and record.timestamp > self.latest_ts:
            self.reject(
                _position(position),
                Reason.FUTURE_TIMESTAMP,
                f"timestamp {record.timestamp:%Y-%m-%dT%H:%M:%S}Z is more than a day after {self._reference} "
                f"({self.reference_ts:%Y-%m-%dT%H:%M:%S}Z)",
            )
            return
        self._seen += 1
        self._records.append((position, record))

    def reject(self, position: str, reason: str, detail: str = "") -> None:
        self._seen += 1
        self._rejections.append((position, reason, detail or Reason.DESCRIPTIONS.get(reason, ""), True))

    def note_error(self, position: str, reason: str, detail: str) -> None:
        """A problem with a search query (refused, served short): reported, but not a record."""
        self._rejections.append((position, reason, detail, False))

    def mark(self) -> tuple[int, int, int]:
        return (len(self._records), len(self._rejections), self._seen)

    def rewind(self, mark: tuple[int, int, int]) -> None:
        """Forget what came after a checkpoint: a resumed run reads it again."""
        del self._records[mark[0] :]
        del self._rejections[mark[1] :]
        self._seen = mark[2]

    def maybe_flush(self, checkpoint: Checkpoint) -> bool:
        # Credits are money already spent: a checkpoint that records more commits even without a
        # banner to write (a paid search page that came back empty), or a run killed before the
        # next batch would buy that page again without counting it.
        paid = checkpoint.credits_spent is not None and checkpoint.credits_spent != self.run.credits_spent
        if self.pending >= self.batch_size or paid:
            self.flush(checkpoint)
            return True
        return False

    def flush(self, checkpoint: Checkpoint) -> None:
        if self._writer is None:
            with transaction.atomic():
                bulk.tune_batch_transaction()
                _apply(self._prepare(checkpoint))
        else:
            with transaction.atomic():  # the reads and id allocation, with the batch settings
                bulk.tune_batch_transaction()
                plan = self._prepare(checkpoint)
            self._writer.submit(plan)
        self._records.clear()
        self._rejections.clear()
        self._seen = 0
        reset_queries()  # with DEBUG on, Django would keep every batch's SQL in memory

    def close(self) -> None:
        """Wait for the batch being written (raising its error, if any) and stop the writer."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    # --- prepare: in memory, on the caller's thread ----------------------------------------

    def _prepare(self, checkpoint: Checkpoint) -> _Plan:
        plan = _Plan()
        counts: Counter = Counter()
        hosts: dict[str, _HostState] = {}
        services: dict[tuple, _ServiceState] = {}
        if self._records:
            hosts, services = self._load({r.key for _, r in self._records})
            self._batch_services = services
            now = timezone.now()
            for position, record in self._records:
                ts = record.timestamp or self.fallback_ts
                # The host as known before this record (None: a new one, and then so is the service).
                outcome = self._apply_service(services, record, ts, hosts.get(record.ip))
                if outcome != Reason.DUPLICATE:
                    # A sighting this run already has: its org and hostnames are not taken either.
                    _apply_host(hosts, record, ts, now)
                if outcome == "new" or outcome == REPLACED:
                    host = hosts[record.ip]
                    host.changed_at, host.dirty = now, True
                    outcome = "new" if outcome == "new" else "updated"
                if outcome == Reason.DUPLICATE and self.run.source == HarvestRun.Source.SEARCH:
                    # Two queries of a plan returning the same banner is normal overlap, not bad input.
                    counts["unchanged"] += 1
                elif outcome == Reason.DUPLICATE:
                    self._rejections.append(
                        (_position(position), Reason.DUPLICATE, Reason.DESCRIPTIONS[Reason.DUPLICATE], True)
                    )
                else:
                    counts[outcome] += 1
            self._plan_hosts(hosts, plan)
            self._plan_services(services, hosts, plan)
        self._carry_hosts, self._carry_services = hosts, services
        self._plan_rejections(counts, plan)
        self._plan_run(counts, checkpoint, plan)
        return plan

    def _load(self, keys: set[tuple]) -> tuple[dict[str, _HostState], dict[tuple, _ServiceState]]:
        """The batch's hosts and services (by address, port, transport) as stored: from the
        previous batch where it had them (it may not have committed yet), from the database
        otherwise. The previous batch wrote nothing that it does not hold in memory."""
        ips = {key[0] for key in keys}
        hosts = {ip: self._carry_hosts[ip] for ip in ips if ip in self._carry_hosts}
        for carried in hosts.values():
            carried.dirty = False
        hosts.update(self._load_hosts(ips - hosts.keys()))
        services: dict[tuple, _ServiceState] = {}
        for key in keys:
            service = self._carry_services.get(key)
            if service is not None:
                service.record, service.dirty, service.touched, service.is_new = None, False, False, False
                services[key] = service
        ids = {ip: host.id for ip, host in hosts.items() if host.id is not None}
        wanted = [(ids[k[0]], k) for k in keys if k not in services and k[0] in ids]
        services.update(self._load_services(wanted))
        return hosts, services

    def _load_hosts(self, ips: set[str]) -> dict[str, _HostState]:
        if not ips:
            return {}
        rows: Iterable[tuple]
        if bulk.is_postgres():
            rows = bulk.pg_select_any(
                "SELECT id, host(ip), first_seen, last_seen, org, isp, asn, country, hostnames, os, changed_at "
                "FROM harvest_host WHERE ip = ANY(%s::inet[])",
                ips,
            )
        else:
            columns = "id, ip, first_seen, last_seen, org, isp, asn, country, hostnames, os, changed_at"
            # Unsorted: the model's address order costs a function call per row on SQLite.
            rows = Host.objects.filter(ip__in=ips).order_by().values_list(*columns.split(", "))
        hosts = {}
        for row in rows:
            state = _HostState(*row)
            if "." in state.ip and ":" in state.ip:
                # PostgreSQL writes an IPv6 address whose first 96 bits are zero with IPv4 at the
                # end ("::0.10.0.11"); records name it as Python does ("::a:b"). Keyed as written,
                # the host was not found and inserted again, which its unique address refused.
                state.ip = ipaddress.ip_address(state.ip).compressed
            hosts[state.ip] = state
        return hosts

    def _load_services(self, wanted: list[tuple[int, tuple]]) -> dict[tuple, _ServiceState]:
        """Stored services by (host id, (address, port, transport)); only those asked for: a
        host's other services cost heap reads on wide rows and are not needed."""
        if not wanted:
            return {}
        rows: Iterable[tuple]
        columns = (
            "id, host_id, port, transport, banner_hash, first_seen, last_seen, banner_since, last_run_id, identity_hash"
        )
        if bulk.is_postgres():
            rows = bulk.pg_select_any(
                f"SELECT {columns} FROM harvest_service JOIN unnest(%s::bigint[], %s::int[], %s::text[]) "  # noqa: S608
                "AS k(host_id, port, transport) USING (host_id, port, transport)",
                [w[0] for w in wanted],
                [w[1][1] for w in wanted],
                [w[1][2] for w in wanted],
            )
        else:
            # Unsorted: the model's order would join each service's host to sort by its address.
            wanted_hosts = {w[0] for w in wanted}
            rows = Service.objects.filter(host_id__in=wanted_hosts).order_by().values_list(*columns.split(", "))
        by_id = {w[0]: w[1][0] for w in wanted}
        services = {}
        for sid, host_id, port, transport, bhash, first, last, since, last_run, identity in rows:
            ip = by_id[host_id]
            services[(ip, port, transport)] = _ServiceState(
                sid, ip, port, transport, bhash, first, last, since, last_run, identity
            )
        return services

    def _apply_service(self, services: dict, record: BannerRecord, ts: datetime, host: _HostState | None) -> str:
        run_id = self.run.pk
        state = services.get(record.key)
        if state is None:
            services[record.key] = _ServiceState(
                None, record.ip, record.port, record.transport, record.banner_hash, ts, ts, ts, run_id,
                record.identity_hash, record, True,
            )  # fmt: skip
            return "new"
        same_banner = state.banner_hash == record.banner_hash
        if ts == state.last_seen and not same_banner:
            # Another banner at the moment of the current one: the later line wins, unless this
            # one is already history at that moment (the same lines read again).
            known = self._in_history(state, record.banner_hash, ts)
            if known is not None:
                return _seen_again(known, ts, run_id)
        if ts > state.last_seen or (ts == state.last_seen and not same_banner):
            # A newer banner: it becomes the current one, the old one goes to history if it differs.
            if not same_banner:
                state.history.append(
                    _History(
                        None, state.banner_hash, state.banner_since, state.last_seen, state.last_run_id, state.record
                    )
                )
                state.banner_since = ts
            # Another certificate, title, hostnames or domains count; where the stored record's are
            # not known, see _names_lost.
            if state.identity_hash is not None:
                replaced = not same_banner or state.identity_hash != record.identity_hash
            else:
                replaced = not same_banner or (host is not None and _names_lost(host, record))
            state.banner_hash = record.banner_hash
            state.identity_hash = record.identity_hash
            state.last_seen = ts
            state.record = record
            state.last_run_id = run_id
            state.dirty = state.touched = True
            return REPLACED if replaced else "updated"
        if ts == state.last_seen:
            # The latest sighting again. `last_run_id` is the run that made it: only a line this
            # run has already read can find its own run there.
            if state.last_run_id == run_id:
                return Reason.DUPLICATE
            state.last_run_id = run_id
            state.touched = True
            if state.identity_hash is None:
                # Stored before its identity was kept: the same record read again gives it, and is
                # stored as ingest stores it now (a host lookup's banner with the names it inherits),
                # so that reading the files again after an upgrade brings both up to date.
                state.identity_hash, state.record = record.identity_hash, record
                return REPLACED if host is not None and _names_lost(host, record) else "unchanged"
            return "unchanged"
        if same_banner and ts >= state.banner_since:
            return "unchanged"  # within what is known of the current banner
        # An older sighting. Files need not be in time order: history may already hold it.
        known, before, after = self._history_near(state, record.banner_hash, ts)
        if known is not None:
            return _seen_again(known, ts, run_id)
        if same_banner and not any(h.first_seen < state.banner_since and h.last_seen >= ts for h in state.history):
            # The current banner, seen earlier than we knew and with nothing else in between.
            state.banner_since = ts
            state.first_seen = min(state.first_seen, ts)
            state.dirty = state.touched = True
            return "updated"
        # An older banner, or an earlier spell of the current one: it is history, once. Next to a
        # history row of the same banner with nothing else seen in between, it is part of that
        # row's spell (in time order the two sightings would have made one row).
        if not _widen_spell(state, before, after, ts, run_id):
            state.history.append(_History(None, record.banner_hash, ts, ts, run_id, record))
        state.first_seen = min(state.first_seen, ts)
        state.dirty = state.touched = True
        return "updated"

    def _in_history(self, state: _ServiceState, banner_hash: str, ts: datetime) -> _History | None:
        """The history row of this banner that covers `ts`, if any."""
        return self._history_near(state, banner_hash, ts)[0]

    def _history_near(self, state: _ServiceState, banner_hash: str, ts: datetime) -> tuple[_History | None, ...]:
        """The history row of this banner that covers `ts`, or else the nearest ones before and after
        it (any of them None). Rows of the batch still being written are in memory with their
        ids; the database adds every other one."""
        if not state.history_loaded:
            self._load_history(state)
        before = after = None
        for item in state.history:
            if item.banner_hash == banner_hash:
                if item.last_seen < ts:
                    if before is None or item.last_seen > before.last_seen:
                        before = item
                elif item.first_seen > ts:
                    if after is None or item.first_seen < after.first_seen:
                        after = item
                else:
                    return item, None, None
        return None, before, after

    def _load_history(self, asking: _ServiceState) -> None:
        """Read stored history at the first need in a batch, in one query for every stored
        service of the batch with a record older than what is known of it: a file of host
        lookups with history has many, and each would otherwise cost a query of its own."""
        services = self._batch_services
        fallback = self.fallback_ts
        wanted = {asking.id: asking} if asking.id is not None else {}
        for _, record in self._records:
            state = services.get(record.key)
            if (
                state is not None
                and state.id is not None
                and not state.history_loaded
                and (record.timestamp or fallback) < state.last_seen
            ):
                wanted[state.id] = state
        asking.history_loaded = True
        if not wanted:
            return
        rows: dict[int, list[tuple]] = {}
        ids = list(wanted)
        for start in range(0, len(ids), bulk.SQLITE_CHUNK):
            chunk = ServiceBanner.objects.filter(service_id__in=ids[start : start + bulk.SQLITE_CHUNK]).order_by()
            for row in chunk.values_list("service_id", "id", "banner_hash", "first_seen", "last_seen", "run_id"):
                rows.setdefault(row[0], []).append(row[1:])
        for sid, state in wanted.items():
            state.history_loaded = True
            known = {item.id for item in state.history}
            state.history.extend(_History(*row) for row in rows.get(sid, ()) if row[0] not in known)

    def _plan_hosts(self, hosts: dict[str, _HostState], plan: _Plan) -> None:
        new = [h for h in hosts.values() if h.id is None]
        for state, pk in zip(new, bulk.allocate_ids(Host._meta.db_table, len(new)), strict=True):
            state.id = pk
            state.dirty = False
            plan.host_inserts.append((pk, *_host_row(state, self._dt)))
        if bulk.is_postgres():  # formatted here: the writer thread then needs the GIL only briefly
            plan.host_payload = bulk.copy_binary(plan.host_inserts, _HOST_TYPES)
        plan.host_updates = [(h.id, *_host_row(h, self._dt)[1:]) for h in hosts.values() if h.dirty]

    def _plan_services(self, services: dict, hosts: dict[str, _HostState], plan: _Plan) -> None:
        run_id = self.run.pk
        dt = self._dt
        new = [s for s in services.values() if s.id is None]
        for state, pk in zip(new, bulk.allocate_ids(Service._meta.db_table, len(new)), strict=True):
            state.id = pk
            state.is_new = True
            plan.service_inserts.append(
                (pk, hosts[state.host_ip].id, state.port, state.transport, *_content(state, dt), run_id)
            )
        if bulk.is_postgres():
            plan.service_payload = bulk.copy_binary(plan.service_inserts, _SERVICE_TYPES)
        self._plan_history(services, plan)
        for s in services.values():
            if s.is_new or not s.touched:
                continue
            if s.record is not None:
                plan.service_rewrites.append((s.id, *_content(s, dt), s.last_run_id))
            elif s.dirty:
                plan.service_sightings.append(
                    (s.id, dt(s.first_seen), dt(s.last_seen), dt(s.banner_since), s.last_run_id)
                )
            else:
                plan.service_touches.append(s.id)

    def _plan_history(self, services: dict, plan: _Plan) -> None:
        """New history rows (ids allocated here), and stored rows whose window or run changed
        (then cleared: the state is carried to the next batch)."""
        added = []
        for state in services.values():
            for item in state.history:
                if item.id is None:
                    added.append((state, item))
                elif item.touched:
                    plan.history_touches.append(
                        (item.id, self._dt(item.first_seen), self._dt(item.last_seen), item.run_id)
                    )
                    item.touched = False
        ids = bulk.allocate_ids(ServiceBanner._meta.db_table, len(added))
        for (state, item), pk in zip(added, ids, strict=True):
            item.id = pk
            r = item.record
            plan.history.append(
                ServiceBanner(
                    id=pk,
                    service_id=state.id,
                    banner=r.banner if r else "",
                    raw=r.raw if r else "",
                    banner_hash=item.banner_hash,
                    first_seen=item.first_seen,
                    last_seen=item.last_seen,
                    run_id=item.run_id,
                )
            )
            item.record = None  # the row holds the text now; the state need not keep it

    def _plan_rejections(self, counts: Counter, plan: _Plan) -> None:
        stored = Counter(self.run.rejected) + Counter(self.run.query_errors)
        for position, reason, detail, is_record in self._rejections:
            if stored[reason] < REJECTION_ROWS_PER_REASON:
                plan.rejections.append(
                    Rejection(run_id=self.run.pk, position=position[:100], reason=reason, detail=detail[:500])
                )
            stored[reason] += 1
            counts[f"{'rejected' if is_record else 'query_error'}:{reason}"] += 1

    def _plan_run(self, counts: Counter, checkpoint: Checkpoint, plan: _Plan) -> None:
        """The run's counters after this batch: kept on self.run, and written with the batch."""
        run = self.run
        run.rejected = _added(run.rejected, counts, "rejected:")
        run.query_errors = _added(run.query_errors, counts, "query_error:")
        run.seen += self._seen
        run.new += counts["new"]
        run.updated += counts["updated"]
        run.unchanged += counts["unchanged"]
        run.accepted = run.new + run.updated + run.unchanged
        run.checkpoint = checkpoint.state
        if checkpoint.credits_spent is not None:
            run.credits_spent = checkpoint.credits_spent
        run.updated_at = timezone.now()
        plan.run_fields = {name: getattr(run, name) for name in _RUN_FIELDS}
        plan.run_fields["pk"] = run.pk


def _added(by_reason: dict, counts: Counter, prefix: str) -> dict:
    """`by_reason` plus the counts whose key is `prefix` and a reason."""
    total = Counter(by_reason)
    for key, value in counts.items():
        if key.startswith(prefix):
            total[key.removeprefix(prefix)] += value
    return dict(sorted(total.items()))


_RUN_FIELDS = (
    "rejected",
    "query_errors",
    "seen",
    "new",
    "updated",
    "unchanged",
    "accepted",
    "checkpoint",
    "credits_spent",
    "updated_at",
)


# --- apply: one transaction, on the writer's connection ------------------------------------


def _apply(plan: _Plan) -> None:
    """Write a prepared batch. Must run inside a transaction."""
    bulk.copy_in(Host._meta.db_table, ("id", *_HOST_COLUMNS), plan.host_inserts, payload=plan.host_payload, binary=True)
    bulk.update_rows(Host._meta.db_table, _HOST_COLUMNS[1:], plan.host_updates)
    table = Service._meta.db_table
    bulk.copy_in(table, ("id", *_SERVICE_INSERT), plan.service_inserts, payload=plan.service_payload, binary=True)
    _write_history(plan.history)  # before the rewrites: it may read the banners they replace
    bulk.update_rows(ServiceBanner._meta.db_table, ("first_seen", "last_seen", "run_id"), plan.history_touches)
    bulk.update_rows(table, _SERVICE_REWRITE, plan.service_rewrites)
    bulk.update_rows(table, ("first_seen", "last_seen", "banner_since", "last_run_id"), plan.service_sightings)
    if plan.service_touches:
        bulk.set_column(table, "last_run_id", plan.run_fields["pk"], plan.service_touches)
    Rejection.objects.bulk_create(plan.rejections)
    fields = dict(plan.run_fields)
    HarvestRun.objects.filter(pk=fields.pop("pk")).update(**fields)


def _write_history(history: list[ServiceBanner]) -> None:
    """History rows of a stored banner need its text, read only for the services that changed."""
    if not history:
        return
    from_db: dict[int, list[ServiceBanner]] = {}
    for item in history:
        if item.raw == "":
            from_db.setdefault(item.service_id, []).append(item)
    if from_db:
        for sid, banner, raw in Service.objects.filter(id__in=from_db).order_by().values_list("id", "banner", "raw"):
            for item in from_db[sid]:
                item.banner, item.raw = banner, raw
    dt = bulk.datetime_adapter()
    bulk.copy_in(
        ServiceBanner._meta.db_table,
        ("id", "service_id", "banner", "raw", "banner_hash", "first_seen", "last_seen", "run_id"),
        [
            (h.id, h.service_id, h.banner, h.raw, h.banner_hash, dt(h.first_seen), dt(h.last_seen), h.run_id)
            for h in history
        ],
    )


class _Writer:
    """Applies prepared batches one at a time, in order, in a thread with its own connection."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medexpo-ingest-writer")
        self._pending: Future | None = None

    def submit(self, plan: _Plan) -> None:
        self.wait()  # the previous batch commits before the next one is read from the database
        self._pending = self._pool.submit(_apply_in_transaction, plan)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.submit(_close_connection).result()
            self._pool.shutdown()


def _close_connection() -> None:
    connection.close()  # the writer thread's own connection: `connection` is per thread


def _apply_in_transaction(plan: _Plan) -> None:
    with transaction.atomic():
        hold_batch_key()  # first: a run that takes the harvest lock after a kill waits for this commit
        bulk.tune_batch_transaction()
        _apply(plan)
    reset_queries()


def _seen_again(item: _History, ts: datetime, run_id: int) -> str:
    """A banner that history already holds at `ts`. As for the current banner, a line at the
    row's last_seen that the row's own run has read is a duplicate."""
    if ts < item.last_seen:
        return "unchanged"
    if item.run_id == run_id:
        return Reason.DUPLICATE
    item.run_id = run_id
    item.touched = item.id is not None
    return "unchanged"


def _widen_spell(
    state: _ServiceState, before: _History | None, after: _History | None, ts: datetime, run_id: int
) -> bool:
    """Stretch the nearest history row of a banner before or after `ts` to `ts` when no other
    spell, history or the current one, has a sighting between the two. Whether one has can only
    be told from their windows: one that reaches into the gap, or touches it, keeps the row as it
    is. A farther row of the banner always has the nearest one in between."""
    gaps = []
    if after is not None:
        gaps.append((after, ts, after.first_seen))
    if before is not None:
        gaps.append((before, before.last_seen, ts))
    for item, low, high in gaps:
        if state.banner_since <= high and low <= state.last_seen:
            continue
        if any(h is not item and h.first_seen <= high and low <= h.last_seen for h in state.history):
            continue
        if item is after:
            item.first_seen = ts
        else:
            item.last_seen, item.run_id = ts, run_id
        item.touched = item.id is not None
        return True
    return False


def _names_lost(host: _HostState, record: BannerRecord) -> bool:
    """Whether a service's record lacks a name its host was seen with, where the stored record's
    identity is not known (NULL: stored before identity_hash was kept, or before it covered
    hostnames). Owners were attributed from every name the host was seen with until then, so only
    such a record changes what attribution finds; comparing the names instead of counting every
    unknown identity as changed keeps an upgrade from taking every host up again."""
    return not set(host.hostnames).issubset(record.hostnames)


def _position(position: int | str) -> str:
    return f"line {position}" if isinstance(position, int) else position


def _apply_host(hosts: dict[str, _HostState], record: BannerRecord, ts: datetime, now: datetime) -> None:
    """`now`: the host's changed_at when a field of the record changes it."""
    state = hosts.get(record.ip)
    if state is None:
        names = sorted(set(record.hostnames))[:MAX_HOSTNAMES] if record.hostnames else []
        hosts[record.ip] = _HostState(
            None, record.ip, ts, ts, record.org, record.isp, record.asn, record.country, names, record.os, now, True
        )
        return
    if ts < state.first_seen:
        state.first_seen = ts
        state.dirty = True
    newest, newer = ts >= state.last_seen, ts > state.last_seen
    if newest:
        state.last_seen = ts
    if _take_host_fields(state, record, newest=newest):
        state.changed_at, state.dirty = now, True
    elif newer:
        state.dirty = True


def _take_host_fields(state: _HostState, record: BannerRecord, *, newest: bool) -> bool:
    """The newest record wins, but an empty field never blanks a known value. An older record
    (files need not be in time order) fills only what is empty, and adds its hostnames: the same
    lines in time order would have left its values there too. The host's hostnames are every name
    it was seen with, for display and export; owner attribution reads the names of its services'
    current records (Service.raw), whose change the service's identity_hash tells."""
    changed = False
    if record.org and record.org != state.org and (newest or not state.org):
        state.org, changed = record.org, True
    if record.isp and record.isp != state.isp and (newest or not state.isp):
        state.isp, changed = record.isp, True
    if record.asn is not None and record.asn != state.asn and (newest or state.asn is None):
        state.asn, changed = record.asn, True
    if record.country and record.country != state.country and (newest or not state.country):
        state.country, changed = record.country, True
    if record.os and record.os != state.os and (newest or not state.os):
        state.os, changed = record.os, True
    if record.hostnames:
        names = sorted(set(state.hostnames).union(record.hostnames))[:MAX_HOSTNAMES]
        if names != state.hostnames:
            state.hostnames, changed = names, True
    return changed


_HOST_COLUMNS = ("ip", "org", "isp", "asn", "country", "hostnames", "os", "first_seen", "last_seen", "changed_at")
# Their PostgreSQL types with the id first, for binary COPY: the address and the hostnames go as
# the text _host_row makes (bulk's text-to-binary dumpers for inet and jsonb).
_HOST_TYPES = ("int8", "inet", "text", "text", "int8", "text", "jsonb", "text", *["timestamptz"] * 3)
_SERVICE_REWRITE = (
    "product",
    "version",
    "module",
    "banner",
    "raw",
    "banner_hash",
    "identity_hash",
    "first_seen",
    "last_seen",
    "banner_since",
    "last_run_id",
)
_SERVICE_INSERT = ("host_id", "port", "transport", *_SERVICE_REWRITE)
# Their PostgreSQL types with the id first, for binary COPY (which applies no cast).
_SERVICE_TYPES = ("int8", "int8", "int4", *["text"] * 8, *["timestamptz"] * 3, "int8")


def _host_row(h: _HostState, dt: Callable) -> tuple:
    return (
        h.ip,
        h.org,
        h.isp,
        h.asn,
        h.country,
        orjson.dumps(h.hostnames).decode(),
        h.os,
        dt(h.first_seen),
        dt(h.last_seen),
        None if h.changed_at is None else dt(h.changed_at),
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
        s.identity_hash,
        dt(s.first_seen),
        dt(s.last_seen),
        dt(s.banner_since),
    )
