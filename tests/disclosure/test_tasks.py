"""The owners task as django-q2 runs it (synchronously in tests), against the RDAP stand-ins."""

import time

import pytest
from django_q.tasks import async_task

from tests.disclosure.conftest import Registries, make_host
from tests.standins.rdap_server import Script

pytestmark = pytest.mark.django_db


def test_an_owner_task_stopped_at_its_timeout_ends_while_its_lookups_are_still_in_flight(
    registries: Registries, settings
) -> None:
    """django-q2 raises its timeout in the task and gives it 3 s to report before the worker is
    killed. Waiting for the lookups in flight (each up to RDAP_TIMEOUT, with retries) outlasted
    that: the Redis broker then kept no record of the task at all, and the ORM broker delivered it
    again every `retry` seconds for ever, never counting an attempt (max_attempts never reached)."""
    settings.RDAP_TIMEOUT = 10.0
    for i in range(4):
        registries.standin.scripts[f"11.0.{i}.1"] = Script(delay=6)
        make_host(f"11.0.{i}.1")
    started = time.monotonic()
    with pytest.raises(SystemExit, match="timeout"):
        async_task("disclosure.tasks.resolve_owners", q_options={"timeout": 1})
    assert time.monotonic() - started < 3  # the timeout and django-q2's 3 s grace, less a margin
