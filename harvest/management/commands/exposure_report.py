"""python manage.py exposure_report [--out DIR] [--format json,csv,png,svg,html,pdf] [--top N] [--json]"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from harvest.classify import report as reports
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.progress import Progress
from medexpo.lib.text import shorten


class Command(DatabaseCommand):
    help = "The exposure overview from the stored verdicts: a terminal table, and JSON, CSV, charts, HTML and PDF."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", metavar="DIR", help="folder to write the report files into")
        parser.add_argument(
            "--format",
            help=f"comma-separated formats to write with --out (default: all of {','.join(reports.FORMATS)})",
        )
        parser.add_argument("--top", type=int, default=10, help="entries in the top lists (default 10)")
        parser.add_argument("--json", action="store_true", help="print the report data as one JSON object")

    def handle(self, *args: object, **options: Any) -> None:
        if options["format"] is not None and not options["out"]:
            raise CommandError("--format needs --out DIR: without it no file is written")
        chosen = options["format"] if options["format"] is not None else ",".join(reports.FORMATS)
        formats = sorted({f.strip() for f in chosen.split(",") if f.strip()})
        if not formats:
            raise CommandError(f"--format names no format: give one or more of {','.join(reports.FORMATS)}")
        steps = 1 + (len(formats) if options["out"] else 0)
        enabled = False if options["json"] else None
        written = []
        with Progress(total=steps, unit="step", desc="exposure report", enabled=enabled) as bar:
            report = reports.exposure_report_build(top=max(1, options["top"]))
            bar.advance()
            if options["out"]:
                try:
                    written = reports.exposure_report_write(
                        report=report, out=options["out"], formats=formats, progress=bar.advance
                    )
                except reports.ReportError as exc:
                    raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report | {"files": [str(p) for p in written]}))
            return
        self._print(report)
        for path in written:
            self.stdout.write(f"wrote {path}")

    def _print(self, r: dict) -> None:
        w = self.stdout.write
        versions = ", ".join(f"{v} ({n})" for v, n in r["rules_versions"].items()) or "none"
        w(f"Exposure report: {r['services']} services, {r['classified']} classified under rules {versions}")
        if r["unclassified"]:
            w(f"  {r['unclassified']} services are not classified yet: run `manage.py classify`")
        w(f"  blank banners {r['blank']}, non-blank {r['non_blank']}")
        w(
            _table(
                "class", ["services", "share"], [(c, n, f"{r['class_share'][c]:.2%}") for c, n in r["classes"].items()]
            )
        )
        w(_table("category", ["services"], [(f"{x['class']}/{x['category']}", x["count"]) for x in r["categories"]]))
        w(
            _table(
                "top service",
                ["banners", "share"],
                [(x["service"], x["count"], f"{x['share']:.1%}") for x in r["top_services"]],
            )
        )
        w(
            _table(
                "medical port",
                ["non-blank", "blank", "medical"],
                [(f"{x['port']} {x['label']}", x["non_blank"], x["blank"], x["medical"]) for x in r["medical_ports"]],
            )
        )
        w(
            _table(
                "DICOM port / organisation",
                ["ASN", "servers"],
                [
                    (
                        f"{x['port']} {x['org'] or '(unknown)'}",
                        f"AS{x['asn']}" if x["asn"] is not None else "",
                        x["count"],
                    )
                    for x in r["dicom"]
                ],
            )
        )
        w(
            _table(
                "segment",
                ["medical", "non_medical", "unknown", "total"],
                [
                    (x["segment"] or "(none)", x["medical"], x["non_medical"], x["unknown"], x["total"])
                    for x in r["segments"]
                ],
            )
        )
        w(f"  honeypots {r['honeypots']['count']}")


def _table(title: str, columns: list[str], rows: list[tuple]) -> str:
    # Names come from banners: printable characters only, bounded, so a terminal shows what is there.
    def name(value: object) -> str:
        text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
        return shorten(text, 40)

    lines = ["", f"  {title:<42}" + "".join(f"{c:>12}" for c in columns)]
    for row in rows:
        lines.append(f"  {name(row[0]):<42}" + "".join(f"{str(v):>12}" for v in row[1:]))
    if not rows:
        lines.append("  (none)")
    return "\n".join(lines)
