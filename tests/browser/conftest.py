"""Browser tests: a real Chromium (Debian's /usr/bin/chromium) driven by Playwright against `live_server`.

Write a browser test like this::

    @pytest.mark.browser
    @pytest.mark.django_db(transaction=True)
    def test_it_does_something(admin_page: Page, live_url: Callable[[str], str], harvest_lines) -> None:
        run = harvest_lines([{"ip_str": "192.0.2.1", "port": 104, "data": "..."}])
        admin_page.goto(live_url(f"/admin/harvest/harvestrun/{run.pk}/change/"))

Fixtures (all function-scoped unless said otherwise):

- ``browser`` (session): one headless Chromium for the whole run. Never downloads a browser; it
  runs ``CHROMIUM`` with flags that keep it off the network (no sync, updates, QUIC).
- ``page``: a fresh browser context and page for the test, base URL set to ``live_server.url`` (so
  ``page.goto("/admin/")`` works). Requests to anything but 127.0.0.1/::1/localhost are aborted
  and recorded in ``blocked_requests``. Default timeout ``TIMEOUT_MS``.
- ``dialogs``: every JavaScript dialog (alert, confirm, prompt, beforeunload) the page opened, as
  ``(type, message)`` tuples; each is dismissed. Assert it is empty to prove no injected script ran.
- ``page_errors``: uncaught JavaScript errors on the page, as strings.
- ``blocked_requests``: URLs of requests that tried to leave the loopback interface.
- ``admin_user``: a staff superuser, username ``ADMIN_USERNAME``, password ``ADMIN_PASSWORD``
  (overrides pytest-django's fixture of the same name, so ``admin_client`` logs in as it too).
- ``admin_page``: ``page`` logged in as ``admin_user`` through the real login form; it is on the
  admin index when the test starts.
- ``live_url``: ``live_url("/admin/...")`` gives the absolute URL on the live server.
- ``harvest_lines``: ``harvest_lines(records, name="banners.json") -> HarvestRun`` writes records (dicts
  become JSON lines; bytes are written as they are, for broken lines) to a file in ``tmp_path`` and
  runs the real ingest on it (``harvest_file_start`` + ``harvest_execute``).

Browser tests need a database that the server thread can see: mark them
``@pytest.mark.django_db(transaction=True)`` (``live_server`` makes the database transactional in
any case). Mark them ``@pytest.mark.browser`` so ``-m "not browser"`` can leave them out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import AbstractUser
from playwright.sync_api import Browser, Dialog, Page, Route, sync_playwright

from harvest import services
from harvest.models import HarvestRun

# Playwright's sync API keeps an asyncio event loop running in this thread, so Django's async-safety
# check would refuse the ORM calls that the test body and its fixtures make.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 10_000
ADMIN_USERNAME = "staff-admin"
ADMIN_PASSWORD = "browser-test-password"  # noqa: S105 - a throwaway test account


def _is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("about", "data", "blob"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def dialogs() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def page_errors() -> list[str]:
    return []


@pytest.fixture
def blocked_requests() -> list[str]:
    return []


@pytest.fixture
def page(
    browser: Browser,
    live_server: object,
    dialogs: list[tuple[str, str]],
    page_errors: list[str],
    blocked_requests: list[str],
) -> Iterator[Page]:
    context = browser.new_context(base_url=live_server.url)  # type: ignore[attr-defined]
    context.set_default_timeout(TIMEOUT_MS)

    def block(route: Route) -> None:
        blocked_requests.append(route.request.url)
        route.abort()

    context.route(lambda url: not _is_loopback(url), block)
    new_page = context.new_page()

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append((dialog.type, dialog.message))
        dialog.dismiss()

    new_page.on("dialog", on_dialog)
    new_page.on("pageerror", lambda error: page_errors.append(str(error)))
    yield new_page
    context.close()


@pytest.fixture
def admin_user(transactional_db: None, django_user_model: type[AbstractUser]) -> AbstractUser:
    return django_user_model.objects.create_superuser(
        username=ADMIN_USERNAME, email="staff@example.org", password=ADMIN_PASSWORD
    )


@pytest.fixture
def live_url(live_server: object) -> Callable[[str], str]:
    base = live_server.url  # type: ignore[attr-defined]
    return lambda path: base + path


@pytest.fixture
def admin_page(page: Page, admin_user: AbstractUser) -> Page:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", ADMIN_USERNAME)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    return page


@pytest.fixture
def harvest_lines(tmp_path: Path, transactional_db: None) -> Callable[..., HarvestRun]:
    def ingest(records: list[dict | bytes], name: str = "banners.json") -> HarvestRun:
        path = tmp_path / name
        with path.open("wb") as out:
            for record in records:
                out.write((json.dumps(record).encode() if isinstance(record, dict) else record) + b"\n")
        return services.harvest_execute(run=services.harvest_file_start(path=path))

    return ingest
