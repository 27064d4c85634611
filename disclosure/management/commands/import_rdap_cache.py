"""python manage.py import_rdap_cache DIR [--json]"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from disclosure.services import OwnerError, rdap_cache_import
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.progress import Progress
from medexpo.lib.text import one_line


class Command(DatabaseCommand):
    help = "Load recorded RDAP ip-network answers (every *.json in DIR) into the owner cache."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", metavar="DIR", help="folder of recorded RDAP answers, one *.json file each")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: object, **options: Any) -> None:
        directory = Path(str(options["directory"]))
        total = len(list(directory.glob("*.json"))) if directory.is_dir() else 0
        try:
            with Progress(
                total=total, unit="file", desc="rdap cache", enabled=False if options["json"] else None
            ) as bar:
                report = rdap_cache_import(directory=directory, progress=bar.moved_to)
        except OwnerError as exc:
            raise CommandError(str(exc))
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), sort_keys=True))
            return
        self.stdout.write(f"{report.loaded} networks loaded, {len(report.rejected)} files rejected")
        for error in report.rejected:
            # File names and details (which quote the answer) are strangers' text: no escape
            # sequence of theirs reaches the terminal.
            self.stderr.write(one_line(f"  {error['file']}: {error['reason']}: {error['detail']}"))
