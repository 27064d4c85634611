"""python manage.py harvest --file PATH | --hosts PATH | --plan NAME [--count-only] [--max-credits N] | --resume RUN
[--json]

Exit status: 0 when the run completed, 1 when it failed or could not start, 2 when the command
line is wrong (argparse), 3 when it stopped and can be resumed (credit limit, no credits, an
invalid key, Shodan unreachable), 130 after Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from harvest import search, services
from harvest.models import HarvestRun
from harvest.readers import file_size
from medexpo.lib.cli import positive_int
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.progress import Progress
from medexpo.lib.text import one_line, shorten

EXIT_OPTIONS = 2  # as argparse exits on a usage error
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class Command(DatabaseCommand):
    help = (
        "Ingest Shodan banners from a download file, a host-lookup file or a query plan. Exit status 0: "
        "completed; 1: failed; 2: wrong options; 3: stopped, resumable with --resume RUN; 130: interrupted (Ctrl-C), "
        "resumable."
    )
    stopped = False

    def run_from_argv(self, argv: list[str]) -> None:
        # From a shell only: call_command callers read the run's status in its summary.
        super().run_from_argv(argv)
        if self.stopped:
            sys.exit(EXIT_STOPPED)

    def add_arguments(self, parser: CommandParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--file", help="a `shodan download` file (.json or .json.gz), one banner per line")
        source.add_argument("--hosts", help="a file of host lookups (/shodan/host/{ip} shape), one per line")
        source.add_argument(
            "--plan", metavar="NAME", help="search Shodan with a query plan (harvest/queries/NAME.toml)"
        )
        source.add_argument("--resume", type=int, metavar="RUN", help="resume an interrupted or stopped run")
        parser.add_argument(
            "--count-only",
            action="store_true",
            help="with --plan: count each query's results and the credits it would cost; spends nothing",
        )
        parser.add_argument(
            "--max-credits",
            type=int,
            metavar="N",
            help="with --plan: the run spends at most N query credits (without it, only the credits left on the key "
            "limit it); with --resume: N more than it has spent",
        )
        parser.add_argument(
            "--country",
            default="",
            help="with --plan: the country:XX filter added to every query (default: MEDEXPO_COUNTRY); "
            "with --file or --hosts: recorded on the run only, nothing is filtered",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=None,
            help="with --file or --hosts: banners per transaction (default: HARVEST_BATCH_SIZE; "
            "a search run commits after every page)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object, no progress bar")

    def handle(self, *args: object, **options: Any) -> None:
        if options["plan"] is not None and options["batch_size"] is not None:
            raise CommandError(
                "--batch-size does not apply to --plan: a search run commits after every page, "
                "so that an interrupted run never buys a page twice",
                returncode=EXIT_OPTIONS,
            )
        if options["max_credits"] is not None and (options["file"] is not None or options["hosts"] is not None):
            raise CommandError(
                "--max-credits applies to --plan and --resume: reading a file costs no credits", returncode=EXIT_OPTIONS
            )
        if options["resume"] is not None and options["country"]:
            raise CommandError(
                "--country does not apply to --resume: a run keeps the country it started with", returncode=EXIT_OPTIONS
            )
        if options["plan"] is not None and options["max_credits"] == 0 and not options["count_only"]:
            # --resume RUN --max-credits 0 stays: it resumes a run for no more than it has spent.
            raise CommandError(
                "--max-credits 0 would start a run that can buy no page (every query with a country "
                "filter costs a credit a page): give 1 or more",
                returncode=EXIT_OPTIONS,
            )
        if options["count_only"]:
            return self._count_only(options)
        # `is not None`: `--resume 0` or `--file ""` is the source asked for, refused by its own check.
        try:
            if options["resume"] is not None:
                run = services.harvest_run_get_resumable(run_id=options["resume"])
                if options["max_credits"] is not None:
                    if run.source != HarvestRun.Source.SEARCH:
                        raise CommandError(
                            f"--max-credits applies to search runs: run {run.pk} reads a file, which costs no credits",
                            returncode=EXIT_OPTIONS,
                        )
                    run = search.harvest_search_set_budget(run=run, max_credits=options["max_credits"])
            elif options["plan"] is not None:
                run = search.harvest_search_start(
                    plan=options["plan"], country=options["country"], max_credits=options["max_credits"]
                )
            else:
                hosts = options["hosts"] is not None
                path = options["hosts"] if hosts else options["file"]
                run = services.harvest_file_start(path=path, hosts=hosts, country=options["country"])
        except services.HarvestError as exc:
            raise CommandError(one_line(str(exc))) from None
        run = self._execute(run, options)
        summary = services.harvest_run_summary(run=run)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            self._print_summary(summary)
        if run.status == HarvestRun.Status.FAILED:
            raise CommandError(f"run {run.pk} failed: {one_line(run.message)}")
        self.stopped = run.status == HarvestRun.Status.STOPPED

    def _execute(self, run: HarvestRun, options: dict) -> HarvestRun:
        if run.source == HarvestRun.Source.SEARCH:
            total, unit, scale = len(run.options.get("queries", [])), "query", False
        else:
            total, unit, scale = file_size(run.target), "B", True
        enabled = False if options["json"] else None
        batch_size = self._batch_size(run, options["batch_size"])
        with Progress(total=total, unit=unit, unit_scale=scale, desc=f"run {run.pk}", enabled=enabled) as bar:
            try:
                return services.harvest_execute(run=run, progress=bar.moved_to, batch_size=batch_size, on_wait=bar.note)
            except KeyboardInterrupt:
                # 128 + SIGINT, as a shell reports it: not 3, or a script that resumes stopped runs
                # would resume the one its user just stopped.
                raise CommandError(f"interrupted: resume with --resume {run.pk}", returncode=EXIT_INTERRUPTED) from None
            except Exception as exc:
                run.refresh_from_db()
                if run.status == HarvestRun.Status.FAILED:  # recorded on the run, reported with its summary
                    return run
                # Raised before the run could record it (taking the lock, marking it running) or
                # while recording it: the run's summary would show it running, and the exit 0.
                error = one_line(f"{type(exc).__name__}: {exc}")
                raise CommandError(
                    f"run {run.pk} stopped on an error it could not record: {error}; resume with --resume {run.pk}"
                ) from None

    def _batch_size(self, run: HarvestRun, asked: int | None) -> int | None:
        if run.source != HarvestRun.Source.SEARCH:
            return asked
        if asked is not None:
            self.stderr.write(f"--batch-size is ignored: search run {run.pk} commits after every page")
        return search.SEARCH_BATCH_SIZE

    def _count_only(self, options: dict) -> None:
        if options["plan"] is None:
            raise CommandError("--count-only needs --plan NAME", returncode=EXIT_OPTIONS)
        enabled = False if options["json"] else None
        try:
            with Progress(total=None, unit="query", desc="counting", enabled=enabled) as bar:
                counted = search.harvest_search_count(
                    plan=options["plan"],
                    country=options["country"],
                    max_credits=options["max_credits"],
                    progress=bar.moved_to,
                )
        except services.HarvestError as exc:
            raise CommandError(one_line(str(exc))) from None
        except KeyboardInterrupt:
            # Counting a large plan takes minutes at 1 request/s: Ctrl-C is expected, not a crash.
            raise CommandError(
                "interrupted: nothing was spent (counting is free) and no run was started",
                returncode=EXIT_INTERRUPTED,
            ) from None
        if options["json"]:
            self.stdout.write(json.dumps(counted))
            return
        w = self.stdout.write
        w(f"Plan {counted['plan']}, country {counted['country']}: what a search would cost (nothing was spent)")
        w(f"  {'#':>3}  {'query':<58}{'results':>9}{'pages':>7}{'credits':>9}  top product / port")
        for number, row in enumerate(counted["queries"], 1):
            query = shorten(row["query"], 56)
            if row["error"]:
                w(f"  {number:>3}  {query:<58}  failed: {one_line(row['error'])}")
                continue
            top = ", ".join(
                f"{items[0]['value']} ({items[0]['count']})"
                for name in ("product", "port")
                if (items := row["facets"].get(name))
            )
            w(f"  {number:>3}  {query:<58}{row['total']:>9}{row['pages']:>7}{row['credits']:>9}  {top[:60]}")
        w(f"  {'':>3}  {'total':<58}{counted['total']:>9}{counted['pages']:>7}{counted['credits']:>9}")
        fits = "enough" if counted["fits"] else "NOT enough"
        w(f"  query credits left on the key: {counted['credits_left']} ({fits} for the whole plan)")
        if (cap := counted["cap"]) is not None:
            if cap["fits"]:
                w(f"  --max-credits {cap['max_credits']}: enough for the whole plan")
            else:
                label = shorten(cap["label"], 56)
                w(
                    f"  --max-credits {cap['max_credits']}: NOT enough for the whole plan; a run would stop in "
                    f"query {cap['stops_in_query']} ({label}) and can be resumed with more"
                )
        if counted["failed"]:
            w(f"  {counted['failed']} queries failed; they are not in the totals")

    def _print_summary(self, s: dict) -> None:
        w = self.stdout.write
        message = f" - {one_line(s['message'])}" if s["message"] else ""
        w(f"Harvest run {s['run']} ({s['source']}): {s['status']}{message}")
        w(f"  {'read':<12}{s['seen']:>10}")
        w(f"  {'accepted':<12}{s['accepted']:>10}   new {s['new']}, updated {s['updated']}, unchanged {s['unchanged']}")
        w(f"  {'rejected':<12}{sum(s['rejected'].values()):>10}")
        self._print_reasons(s["rejections"])
        if s["query_errors"]:
            # Queries, not records: not part of what was read.
            w(f"  {'query errors':<12}{sum(e['count'] for e in s['query_errors'].values()):>10}")
            self._print_reasons(s["query_errors"])
        if s["credits_spent"]:
            w(f"  {'credits':<12}{s['credits_spent']:>10}")
        # A message that already says how this run goes on (a stop at --max-credits: a plain
        # --resume would stop again at once) is not contradicted by the generic advice.
        if s["status"] != "completed" and f"--resume {s['run']}" not in s["message"]:
            w(f"  resume with: python manage.py harvest --resume {s['run']}")
        sys.stdout.flush()

    def _print_reasons(self, reasons: dict) -> None:
        w = self.stdout.write
        for reason, info in reasons.items():
            where = ", ".join(one_line(e["position"]) for e in info["examples"])
            more = " ..." if info["count"] > len(info["examples"]) else ""
            w(f"    {reason:<20}{info['count']:>8}   at {where}{more}")
            if info["examples"]:
                w(f"    {'':<20}{'':>8}   e.g. {one_line(info['examples'][0]['detail'])}")
