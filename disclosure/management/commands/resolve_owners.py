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
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_dict(), sort_keys=True))
            return
        self.stdout.write(summary.describe())
