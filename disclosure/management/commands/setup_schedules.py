"""python manage.py setup_schedules [--json]: the scheduler's recurring work, defined in code.

Idempotent: schedules are matched by name and updated in place, and a name found more than once
(two setups run at once) is kept once. Run it after each deployment;
`manage.py qcluster` then runs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django_q.models import Schedule

from harvest.plans import PlanError, plan_load
from medexpo.lib.commands import DatabaseCommand

HARVEST = "harvest: search plan"


def schedules() -> list[dict]:
    """What should be scheduled with the current settings."""
    wanted = [
        # every hour from when the schedule is created: new banners get a verdict soon after they arrive
        {
            "name": "harvest: classify pending",
            "func": "harvest.tasks.classify_pending",
            "kwargs": {},
            "schedule_type": Schedule.HOURLY,
        },
        # every day: new hosts get an owner; failed lookups are retried
        {
            "name": "disclosure: resolve owners",
            "func": "disclosure.tasks.resolve_owners",
            "kwargs": {},
            "schedule_type": Schedule.DAILY,
        },
    ]
    if settings.SHODAN_API_KEY:
        # every week: re-harvest, with a cap on the query credits one run may spend
        wanted.append(
            {
                "name": HARVEST,
                "func": "harvest.tasks.harvest_plan",
                "kwargs": {
                    "plan": _plan_argument(settings.MEDEXPO_HARVEST_PLAN),
                    "max_credits": settings.MEDEXPO_HARVEST_MAX_CREDITS,
                },
                "schedule_type": Schedule.WEEKLY,
                # the firing's date in the task's arguments: a task delivered again goes on with its run
                "intended_date_kwarg": "scheduled_for",
            },
        )
    return wanted


def _plan_argument(plan: str) -> str:
    """A plan's name, or its file's absolute path: checked here from this command's directory, a
    relative path would be looked for from the worker's when the schedule fires."""
    return str(Path(plan).resolve()) if plan.endswith(".toml") else plan


class Command(DatabaseCommand):
    help = "Create or update the recurring background work (django-q2 schedules)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object (created, updated, removed)")

    def handle(self, *args: object, **options: Any) -> None:
        if settings.SHODAN_API_KEY:
            # A wrong plan or cap would otherwise show only a week later, as a failed task.
            try:
                plan_load(name=settings.MEDEXPO_HARVEST_PLAN)
            except PlanError as exc:
                raise CommandError(f"MEDEXPO_HARVEST_PLAN: {exc}") from None
            if settings.MEDEXPO_HARVEST_MAX_CREDITS < 1:
                raise CommandError("MEDEXPO_HARVEST_MAX_CREDITS must be at least 1")
        wanted = schedules()
        result: dict[str, list[str]] = {"created": [], "updated": [], "removed": []}
        for item in wanted:
            # Names are not unique in django-q2: two setups at once (or a copy made in the admin)
            # leave two rows of one name, which run the work twice. The oldest is kept.
            same_name = Schedule.objects.filter(name=item["name"])
            oldest = same_name.order_by("pk").values_list("pk", flat=True).first()
            if oldest is not None and same_name.exclude(pk=oldest).delete()[0]:
                result["removed"].append(item["name"])
            _, created = Schedule.objects.update_or_create(
                name=item["name"],
                defaults={
                    "func": item["func"],
                    "kwargs": item["kwargs"],
                    "schedule_type": item["schedule_type"],
                    "intended_date_kwarg": item.get("intended_date_kwarg"),
                    "repeats": -1,
                },
            )
            result["created" if created else "updated"].append(item["name"])
        if not any(item["name"] == HARVEST for item in wanted):
            # Without a Shodan key a scheduled harvest could only fail.
            removed, _ = Schedule.objects.filter(name=HARVEST).delete()
            if removed:
                result["removed"].append(HARVEST)
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        for key, names in result.items():
            for name in names:
                self.stdout.write(f"{key:<8} {name}")
        if not settings.SHODAN_API_KEY:
            self.stdout.write("no SHODAN_API_KEY: no scheduled harvest")
