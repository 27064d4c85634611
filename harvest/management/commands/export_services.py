"""python manage.py export_services --format jsonl [--output FILE]"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import CommandParser

from harvest.services import service_export_rows
from medexpo.lib.commands import DatabaseCommand

# JSON allows these unescaped, but str.splitlines() and many JSON Lines readers end a line at
# them: a hostile product name must not split its row in two.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class Command(DatabaseCommand):
    help = "Write every stored service, one JSON object per line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=["jsonl"], default="jsonl", help="JSON lines, the only format")
        parser.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")

    def handle(self, *args: object, **options: Any) -> None:
        to_stdout = options["output"] == "-"
        out = sys.stdout if to_stdout else open(options["output"], "w", encoding="utf-8")  # noqa: SIM115
        try:
            for row in service_export_rows():
                out.write(json.dumps(row, ensure_ascii=False).translate(_LINE_BREAKS) + "\n")
        finally:
            if not to_stdout:
                out.close()
