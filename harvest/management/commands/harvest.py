"""python manage.py harvest --file PATH | --hosts PATH | --resume RUN  [--json]"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

from harvest import services
from harvest.models import HarvestRun
from harvest.readers import file_size
from medexpo.lib.progress import Progress


class Command(BaseCommand):
    help = "Ingest Shodan banners from a download file, a host-lookup file or a query plan."

    def add_arguments(self, parser: CommandParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--file", help="a `shodan download` file (.json or .json.gz), one banner per line")
        source.add_argument("--hosts", help="a file of host lookups (/shodan/host/{ip} shape), one per line")
        source.add_argument("--resume", type=int, metavar="RUN", help="resume an interrupted or stopped run")
        parser.add_argument("--country", default="", help="country the data is about (recorded on the run)")
        parser.add_argument("--batch-size", type=int, default=None, help="banners per transaction")
        parser.add_argument("--json", action="store_true", help="print one JSON object, no progress bar")

    def handle(self, *args: object, **options: object) -> None:
        try:
            if options["resume"]:
                run = services.harvest_run_get_resumable(run_id=options["resume"])
            else:
                path = options["file"] or options["hosts"]
                run = services.harvest_file_start(path=path, hosts=bool(options["hosts"]), country=options["country"])
        except services.HarvestError as exc:
            raise CommandError(str(exc)) from None
        run = self._execute(run, options)
        summary = services.harvest_run_summary(run=run)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            self._print_summary(summary)
        if run.status == HarvestRun.Status.FAILED:
            raise CommandError(f"run {run.pk} failed: {run.message}")

    def _execute(self, run: HarvestRun, options: dict) -> HarvestRun:
        total = file_size(run.target) if run.source != HarvestRun.Source.SEARCH else None
        enabled = False if options["json"] else None
        with Progress(total=total, unit="B", unit_scale=True, desc=f"run {run.pk}", enabled=enabled) as bar:
            try:
                return services.harvest_execute(run=run, progress=bar.moved_to, batch_size=options["batch_size"])
            except KeyboardInterrupt:
                raise CommandError(f"interrupted: resume with --resume {run.pk}") from None
            except Exception:  # noqa: BLE001 - recorded on the run, reported below
                run.refresh_from_db()
                return run

    def _print_summary(self, s: dict) -> None:
        w = self.stdout.write
        w(f"Harvest run {s['run']} ({s['source']}): {s['status']}" + (f" - {s['message']}" if s["message"] else ""))
        w(f"  {'read':<12}{s['seen']:>10}")
        w(f"  {'accepted':<12}{s['accepted']:>10}   new {s['new']}, updated {s['updated']}, unchanged {s['unchanged']}")
        w(f"  {'rejected':<12}{sum(s['rejected'].values()):>10}")
        for reason, info in s["rejections"].items():
            where = ", ".join(e["position"] for e in info["examples"])
            more = " ..." if info["count"] > len(info["examples"]) else ""
            w(f"    {reason:<20}{info['count']:>8}   at {where}{more}")
            if info["examples"]:
                w(f"    {'':<20}{'':>8}   e.g. {info['examples'][0]['detail']}")
        if s["credits_spent"]:
            w(f"  {'credits':<12}{s['credits_spent']:>10}")
        if s["status"] != "completed":
            w(f"  resume with: python manage.py harvest --resume {s['run']}")
        sys.stdout.flush()
