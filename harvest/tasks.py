"""Background work for harvest (django-q2). Tasks take JSON-able values only and call services."""

from __future__ import annotations

from harvest import search, services
from harvest.classify.services import classification_run_pending
from harvest.models import HarvestRun


def harvest_plan(plan: str, country: str = "", max_credits: int | None = None, scheduled_for: str = "") -> dict:
    """Search Shodan with a query plan; a stopped run (credits, key) is resumable from the admin's run id.

    `scheduled_for` (set by the schedule, setup_schedules) makes a second delivery of the same
    firing go on with the run the first one started."""
    run = search.harvest_search_start(
        plan=plan,
        country=country,
        max_credits=max_credits,
        occurrence=f"schedule {scheduled_for}" if scheduled_for else "",
    )
    run = services.harvest_execute(run=run, batch_size=search.SEARCH_BATCH_SIZE)
    return services.harvest_run_summary(run=run)


def harvest_resume(run_id: int) -> dict:
    """Continue a stopped or interrupted run from its last checkpoint.

    A run that is completed by now was finished by another resume queued for it (the admin queues
    one per request): there is nothing left to do, and failing would only have the task retried."""
    done = HarvestRun.objects.filter(pk=run_id, status=HarvestRun.Status.COMPLETED).first()
    if done is not None:
        return services.harvest_run_summary(run=done)
    run = services.harvest_run_get_resumable(run_id=run_id)
    batch_size = search.SEARCH_BATCH_SIZE if run.source == run.Source.SEARCH else None
    run = services.harvest_execute(run=run, batch_size=batch_size)
    return services.harvest_run_summary(run=run)


def classify_pending() -> dict:
    """Classify what is new, changed or unclassified under the current rules."""
    return classification_run_pending().as_dict()
