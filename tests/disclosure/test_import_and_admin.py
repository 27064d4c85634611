"""Recorded answers into the cache (import_rdap_cache), the export columns and the staff admin."""

from __future__ import annotations

import html
import json
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from disclosure.admin import json_text
from disclosure.models import Contact, HostOwner, Inhibition, Network, Organisation, ip_key
from disclosure.services import (
    contact_set_enabled,
    hosts_needing_owner,
    network_find_cached,
    owner_recompute,
    owners_resolve,
)
from harvest.services import EXPORT_ENRICHERS, service_export_rows
from tests.disclosure.conftest import RDAP_DIR, Registries, make_host
from tests.harvest.test_address_order import Statements

pytestmark = pytest.mark.django_db

HOSTILE = {
    "objectClassName": "ip network",
    "handle": "EVIL-<b>NET</b>",
    "type": "ASSIGNED PA",
    "startAddress": "81.0.0.0",
    "endAddress": "81.0.0.255",
    "name": "<script>alert(1)</script>",
    "country": "NL",
    "port43": "whois.ripe.net",
    "entities": [
        {
            "handle": "ORG-EVIL",
            "roles": ["registrant"],
            "vcardArray": ["vcard", [["fn", {}, "text", "<img src=x onerror=alert(2)>"], ["kind", {}, "text", "org"]]],
            "entities": [
                {
                    "handle": "AB-EVIL",
                    "roles": ["abuse"],
                    "vcardArray": [
                        "vcard",
                        [["email", {}, "text", "<svg onload=alert(3)>@x"], ["email", {}, "text", "abuse@evil.example"]],
                    ],
                }
            ],
        }
    ],
}


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """Recorded answers as registries send them, plus files that must be rejected."""
    for name in ("whoisit-rdap-ip_v4.json", "whoisit-rdap-ip_v4_2.json", "whoisit-rdap-ip_v6.json"):
        shutil.copy(RDAP_DIR / name, tmp_path / name)
    for ip, entry in json.loads((RDAP_DIR / "ipwhois-tests-rdap.json").read_text()).items():
        (tmp_path / f"ipwhois-{ip.replace(':', '_')}.json").write_text(json.dumps(entry["response"]))
    (tmp_path / "zz-broken.json").write_text('{"handle": "BROKEN", "startAddress": ')
    (tmp_path / "zz-entity.json").write_bytes((RDAP_DIR / "whoisit-rdap-entity.json").read_bytes())
    (tmp_path / "zz-asn.json").write_bytes((RDAP_DIR / "whoisit-rdap-asn.json").read_bytes())
    (tmp_path / "zz-binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "notes.txt").write_text("not an answer")
    return tmp_path


def test_import_loads_good_answers_and_reports_bad_files(cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    call_command("import_rdap_cache", str(cache_dir), "--json")
    report = json.loads(capsys.readouterr().out)
    # 3 whoisit answers + 10 ipwhois ones; the two 2001:4860::/32 answers are one network.
    assert report["loaded"] == 13 and Network.objects.count() == 12
    rejected = {e["file"]: e["reason"] for e in report["errors"]}
    assert rejected == {
        "zz-broken.json": "malformed_json",
        "zz-entity.json": "malformed_answer",
        "zz-asn.json": "malformed_answer",
        "zz-binary.json": "malformed_json",
    }
    # A LEGACY block may hold assignments: it answers only for the address its answer was for.
    assert network_find_cached(ip="130.59.31.80").name == "SWITCH-LAN"
    assert network_find_cached(ip="130.59.200.1") is None
    assert network_find_cached(ip="2a00:2381:ffff::9").registry == "ripencc"
    assert Network.objects.filter(source="import").count() == 12


def test_imported_answers_resolve_owners_with_no_network(cache_dir: Path, settings: object) -> None:
    settings.RDAP_BASE_URL = "http://127.0.0.1:9"  # nothing listens: any request would fail
    settings.RDAP_DNS_SERVER = "127.0.0.1:9"
    call_command("import_rdap_cache", str(cache_dir), "--json")
    make_host("1.1.1.1")
    make_host("62.239.237.20")
    summary = owners_resolve().as_dict()
    assert summary["requests"] == 0 and summary["from_cache"] == 2 and summary["failed"] == {}
    assert HostOwner.objects.get(host__ip="1.1.1.1").recipient.email == "helpdesk@apnic.net"


def test_import_of_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no such directory"):
        call_command("import_rdap_cache", str(tmp_path / "nope"))


def test_import_of_one_file_says_it_takes_the_folder(tmp_path: Path) -> None:
    answer = tmp_path / "answer.json"
    answer.write_text("{}")
    with pytest.raises(CommandError, match=r"answer.json is a file: give the folder of \*.json answers"):
        call_command("import_rdap_cache", str(answer))


def test_import_prints_a_summary_and_each_rejection(cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    call_command("import_rdap_cache", str(cache_dir))
    captured = capsys.readouterr()
    assert "13 networks loaded, 4 files rejected" in captured.out
    assert "zz-broken.json: malformed_json" in captured.err


def test_export_rows_carry_owner_columns_with_one_query_per_batch(cache_dir: Path, settings: object) -> None:
    assert any(fn.__module__ == "disclosure.services" for fn in EXPORT_ENRICHERS)  # registered in ready()
    call_command("import_rdap_cache", str(cache_dir), "--json")
    make_host("74.125.225.229", hostnames=["pacs.erasmusmc.nl"])
    make_host("196.11.240.215")
    make_host("10.0.0.1")
    make_host("8.8.8.8")
    settings.RDAP_BASE_URL = "http://127.0.0.1:9"
    settings.RDAP_DNS_SERVER = "127.0.0.1:9"
    settings.RDAP_TIMEOUT = 0.5
    owners_resolve()
    make_host("130.59.1.1")  # never resolved
    with CaptureQueriesContext(connection) as queries:
        rows = {row["ip"]: row for row in service_export_rows(chunk_size=3)}
    owner_queries = [q["sql"] for q in queries if "disclosure_" in q["sql"]]
    assert len(rows) == 5 and len(owner_queries) == 2  # one per batch of 3, whatever the rows hold
    # A network's stored RDAP answer and contact candidates are kilobytes of JSON the export does not show.
    assert not any('"raw"' in sql or '"contact_candidates"' in sql for sql in owner_queries)
    google = rows["74.125.225.229"]
    assert google["network"] == "74.125.0.0/16" and google["network_holder"] == "Google Inc."
    assert google["operator"] == "Erasmus MC" and google["recipient"] == "Google Inc."
    assert google["recipient_email"] == "arin-contact@google.com" and google["owner_status"] == "resolved"
    assert rows["10.0.0.1"]["owner_status"] == "skipped" and rows["10.0.0.1"]["owner_reason"] == "private"
    assert rows["8.8.8.8"]["owner_status"] == "unknown" and rows["8.8.8.8"]["recipient_email"] is None
    assert rows["8.8.8.8"]["owner_reason"] == "connection_error"
    assert rows["130.59.1.1"]["owner_status"] == "not_resolved" and rows["130.59.1.1"]["network"] is None


@pytest.fixture
def staff_client() -> Client:
    user = User.objects.create_superuser("staff", "staff@cert.example", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_admin_pages_escape_everything_from_rdap(tmp_path: Path, staff_client: Client) -> None:
    (tmp_path / "evil.json").write_text(json.dumps(HOSTILE))
    call_command("import_rdap_cache", str(tmp_path), "--json")
    make_host("81.0.0.7")
    owners_resolve()
    network = Network.objects.get()
    owner = HostOwner.objects.get()
    assert owner.recipient.email == "abuse@evil.example"  # the invalid address was never a contact
    pages = [
        reverse("admin:disclosure_network_changelist"),
        reverse("admin:disclosure_network_change", args=[network.pk]),
        reverse("admin:disclosure_organisation_changelist"),
        reverse("admin:disclosure_organisation_change", args=[network.holder_id]),
        reverse("admin:disclosure_contact_changelist"),
        reverse("admin:disclosure_hostowner_changelist"),
        reverse("admin:disclosure_hostowner_change", args=[owner.pk]),
        reverse("admin:disclosure_network_history", args=[network.pk]),
    ]
    for url in pages:
        response = staff_client.get(url)
        body = response.content.decode()
        assert response.status_code == 200, url
        for payload in ("<script>alert(1)", "<img src=x onerror", "<svg onload", "<b>NET</b>"):
            assert payload not in body, (url, payload)
    detail = staff_client.get(reverse("admin:disclosure_network_change", args=[network.pk])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail  # shown, escaped


RLO, ZWSP = "\u202e", "\u200b"  # a right-to-left override and a zero-width space
STRANGE = {
    "objectClassName": "ip network",
    "handle": f"NET{RLO}1",
    "type": "ASSIGNED PA",
    "startAddress": "81.0.0.0",
    "endAddress": "81.0.0.255",
    "name": f"EVIL{RLO}TEN{ZWSP}",
    "country": f"N{RLO}",
    "port43": "whois.ripe.net",
    "entities": [
        {
            "handle": f"ORG{RLO}X",
            "roles": ["registrant"],
            "vcardArray": ["vcard", [["fn", {}, "text", f"Org {RLO}lpmaxe"]]],
        },
        {
            "handle": f"AB{ZWSP}1",
            "roles": ["abuse"],
            "vcardArray": [
                "vcard",
                [["email", {}, "text", f"abuse@exa{ZWSP}mple.com"], ["email", {}, "text", "abuse@zorghost.example"]],
            ],
        },
    ],
}
VIEWED = ["organisation", "contact", "inhibition", "network", "hostowner", "ownerunknown"]


def page_text(body: str) -> str:
    """What a page says: its text without tags (controls are marked up in <pre> blocks), unescaped."""
    return html.unescape(re.sub(r"<[^>]*>", "", body))


@pytest.fixture
def viewer_client() -> Client:
    """Staff who may look at every owner page and change nothing."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=[f"view_{name}" for name in VIEWED]))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("who", ["staff", "viewer"])
def test_stranger_text_is_shown_with_its_controls_visible_on_every_owner_page(
    tmp_path: Path, staff_client: Client, viewer_client: Client, who: str
) -> None:
    (tmp_path / "strange.json").write_text(json.dumps(STRANGE))
    call_command("import_rdap_cache", str(tmp_path), "--json")
    make_host("81.0.0.7", hostnames=[f"pacs{ZWSP}.erasmusmc.nl"])
    make_host("8.8.8.8")  # outside the cache: the lookup fails (it goes to 127.0.0.1:9)
    owners_resolve()
    HostOwner.objects.filter(host__ip="8.8.8.8").update(detail=f"the server said {RLO}gnp.exe")
    network, owner = Network.objects.get(), HostOwner.objects.get(host__ip="81.0.0.7")
    unknown = HostOwner.objects.get(host__ip="8.8.8.8")
    # An address imported before addresses were checked for invisible characters.
    bad = Contact.objects.create(
        organisation=network.holder, email=f"abuse@exa{ZWSP}mple.com", role="technical", source="rdap",
        import_source=f"rdap:ripencc:AB{ZWSP}1",
    )  # fmt: skip
    inhibition = Inhibition.objects.create(contact=bad, reason="bounces", until=timezone.localdate())
    holder, evidence = "Org \\u202elpmaxe", "hostname pacs\\u200b.erasmusmc.nl is in erasmusmc.nl"
    address = "abuse@exa\\u200bmple.com"
    pages = {
        ("network", None): ["NET\\u202e1", "EVIL\\u202eTEN\\u200b", holder],
        ("network", network.pk): ["NET\\u202e1", "EVIL\\u202eTEN\\u200b", "N\\u202e", holder,
                                  f"not used: {address} (RDAP entity AB\\u200b1): contains U+200B ZERO WIDTH SPACE"],
        ("organisation", None): [holder, "N\\u202e"],
        ("organisation", network.holder_id): [holder, "N\\u202e", "rdap:ripencc:ORG\\u202eX", address,
                                              "rdap:ripencc:AB\\u200b1"],
        ("contact", None): [address, holder, "no: contains U+200B ZERO WIDTH SPACE"],
        ("contact", bad.pk): [address, holder, "rdap:ripencc:AB\\u200b1"],
        ("hostowner", None): ["81.0.0.7", "abuse@zorghost.example"],
        ("hostowner", owner.pk): [evidence, f"holder {holder}: RDAP entity AB\\u200b1 on the network"],
        ("ownerunknown", None): ["the server said \\u202egnp.exe"],
        ("ownerunknown", unknown.pk): ["the server said \\u202egnp.exe"],
        ("inhibition", None): [f"inhibit {address} (technical, {holder}) until"],
        ("inhibition", inhibition.pk): [f"{address} (technical, {holder})"],
    }  # fmt: skip
    client = staff_client if who == "staff" else viewer_client

    for (model, pk), shown in pages.items():
        view = f"admin:disclosure_{model}_" + ("changelist" if pk is None else "change")
        response = client.get(reverse(view, args=[] if pk is None else [pk]))
        body = response.content.decode()
        assert response.status_code == 200, (model, pk)
        assert RLO not in body and ZWSP not in body, (
            model,
            pk,
            body[body.find(RLO if RLO in body else ZWSP) - 200 :][:300],
        )
        missing = [text for text in shown if text not in page_text(body) and text not in body]
        assert missing == [], (model, pk)


def test_names_of_strangers_are_visible_in_titles_history_and_recent_actions(staff_client: Client) -> None:
    organisation = Organisation.objects.create(name=f"Zorg{RLO}VB", source="staff")
    contact = Contact.objects.create(organisation=organisation, email=f"cert@zorg{ZWSP}.example", role="security")
    # An edit through the admin: its log entry keeps str() of the object for "Recent actions".
    change = reverse("admin:disclosure_contact_change", args=[contact.pk])
    form = staff_client.get(change).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, (list, dict))}
    staff_client.post(change, {**data, "note": "checked by phone", "email": "cert@zorg.example"})
    pages = [
        reverse("admin:index"),
        reverse("admin:disclosure_organisation_history", args=[organisation.pk]),
        reverse("admin:disclosure_contact_history", args=[contact.pk]),
        reverse("admin:disclosure_organisation_delete", args=[organisation.pk]),
    ]

    for url in pages:
        body = staff_client.get(url).content.decode()
        assert RLO not in body and ZWSP not in body, url
        assert "Zorg\\u202eVB" in page_text(body), url


def test_a_raw_answer_nested_deeper_than_json_can_recurse_is_shown_as_text(staff_client: Client) -> None:
    nested = json.loads("[" * 900 + "]" * 900)  # an import takes it: the cache stores it as sent
    now = timezone.now()
    network = Network.objects.create(
        start_key=ip_key("81.1.0.0"), end_key=ip_key("81.1.0.255"), start_address="81.1.0.0",
        end_address="81.1.0.255", cidrs=["81.1.0.0/24"], handle="DEEP", raw={"handle": "DEEP", "remarks": nested},
        fetched_at=now, expires_at=now + timedelta(days=1),
    )  # fmt: skip

    response = staff_client.get(reverse("admin:disclosure_network_change", args=[network.pk]))

    assert response.status_code == 200
    shown = page_text(response.content.decode())
    assert '"handle": "DEEP",\n  "remarks": [\n    [\n      [' in shown
    assert "Showing the first" in shown  # 900 levels of indentation are cut at the display limit


@pytest.mark.parametrize("name", ["whoisit-rdap-ip_v4.json", "whoisit-rdap-ip_v6.json", "whoisit-rdap-entity.json"])
def test_the_answer_is_indented_like_json_dumps(name: str) -> None:
    raw = json.loads((RDAP_DIR / name).read_text())

    assert json_text(raw) == json.dumps(raw, indent=2, ensure_ascii=False)
    assert json_text({"a": [], "b": {}, "c": [1, {"d": None}], "e": "\u202e<"}) == json.dumps(
        {"a": [], "b": {}, "c": [1, {"d": None}], "e": "\u202e<"}, indent=2, ensure_ascii=False
    )


def test_looking_at_contacts_and_owners_is_not_enough_to_run_their_actions(
    viewer_client: Client, staff_client: Client
) -> None:
    organisation = Organisation.objects.create(name="Zorghost")
    contact = Contact.objects.create(organisation=organisation, email="abuse@zorghost.example", role="abuse")
    owner = HostOwner.objects.create(host=make_host("62.239.237.9"), override_recipient=contact)
    actions = {
        "contact": (contact.pk, ["disable", "enable"]),
        "hostowner": (owner.pk, ["resolve_again", "choose_recipient_again"]),
        "ownerunknown": (owner.pk, ["resolve_again", "choose_recipient_again"]),
    }

    for model, (pk, names) in actions.items():
        url = reverse(f"admin:disclosure_{model}_changelist")
        listing = viewer_client.get(url).content.decode()
        for name in names:
            assert f'value="{name}"' not in listing, (model, name)
            viewer_client.post(url, {"action": name, "_selected_action": [pk]})
    contact.refresh_from_db()
    owner.refresh_from_db()
    assert contact.enabled is True
    assert (owner.attempts, owner.recipient, owner.resolved_at) == (0, None, None)

    listings = {model: staff_client.get(reverse(f"admin:disclosure_{model}_changelist")).content.decode()
                for model in actions}  # fmt: skip
    assert all(f'value="{name}"' in listings[model] for model, (_, names) in actions.items() for name in names)
    staff_client.post(
        reverse("admin:disclosure_hostowner_changelist"),
        {"action": "choose_recipient_again", "_selected_action": [owner.pk]},
    )
    owner.refresh_from_db()
    assert owner.recipient == contact and owner.status == HostOwner.Status.RESOLVED


def test_looking_at_a_contacts_history_is_not_enough_to_revert_it(viewer_client: Client, staff_client: Client) -> None:
    organisation = Organisation.objects.create(name="Zorghost")
    contact = Contact.objects.create(organisation=organisation, email="abuse@zorghost.example", role="abuse")
    contact_set_enabled(contact=contact, enabled=False)  # it bounced
    enabled_version = contact.history.earliest()
    revert = reverse("admin:disclosure_contact_simple_history", args=[contact.pk, enabled_version.history_id])
    form = {"organisation": organisation.pk, "email": contact.email, "role": "abuse", "enabled": "on"}
    assert 'name="_save"' not in viewer_client.get(revert).content.decode()  # no button offered...

    response = viewer_client.post(revert, form)  # ...and posting the revert form anyway changes nothing

    contact.refresh_from_db()
    assert response.status_code == 403 and contact.enabled is False
    staff_client.post(revert, form)
    contact.refresh_from_db()
    assert contact.enabled is True  # staff who may change contacts can still revert


@pytest.mark.parametrize(
    ("email", "saved"),
    [
        (f"security@exa{ZWSP}mple.com", False),
        ("security@a\u2028b.com", False),
        (f"security@{RLO}moc.elpmaxe", False),
        ("security@b\u00fccher.example", True),
        ("security@zorghost.example", True),
    ],
)
def test_staff_can_enter_only_addresses_that_are_sent_as_shown(staff_client: Client, email: str, saved: bool) -> None:
    organisation = Organisation.objects.create(name="Zorghost")
    form = {"organisation": organisation.pk, "email": email, "role": "security", "source": "staff", "enabled": "on"}

    response = staff_client.post(reverse("admin:disclosure_contact_add"), form)

    assert Contact.objects.filter(email=email).exists() is saved
    if not saved:
        assert "This address cannot be mailed" in response.content.decode()


def test_a_contact_entered_twice_is_refused_with_a_message_not_a_server_error(staff_client: Client) -> None:
    organisation = Organisation.objects.create(name="Zorghost")
    first = Contact.objects.create(organisation=organisation, email="abuse@zorghost.example", role="abuse")
    again = {"email": first.email, "role": "abuse", "enabled": "on"}
    # The organisation's page with its contact and a new row that repeats it.
    rows = {"contacts-TOTAL_FORMS": "2", "contacts-INITIAL_FORMS": "1", "contacts-0-id": first.pk}
    rows |= {f"contacts-{n}-{k}": v for n in (0, 1) for k, v in again.items()}
    pages = {
        reverse("admin:disclosure_contact_add"): ({"organisation": organisation.pk, **again}, "already exists"),
        reverse("admin:disclosure_organisation_change", args=[organisation.pk]): (
            {"name": "Zorghost", "kind": "other", "domains": "[]", **rows},
            "Please correct the duplicate data for email, role and source",
        ),
    }

    for url, (form, message) in pages.items():
        response = staff_client.post(url, form)
        assert response.status_code == 200, url
        assert message in response.content.decode(), url
    assert Contact.objects.count() == 1


@pytest.mark.parametrize("domains", ['["zorg\\u0000host.example"]', '{"\\u0000": "zorghost.example"}'])
def test_a_nul_in_an_organisations_domains_is_refused_with_a_message_not_a_server_error(
    staff_client: Client, domains: str
) -> None:
    # JSON writes NUL as \u0000; PostgreSQL's jsonb cannot hold it (a DataError, a 500 page).
    organisation = Organisation.objects.create(name="Zorghost", domains=["zorghost.example"])
    url = reverse("admin:disclosure_organisation_change", args=[organisation.pk])
    form = {"name": "Zorghost", "kind": "other", "domains": domains, "contacts-TOTAL_FORMS": "0"}

    response = staff_client.post(url, {**form, "contacts-INITIAL_FORMS": "0"})

    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()
    organisation.refresh_from_db()
    assert organisation.domains == ["zorghost.example"]


def test_an_rdap_address_stays_as_the_registry_sent_it(staff_client: Client) -> None:
    organisation = Organisation.objects.create(name="Zorghost", source="rdap", source_key="rdap:ripencc:ZH")
    contact = Contact.objects.create(
        organisation=organisation, email="abuse@zorghost.example", role="abuse", source="rdap"
    )
    url = reverse("admin:disclosure_contact_change", args=[contact.pk])
    form = {"organisation": organisation.pk, "email": "mine@evil.example", "role": "abuse", "note": "bounced"}

    response = staff_client.post(url, form)
    contact.refresh_from_db()

    assert response.status_code == 302
    assert (contact.email, contact.enabled, contact.note) == ("abuse@zorghost.example", False, "bounced")


def test_owner_unknown_queue_lists_only_unknown_owners_with_reasons(
    registries: Registries, staff_client: Client
) -> None:
    make_host("62.239.237.1")
    make_host("8.8.8.8")
    make_host("10.0.0.3")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    body = staff_client.get(reverse("admin:disclosure_ownerunknown_changelist")).content.decode()
    assert "8.8.8.8" in body and "not_found" in body
    assert "62.239.237.1" not in body and "10.0.0.3" not in body


def test_staff_override_through_the_admin_is_kept_and_recorded_in_history(
    registries: Registries, staff_client: Client
) -> None:
    make_host("62.239.237.1")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    owner = HostOwner.objects.get()
    hospital = Organisation.objects.create(name="Hospital", kind="hospital")
    chosen = Contact.objects.create(organisation=hospital, email="ciso@hospital.example", role="security")
    url = reverse("admin:disclosure_hostowner_change", args=[owner.pk])
    response = staff_client.post(url, {"override_recipient": chosen.pk, "override_note": "asked by phone"})
    assert response.status_code == 302, response.content.decode()[:2000]
    owner.refresh_from_db()
    assert owner.recipient == chosen and "set by staff" in owner.recipient_reason
    assert owner.history.first().history_user.username == "staff"


def test_admin_action_disables_a_contact_and_the_recipient_moves_on(
    registries: Registries, staff_client: Client
) -> None:
    make_host("62.239.237.1")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    owner = HostOwner.objects.get()
    first = owner.recipient
    response = staff_client.post(
        reverse("admin:disclosure_contact_changelist"),
        {"action": "disable", "_selected_action": [first.pk]},
    )
    assert response.status_code == 302
    first.refresh_from_db()
    assert first.enabled is False
    latest = first.history.first()  # newest first
    assert (latest.enabled, latest.history_type, latest.history_user.username) == (False, "~", "staff")
    owner = owner_recompute(owner=owner)
    assert owner.recipient != first and owner.recipient.email == "steve.a.marshall@bt.com"


def test_owner_unknown_entries_have_a_history_page(registries: Registries, staff_client: Client) -> None:
    make_host("8.8.8.8")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    owner = HostOwner.objects.get()
    response = staff_client.get(reverse("admin:disclosure_ownerunknown_history", args=[owner.pk]))
    assert response.status_code == 200 and "8.8.8.8" in response.content.decode()
    assert owner.history.count() == 1  # written with the bulk create of the run
    response = staff_client.get(reverse("admin:disclosure_hostowner_history", args=[owner.pk]))
    assert response.status_code == 200 and response.content.decode().count("8.8.8.8: unknown") >= 2


def test_bench_owners_makes_one_request_per_network_and_leaves_nothing_behind(capsys: pytest.CaptureFixture) -> None:
    call_command("bench_owners", "--addresses", "600", "--networks", "12", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["runs"]["cold"]["requests"] == 12 and report["requests_per_network"] == 1.0
    assert report["runs"]["cold"]["resolved"] == 600 and report["runs"]["cold"]["from_cache"] == 588
    assert report["runs"]["cached"]["requests"] == 0 and report["runs"]["cached"]["hit_rate"] == 1.0
    assert Network.objects.count() == 0 and Organisation.objects.count() == 0


SAMPLE_RDAP = Path(__file__).resolve().parents[2] / "fixtures" / "sample" / "rdap"


def test_the_bundled_sample_answers_load_and_a_hospital_network_belongs_to_the_hospital(
    capsys: pytest.CaptureFixture,
) -> None:
    files = sorted(SAMPLE_RDAP.glob("*.json"))
    assert files, f"the bundled sample answers are missing: {SAMPLE_RDAP}"
    call_command("import_rdap_cache", str(SAMPLE_RDAP), "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["loaded"] == len(files) and report["rejected"] == 0
    # A PACS on the hospital's own network, and one of the same hospital at Microsoft Azure.
    make_host("145.10.64.20", hostnames=["pacs.erasmusmc.nl"])
    make_host("51.144.0.198", record={"ssl": {"cert": {"subject": {"CN": "viewer.erasmusmc.nl"}}}})
    make_host("145.18.200.1")  # the hospital network whose answer names no contact
    summary = owners_resolve().as_dict()
    assert summary["requests"] == 0 and summary["from_cache"] == 3
    own = HostOwner.objects.get(host__ip="145.10.64.20")
    assert own.network.holder == own.operator and own.operator.source == Organisation.Source.REGISTRY
    assert own.recipient.email == "security@erasmusmc.nl" and own.recipient.role == "abuse"
    assert own.recipient_reason == "operator Erasmus MC: abuse contact (RDAP)"
    cloud = HostOwner.objects.get(host__ip="51.144.0.198")  # listed in azure-we.addresses
    assert cloud.operator == own.operator and cloud.network.holder.name == "Microsoft Azure"
    assert cloud.recipient.email == "security@erasmusmc.nl"  # the operator's contact, not Azure's abuse desk
    assert Organisation.objects.filter(name="Erasmus MC").count() == 1
    silent = HostOwner.objects.get(host__ip="145.18.200.1")
    assert (silent.status, silent.reason) == (HostOwner.Status.UNKNOWN, "no_contact")


def test_history_pages_take_a_fixed_number_of_queries(staff_client: Client) -> None:
    """A version is named by its object's __str__ (a host owner by its host's address, a contact by
    its organisation) and a change by the related rows' names: not one query per version."""
    owner = HostOwner.objects.create(host=make_host("192.0.2.7"), status=HostOwner.Status.RESOLVED)
    hospitals = [Organisation.objects.create(name=f"Hospital {i}", kind="hospital") for i in range(3)]
    contacts = [Contact.objects.create(organisation=org, email=f"cert@h{i}.example", role="security")
                for i, org in enumerate(hospitals)]  # fmt: skip
    inhibition = Inhibition.objects.create(contact=contacts[0], reason="holiday", until=timezone.localdate())

    def edit(times: int) -> None:
        for i in range(times):
            owner.recipient, owner.override_recipient, owner.operator = (
                contacts[i % 3],
                contacts[(i + 1) % 3],
                hospitals[i % 3],
            )
            owner.attempts += 1
            owner.save()
            contacts[0].organisation, contacts[0].note = hospitals[i % 3], f"note {owner.attempts}"
            contacts[0].save()
            inhibition.contact, inhibition.reason = contacts[i % 3], f"holiday {owner.attempts}"
            inhibition.save()

    pages = [
        reverse("admin:disclosure_hostowner_history", args=[owner.pk]),
        reverse("admin:disclosure_contact_history", args=[contacts[0].pk]),
        reverse("admin:disclosure_inhibition_history", args=[inhibition.pk]),
    ]

    def queries(url: str) -> int:
        staff_client.get(url)
        with CaptureQueriesContext(connection) as ctx:
            assert staff_client.get(url).status_code == 200
        return len(ctx.captured_queries)

    edit(2)
    few = [queries(url) for url in pages]
    edit(30)
    assert [queries(url) for url in pages] == few
    assert "192.0.2.7: resolved" in staff_client.get(pages[0]).content.decode()


def test_an_organisation_page_with_many_contacts_takes_a_fixed_number_of_queries(staff_client: Client) -> None:
    hospital = Organisation.objects.create(name="Hospital", kind="hospital")
    url = reverse("admin:disclosure_organisation_change", args=[hospital.pk])

    def queries() -> int:
        staff_client.get(url)
        with CaptureQueriesContext(connection) as ctx:
            assert staff_client.get(url).status_code == 200
        return len(ctx.captured_queries)

    def add(first: int, count: int) -> None:
        for i in range(first, first + count):
            Contact.objects.create(organisation=hospital, email=f"cert{i}@hospital.example", role="security")

    add(0, 2)
    few = queries()
    add(2, 20)
    # Each contact row is titled with the contact, whose name includes its organisation's.
    assert queries() == few
    assert staff_client.get(url).content.decode().count("(security, Hospital)") == 22


def test_a_whole_address_finds_its_owner_and_the_networks_that_hold_it(staff_client: Client) -> None:
    for ip in ("10.1.2.3", "110.1.2.30"):
        HostOwner.objects.create(host=make_host(ip))
    now = timezone.now()
    for first, last, handle in (
        ("10.0.0.0", "10.255.255.255", "WIDE"),
        ("10.1.2.0", "10.1.2.255", "NARROW"),
        ("110.1.2.0", "110.1.2.255", "OTHER"),
    ):
        Network.objects.create(
            start_key=ip_key(first), end_key=ip_key(last), start_address=first, end_address=last,
            cidrs=[], handle=handle, raw={}, fetched_at=now, expires_at=now + timedelta(days=1),
        )  # fmt: skip

    def table(name: str, query: str) -> str:
        html = staff_client.get(reverse(f"admin:disclosure_{name}_changelist"), {"q": query}).content.decode()
        match = re.search(r'<table id="result_list".*?</table>', html, re.S)
        return match.group(0) if match else ""

    owners = table("hostowner", "10.1.2.3")
    assert "10.1.2.3" in owners and "110.1.2.30" not in owners
    networks = table("network", " 10.1.2.3 ")
    assert "WIDE" in networks and "NARROW" in networks and "OTHER" not in networks
    assert "OTHER" in table("network", "110.1.2.30") and "WIDE" not in table("network", "110.1.2.30")
    assert "OTHER" in table("network", "other")  # anything else: the text search as before


def test_choosing_again_from_the_queue_counts_the_owners_that_left_it(
    registries: Registries, staff_client: Client
) -> None:
    """The message counted the queue after the action: owners that got a recipient had left it, so
    staff read '0 recipients chosen again' exactly when every one of them had been chosen."""
    make_host("62.239.237.1")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    owner = HostOwner.objects.get()
    Contact.objects.update(enabled=False)
    assert owner_recompute(owner=owner).reason == "no_contact"  # in the queue now
    Contact.objects.update(enabled=True)
    response = staff_client.post(
        reverse("admin:disclosure_ownerunknown_changelist"),
        {"action": "choose_recipient_again", "_selected_action": [owner.pk]},
        follow=True,
    )
    assert HostOwner.objects.get().status == HostOwner.Status.RESOLVED
    assert "1 recipients chosen again" in response.content.decode()


def test_disabling_contacts_counts_only_the_contacts_it_disabled(staff_client: Client) -> None:
    """A contact selected that was disabled already was counted as disabled by the action (and got
    a history entry that changed nothing): '2 contacts disabled' when one was."""
    organisation = Organisation.objects.create(name="Hoster")
    first, second, off = (
        Contact.objects.create(organisation=organisation, email=f"{name}@hoster.example", role="abuse", enabled=enabled)
        for name, enabled in (("first", True), ("second", True), ("off", False))
    )
    url = reverse("admin:disclosure_contact_changelist")
    response = staff_client.post(
        f"{url}?enabled__exact=1", {"action": "disable", "_selected_action": [first.pk, second.pk]}, follow=True
    )
    assert "2 contacts disabled." in response.content.decode()
    assert not Contact.objects.filter(enabled=True).exists()

    response = staff_client.post(url, {"action": "disable", "_selected_action": [first.pk, off.pk]}, follow=True)
    assert "0 contacts disabled, 2 already disabled." in response.content.decode()
    response = staff_client.post(url, {"action": "enable", "_selected_action": [first.pk, second.pk]}, follow=True)
    assert "2 contacts enabled." in response.content.decode()
    response = staff_client.post(url, {"action": "enable", "_selected_action": [first.pk, off.pk]}, follow=True)
    assert "1 contacts enabled, 1 already enabled." in response.content.decode()
    assert off.history.count() == 2  # created, enabled: nothing written when the state was already so


def test_looking_owners_up_again_says_how_they_ended(registries: Registries, staff_client: Client) -> None:
    """The message gave networks found and failures (as a Python dict) but not how the owners
    ended: '1 hosts: 1 networks found, 0 requests, failed: none.' for an owner still in the queue
    because its network names no usable contact."""
    make_host("62.239.237.1")
    make_host("8.8.8.8")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    Contact.objects.update(enabled=False)
    owner = HostOwner.objects.get(host__ip="62.239.237.1")
    assert owner_recompute(owner=owner).reason == "no_contact"
    response = staff_client.post(
        reverse("admin:disclosure_ownerunknown_changelist"),
        {"action": "resolve_again", "_selected_action": list(HostOwner.objects.values_list("pk", flat=True))},
        follow=True,
    )
    body = html.unescape(response.content.decode())
    assert (
        "2 hosts: 1 networks found (0 from cache, 2 RDAP requests), 0 operators recognised; "
        "owner status unknown 2; failed: not_found 1" in body
    )


def test_host_and_service_pages_name_the_owner_and_recipient(tmp_path: Path, staff_client: Client) -> None:
    # A handler looking at an exposed service needs to know whom it goes to without searching the
    # host owners for its address; staff who may not see owners are not shown them.
    (tmp_path / "evil.json").write_text(json.dumps(HOSTILE))
    call_command("import_rdap_cache", str(tmp_path), "--json")
    host = make_host("81.0.0.7")
    unresolved = make_host("81.0.0.8")
    owners_resolve(hosts=[host])
    owner = HostOwner.objects.get()
    service = host.services.get()
    looker = User.objects.create_user("looker", password="pw", is_staff=True)
    looker.user_permissions.add(*Permission.objects.filter(codename__in=["view_host", "view_service"]))
    viewer = Client()
    viewer.force_login(looker)
    owner_url = reverse("admin:disclosure_hostowner_change", args=[owner.pk])
    pages = [
        reverse("admin:harvest_host_change", args=[host.pk]),
        reverse("admin:harvest_service_change", args=[service.pk]),
    ]

    shown = [staff_client.get(url).content.decode() for url in pages]
    hidden = [viewer.get(url).content.decode() for url in pages]
    not_yet = staff_client.get(reverse("admin:harvest_host_change", args=[unresolved.pk])).content.decode()

    for body in shown:
        text = page_text(body)
        assert f'href="{owner_url}"' in body
        assert "abuse@evil.example" in text and "81.0.0.0/24" in text and "Resolved" in text
        assert "<img src=x onerror" not in body and "&lt;img src=x onerror=alert(2)&gt;" in body
    assert all("abuse@evil.example" not in body and owner_url not in body for body in hidden)
    assert "not looked up yet" in page_text(not_yet)

    # Allowed to see owners but not contacts: the recipient is named, without a link into a 403.
    looker.user_permissions.add(Permission.objects.get(codename="view_hostowner"))
    viewer.force_login(User.objects.get(pk=looker.pk))  # permissions are cached per user object
    body = viewer.get(pages[0]).content.decode()
    contact_url = reverse("admin:disclosure_contact_change", args=[owner.recipient_id])
    assert "abuse@evil.example" in page_text(body) and f'href="{owner_url}"' in body
    assert contact_url not in body and "<img src=x onerror" not in body


def test_choosing_again_takes_no_recipient_from_a_network_the_registry_no_longer_has(
    registries: Registries, staff_client: Client
) -> None:
    """Choosing again from the cache gave the host its recipient from a network the registry had
    since answered past (gone: a customer that gave its /24 back), or that had expired, with
    nothing to say the choice rested on stale data, until the next run looked it up."""
    gone_host, expired_host = make_host("62.239.237.1"), make_host("74.125.225.229")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    now = timezone.now()
    Network.objects.filter(owners__host=gone_host).update(gone_at=now, expires_at=now)
    Network.objects.filter(owners__host=expired_host).update(expires_at=now)
    response = staff_client.post(
        reverse("admin:disclosure_hostowner_changelist"),
        {"action": "choose_recipient_again", "_selected_action": list(HostOwner.objects.values_list("pk", flat=True))},
        follow=True,
    )
    body = html.unescape(response.content.decode())
    gone = HostOwner.objects.get(host=gone_host)
    assert (gone.status, gone.reason, gone.network, gone.recipient) == ("unknown", "network_gone", None, None)
    assert "62.239.237.0/24 is no longer at the registry" in gone.detail
    expired = HostOwner.objects.get(host=expired_host)  # as a run whose lookup fails keeps it
    assert (expired.status, expired.recipient.email) == ("resolved", "arin-contact@google.com")
    assert "2 recipients chosen again." in body
    assert "1 host rests on a network the registry no longer has: it got no recipient from it" in body
    assert "1 host rests on an expired network" in body
    assert "Look the owners up again (RDAP)" in body
    assert sorted(h.ip for h in hosts_needing_owner()) == ["62.239.237.1", "74.125.225.229"]


def test_looking_owners_up_again_asks_the_registry_even_while_the_network_is_cached(
    registries: Registries, staff_client: Client
) -> None:
    """ "Look the owners up again (RDAP)" answered from the cache while the network had not expired
    (30 days): a hospital that had just corrected its abuse address at the registry still got its
    advisories at the old one, and the message said '0 RDAP requests'."""
    make_host("62.239.237.1")
    make_host("62.239.237.2")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    network = registries.standin.find("62.239.237.1")
    corrected = json.loads(json.dumps(network.response).replace("zzdnsr@bt.com", "abuse@bt.example"))
    registries.standin.remove(corrected["startAddress"], corrected["endAddress"])
    registries.standin.add(corrected, registry="ripencc", asn=2856, country="GB")
    before = registries.ip_requests
    response = staff_client.post(
        reverse("admin:disclosure_hostowner_changelist"),
        {"action": "resolve_again", "_selected_action": list(HostOwner.objects.values_list("pk", flat=True))},
        follow=True,
    )
    assert registries.ip_requests == before + 1  # one request for the network of both addresses
    assert {o.recipient.email for o in HostOwner.objects.all()} == {"abuse@bt.example"}
    assert "1 RDAP requests" in html.unescape(response.content.decode())


def test_a_contact_staff_set_as_a_hosts_override_cannot_be_deleted_from_under_it(
    registries: Registries, staff_client: Client
) -> None:
    """Deleting a contact that was a host's override recipient cleared the override without a word
    (the delete page lists only what a deletion takes with it), and the host's advisories went
    back to its hoster's abuse desk: the very party staff had steered them away from."""
    host = make_host("62.239.237.1")
    owners_resolve(options=registries.options, limiter=registries.limiter)
    hospital = Organisation.objects.create(name="Hospital IT", kind="hospital")
    chosen = Contact.objects.create(organisation=hospital, email="it@hospital.example", role="technical")
    staff_client.post(
        reverse("admin:disclosure_hostowner_change", args=[HostOwner.objects.get().pk]),
        {"override_recipient": chosen.pk, "override_note": "not the hoster"},
    )
    assert HostOwner.objects.get().recipient == chosen
    for url in (
        reverse("admin:disclosure_contact_delete", args=[chosen.pk]),
        reverse("admin:disclosure_organisation_delete", args=[hospital.pk]),
    ):
        response = staff_client.post(url, {"post": "yes"})
        assert "would require deleting the following protected related objects" in html.unescape(
            response.content.decode()
        )
    owners_resolve(hosts=[host], options=registries.options, limiter=registries.limiter)
    owner = HostOwner.objects.get()
    assert (owner.override_recipient, owner.recipient) == (chosen, chosen)


def test_host_owners_are_listed_in_address_order(staff_client: Client) -> None:
    # Numeric order, IPv4 before IPv6; as text (SQLite's column) 10.0.0.10 came before 10.0.0.2.
    in_order = ["9.1.1.1", "10.0.0.2", "10.0.0.10", "2001:db8::2", "2001:db8::10"]
    for ip in sorted(in_order, reverse=True):
        HostOwner.objects.create(host=make_host(ip), status=HostOwner.Status.UNKNOWN)

    def listed(name: str, **query: str) -> list[str]:
        html = staff_client.get(reverse(f"admin:disclosure_{name}_changelist"), query).content.decode()
        return re.findall(r'class="field-host[" ][^>]*><a [^>]*>([^<]*)<', html)

    assert [owner.host.ip for owner in HostOwner.objects.select_related("host")] == in_order
    for name in ("hostowner", "ownerunknown"):
        assert listed(name) == in_order, name
        assert listed(name, o="1") == in_order, name  # sorted by the host column: the host's order
        assert listed(name, o="-1") == in_order[::-1], name


def test_owner_resolution_and_the_owner_export_columns_never_sort_by_address() -> None:
    for ip in ("192.0.2.10", "192.0.2.9", "2001:db8::1"):  # not public: owners written without lookups
        make_host(ip)
    statements = Statements()
    with connection.execute_wrapper(statements):
        owners_resolve()
        rows = list(service_export_rows())
    assert HostOwner.objects.count() == len(rows) == 3
    # They build lookups by host: sorting by address would call a function per row on SQLite.
    assert statements.sorting_by_address() == []
