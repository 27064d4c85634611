"""Staff work with owners in a real browser: the owner-unknown queue, raw RDAP answers, contacts
they add, inhibitions, and the history of a contact.

The data comes through the real services: banners through the harvest ingest, networks from RDAP
answers on disk through `rdap_cache_import`, owners through `owners_resolve` (the cache covers
every address, and any lookup would go to 127.0.0.1:9). Registry answers are written by strangers:
names, remarks, vCards and links carry script, markup and `javascript:` URLs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Page

from disclosure.models import Contact, HostOwner, Inhibition, Organisation
from disclosure.services import owners_resolve, rdap_cache_import
from harvest.models import HarvestRun
from harvest.services import service_export_rows
from tests.disclosure.conftest import _no_traffic_off_loopback  # noqa: F401 - autouse: lookups stay on 127.0.0.1

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HarvestLines = Callable[..., HarvestRun]

HOLDER_NAME = "<img src=x onerror=alert(2)> Zorghost BV"
RDAP_ABUSE = "abuse@zorghost.example"
STAFF_EMAIL = "security@zorghost.example"


def vcard(*entries: list) -> list:
    return ["vcard", [["version", {}, "text", "4.0"], *entries]]


def ripe_answer(first: str, last: str, cidr: str, suffix: str, emails: list[str]) -> dict:
    """A RIPE-style ip-network answer whose free text is hostile."""
    return {
        "rdapConformance": ["cidr0", "rdap_level_0"],
        "objectClassName": "ip network",
        "handle": f"{first} - {last}",
        "startAddress": first,
        "endAddress": last,
        "ipVersion": "v4",
        "name": "<script>alert(1)</script>",
        "type": "ASSIGNED PA",
        "country": "NL",
        "port43": "whois.ripe.net",
        "cidr0_cidrs": [{"v4prefix": first, "length": int(cidr.split("/")[1])}],
        "remarks": [
            {"title": "remarks", "description": ["<img src=x onerror=alert(2)>", "Abuse: javascript:alert(3)"]},
        ],
        "links": [
            {"value": f"https://rdap.db.ripe.net/ip/{first}", "rel": "self", "href": "javascript:alert(3)"},
        ],
        "entities": [
            {
                "objectClassName": "entity",
                "handle": f"ORG-ZH{suffix}-RIPE",
                "roles": ["registrant"],
                "vcardArray": vcard(["fn", {}, "text", HOLDER_NAME], ["kind", {}, "text", "org"]),
                "links": [{"rel": "self", "href": "javascript:alert(5)"}],
            },
            {
                "objectClassName": "entity",
                "handle": f"AB{suffix}-RIPE",
                "roles": ["abuse"],
                "vcardArray": vcard(
                    ["fn", {}, "text", "<script>alert(1)</script>"],
                    ["kind", {}, "text", "group"],
                    ["email", {}, "text", "<img src=x onerror=alert(2)>@x"],
                    *(["email", {}, "text", email] for email in emails),
                ),
                "remarks": [{"description": ['<a href="javascript:alert(6)">report here</a>']}],
            },
        ],
    }


@pytest.fixture
def owners(harvest_lines: HarvestLines, tmp_path: Path) -> dict[str, HostOwner]:
    """Two hosts: one in a network with an abuse address, one in a network without any usable one."""
    harvest_lines(
        [
            {"ip_str": "81.0.0.7", "port": 104, "transport": "tcp", "data": "", "org": "Zorghost"},
            {"ip_str": "81.0.1.9", "port": 80, "transport": "tcp", "data": "HTTP/1.1 200 OK\r\n", "org": "Zorghost"},
        ]
    )
    cache = tmp_path / "rdap"
    cache.mkdir()
    (cache / "zorghost.json").write_text(json.dumps(ripe_answer("81.0.0.0", "81.0.0.255", "/24", "1", [RDAP_ABUSE])))
    (cache / "zorghost-nocontact.json").write_text(json.dumps(ripe_answer("81.0.1.0", "81.0.1.255", "/24", "2", [])))
    assert settings.RDAP_BASE_URL == "http://127.0.0.1:9"  # a lookup, if any, would stay on loopback
    report = rdap_cache_import(directory=cache)
    summary = owners_resolve().as_dict()
    assert report.loaded == 2 and report.rejected == []
    assert summary["requests"] == 0 and summary["from_cache"] == 2
    return {owner.host.ip: owner for owner in HostOwner.objects.select_related("host")}


# Elements that would exist only if a payload had been parsed as HTML.
INJECTED = """() => ({
    inlineScripts: [...document.scripts].filter(s => s.textContent.includes('alert(')).length,
    images: document.querySelectorAll('img[src="x"], img[onerror]').length,
    javascriptLinks: document.querySelectorAll('a[href^="javascript:" i]').length,
})"""
NOTHING_INJECTED = {"inlineScripts": 0, "images": 0, "javascriptLinks": 0}


def result_rows(page: Page) -> list[list[str]]:
    """The cells of each row of a change list, without the empty cell of the selection box."""
    return [row.strip().split("\t") for row in page.locator("#result_list tbody tr").all_inner_texts()]


def readonly(page: Page, name: str) -> str:
    return page.locator(f".field-{name} .readonly").inner_text()


def run_action(page: Page, changelist: str, pks: list[int], action: str) -> str:
    """Select rows on a change list, run an admin action, return the message shown."""
    page.goto(changelist)
    for pk in pks:
        page.check(f"input.action-select[value='{pk}']")
    page.select_option("select[name=action]", action)
    with page.expect_navigation():
        page.click("button[name=index]")
    return page.locator("ul.messagelist").inner_text()


def test_it_shows_the_queue_entry_reason_and_the_raw_answer_escaped(
    admin_page: Page, owners: dict[str, HostOwner], dialogs: list, page_errors: list, blocked_requests: list
) -> None:
    unknown = owners["81.0.1.9"]

    admin_page.click("text=Owner-unknown queue")
    admin_page.wait_for_url("**/admin/disclosure/ownerunknown/")
    queue = result_rows(admin_page)
    admin_page.click(f"#result_list a[href$='/ownerunknown/{unknown.pk}/change/']")
    admin_page.wait_for_url(f"**/admin/disclosure/ownerunknown/{unknown.pk}/change/")
    reason, detail = readonly(admin_page, "reason"), readonly(admin_page, "detail_text")
    on_entry = admin_page.evaluate(INJECTED)
    admin_page.click(".field-network .readonly a")
    admin_page.wait_for_url(f"**/admin/disclosure/network/{unknown.network_id}/change/")
    name = readonly(admin_page, "name_text")
    raw = admin_page.locator(".field-raw_answer pre").text_content() or ""
    on_network = admin_page.evaluate(INJECTED)

    assert dialogs == [] and page_errors == [] and blocked_requests == []
    assert on_entry == on_network == NOTHING_INJECTED
    assert len(queue) == 1 and queue[0][:2] == ["81.0.1.9", "no_contact"]
    assert reason == "no_contact"
    assert detail == "RDAP answer for 81.0.1.0/24 names no usable e-mail address"
    assert name == "<script>alert(1)</script>"
    assert '"name": "<script>alert(1)</script>"' in raw
    assert '"<img src=x onerror=alert(2)>"' in raw and '"href": "javascript:alert(3)"' in raw
    assert f'"{HOLDER_NAME}"' in raw and '"<a href=\\"javascript:alert(6)\\">report here</a>"' in raw


def test_a_contact_added_by_staff_becomes_the_recipient(
    admin_page: Page, owners: dict[str, HostOwner], dialogs: list, page_errors: list
) -> None:
    owner = owners["81.0.0.7"]
    holder = owner.network.holder
    assert owner.recipient.email == RDAP_ABUSE

    admin_page.goto("/admin/disclosure/organisation/")
    organisations = result_rows(admin_page)
    admin_page.click(f"#result_list a[href$='/organisation/{holder.pk}/change/']")
    admin_page.wait_for_url(f"**/admin/disclosure/organisation/{holder.pk}/change/")
    admin_page.click("#contacts-group .add-row a")
    new_row = admin_page.locator("#contacts-group .dynamic-contacts:not(.has_original)")
    new_row.locator("input[name$='-email']").fill(STAFF_EMAIL)
    new_row.locator("select[name$='-role']").select_option("security")
    new_row.locator("textarea[name$='-note']").fill("Asked by phone <script>alert(7)</script>")
    with admin_page.expect_navigation():
        admin_page.click("input[name=_continue]")
    saved = admin_page.locator("ul.messagelist").inner_text()
    listed = admin_page.locator("#contacts-group .has_original input[name$='-email']").evaluate_all(
        "els => els.map(e => e.value)"
    )
    message = run_action(admin_page, "/admin/disclosure/hostowner/", [owner.pk], "choose_recipient_again")
    owner_rows = result_rows(admin_page)
    admin_page.click(f"#result_list a[href$='/hostowner/{owner.pk}/change/']")
    admin_page.wait_for_url(f"**/admin/disclosure/hostowner/{owner.pk}/change/")
    recipient, why = readonly(admin_page, "recipient_link"), readonly(admin_page, "recipient_reason_text")
    on_owner = admin_page.evaluate(INJECTED)
    exported = {row["ip"]: row for row in service_export_rows()}

    assert dialogs == [] and page_errors == [] and on_owner == NOTHING_INJECTED
    assert [HOLDER_NAME, "Other"] in [row[:2] for row in organisations]
    assert "was changed successfully" in saved
    assert sorted(listed) == [RDAP_ABUSE, STAFF_EMAIL]
    assert Contact.objects.get(email=STAFF_EMAIL).source == Contact.Source.STAFF
    assert message == "1 recipients chosen again."
    assert [row[5] for row in owner_rows if row[0] == "81.0.0.7"] == [STAFF_EMAIL]
    assert recipient.startswith(f"{STAFF_EMAIL} (security, ")
    assert why == f"network holder {HOLDER_NAME}: security contact entered by staff"
    assert exported["81.0.0.7"]["recipient_email"] == STAFF_EMAIL
    assert exported["81.0.0.7"]["owner_status"] == "resolved"


@pytest.mark.parametrize("typed", ["abuse@stra\u00dfe.example", "abuse@exa\u200bmple.com"])
def test_an_address_the_browser_would_rewrite_reaches_the_form_check(
    admin_page: Page, owners: dict[str, HostOwner], typed: str
) -> None:
    """Chromium rewrites the domain of an <input type=email> through IDNA before it sends it
    (ß becomes ss, a zero-width space is dropped): staff would save another address than the one
    they typed, with no error. The form must receive what was typed, and refuse it."""
    holder = owners["81.0.0.7"].network.holder
    before = set(Contact.objects.values_list("email", flat=True))

    admin_page.goto("/admin/disclosure/contact/add/")
    admin_page.fill("#id_organisation", str(holder.pk))
    admin_page.fill("#id_email", typed)
    admin_page.select_option("#id_role", "abuse")
    with admin_page.expect_navigation():
        admin_page.click("input[name=_save]")
    errors = admin_page.locator(".errorlist").all_inner_texts()

    assert set(Contact.objects.values_list("email", flat=True)) == before
    assert any(error.startswith("This address cannot be mailed") for error in errors), errors


def test_an_inhibition_blocks_the_recipients_until_its_last_day(
    admin_page: Page, owners: dict[str, HostOwner], dialogs: list, page_errors: list
) -> None:
    owner = owners["81.0.0.7"]
    holder = owner.network.holder
    today = timezone.localdate()

    admin_page.goto("/admin/disclosure/inhibition/add/")
    admin_page.fill("#id_organisation", str(holder.pk))
    admin_page.fill("#id_reason", "Migration freeze until the new year <script>alert(8)</script>")
    admin_page.fill("#id_until", today.isoformat())  # the last day counts
    admin_page.click("input[name=_save]")
    admin_page.wait_for_url("**/admin/disclosure/inhibition/")
    inhibitions = result_rows(admin_page)
    inhibition = Inhibition.objects.get()
    run_action(admin_page, "/admin/disclosure/hostowner/", [owner.pk], "choose_recipient_again")
    admin_page.goto(f"/admin/disclosure/hostowner/{owner.pk}/change/")
    blocked_status, blocked_detail = readonly(admin_page, "status"), readonly(admin_page, "detail_text")
    blocked_recipient = readonly(admin_page, "recipient_link")
    blocked_export = {row["ip"]: row for row in service_export_rows()}["81.0.0.7"]

    # The inhibition ended yesterday: the next choice uses the contact again.
    admin_page.goto(f"/admin/disclosure/inhibition/{inhibition.pk}/change/")
    admin_page.fill("#id_until", (today - timedelta(days=1)).isoformat())
    admin_page.click("input[name=_save]")
    admin_page.wait_for_url("**/admin/disclosure/inhibition/")
    run_action(admin_page, "/admin/disclosure/hostowner/", [owner.pk], "choose_recipient_again")
    admin_page.goto(f"/admin/disclosure/hostowner/{owner.pk}/change/")
    released_status, released_recipient = readonly(admin_page, "status"), readonly(admin_page, "recipient_link")
    on_page = admin_page.evaluate(INJECTED)

    assert dialogs == [] and page_errors == [] and on_page == NOTHING_INJECTED
    assert len(inhibitions) == 1
    assert inhibitions[0][0].startswith(f"inhibit {HOLDER_NAME} until")
    assert inhibitions[0][2:4] == ["Migration freeze until the new year <script>alert(8)</script>", "staff-admin"]
    assert inhibition.created_by == "staff-admin" and inhibition.organisation_id == holder.pk
    assert blocked_status == "Every candidate recipient is inhibited"
    assert blocked_detail == f"every candidate is inhibited: {RDAP_ABUSE}"
    assert blocked_recipient == "-"
    assert blocked_export["owner_status"] == "inhibited" and blocked_export["recipient_email"] is None
    assert released_status == "Resolved" and released_recipient.startswith(f"{RDAP_ABUSE} (abuse, ")


def test_the_history_of_a_contact_shows_the_staff_edit(
    admin_page: Page, owners: dict[str, HostOwner], dialogs: list, page_errors: list
) -> None:
    contact = Contact.objects.get(email=RDAP_ABUSE)

    admin_page.goto("/admin/disclosure/contact/")
    admin_page.click(f"#result_list a[href$='/contact/{contact.pk}/change/']")
    admin_page.wait_for_url(f"**/admin/disclosure/contact/{contact.pk}/change/")
    admin_page.uncheck("#id_enabled")
    admin_page.fill("#id_note", "Bounced twice <img src=x onerror=alert(9)>")
    with admin_page.expect_navigation():
        admin_page.click("input[name=_continue]")
    admin_page.click("a.historylink")
    admin_page.wait_for_url(f"**/admin/disclosure/contact/{contact.pk}/history/")
    rows = admin_page.locator("#change-history tbody tr").all_inner_texts()
    on_history = admin_page.evaluate(INJECTED)

    assert dialogs == [] and page_errors == [] and on_history == NOTHING_INJECTED
    assert len(rows) == 2
    edit, created = rows
    assert "staff-admin" in edit and "Changed" in edit
    assert "enabled" in edit.lower() and "note" in edit.lower()
    assert "Created" in created and "staff-admin" not in created


def test_bidi_and_zero_width_characters_from_rdap_are_shown_as_escapes(
    admin_page: Page, tmp_path: Path, dialogs: list, page_errors: list
) -> None:
    rlo, zwsp = "\u202e", "\u200b"
    answer = ripe_answer("81.0.2.0", "81.0.2.255", "/24", "3", [f"abuse@exa{zwsp}mple.com", RDAP_ABUSE])
    answer["name"] = f"ZORG{rlo}TEN-NET"
    answer["entities"][0]["vcardArray"] = vcard(["fn", {}, "text", f"Zorg {rlo}VB tsoh"], ["kind", {}, "text", "org"])
    (tmp_path / "strange.json").write_text(json.dumps(answer))
    rdap_cache_import(directory=tmp_path)
    # An address imported before addresses were checked for invisible characters.
    holder = Contact.objects.get(email=RDAP_ABUSE).organisation
    Contact.objects.create(organisation=holder, email=f"noc@exa{zwsp}mple.com", role="technical", source="rdap")

    admin_page.goto("/admin/disclosure/network/")
    listed = result_rows(admin_page)
    admin_page.click("#result_list a[href$='/change/']")
    admin_page.wait_for_url("**/admin/disclosure/network/*/change/")
    name, candidates = readonly(admin_page, "name_text"), readonly(admin_page, "candidates")
    network_text = admin_page.locator("body").inner_text()
    admin_page.goto(f"/admin/disclosure/organisation/{holder.pk}/change/")
    title = admin_page.locator("#content h2").first.inner_text()
    holder_name = readonly(admin_page, "name_text")
    emails = admin_page.locator("#contacts-group .has_original input[name$='-email']")
    shown_emails = emails.evaluate_all("els => els.map(e => [e.value, e.disabled])")
    organisation_text = admin_page.locator("body").inner_text()

    assert dialogs == [] and page_errors == []
    assert listed[0][1:3] == ["81.0.2.0 - 81.0.2.255", "ZORG\\u202eTEN-NET"]
    assert name == "ZORG\\u202eTEN-NET"
    assert "not used: abuse@exa\\u200bmple.com (RDAP entity AB3-RIPE): contains U+200B" in candidates
    assert title == holder_name == "Zorg \\u202eVB tsoh"
    assert sorted(shown_emails) == [[RDAP_ABUSE, True], ["noc@exa\\u200bmple.com", True]]  # kept as sent
    assert rlo not in network_text + organisation_text and zwsp not in network_text + organisation_text


def test_a_long_registry_name_wraps_on_the_owner_pages_instead_of_running_off_them(
    admin_page: Page, owners: dict[str, HostOwner]
) -> None:
    # A registry's organisation name is up to 255 characters, without a space if its writer likes:
    # it is the page title of the organisation, the holder beside a network's id box, and it is
    # quoted in a host owner's recipient and reason. Unwrapped, the titles made the pages 3,000
    # pixels wide and the rows cut the rest off (the admin's .form-row hides what overflows it).
    owner = owners["81.0.0.7"]
    long = "N" * 255
    Organisation.objects.filter(pk=owner.network.holder_id).update(name=long)
    HostOwner.objects.filter(pk=owner.pk).update(recipient_reason=f"network 81.0.0.0/24 holder {long}: abuse")
    admin_page.set_viewport_size({"width": 1280, "height": 900})
    measure = """() => ({
        page: document.documentElement.scrollWidth > document.documentElement.clientWidth,
        wider: [...document.querySelectorAll('div.breadcrumbs, #content h1, #content h2, #change-history')]
            .filter(e => e.scrollWidth > e.clientWidth + 1).length,
        clipped: [...document.querySelectorAll('div.form-row')].filter(e => e.scrollWidth > e.clientWidth + 1).length,
    })"""

    measured = {}
    for url in (
        f"/admin/disclosure/hostowner/{owner.pk}/change/",
        f"/admin/disclosure/organisation/{owner.network.holder_id}/change/",
        f"/admin/disclosure/contact/{owner.recipient_id}/change/",
        f"/admin/disclosure/network/{owner.network_id}/change/",
        f"/admin/disclosure/organisation/{owner.network.holder_id}/history/",
    ):
        admin_page.goto(url)
        measured[url] = admin_page.evaluate(measure)

    assert all(m == {"page": False, "wider": 0, "clipped": 0} for m in measured.values()), measured


def test_the_organisation_page_with_its_contacts_fits_a_laptop_screen(
    admin_page: Page, owners: dict[str, HostOwner]
) -> None:
    # Staff read an organisation's contacts on a 1280-pixel screen: a contacts table wider than
    # the page hid its right-hand columns (enabled, note) behind a sideways scroll of the whole page.
    owner = owners["81.0.0.7"]
    organisation = Organisation.objects.get(pk=owner.network.holder_id)
    Contact.objects.create(
        organisation=organisation,
        email="security-incident-response-team@zorghost-ziekenhuis-netwerkbeheer.example",
        role=Contact.Role.SECURITY,
        source=Contact.Source.STAFF,
        pgp_fingerprint="0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567",
        note="Call the on-call desk first; mail only during office hours.",
    )
    admin_page.set_viewport_size({"width": 1280, "height": 900})
    admin_page.goto(f"/admin/disclosure/organisation/{organisation.pk}/change/")

    widths = admin_page.evaluate(
        "() => ({page: document.documentElement.scrollWidth, screen: document.documentElement.clientWidth})"
    )
    assert widths["page"] <= widths["screen"], widths
    # Every contact's fields are still on the page, none hidden.
    assert admin_page.locator("#contacts-group .field-note textarea, #contacts-group .field-note input").count() >= 2
