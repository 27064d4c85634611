"""python manage.py export_services --format jsonl [--output FILE] [--json]"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from django.core.management.base import CommandError, CommandParser

from harvest.services import service_count, service_export_rows
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.files import replaced_whole
from medexpo.lib.progress import Progress
from medexpo.lib.text import json_escape_invisible


class Command(DatabaseCommand):
    help = (
        "Write every stored service, one JSON object per line. A file given with --output appears "
        "whole or not at all: it is written beside its name and renamed when complete."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=["jsonl"], default="jsonl", help="JSON lines, the only format")
        parser.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object (needs --output)")

    def handle(self, *args: object, **options: Any) -> None:
        target = options["output"]
        if target == "-" and options["json"]:
            raise CommandError("--json needs --output FILE: without it the rows themselves go to standard output")
        started = time.perf_counter()
        if target == "-" and isinstance(sys.stdout, io.TextIOWrapper):
            # JSON Lines are UTF-8, whatever encoding the locale gives standard output (Latin-1
            # or ASCII would fail at the first organisation outside it, after the rows before).
            sys.stdout.reconfigure(encoding="utf-8")
        written = self._write(sys.stdout) if target == "-" else self._write_file(Path(target))
        summary = {
            "services": written,
            "output": "-" if target == "-" else str(Path(target).resolve()),
            "seconds": round(time.perf_counter() - started, 2),
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        elif target == "-":  # standard output holds the rows
            sys.stderr.write(f"Exported {written:,} services to standard output in {summary['seconds']} s\n")
        else:
            self.stdout.write(f"Exported {written:,} services to {summary['output']} in {summary['seconds']} s")

    def _write_file(self, path: Path) -> int:
        try:
            # The file is written beside its name and renamed over it: through a link, over the
            # file it points to (the link stays); never over a pipe or a device, which the rename
            # would replace (as root, /dev/stdout is a link to one).
            path = path.resolve()
            if path.is_dir():
                raise CommandError(f"--output is a directory: {path}")
            if path.exists() and not path.is_file():
                raise CommandError(f"--output is not a regular file: {path} (use - for standard output)")
            if not path.parent.is_dir():
                raise CommandError(f"no such directory: {path.parent}")
            with replaced_whole(path, text=True) as out:
                return self._write(out)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror}") from None

    def _write(self, out: IO[str]) -> int:
        written = 0
        with Progress(total=service_count(), unit="service", desc="export", unit_scale=True) as bar:
            for row in service_export_rows():
                # JSON allows U+0085, U+2028 and U+2029 unescaped, but str.splitlines() and many
                # JSON Lines readers end a line at them, and rows shown on a terminal must not run
                # its C1 controls or reverse text: a hostile product name stays inside its row.
                out.write(json_escape_invisible(json.dumps(row, ensure_ascii=False)) + "\n")
                written += 1
                if written % 2000 == 0:
                    bar.moved_to(written)
        return written
