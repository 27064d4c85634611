"""Ingest against a reference model: banners in time order (ties common), spread over several runs
and read in small batches, store exactly what replaying them one by one into a dict says, also when a run is
stopped at any line and resumed.

The model is the issue's rules, written plainly: a service is its address, port and transport
(an address however it is written: IPv4-mapped IPv6 is IPv4, IPv6 in any case); seeing it again
moves last-seen and never adds a service; history keeps a banner only when the banner changes (a
later line at the same moment wins); a line this run has already read is a duplicate, one another
run read is unchanged; a duplicate changes nothing; a host's fields are the newest non-empty ones,
its hostnames accumulate; a service's stored record is its newest line's (hostnames and all); and a
run marks a host changed (Host.changed_at) when it adds the host or a service, changes its
organisation, adds a name to it, or gives a service another banner or a newer record with other
hostnames.
"""

from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import transaction

from harvest import services
from harvest.models import HarvestRun, Host, Service, ServiceBanner
from tests.factories import banner, line, write_lines
from tests.harvest.test_harvest_file import interrupt
from tests.harvest.test_ingest_properties import empty_tables

# The same host written four ways, another host, and an IPv6 address PostgreSQL writes as ::0.10.0.11.
ADDRESSES = ["192.0.2.1", "::ffff:192.0.2.1", "2001:DB8::1", "2001:db8::1", "::a:b"]
TRANSPORTS = ["tcp", "udp", "UDP"]
BANNERS = ["A", "B", "C"]
ORGS = ["", "Org X", "Org Y"]
NAMES: list[list[str]] = [[], ["a.example"], ["b.example"]]


@dataclass
class _Service:
    banner: str
    first: int
    last: int
    since: int
    names: list[str]  # of the current record
    history: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class _Host:
    first: int
    last: int
    org: str
    names: set[str]


@dataclass
class Model:
    hosts: dict[str, _Host] = field(default_factory=dict)
    services: dict[tuple, _Service] = field(default_factory=dict)
    read_by: dict[tuple, int] = field(default_factory=dict)  # (service, banner, day) -> last run that read it
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    changed: dict[int, set[str]] = field(default_factory=dict)  # run -> hosts it marked changed

    def replay(self, run: int, item: tuple) -> None:
        address, port, transport, data, day, org, names = item
        ip, key = _canonical(address), (_canonical(address), port, transport.lower())
        counts = self.counts.setdefault(run, {"new": 0, "updated": 0, "unchanged": 0, "duplicate": 0})
        changed = self.changed.setdefault(run, set())
        sighting = (key, data, day)
        before, self.read_by[sighting] = self.read_by.get(sighting), run
        if before == run:  # a line this run has read: rejected, it changes nothing
            counts["duplicate"] += 1
            return
        host = self.hosts.get(ip)
        if host is None or (org and org != host.org) or not set(names) <= host.names:
            changed.add(ip)
        host = self.hosts.setdefault(ip, _Host(day, day, org, set(names)))
        host.last = max(host.last, day)
        host.org = org or host.org
        host.names |= set(names)
        service = self.services.get(key)
        if service is None:
            self.services[key] = _Service(data, day, day, day, names)
            counts["new"] += 1
            changed.add(ip)
        elif before is not None:  # a line another run read: unchanged
            counts["unchanged"] += 1
        elif data == service.banner:  # a newer sighting (the same moment would be a line read before)
            if names != service.names:
                changed.add(ip)
            service.last, service.names = day, names
            counts["updated"] += 1
        else:  # a new banner, later or at the same moment: the later line wins, the old one is history
            service.history.append((service.banner, service.since, service.last))
            service.banner, service.since, service.last, service.names = data, day, day, names
            counts["updated"] += 1
            changed.add(ip)

    def expected(self) -> tuple:
        hosts = sorted((ip, h.org, sorted(h.names), _at(h.first), _at(h.last)) for ip, h in self.hosts.items())
        current = sorted(
            (k[0], k[1], k[2], s.banner, _at(s.first), _at(s.last), _at(s.since)) for k, s in self.services.items()
        )
        history = sorted(
            (k[0], k[1], k[2], b, _at(first), _at(last))
            for k, s in self.services.items()
            for b, first, last in s.history
        )
        last_run = sorted((*k, self.read_by[(k, s.banner, s.last)]) for k, s in self.services.items())
        names = sorted((*k, s.names) for k, s in self.services.items())
        return hosts, current, history, last_run, names


def _canonical(address: str) -> str:
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped:
        parsed = parsed.ipv4_mapped
    return parsed.compressed


def _at(day: int) -> datetime:
    return datetime(2026, 1, day, tzinfo=UTC)


def stored(runs: list[int]) -> tuple:
    number = {pk: i for i, pk in enumerate(runs)}
    hosts = sorted(
        (_canonical(ip), org, names, first, last)
        for ip, org, names, first, last in Host.objects.values_list("ip", "org", "hostnames", "first_seen", "last_seen")
    )
    rows = Service.objects.values_list(
        "host__ip", "port", "transport", "banner", "first_seen", "last_seen", "banner_since", "last_run_id"
    )
    current = sorted((_canonical(r[0]), *r[1:7]) for r in rows)
    history = sorted(
        (_canonical(r[0]), *r[1:])
        for r in ServiceBanner.objects.values_list(
            "service__host__ip", "service__port", "service__transport", "banner", "first_seen", "last_seen"
        )
    )
    last_run = sorted((_canonical(r[0]), r[1], r[2], number[r[7]]) for r in rows)
    names = sorted(
        (_canonical(ip), port, transport, json.loads(raw)["hostnames"])
        for ip, port, transport, raw in Service.objects.values_list("host__ip", "port", "transport", "raw")
    )
    return hosts, current, history, last_run, names


def changed_at() -> dict[str, datetime | None]:
    return {_canonical(ip): at for ip, at in Host.objects.values_list("ip", "changed_at")}


def _items(rng: random.Random) -> list[list[tuple]]:
    """One to three runs of up to 12 lines, in time order over all runs (equal days common)."""
    items = [
        (
            rng.choice(ADDRESSES),
            rng.choice([80, 104]),
            rng.choice(TRANSPORTS),
            rng.choice(BANNERS),
            rng.randint(1, 4),
            rng.choice(ORGS),
            rng.choice(NAMES),
        )
        for _ in range(rng.randint(1, 30))
    ]
    items.sort(key=lambda item: item[4])  # stable: lines of the same day stay in their order
    cuts = sorted(rng.sample(range(1, len(items)), min(rng.randint(0, 2), len(items) - 1)))
    return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]


def _check(tmp_path: Path, rng: random.Random) -> None:
    runs = _items(rng)
    model, pks = Model(), []
    for number, items in enumerate(runs):
        for item in items:
            model.replay(number, item)
        lines = [
            line(
                banner(
                    ip,
                    port,
                    transport=transport,
                    data=data,
                    timestamp=f"2026-01-0{day}T00:00:00",
                    org=org,
                    hostnames=names,
                )
            )
            for ip, port, transport, data, day, org, names in items
        ]
        path = write_lines(tmp_path / f"run{number}.json", lines)
        marked = changed_at()
        run = services.harvest_file_start(path=path)
        if rng.random() < 0.5:  # stopped (Ctrl-C) at any line, in or between batches, and resumed
            interrupt(
                run, HarvestRun.Source.FILE, at_event=rng.randint(0, 2 * len(items) - 1), batch_size=rng.randint(1, 4)
            )
            run.source = HarvestRun.Source.FILE
            run.save(update_fields=["source"])
        run = services.harvest_execute(run=run, batch_size=rng.randint(1, 4))
        pks.append(run.pk)
        counts = model.counts[number]
        assert (run.new, run.updated, run.unchanged, run.rejected.get("duplicate", 0)) == (
            counts["new"],
            counts["updated"],
            counts["unchanged"],
            counts["duplicate"],
        ), runs
        assert run.seen == len(items) == run.accepted + sum(run.rejected.values()), runs
        after = changed_at()
        assert {ip for ip, at in after.items() if at != marked.get(ip)} == model.changed[number], runs
    assert stored(pks) == model.expected(), runs


class _Rollback(Exception):  # noqa: N818 - control flow: undo one example
    pass


@pytest.mark.django_db
def test_ingest_stores_what_the_reference_model_says(tmp_path: Path) -> None:
    rng = random.Random(20260101)
    for example in range(60):
        try:
            with transaction.atomic():
                (tmp_path / str(example)).mkdir()
                _check(tmp_path / str(example), rng)
                raise _Rollback
        except _Rollback:
            pass


@pytest.mark.django_db(transaction=True)
def test_the_pipelined_writer_stores_what_the_reference_model_says(tmp_path: Path) -> None:
    """On PostgreSQL outside a transaction a batch is prepared while the one before it is written."""
    rng = random.Random(20260102)
    for example in range(15):
        empty_tables()
        (tmp_path / str(example)).mkdir()
        _check(tmp_path / str(example), rng)
