"""Owner services: resolve who holds and who operates each exposed host, and whom to tell.

Network requests run in worker threads; every database write happens in the calling thread.
"""

from __future__ import annotations

import bisect
import ipaddress
import stat
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import TruncDate
from django.utils import timezone
from simple_history.utils import bulk_create_with_history, bulk_update_with_history

from disclosure import rdap_client
from disclosure.models import (
    Contact,
    HostOwner,
    Inhibition,
    Network,
    NetworkAnswer,
    Organisation,
    ip_key,
    network_label,
)
from disclosure.owners.attribution import attribute_operator, facts_from_host, registry_match_name
from disclosure.owners.contacts import ROLE_ORDER, address_problem, contact_candidates, network_holder
from disclosure.owners.registry import RegistryOrganisation, load_registry
from harvest.models import Host, Service
from harvest.services import ExportedService

ProgressFn = Callable[[int], None]
# Deduplication of in-flight lookups: addresses in the same neighbourhood wait for the answer of
# the one already asked, since it most likely covers them. Registry networks are rarely larger.
NEIGHBOURHOOD = {4: 16, 6: 32}
# Cached networks are looked up no wider than this: bounds the index scan for a cache miss.
LOOKUP_SPAN = {4: 8, 6: 12}
# RDAP contacts kept per network answer, best first in the order the recipient rule uses (abuse,
# security, technical, administrative; entities on the network before nested ones): the rule
# takes the first usable one, so an answer listing thousands of addresses costs 50 rows.
MAX_CONTACTS_PER_NETWORK = 50
# Why a host has no recipient while staff's override recipient is disabled (or cannot be mailed).
OVERRIDE_DISABLED = "override_disabled"
# Host owners are written per chunk of this many hosts.
OWNER_CHUNK = 500


class OwnerError(Exception):
    """A request about owners cannot be done; the message is for the user."""


def lookup_options_from_settings() -> rdap_client.LookupOptions:
    return rdap_client.LookupOptions(
        base_url=settings.RDAP_BASE_URL,
        dns_server=settings.RDAP_DNS_SERVER,
        timeout=settings.RDAP_TIMEOUT,
        # Port 43 whois and HTTP ASN lookups reach the internet directly: only the DNS method can
        # be pointed at a mirror, so a configured DNS server means DNS only.
        asn_methods=("dns",) if settings.RDAP_DNS_SERVER else ("dns", "whois", "http"),
    )


# --- the network cache -------------------------------------------------------------------------


@dataclass
class AddressOutcome:
    network: Network | None
    from_cache: bool = False
    reason: str = ""  # why the lookup failed (the network is then the expired one, or None)
    detail: str = ""
    permanent: bool = False


@dataclass
class ResolveStats:
    addresses: int = 0
    resolved: int = 0
    from_cache: int = 0
    requests: int = 0
    networks_fetched: int = 0
    failed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "addresses": self.addresses,
            "resolved": self.resolved,
            "from_cache": self.from_cache,
            "requests": self.requests,
            "networks_fetched": self.networks_fetched,
            "failed": dict(self.failed),
        }

    def add(self, other: ResolveStats) -> None:
        self.addresses += other.addresses
        self.resolved += other.resolved
        self.from_cache += other.from_cache
        self.requests += other.requests
        self.networks_fetched += other.networks_fetched
        self.failed.update(other.failed)


class _Intervals:
    """Networks already seen in this run, for lookups without a query.

    An assignment answers here for the addresses inside it, unless it holds narrower cached
    networks (the database knows which of them holds an address); any other network (an
    allocation around assignments not yet seen) never does: the addresses it was the answer for
    are in the database (NetworkAnswer), and a run asks for each address once.
    """

    def __init__(self) -> None:
        self._keys: list[tuple[str, int]] = []  # (start, pk) of the assignments, sorted
        self._networks: dict[int, Network] = {}
        self._covering: set[int] = set()

    def add(self, network: Network) -> None:
        if not network.answers_whole_range:
            return
        if network.pk not in self._networks:
            bisect.insort(self._keys, (network.start_key, network.pk))
            if Network.objects.inside(network).exists():
                self._covering.add(network.pk)
        self._networks[network.pk] = network

    def forget_narrower(self, network: Network, key: str) -> None:
        """The registry answered `key` with `network`: narrower networks holding it are gone.
        Looks only at the networks that start inside `network`, not at all those seen."""
        low = bisect.bisect_left(self._keys, (network.start_key, -1))
        high = bisect.bisect_right(self._keys, (network.end_key, 2**63))
        for _start, pk in self._keys[low:high]:
            seen = self._networks[pk]
            if pk != network.pk and _strictly_inside(seen, network) and seen.start_key <= key <= seen.end_key:
                self._covering.add(pk)  # never answers from here again

    def find(self, key: str) -> Network | None:
        position = bisect.bisect_right(self._keys, (key, 2**63))
        best = None
        for start, pk in reversed(self._keys[max(0, position - 16) : position]):
            network = self._networks[pk]
            if network.end_key >= key and (best is None or (start, best.end_key) > (best.start_key, network.end_key)):
                best = network
        return None if best is None or best.pk in self._covering else best


def _strictly_inside(inner: Network, outer: Network) -> bool:
    return (
        outer.start_key <= inner.start_key
        and inner.end_key <= outer.end_key
        and (inner.start_key, inner.end_key) != (outer.start_key, outer.end_key)
    )


def network_find_cached(
    *, ip: str, now: datetime | None = None, fetched_since: datetime | None = None
) -> Network | None:
    """The most specific cached network that holds `ip`, with one indexed query, when it answers
    for `ip`: an assignment for every address in it, any other network (an allocation, which may
    hold assignments not cached yet) only for the addresses it was the registry's answer for.
    None when it has expired (or was fetched before `fetched_since`), even if a wider one has
    not: the wider one must not answer for it."""
    found = _network_answering(ip)
    if found is None or found.expires_at <= (now or timezone.now()):
        return None
    return None if fetched_since is not None and found.fetched_at < fetched_since else found


def _network_answering(ip: str) -> Network | None:
    """The most specific cached network holding `ip` when it answers for `ip`, expired or not."""
    address = ipaddress.ip_address(ip)
    floor = ipaddress.ip_network(f"{address}/{LOOKUP_SPAN[address.version]}", strict=False).network_address
    found = (
        Network.objects.holding(str(address))
        # A gone network answers for nothing: it must not hide the wider network the registry
        # answered an address in it with (that answer made it gone).
        .filter(start_key__gte=ip_key(floor), gone_at__isnull=True)
        .annotate(answered=Exists(NetworkAnswer.objects.filter(network=OuterRef("pk"), address_key=ip_key(address))))
        .order_by("-start_key", "end_key")
        .first()
    )
    if found is None or not (found.answers_whole_range or found.answered):  # type: ignore[attr-defined]
        return None
    return None if network_unusable(found) else found


def network_unusable(network: Network) -> tuple[str, str] | None:
    """(reason, detail) when a cached network answers for no address, not even as an expired
    fallback: the registry no longer has it (gone), or it was cached before answers like it were
    refused (too wide, a registry's own block); else None."""
    if network.is_gone:
        return "network_gone", f"network {network.cidr} is no longer at the registry: look the owner up again"
    return rdap_client.stored_network_refusal(
        start=network.start_address,
        end=network.end_address,
        network_type=network.network_type,
        name=network.name,
        raw=network.raw,
    )


def network_resolve_addresses(
    *,
    addresses: Iterable[str],
    options: rdap_client.LookupOptions | None = None,
    limiter: rdap_client.RateLimiter | None = None,
    concurrency: int | None = None,
    progress: ProgressFn | None = None,
    memory: _Intervals | None = None,
    fetched_since: datetime | None = None,
) -> tuple[dict[str, AddressOutcome], ResolveStats]:
    """Map each public address to its registry network: from the cache, else one RDAP lookup.

    Lookups run `concurrency` at a time in threads; answers are saved here, in this thread.
    A failure is recorded for its address and the rest go on. The outcomes are keyed by the
    addresses exactly as given (e.g. `Host.ip`); an IPv4-mapped address (::ffff:a.b.c.d) is
    looked up as the IPv4 address it holds, once for both spellings. `memory` keeps the networks
    seen from one call to the next. With `fetched_since`, the cache answers only with networks
    fetched since then (staff asked for a fresh lookup): the others are asked for again.
    """
    options = options or lookup_options_from_settings()
    limiter = limiter or rdap_client.RateLimiter(settings.RDAP_REQUESTS_PER_SECOND)
    concurrency = max(1, concurrency or settings.RDAP_CONCURRENCY)
    stats = ResolveStats()
    outcomes: dict[str, AddressOutcome] = {}
    memory = memory if memory is not None else _Intervals()
    now = timezone.now()
    keys: dict[str, str] = {}
    spellings: dict[str, list[str]] = {}  # the address looked up -> the texts given for it
    for text in addresses:
        address = rdap_client.lookup_address(text)  # parse each address once
        keys[str(address)] = ip_key(address)
        spellings.setdefault(str(address), []).append(text)
    queue = deque(sorted(keys, key=keys.__getitem__))
    stats.addresses = len(queue)
    waiting: dict[str, list[str]] = {}
    inflight: dict[Future, tuple[str, str, rdap_client.LookupStats]] = {}
    done_count = 0

    def finish(ip: str, outcome: AddressOutcome) -> None:
        nonlocal done_count
        for text in spellings[ip]:
            outcomes[text] = outcome
        if outcome.reason:
            stats.failed[outcome.reason] += 1
        else:
            stats.resolved += 1
            stats.from_cache += outcome.from_cache
        done_count += 1
        if progress:
            progress(done_count)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rdap")
    try:
        while queue or inflight:
            while queue and len(inflight) < concurrency:
                ip = queue.popleft()
                cached = memory.find(keys[ip])
                if cached is not None:
                    finish(ip, AddressOutcome(cached, from_cache=True))
                    continue
                hood = _neighbourhood(ip)
                if hood in waiting:
                    waiting[hood].append(ip)
                    continue
                cached = network_find_cached(ip=ip, now=now, fetched_since=fetched_since)
                if cached is not None:
                    memory.add(cached)
                    finish(ip, AddressOutcome(cached, from_cache=True))
                    continue
                lookup_stats = rdap_client.LookupStats()
                future = pool.submit(rdap_client.lookup_ip, ip, options=options, limiter=limiter, stats=lookup_stats)
                inflight[future] = (ip, hood, lookup_stats)
                waiting[hood] = []
            if not inflight:
                continue
            completed, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for future in completed:
                ip, hood, lookup_stats = inflight.pop(future)
                stats.requests += lookup_stats.requests
                outcome = _save_answer(future, memory, stats)
                if outcome.network is None and not outcome.permanent:
                    # The registry did not answer this time: the expired network, if there is
                    # one, still tells the owner better than nothing until the next run asks again.
                    outcome.network = _network_answering(ip)
                finish(ip, outcome)
                queue.extendleft(reversed(waiting.pop(hood, [])))
    except BaseException:
        # Ctrl-C, or django-q2's timeout (a SystemExit): leave the lookups in flight (each may
        # take RDAP_TIMEOUT, with retries) to end by themselves. Waiting for them outlasted the 3 s
        # django-q2 gives a timed-out task before it kills the worker, so the failure was never
        # recorded, and the ORM broker then delivered the task again and again, never counting it.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return outcomes, stats


def _neighbourhood(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{address}/{NEIGHBOURHOOD[address.version]}", strict=False))


def _save_answer(future: Future, memory: _Intervals, stats: ResolveStats) -> AddressOutcome:
    try:
        answer = future.result()
    except rdap_client.RdapError as exc:
        return AddressOutcome(None, reason=exc.reason, detail=exc.detail[:500], permanent=exc.permanent)
    except Exception as exc:  # noqa: BLE001 - one bad lookup must not stop the batch
        return AddressOutcome(None, reason="unexpected_error", detail=_error_detail(exc))
    try:
        network = network_save_answer(answer=answer, source=Network.Source.LIVE)
    except Exception as exc:  # noqa: BLE001 - e.g. another worker saved the same range a moment ago
        return AddressOutcome(None, reason="save_failed", detail=_error_detail(exc))
    stats.networks_fetched += 1
    key = ip_key(answer.queried)
    memory.forget_narrower(network, key)
    memory.add(network)
    return AddressOutcome(network)


def _error_detail(exc: BaseException) -> str:
    return rdap_client.storable_text(f"{type(exc).__name__}: {exc}"[:500])


@transaction.atomic
def network_save_answer(
    *, answer: rdap_client.RdapNetwork, source: str, fetched_at: datetime | None = None, answered: Iterable[str] = ()
) -> Network:
    """Store (or refresh) one registry network, its holder and the holder's RDAP contacts.

    The network is recorded as the registry's answer for `answer.queried` and the `answered`
    addresses; cached networks narrower than it that hold one of them are gone from the registry
    (it would have answered with them) and expire now.
    """
    fetched_at = fetched_at or timezone.now()
    holder = _holder_save(answer=answer, fetched_at=fetched_at)
    candidates = contact_candidates(answer)[:MAX_CONTACTS_PER_NETWORK]
    network, _ = Network.objects.update_or_create(
        start_key=ip_key(answer.start),
        end_key=ip_key(answer.end),
        defaults={
            "start_address": answer.start,
            "end_address": answer.end,
            "cidrs": list(answer.cidrs),
            "network_type": answer.network_type,
            "handle": answer.handle,
            "name": answer.name,
            "country": answer.country,
            "registry": answer.registry,
            "asn": answer.asn,
            "asn_description": answer.asn_description,
            "holder": holder,
            "contact_candidates": candidates,
            "raw": answer.raw,
            "source": source,
            "fetched_at": fetched_at,
            "expires_at": fetched_at + timedelta(days=settings.RDAP_CACHE_DAYS),
            "gone_at": None,  # the registry answered with it: it exists (again)
        },
    )
    _rdap_contacts_save(organisation=holder, candidates=candidates, registry=answer.registry, at=fetched_at)
    keys = sorted({ip_key(a) for a in [answer.queried, *answered] if a})
    if keys:
        if not network.answers_whole_range:  # an assignment answers for all its addresses anyway
            NetworkAnswer.objects.bulk_create(
                [NetworkAnswer(network=network, address_key=key) for key in keys], ignore_conflicts=True
            )
        _narrower_expire(network=network, keys=keys, at=fetched_at)
    return network


def _narrower_expire(*, network: Network, keys: list[str], at: datetime) -> None:
    """Cached networks strictly inside `network` that hold an address it was just the answer for
    no longer exist at the registry: they stop answering (their hosts are resolved again), and are
    no fallback when a lookup fails (an expired one would give its former holder)."""
    inside = Network.objects.inside(network).filter(gone_at__isnull=True)
    stale = [
        pk
        for pk, start, end in inside.values_list("pk", "start_key", "end_key")
        if bisect.bisect_right(keys, end) > bisect.bisect_left(keys, start)  # some key in start..end
    ]
    if stale:
        Network.objects.filter(pk__in=stale).update(gone_at=at)
        Network.objects.filter(pk__in=stale, expires_at__gt=at).update(expires_at=at)


def _holder_save(*, answer: rdap_client.RdapNetwork, fetched_at: datetime) -> Organisation:
    """The holder's organisation; a hospital on its own network is the registry's organisation,
    so its RDAP contacts serve it as operator too."""
    handle, name = network_holder(answer)
    registered = registry_match_name(name, load_registry(), country=answer.country)
    if registered is not None:
        return _registry_organisation(registered)
    organisation, created = Organisation.objects.get_or_create(
        source_key=_holder_key(answer=answer, handle=handle, name=name),
        defaults={
            "name": name[:255] or handle or f"{answer.start} - {answer.end}",
            "country": answer.country,
            "source": Organisation.Source.RDAP,
        },
    )
    return organisation


def _holder_key(*, answer: rdap_client.RdapNetwork, handle: str, name: str) -> str:
    """How an RDAP holder is found again: by the registry's handle. RDAP makes handles optional:
    without one, by its name, and without a name either, by the network (a prefix of its own each,
    so no handle can stand for another holder)."""
    if handle:
        return f"rdap:{answer.registry}:{handle}"[:200]
    if name:
        return f"rdap-name:{answer.registry}:{name}"[:200]
    return f"rdap-network:{answer.registry}:{answer.start}-{answer.end}"


def _rdap_contacts_save(*, organisation: Organisation, candidates: list[dict], registry: str, at: datetime) -> None:
    """Add or refresh the RDAP contacts. Staff-made contacts are never touched, and an RDAP
    contact that staff disabled stays disabled: only its import time moves."""
    # In any case: registries' addresses come in lower case, staff type them as they please.
    staff = {
        (email.lower(), role)
        for email, role in organisation.contacts.filter(source=Contact.Source.STAFF).values_list("email", "role")
    }
    for candidate in candidates:
        if (candidate["email"].lower(), candidate["role"]) in staff:
            continue
        contact, created = Contact.objects.get_or_create(
            organisation=organisation,
            email=candidate["email"],
            role=candidate["role"],
            source=Contact.Source.RDAP,
            defaults={"import_source": f"rdap:{registry}:{candidate['handle']}"[:200], "imported_at": at},
        )
        if not created:
            Contact.objects.filter(pk=contact.pk).update(imported_at=at)


# --- recorded answers --------------------------------------------------------------------------


@dataclass
class ImportReport:
    loaded: int = 0
    networks: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "loaded": self.loaded,
            "rejected": len(self.rejected),
            "errors": self.rejected,
            "networks": self.networks,
        }


def rdap_cache_import(*, directory: str | Path, progress: ProgressFn | None = None) -> ImportReport:
    """Load every `*.json` in `directory` (a raw RDAP ip-network answer each) into the cache.

    Each file is checked and saved on its own: a file that cannot be read, is not JSON, not an
    ip network, has no usable range (or a CIDR outside it), or cannot be saved is reported by
    name with the reason and skipped, and the rest are loaded.
    """
    directory = Path(directory)
    if directory.is_file():
        raise OwnerError(f"{directory} is a file: give the folder of *.json answers that holds it")
    if not directory.is_dir():
        raise OwnerError(f"no such directory: {directory}")
    report = ImportReport()
    for position, path in enumerate(sorted(directory.glob("*.json")), start=1):
        try:
            network = _import_file(path)
        except rdap_client.RdapError as exc:
            report.rejected.append({"file": path.name, "reason": exc.reason, "detail": exc.detail[:200]})
        else:
            report.loaded += 1
            report.networks.append(network.cidr)
        if progress:
            progress(position)
    return report


def _import_file(path: Path) -> Network:
    try:
        text = _read_bounded(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise rdap_client.RdapError("malformed_json", str(exc)[:200]) from None
    answer = rdap_client.parse_network(rdap_client.load_json(text))
    answered = _answered_addresses(path.with_suffix(".addresses"), answer)
    try:
        return network_save_answer(answer=answer, source=Network.Source.IMPORT, answered=answered)
    except Exception as exc:  # noqa: BLE001 - one file that cannot be stored must not stop the import
        raise rdap_client.RdapError("save_failed", _error_detail(exc)[:200]) from None


def _read_bounded(path: Path) -> bytes:
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            # A named pipe would wait for a writer forever; /dev/zero has no size and no end.
            raise rdap_client.RdapError("unreadable", "not a regular file")
        if status.st_size > rdap_client.MAX_ANSWER_BYTES:
            raise rdap_client.RdapError("answer_too_large", f"{status.st_size} bytes")
        with path.open("rb") as handle:
            data = handle.read(rdap_client.MAX_ANSWER_BYTES + 1)  # it may have grown since
    except OSError as exc:
        raise rdap_client.RdapError("unreadable", f"{type(exc).__name__}: {exc}"[:200]) from None
    if len(data) > rdap_client.MAX_ANSWER_BYTES:
        raise rdap_client.RdapError("answer_too_large", f"more than {rdap_client.MAX_ANSWER_BYTES} bytes")
    return data


def _answered_addresses(path: Path, answer: rdap_client.RdapNetwork) -> list[str]:
    """The addresses listed in NAME.addresses beside a recorded answer (one a line, `#` starts a
    comment): those it was the registry's answer for. Each must lie in the answer's range."""
    if not path.exists() and not path.is_symlink():
        return []
    try:
        lines = _read_bounded(path).decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise rdap_client.RdapError("malformed_addresses", f"{path.name}: {exc}"[:200]) from None
    except rdap_client.RdapError as exc:
        raise rdap_client.RdapError(exc.reason, f"{path.name}: {exc.detail}"[:200]) from None
    start, end = ipaddress.ip_address(answer.start), ipaddress.ip_address(answer.end)
    addresses = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            address = rdap_client.parse_address(text)
        except ValueError:
            address = None
        if address is None or address.version != start.version or not start <= address <= end:  # type: ignore[operator]
            problem = f"{path.name} line {number}: {rdap_client.storable_text(text[:60])!r} is not an address in"
            raise rdap_client.RdapError("malformed_addresses", f"{problem} {answer.start} - {answer.end}")
        addresses.append(str(address))
    return addresses


# --- hosts: operator, recipient ----------------------------------------------------------------


def hosts_needing_owner(*, now: datetime | None = None) -> Iterable[Host]:
    """Hosts with services whose owner is unknown, never resolved, or resolved from an expired network
    or one answered again since (another holder, other contacts), or whose recipient staff have
    since disabled, deleted or inhibited, or added or changed a contact it was chosen from, or
    changed its operator (its domains), or whose candidates had an inhibition end, change or go,
    or whose harvested data changed (Host.changed_at: no lookup is made for these: their network
    is cached).

    Inhibited owners come back every time: an inhibition ends, and their network is usually cached.
    """
    now = now or timezone.now()
    recipient_inhibited = Inhibition.objects.filter(until__gte=timezone.localdate()).filter(
        Q(contact=OuterRef("recipient")) | Q(organisation=OuterRef("recipient__organisation"))
    )
    # Contacts are chosen from the override, the operator and the network holder.
    contact_changed = Contact.objects.filter(updated_at__gt=OuterRef("updated_at")).filter(
        Q(pk=OuterRef("override_recipient"))
        | Q(organisation=OuterRef("operator"))
        | Q(organisation=OuterRef("network__holder"))
    )
    # An inhibition of a candidate that ended, or that staff changed or deleted, since the
    # recipient was chosen: the contact it held back may be the better one again.
    inhibition_of_candidate = (
        Q(contact=OuterRef("override_recipient"))
        | Q(contact__organisation=OuterRef("operator"))
        | Q(contact__organisation=OuterRef("network__holder"))
        | Q(organisation=OuterRef("override_recipient__organisation"))
        | Q(organisation=OuterRef("operator"))
        | Q(organisation=OuterRef("network__holder"))
    )
    inhibition_ended = Inhibition.objects.filter(inhibition_of_candidate).filter(
        until__lt=timezone.localdate(), until__gte=OuterRef("chosen_on")
    )
    inhibition_changed = Inhibition.history.model.objects.filter(inhibition_of_candidate).filter(
        history_date__gt=OuterRef("updated_at")
    )
    # Staff changed the operator (its domains decide which of its RDAP contacts serve it).
    operator_changed = Organisation.objects.filter(pk=OuterRef("operator"), updated_at__gt=OuterRef("updated_at"))
    owners = HostOwner.objects.annotate(chosen_on=TruncDate("updated_at"))  # the day, in TIME_ZONE
    settled = owners.filter(host=OuterRef("pk")).filter(
        Q(status=HostOwner.Status.SKIPPED)
        | (
            Q(status=HostOwner.Status.RESOLVED, network__expires_at__gt=now, recipient__enabled=True)
            # A network answered again since (re-imported, or fetched for another address) may
            # have another holder or other contacts: its hosts choose again, from the cache.
            & Q(network__fetched_at__lte=F("updated_at"))
            & ~Exists(recipient_inhibited)
            & ~Exists(contact_changed)
            & ~Exists(inhibition_ended)
            & ~Exists(inhibition_changed)
            & ~Exists(operator_changed)
            # Harvest stored something new about the host since (another org or hostname, a
            # service added, a banner replaced): its operator rests on what harvest stores.
            # Equality, not order: ingest dates a change before its batch commits (HostOwner).
            & (Q(host__changed_at__isnull=True) | Q(host__changed_at=F("host_changed_at")))
        )
    )
    # Unsorted: owners_resolve puts them in address order itself.
    return Host.objects.filter(Exists(Service.objects.filter(host=OuterRef("pk")))).exclude(Exists(settled)).order_by()


@dataclass
class OwnersSummary:
    hosts: int = 0
    stats: ResolveStats = field(default_factory=ResolveStats)
    status: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    operators: int = 0

    def as_dict(self) -> dict:
        failed = dict(self.stats.failed)
        for reason, count in self.skipped.items():
            failed[reason] = failed.get(reason, 0) + count
        return {
            "hosts": self.hosts,
            "resolved": self.stats.resolved,
            "from_cache": self.stats.from_cache,
            "requests": self.stats.requests,
            "networks_fetched": self.stats.networks_fetched,
            "failed": failed,
            "operators": self.operators,
            "owner_status": dict(self.status),
        }

    def describe(self) -> str:
        """One line for people: what was found, how the owners ended, what failed."""
        result = self.as_dict()
        failed = ", ".join(f"{reason} {count}" for reason, count in sorted(result["failed"].items())) or "none"
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(result["owner_status"].items())) or "none"
        return (
            f"{result['hosts']} hosts: {result['resolved']} networks found ({result['from_cache']} from cache, "
            f"{result['requests']} RDAP requests), {result['operators']} operators recognised; "
            f"owner status {statuses}; failed: {failed}"
        )


def owners_resolve(
    *,
    hosts: Iterable[Host] | None = None,
    options: rdap_client.LookupOptions | None = None,
    limiter: rdap_client.RateLimiter | None = None,
    concurrency: int | None = None,
    progress: ProgressFn | None = None,
    fresh: bool = False,
) -> OwnersSummary:
    """Resolve network, operator and recipient for every host that needs it (or the given hosts).

    `fresh` asks the registry again even for networks still cached (once per network this run).

    Hosts go in chunks of OWNER_CHUNK, in address order: each chunk's owners are written as soon
    as its addresses are resolved, so a run stopped early (Ctrl-C, the task's timeout while a
    registry is slow) keeps what it did, and the next run takes up the rest.
    """
    host_list = sorted(hosts if hosts is not None else hosts_needing_owner(), key=_address_order)
    summary = OwnersSummary(hosts=len(host_list))
    options = options or lookup_options_from_settings()
    limiter = limiter or rdap_client.RateLimiter(settings.RDAP_REQUESTS_PER_SECOND)
    memory = _Intervals()
    fetched_since = timezone.now() if fresh else None
    done = 0

    def moved(count: int) -> None:
        if progress:
            progress(done + count)

    for start in range(0, len(host_list), OWNER_CHUNK):
        chunk = host_list[start : start + OWNER_CHUNK]
        public, refused = [], {}
        for host in chunk:
            reason = rdap_client.address_refusal(host.ip)
            if reason:
                refused[host.pk] = reason
                summary.skipped[reason] += 1
            else:
                public.append(host.ip)
        outcomes, stats = network_resolve_addresses(
            addresses=public,
            options=options,
            limiter=limiter,
            concurrency=concurrency,
            progress=moved,
            memory=memory,
            fetched_since=fetched_since,
        )
        summary.stats.add(stats)
        done += stats.addresses
        # A fresh context per chunk: the networks this chunk saved may have added contacts.
        try:
            owners = _owners_write(chunk=chunk, refused=refused, outcomes=outcomes, context=_Context())
        except IntegrityError:
            # Another run created some of these owners meanwhile: read them and write again. The
            # context may hold organisations created by the attempt just rolled back: start afresh.
            owners = _owners_write(chunk=chunk, refused=refused, outcomes=outcomes, context=_Context())
        for owner in owners:
            summary.status[str(owner.status)] += 1
            summary.operators += owner.operator_id is not None
    return summary


def _address_order(host: Host) -> tuple[int, str]:
    """Hosts in address order (neighbours in one chunk), addresses that do not parse last."""
    try:
        return 0, ip_key(rdap_client.lookup_address(host.ip))
    except ValueError:
        return 1, host.ip


class _Context:
    """What one run reads again and again: the registry, inhibitions, organisations, contacts."""

    def __init__(self) -> None:
        self.registry = load_registry()
        self.inhibited = _active_inhibitions()
        self._organisations: dict[str, Organisation] = {}
        self._contacts: dict[int, list[Contact]] = {}

    def registry_organisation(self, entry: RegistryOrganisation) -> Organisation:
        if entry.key not in self._organisations:
            self._organisations[entry.key] = _registry_organisation(entry)
        return self._organisations[entry.key]

    def contacts_of(self, organisation_id: int) -> list[Contact]:
        if organisation_id not in self._contacts:
            self._contacts[organisation_id] = _contacts_from_db(organisation_id)
        return self._contacts[organisation_id]


OWNER_FIELDS = [
    "status", "reason", "detail", "network", "operator", "operator_evidence", "recipient", "recipient_reason",
    "attempts", "resolved_at", "updated_at", "host_changed_at",
]  # fmt: skip


@transaction.atomic
def _owners_write(
    *, chunk: list[Host], refused: dict[int, str], outcomes: dict[str, AddressOutcome], context: _Context
) -> list[HostOwner]:
    """Compute and store the owners of a chunk of hosts: a few queries for the chunk, not per host."""
    # Lookups by host, unsorted: the models' address order costs a function call per row on SQLite.
    existing = {
        o.host_id: o
        for o in HostOwner.objects.filter(host__in=chunk).order_by().select_related("override_recipient", "operator")
    }
    # The run read its hosts when it started, maybe minutes ago: attribute from what harvest has
    # stored now, and keep the changed_at read with it. The host first, then its services: a
    # batch committed between the two reads dates the host anew, so the owner's snapshot differs
    # and the host is taken up again, never settled on half of a change.
    hosts = Host.objects.filter(pk__in=[h.pk for h in chunk]).order_by().only("ip", "org", "changed_at")
    stored = {h.pk: h for h in hosts}
    raws = _service_raws([h.pk for h in chunk])
    new, changed = [], []
    for host in chunk:
        owner = existing.get(host.pk)
        if owner is None:
            owner = HostOwner(host=host)
            new.append(owner)
        else:
            changed.append(owner)
        _owner_compute(
            owner=owner,
            host=stored.get(host.pk, host),
            refusal=refused.get(host.pk),
            outcome=outcomes.get(host.ip),
            raws=raws.get(host.pk, []),
            context=context,
        )
    if new:
        bulk_create_with_history(new, HostOwner)
    if changed:
        bulk_update_with_history(changed, HostOwner, OWNER_FIELDS)
    return new + changed


def _service_raws(host_ids: list[int]) -> dict[int, list[str]]:
    raws: dict[int, list[str]] = {}
    # By port: attribution takes the first name that matches, so a host's records go in a fixed order.
    services = Service.objects.filter(host_id__in=host_ids).order_by("port", "transport")
    for host_id, raw in services.values_list("host_id", "raw"):
        raws.setdefault(host_id, []).append(raw)
    return raws


def _owner_compute(
    *,
    owner: HostOwner,
    host: Host,
    refusal: str | None,
    outcome: AddressOutcome | None,
    raws: list[str],
    context: _Context,
) -> None:
    owner.attempts += 1
    owner.updated_at = timezone.now()  # bulk updates skip auto_now
    owner.host_changed_at = host.changed_at
    if refusal:
        owner.status, owner.reason, owner.detail = HostOwner.Status.SKIPPED, refusal, f"{host.ip} is not public"
        owner.network = None
        _override_apply(owner=owner, inhibited=context.inhibited)
        return
    owner.network = outcome.network if outcome else None
    # The services' current records name the host, not Host.hostnames (every name ever seen).
    facts = facts_from_host(org=host.org, raws=raws)
    attribution = attribute_operator(facts, context.registry)
    # The operator rests on this run's evidence only: when it is gone (a hostname changed), so is
    # the operator. Staff steer the recipient with override_recipient, never through the operator.
    if attribution:
        owner.operator = context.registry_organisation(attribution.organisation)
        owner.operator_evidence = attribution.evidence[:500]
    else:
        owner.operator, owner.operator_evidence = None, ""
    _recipient_apply(owner=owner, outcome=outcome, inhibited=context.inhibited, contacts_of=context.contacts_of)


def _registry_organisation(entry: RegistryOrganisation) -> Organisation:
    organisation, _ = Organisation.objects.get_or_create(
        source_key=entry.key,
        defaults={
            "name": entry.name,
            "kind": entry.kind,
            "sector": "healthcare",
            "country": "NL",
            "domains": list(entry.domains),
            "source": Organisation.Source.REGISTRY,
        },
    )
    return organisation


def _active_inhibitions() -> tuple[set[int], set[int]]:
    """(contact ids, organisation ids) that must not be mailed today."""
    active = Inhibition.objects.filter(until__gte=timezone.localdate())
    contacts, organisations = set(), set()
    for contact_id, organisation_id in active.values_list("contact_id", "organisation_id"):
        if contact_id:
            contacts.add(contact_id)
        if organisation_id:
            organisations.add(organisation_id)
    return contacts, organisations


ContactsOf = Callable[[int], list[Contact]]


def _contacts_from_db(organisation_id: int) -> list[Contact]:
    """The organisation's contacts that may be chosen: those staff entered, and the RDAP ones that
    the stored answer of a network it holds still names. A registry that replaced an address does
    not delete our row (staff may have disabled it, it has history), but it is no contact now."""
    contacts = list(Contact.objects.filter(organisation_id=organisation_id))
    if any(c.source == Contact.Source.RDAP for c in contacts):
        named = {
            (candidate["email"], candidate["role"])
            for candidates in Network.objects.filter(holder_id=organisation_id).values_list(
                "contact_candidates", flat=True
            )
            for candidate in candidates
        }
        contacts = [c for c in contacts if c.source == Contact.Source.STAFF or (c.email, c.role) in named]
    return contacts


def _recipient_apply(
    *,
    owner: HostOwner,
    outcome: AddressOutcome | None,
    inhibited: tuple[set[int], set[int]],
    contacts_of: ContactsOf = _contacts_from_db,
) -> None:
    contact, reason, blocked = recipient_choose(
        override=owner.override_recipient,
        operator=owner.operator,
        network=owner.network,
        inhibited=inhibited,
        contacts_of=contacts_of,
    )
    owner.recipient, owner.recipient_reason = contact, reason[:500]
    if contact is not None:
        owner.status, owner.reason, owner.detail = HostOwner.Status.RESOLVED, "", ""
        owner.resolved_at = timezone.now()
    elif blocked:
        owner.status, owner.reason, owner.detail = HostOwner.Status.INHIBITED, "inhibited", reason[:500]
    elif owner.override_recipient is not None:
        owner.status, owner.reason, owner.detail = HostOwner.Status.UNKNOWN, OVERRIDE_DISABLED, reason[:500]
    elif owner.network is None:
        owner.status = HostOwner.Status.UNKNOWN
        owner.reason = outcome.reason if outcome else (owner.reason or "not_looked_up")
        owner.detail = outcome.detail if outcome else owner.detail
    else:
        owner.status, owner.reason = HostOwner.Status.UNKNOWN, "no_contact"
        owner.detail = f"RDAP answer for {owner.network.cidr} names no usable e-mail address"


def _override_apply(*, owner: HostOwner, inhibited: tuple[set[int], set[int]]) -> None:
    """A skipped (non-public) host is never looked up, but a recipient staff set for it holds."""
    contact, reason, _ = recipient_choose(
        override=owner.override_recipient, operator=None, network=None, inhibited=inhibited
    )
    owner.recipient, owner.recipient_reason = contact, reason[:500]


def recipient_choose(
    *,
    override: Contact | None,
    operator: Organisation | None,
    network: Network | None,
    inhibited: tuple[set[int], set[int]] | None = None,
    contacts_of: ContactsOf = _contacts_from_db,
) -> tuple[Contact | None, str, bool]:
    """(contact, why, blocked): staff override, else the operator's contact, else the network's.

    `blocked` is True when candidates existed but every one of them is inhibited. A staff override
    is the only candidate: staff set it because the automatic choice is the wrong party, so while
    it is disabled or inhibited nobody else is chosen.
    """
    inhibited_contacts, inhibited_organisations = inhibited or _active_inhibitions()
    if override is not None and (not override.enabled or address_problem(override.email) is not None):
        why = f"{override.email}, set by staff as this host's recipient, is disabled: set another or clear it"
        return None, why, False
    skipped = []
    candidates = _recipient_candidates(override=override, operator=operator, network=network, contacts_of=contacts_of)
    for contact, why in candidates:
        if not contact.enabled or address_problem(contact.email) is not None:
            continue  # an address stored before it was checked would not be sent as shown
        if contact.pk in inhibited_contacts or contact.organisation_id in inhibited_organisations:
            skipped.append(contact.email)
            continue
        return contact, why, False
    if skipped:
        return None, f"every candidate is inhibited: {', '.join(skipped[:5])}", True
    return None, "", False


def _recipient_candidates(
    *, override: Contact | None, operator: Organisation | None, network: Network | None, contacts_of: ContactsOf
) -> Iterable[tuple[Contact, str]]:
    if override is not None:
        yield override, f"set by staff for this host: {override.email}"
        return
    if operator is not None:
        for contact in _ranked(contacts_of(operator.pk)):
            if contact.source == Contact.Source.RDAP and not _in_domains(contact.email, operator.domains):
                # A hospital's PA assignment names its provider's abuse desk: the hospital's
                # contact for that network only, not for its systems elsewhere.
                continue
            yield contact, f"operator {operator.name}: {contact.role} contact ({contact.get_source_display()})"
    if network is None or network.holder_id is None:
        return
    holder = network.holder
    if holder is None:
        return
    contacts = contacts_of(holder.pk)
    for contact in _ranked(c for c in contacts if c.source == Contact.Source.STAFF):
        yield contact, f"network holder {holder.name}: {contact.role} contact entered by staff"
    by_address = {(c.email, c.role): c for c in contacts if c.source == Contact.Source.RDAP}
    for candidate in network.contact_candidates:
        found = by_address.get((candidate["email"], candidate["role"]))
        if found is not None:
            yield found, f"network {network.cidr} holder {holder.name}: {candidate['why']}"


def _in_domains(email: str, domains: list[str]) -> bool:
    """Whether the address is at one of the domains (or a subdomain of one)."""
    domain = email.rpartition("@")[2].lower().rstrip(".")
    return any(domain == d or domain.endswith(f".{d}") for d in domains if isinstance(d, str) and d)


def _ranked(contacts: Iterable[Contact]) -> list[Contact]:
    return sorted(contacts, key=lambda c: (ROLE_ORDER.index(c.role), 0 if c.is_manual else 1, c.pk))


def owner_recompute(*, owner: HostOwner) -> HostOwner:
    """Choose the recipient again without any lookup (after staff changed contacts or inhibitions).

    A network that answers for nothing (gone from the registry, or refused since it was cached)
    is dropped, as a run whose lookup failed drops it: no recipient comes from it, and the host
    is looked up again on the next run. An expired one is kept, as such a run keeps it.

    The operator stays the one attributed from the host data of `host_changed_at`, which stays
    too: a change harvest stored since is still to be attributed, and the next run takes it up."""
    if owner.status == HostOwner.Status.SKIPPED:
        # A non-public address has no network or operator to choose from: only staff's override.
        _override_apply(owner=owner, inhibited=_active_inhibitions())
    else:
        unusable = network_unusable(owner.network) if owner.network is not None else None
        outcome = None
        if unusable is not None:
            owner.network = None
            outcome = AddressOutcome(None, reason=unusable[0], detail=unusable[1][:500])
        _recipient_apply(owner=owner, outcome=outcome, inhibited=_active_inhibitions())
    owner.save()
    return owner


@dataclass
class RecomputeSummary:
    chosen: int = 0
    network_unusable: int = 0  # hosts whose network answers for nothing: no recipient from it
    network_expired: int = 0  # hosts whose recipient came from an expired network

    def describe(self) -> str:
        lines = [f"{self.chosen} recipients chosen again."]
        again = "looked up again on the next run, or now with “Look the owners up again (RDAP)”"
        if self.network_unusable:
            one = self.network_unusable == 1
            lines.append(
                f"{_hosts(self.network_unusable)} on a network the registry no longer has: "
                f"{'it got' if one else 'they got'} no recipient from it and {'is' if one else 'are'} {again}."
            )
        if self.network_expired:
            one = self.network_expired == 1
            lines.append(
                f"{_hosts(self.network_expired)} on an expired network: {'its' if one else 'their'} recipient "
                f"is chosen from it until {'it is' if one else 'they are'} {again}."
            )
        return " ".join(lines)


def _hosts(count: int) -> str:
    return "1 host rests" if count == 1 else f"{count} hosts rest"


def owners_recompute(*, owners: Iterable[HostOwner]) -> RecomputeSummary:
    """Choose the recipients of these owners again (owner_recompute), and say which rest on stale networks."""
    summary = RecomputeSummary()
    now = timezone.now()
    for owner in owners:
        had_network = owner.network is not None
        owner_recompute(owner=owner)
        summary.chosen += 1
        if had_network and owner.network is None:
            summary.network_unusable += 1
        elif owner.network is not None and owner.network.expires_at <= now:
            summary.network_expired += 1
    return summary


@transaction.atomic
def owner_override_set(*, owner: HostOwner, contact: Contact | None, note: str = "") -> HostOwner:
    """Staff choose the recipient of one host; resolution keeps it until staff clear it."""
    owner.override_recipient, owner.override_note = contact, note
    return owner_recompute(owner=owner)


def owner_unknown_queue() -> Iterable[HostOwner]:
    return HostOwner.objects.filter(status=HostOwner.Status.UNKNOWN).select_related("host", "network")


def inhibition_create(
    *,
    until: date,
    reason: str,
    organisation: Organisation | None = None,
    contact: Contact | None = None,
    actor: str = "",
) -> Inhibition:
    if (organisation is None) == (contact is None):
        raise OwnerError("an inhibition is for one organisation or one contact")
    if not reason.strip():
        raise OwnerError("an inhibition needs a reason")
    return Inhibition.objects.create(
        organisation=organisation, contact=contact, until=until, reason=reason, created_by=actor[:150]
    )


def contact_set_enabled(*, contact: Contact, enabled: bool) -> Contact:
    # A model save, not a queryset update: the change must land in the contact's history.
    contact.enabled = enabled
    contact.save(update_fields=["enabled", "updated_at"])
    return contact


# --- export ------------------------------------------------------------------------------------


# Plain values of only the exported columns: a network's stored RDAP answer alone is kilobytes of
# JSON, and a model instance for each of the six rows behind an owner cost more than the export.
_EXPORT_OWNER_FIELDS = (
    "host_id",
    "status",
    "reason",
    "network_id",
    "network__start_address",
    "network__end_address",
    "network__cidrs",
    "network__asn",
    "network__holder__name",
    "operator__name",
    "recipient__email",
    "recipient__organisation__name",
)


def owners_export_enrich(services: list[ExportedService], rows: list[dict]) -> None:
    """Add owner columns to a batch of export rows, with one query for the whole batch."""
    owners = {
        values[0]: values
        for values in HostOwner.objects.filter(host_id__in={s.host_id for s in services})
        .order_by()  # a lookup by host: no join of the host to sort by its address
        .values_list(*_EXPORT_OWNER_FIELDS)
    }
    for service, row in zip(services, rows, strict=True):
        owner = owners.get(service.host_id)
        if owner is None:
            row.update(_NOT_RESOLVED)
            continue
        _, status, reason, network_id, start, end, cidrs, asn, holder, operator, email, recipient = owner
        row["network"] = network_label(cidrs, start, end) if network_id else None
        if asn is not None:
            row["asn"] = asn
        row["network_holder"] = holder
        row["operator"] = operator
        row["recipient"] = recipient  # both None when no recipient was chosen
        row["recipient_email"] = email
        row["owner_status"] = status
        row["owner_reason"] = reason or None


_NOT_RESOLVED = {
    "network": None,
    "network_holder": None,
    "operator": None,
    "recipient": None,
    "recipient_email": None,
    "owner_status": "not_resolved",
    "owner_reason": "owner resolution has not run",
}
