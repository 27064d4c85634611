"""setup_schedules: the recurring work as django-q2 schedules, idempotent, harvest only with a key."""

import ast
import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_q.models import Schedule
from django_q.tasks import async_task, result

pytestmark = pytest.mark.django_db


def setup(**kwargs: object) -> dict:
    out = StringIO()
    call_command("setup_schedules", json=True, stdout=out, **kwargs)
    return json.loads(out.getvalue())


def test_without_a_key_there_is_no_scheduled_harvest(settings) -> None:
    settings.SHODAN_API_KEY = ""
    first = setup()
    assert sorted(first["created"]) == ["disclosure: resolve owners", "harvest: classify pending"]
    assert setup() == {"created": [], "updated": first["created"], "removed": []}
    assert Schedule.objects.count() == 2


def test_a_key_adds_the_weekly_harvest_and_removing_it_removes_the_harvest(settings) -> None:
    settings.SHODAN_API_KEY = "k"
    settings.MEDEXPO_HARVEST_PLAN = "ports"
    settings.MEDEXPO_HARVEST_MAX_CREDITS = 7
    setup()
    harvest = Schedule.objects.get(name="harvest: search plan")
    assert (harvest.func, harvest.schedule_type, harvest.repeats) == ("harvest.tasks.harvest_plan", Schedule.WEEKLY, -1)
    assert ast.literal_eval(harvest.kwargs) == {"plan": "ports", "max_credits": 7}  # as the scheduler reads it
    settings.SHODAN_API_KEY = ""
    assert setup()["removed"] == ["harvest: search plan"]
    assert not Schedule.objects.filter(name="harvest: search plan").exists()


@pytest.mark.parametrize(("plan", "credits", "message"), [("medcial", 5, "no plan"), ("medical", 0, "at least 1")])
def test_a_wrong_plan_or_cap_is_refused_when_the_schedule_is_set_up(settings, plan, credits, message) -> None:
    settings.SHODAN_API_KEY = "k"
    settings.MEDEXPO_HARVEST_PLAN, settings.MEDEXPO_HARVEST_MAX_CREDITS = plan, credits
    with pytest.raises(CommandError, match=message):
        setup()
    assert not Schedule.objects.exists()


def test_every_scheduled_function_can_be_run(settings) -> None:
    settings.SHODAN_API_KEY = ""
    setup()
    for schedule in Schedule.objects.all():
        kwargs = ast.literal_eval(schedule.kwargs) if schedule.kwargs else {}  # as the scheduler reads it
        outcome = result(async_task(schedule.func, **kwargs))
        assert isinstance(outcome, dict), (schedule.name, outcome)


def test_a_schedule_defined_twice_is_kept_once(settings) -> None:
    """Names are not unique in django-q2: two deployments running setup_schedules at once (or a
    schedule copied in the admin) left two rows of one name, which ran the work twice, and every
    later setup_schedules stopped with MultipleObjectsReturned."""
    settings.SHODAN_API_KEY = ""
    setup()
    Schedule.objects.create(name="disclosure: resolve owners", func="disclosure.tasks.resolve_owners")
    result = setup()
    assert result["removed"] == ["disclosure: resolve owners"] and "disclosure: resolve owners" in result["updated"]
    assert Schedule.objects.filter(name="disclosure: resolve owners").count() == 1
    assert setup()["removed"] == []
