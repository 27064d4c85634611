"""python manage.py resolve_owners [--concurrency N] [--json]"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandParser

from disclosure.services import hosts_needing_owner, owners_resolve
from medexpo.lib.cli import positive_int
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.progress import Progress


class Command(DatabaseCommand):
    help = "Find the network, operator and recipient of every host that needs an owner."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency", type=positive_int, default=None, help="parallel lookups (default: RDAP_CONCURRENCY)"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: Any) -> None:
        hosts = list(hosts_needing_owner())
        with Progress(
            total=len(hosts), unit="addr", desc="owners", enabled=None if not options["json"] else False
        ) as bar:
            summary = owners_resolve(hosts=hosts, concurrency=options["concurrency"], progress=bar.moved_to)
        result = summary.as_dict()
        if options["json"]:
            self.stdout.write(json.dumps(result, sort_keys=True))
            return
        failed = ", ".join(f"{reason} {count}" for reason, count in sorted(result["failed"].items())) or "none"
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(result["owner_status"].items())) or "none"
        self.stdout.write(
            f"{result['hosts']} hosts: {result['resolved']} networks found ({result['from_cache']} from cache, "
            f"{result['requests']} RDAP requests), {result['operators']} operators recognised; "
            f"owner status {statuses}; failed: {failed}"
        )
