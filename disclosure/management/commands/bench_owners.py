"""python manage.py bench_owners [--addresses 100000] [--networks 2000] [--json]

Resolves addresses spread over generated networks against the RDAP and DNS stand-ins, started
in this process on 127.0.0.1, then resolves the same addresses again with every network cached
(the baseline). Everything it writes is rolled back at the end. The generated networks start at
11.0.0.0; it refuses a database whose owner cache already holds any of that range, where the cold
run would not be cold.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connection, transaction

from disclosure.models import Network
from disclosure.rdap_client import LookupOptions, RateLimiter
from disclosure.services import network_resolve_addresses
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.progress import Progress


class _Rollback(Exception):  # noqa: N818 - control flow, not an error
    pass


class Command(DatabaseCommand):
    help = "Benchmark owner resolution: RDAP requests per network, addresses per second, cache hit rate."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addresses", type=int, default=100_000, help="addresses to resolve (default 100,000)")
        parser.add_argument("--networks", type=int, default=2_000, help="generated networks (default 2,000)")
        parser.add_argument("--concurrency", type=int, default=4, help="parallel lookups (default 4)")
        parser.add_argument("--rate", type=float, default=0.0, help="requests per second and registry (0: none)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: Any) -> None:
        # The stand-ins live with the tests; they are only needed here, when benchmarking.
        from tests.standins.dns_server import RunningDns
        from tests.standins.rdap_server import RdapStandin, RunningServer

        if options["networks"] < 1 or options["addresses"] < 1:
            raise CommandError("the benchmark needs at least one network and one address")
        standin = RdapStandin.generated(int(options["networks"]))
        # More addresses than the networks hold would repeat some: the resolver looks each up once,
        # and every rate and hit rate below (per address given) would be off.
        capacity = sum(n.end - n.start - 1 for n in standin.networks)
        if options["addresses"] > capacity:
            raise CommandError(f"{options['networks']} networks hold at most {capacity} addresses")
        _refuse_cached_range(standin)
        addresses = _addresses(standin, int(options["addresses"]))
        results = {}
        with RunningServer(standin) as http, RunningDns(standin) as dns:
            lookup = LookupOptions(base_url=http.url, dns_server=dns.address, timeout=10, asn_methods=("dns",))
            try:
                with transaction.atomic():
                    for label in ("cold", "cached"):
                        results[label] = self._run(label, addresses, lookup, options)
                    raise _Rollback
            except _Rollback:
                pass
            results["cold"]["ip_requests_served"] = standin.requests["ip"]
        report = {
            "addresses": len(addresses),
            "networks": int(options["networks"]),
            "concurrency": options["concurrency"],
            "database": connection.vendor,
            "cpus": os.cpu_count(),
            "runs": results,
            "requests_per_network": round(results["cold"]["requests"] / int(options["networks"]), 3),
        }
        if options["json"]:
            self.stdout.write(json.dumps(report, sort_keys=True))
            return
        self.stdout.write(f"{report['addresses']} addresses over {report['networks']} networks, {connection.vendor}")
        self.stdout.write(f"{'run':<8}{'seconds':>9}{'addr/s':>10}{'requests':>10}{'hit rate':>10}{'failed':>8}")
        for label, run in results.items():
            self.stdout.write(
                f"{label:<8}{run['seconds']:>9.2f}{run['per_second']:>10.0f}{run['requests']:>10}"
                f"{run['hit_rate']:>10.3f}{sum(run['failed'].values()):>8}"
            )
        self.stdout.write(f"RDAP requests per network: {report['requests_per_network']}")

    def _run(self, label: str, addresses: list[str], lookup: LookupOptions, options: dict) -> dict:
        with Progress(total=len(addresses), unit="addr", desc=label, enabled=False if options["json"] else None) as bar:
            started = time.perf_counter()
            _, stats = network_resolve_addresses(
                addresses=addresses,
                options=lookup,
                limiter=RateLimiter(float(options["rate"])),
                concurrency=int(options["concurrency"]),
                progress=bar.moved_to,
            )
            seconds = time.perf_counter() - started
        return {
            "seconds": round(seconds, 3),
            "per_second": round(len(addresses) / seconds, 1),
            "requests": stats.requests,
            "resolved": stats.resolved,
            "from_cache": stats.from_cache,
            "hit_rate": round(stats.from_cache / max(1, len(addresses)), 4),
            "failed": dict(stats.failed),
        }


def _refuse_cached_range(standin: Any) -> None:
    """Cached networks in the generated range would answer the cold run (a real cache can hold them)."""
    first = ipaddress.ip_address(standin.networks[0].start)
    last = ipaddress.ip_address(standin.networks[-1].end)
    if Network.objects.holding(str(first), str(last)).exists():
        raise CommandError(
            f"the owner cache already holds networks between {first} and {last}, where the benchmark's "
            "networks lie: run it on a database of its own"
        )


def _addresses(standin: Any, count: int) -> list[str]:
    """`count` distinct addresses, spread evenly over the networks, in random order."""
    networks = standin.networks
    addresses = []
    for i in range(count):
        network = networks[i % len(networks)]
        size = network.end - network.start + 1
        offset = 1 + (i // len(networks)) % (size - 2)
        addresses.append(str(ipaddress.ip_address(network.start + offset)))
    random.Random(2019).shuffle(addresses)
    return addresses
