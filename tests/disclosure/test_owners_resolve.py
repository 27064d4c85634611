"""Owner resolution end to end: hosts in the database, the real ipwhois, stand-in registries."""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import F
from django.utils import timezone

from disclosure.models import Contact, HostOwner, Inhibition, Network, Organisation
from disclosure.services import (
    MAX_CONTACTS_PER_NETWORK,
    OWNER_CHUNK,
    OwnersSummary,
    contact_set_enabled,
    hosts_needing_owner,
    inhibition_create,
    network_find_cached,
    owner_override_set,
    owner_recompute,
    owners_resolve,
)
from harvest.models import Host, Service
from harvest.services import harvest_execute, harvest_file_start
from tests.disclosure.conftest import SEEN, Registries, make_host
from tests.standins.rdap_server import Script

pytestmark = pytest.mark.django_db


def resolve(registries: Registries, hosts: list | None = None, concurrency: int = 4) -> OwnersSummary:
    return owners_resolve(hosts=hosts, options=registries.options, limiter=registries.limiter, concurrency=concurrency)


def test_it_resolves_each_host_to_network_and_abuse_contact(registries: Registries) -> None:
    host = make_host("62.239.237.1")
    summary = resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert owner.status == HostOwner.Status.RESOLVED
    assert owner.network.cidrs == ["62.239.237.0/24"] and owner.network.asn == 2856
    assert owner.network.registry == "ripencc" and owner.network.raw["name"] == "BT-CORPORATE"
    assert owner.recipient.email == "zzdnsr@bt.com" and owner.recipient.role == "abuse"
    assert owner.recipient.source == Contact.Source.RDAP
    assert "BTCR3-RIPE" in owner.recipient_reason and "abuse" in owner.recipient_reason
    assert summary.as_dict()["resolved"] == 1 and summary.as_dict()["requests"] == 1


def test_addresses_in_one_network_cost_one_request(registries: Registries) -> None:
    for last in range(1, 41):
        make_host(f"62.239.237.{last}")
    for last in range(1, 11):
        make_host(f"2a00:2381:ffff::{last:x}")
    summary = resolve(registries, concurrency=4).as_dict()
    assert registries.ip_requests == 2
    assert summary["requests"] == 2 and summary["resolved"] == 50 and summary["from_cache"] == 48
    assert Network.objects.count() == 2


def test_a_second_run_resolves_from_the_cache_without_requests(registries: Registries) -> None:
    make_host("74.125.225.229")  # ARIN networks of no type: cached for the addresses looked up
    make_host("2001:4860:4860::8888")
    make_host("62.239.237.1")
    resolve(registries)
    HostOwner.objects.all().delete()  # forget the owners, keep the cached networks
    make_host("62.239.237.99")  # a new address inside a cached assignment
    before = registries.ip_requests
    summary = resolve(registries).as_dict()
    assert registries.ip_requests == before
    assert summary["requests"] == 0 and summary["from_cache"] == 4 and summary["resolved"] == 4


def test_an_expired_network_is_fetched_again(registries: Registries) -> None:
    make_host("1.1.1.1")
    resolve(registries)
    Network.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert network_find_cached(ip="1.1.1.1") is None
    assert list(hosts_needing_owner())  # the owner rests on an expired network: due again
    summary = resolve(registries).as_dict()
    assert summary["requests"] == 1
    assert Network.objects.count() == 1 and network_find_cached(ip="1.1.1.1") is not None


def test_the_cache_prefers_the_most_specific_network(registries: Registries) -> None:
    now = timezone.now()
    common = {"raw": {}, "network_type": "ASSIGNED PA", "fetched_at": now, "expires_at": now + timedelta(days=1)}
    from disclosure.models import ip_key

    wide = Network.objects.create(
        start_key=ip_key("11.0.0.0"),
        end_key=ip_key("11.0.255.255"),
        start_address="11.0.0.0",
        end_address="11.0.255.255",
        cidrs=["11.0.0.0/16"],
        **common,
    )
    narrow = Network.objects.create(
        start_key=ip_key("11.0.4.0"),
        end_key=ip_key("11.0.4.255"),
        start_address="11.0.4.0",
        end_address="11.0.4.255",
        cidrs=["11.0.4.0/24"],
        **common,
    )
    assert network_find_cached(ip="11.0.4.9") == narrow
    assert network_find_cached(ip="11.0.5.9") == wide
    assert network_find_cached(ip="11.1.0.1") is None
    assert network_find_cached(ip="2001:4860::1") is None


def test_failures_are_recorded_and_the_batch_goes_on(registries: Registries) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(status=500)
    registries.standin.scripts["1.1.1.1"] = Script(malformed=True)
    registries.standin.scripts["130.59.1.1"] = Script(delay=2.5)
    good = make_host("74.125.225.229")
    for ip in ("62.239.237.1", "1.1.1.1", "130.59.1.1", "8.8.8.8", "10.0.0.5", "2001:db8::5"):
        make_host(ip)
    summary = resolve(registries).as_dict()
    assert HostOwner.objects.get(host=good).status == HostOwner.Status.RESOLVED
    reasons = dict(HostOwner.objects.values_list("host__ip", "reason"))
    assert reasons["62.239.237.1"] == "server_error"
    assert reasons["1.1.1.1"] == "malformed_json"
    assert reasons["130.59.1.1"] == "timeout"
    assert reasons["8.8.8.8"] == "not_found"
    assert reasons["10.0.0.5"] == "private" and reasons["2001:db8::5"] == "private"
    assert summary["failed"] == {"server_error": 1, "malformed_json": 1, "timeout": 1, "not_found": 1, "private": 2}
    unknown = set(HostOwner.objects.filter(status="unknown").values_list("host__ip", flat=True))
    assert unknown == {"62.239.237.1", "1.1.1.1", "130.59.1.1", "8.8.8.8"}
    skipped = HostOwner.objects.get(host__ip="10.0.0.5")
    assert skipped.status == HostOwner.Status.SKIPPED and skipped.network is None


def test_failed_hosts_are_retried_on_the_next_run_and_skipped_ones_are_not(registries: Registries) -> None:
    registries.standin.scripts["62.239.237.1"] = Script(status=503)
    make_host("62.239.237.1")
    make_host("10.0.0.5")
    resolve(registries)
    assert {h.ip for h in hosts_needing_owner()} == {"62.239.237.1"}
    del registries.standin.scripts["62.239.237.1"]
    resolve(registries)
    owner = HostOwner.objects.get(host__ip="62.239.237.1")
    assert owner.status == HostOwner.Status.RESOLVED and owner.attempts == 2
    assert list(hosts_needing_owner()) == []


def test_an_answer_without_contacts_leaves_the_owner_unknown(registries: Registries) -> None:
    # SWITCH's technical entity carries no vCard: take away the abuse entity and nothing is left.
    answer = next(n for n in registries.standin.networks if n.response.get("name") == "SWITCH-LAN")
    answer.response = {
        **answer.response,
        "entities": [e for e in answer.response["entities"] if "abuse" not in e["roles"]],
    }
    host = make_host("130.59.7.7")
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert owner.status == HostOwner.Status.UNKNOWN and owner.reason == "no_contact"
    assert owner.network.cidrs == ["130.59.0.0/16"]  # the network is known, only the contact is missing


def test_a_hospital_at_a_cloud_provider_has_operator_and_holder(registries: Registries) -> None:
    # A DICOM service in Google's space whose certificate names an Erasmus MC host.
    record = {"ssl": {"cert": {"subject": {"CN": "pacs.erasmusmc.nl", "O": "Erasmus MC"}}}}
    host = make_host("74.125.225.229", port=2762, record=record)
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert owner.operator.name == "Erasmus MC" and owner.operator.kind == "umc"
    assert owner.operator.source_key == "registry:nl_healthcare:Erasmus MC"
    assert "pacs.erasmusmc.nl" in owner.operator_evidence
    assert owner.network.holder.name == "Google Inc."
    # No contact is known for the hospital yet: the network's abuse contact gets it.
    assert owner.recipient.email == "arin-contact@google.com"
    assert owner.recipient.organisation == owner.network.holder


def test_the_operators_contact_wins_over_the_network_abuse_contact(registries: Registries) -> None:
    host = make_host("74.125.225.229", hostnames=["pacs.erasmusmc.nl"])
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    Contact.objects.create(organisation=owner.operator, email="cert@erasmusmc.nl", role="security")
    owner = owner_recompute(owner=owner)
    assert owner.recipient.email == "cert@erasmusmc.nl"
    assert owner.recipient_reason.startswith("operator Erasmus MC: security contact")


def test_inhibitions_are_respected(registries: Registries) -> None:
    host = make_host("62.239.237.1")
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    first = owner.recipient
    inhibition_create(contact=first, reason="bounces", until=timezone.localdate() + timedelta(days=30), actor="staff")
    owner = owner_recompute(owner=owner)
    # BT's abuse entity lists three addresses: the next one takes over.
    assert owner.recipient.email == "steve.a.marshall@bt.com"
    holder = owner.network.holder
    inhibition_create(organisation=holder, reason="asked us to wait", until=timezone.localdate())
    owner = owner_recompute(owner=owner)
    assert owner.recipient is None and owner.status == HostOwner.Status.INHIBITED
    assert "inhibited" in owner.recipient_reason
    Inhibition.objects.filter(organisation=holder).update(until=timezone.localdate() - timedelta(days=1))
    owner = owner_recompute(owner=owner)
    assert owner.recipient.email == "steve.a.marshall@bt.com"  # the expired one no longer counts


def test_a_stored_address_that_would_not_be_sent_as_shown_is_passed_over(registries: Registries) -> None:
    host = make_host("74.125.225.229", hostnames=["pacs.erasmusmc.nl"])
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    # Stored before addresses were checked (create() runs no validation): IDNA would send the first
    # to abuse@example.com, not to what staff see.
    Contact.objects.create(organisation=owner.operator, email="abuse@exa\u200bmple.com", role="abuse")
    Contact.objects.create(organisation=owner.operator, email="cert@erasmusmc.nl", role="security")

    owner = owner_recompute(owner=owner)

    assert owner.recipient.email == "cert@erasmusmc.nl"


def test_a_reimport_never_touches_staff_contacts_or_reenables_disabled_ones(registries: Registries) -> None:
    make_host("62.239.237.1")
    resolve(registries)
    holder = Network.objects.get().holder
    rdap_contact = Contact.objects.get(organisation=holder, email="zzdnsr@bt.com")
    rdap_contact.enabled = False
    rdap_contact.save()
    # Staff take over one of the imported addresses as their own contact.
    Contact.objects.filter(organisation=holder, email="lee.bailey-hague@bt.com", source="rdap").delete()
    staff = Contact.objects.create(
        organisation=holder,
        email="lee.bailey-hague@bt.com",
        role="abuse",
        note="direct line",
        pgp_fingerprint="AB" * 20,
    )
    Network.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    HostOwner.objects.all().delete()
    resolve(registries)  # fetches and imports the same answer again
    rdap_contact.refresh_from_db()
    staff.refresh_from_db()
    assert rdap_contact.enabled is False
    assert (staff.source, staff.note, staff.pgp_fingerprint) == ("staff", "direct line", "AB" * 20)
    assert not Contact.objects.filter(email="lee.bailey-hague@bt.com", source="rdap").exists()
    owner = HostOwner.objects.get()
    assert owner.recipient == staff  # staff contacts of the holder come before RDAP ones
    assert "entered by staff" in owner.recipient_reason


def test_a_staff_contact_written_in_other_case_is_not_imported_again(registries: Registries) -> None:
    """Registries' addresses are stored in lower case; one staff typed as "Lee.Bailey-Hague@BT.com"
    got an RDAP twin on the next import, which went on being mailed if staff disabled theirs."""
    make_host("62.239.237.1")
    resolve(registries)
    holder = Network.objects.get().holder
    Contact.objects.filter(organisation=holder, email="lee.bailey-hague@bt.com", source="rdap").delete()
    Contact.objects.create(organisation=holder, email="Lee.Bailey-Hague@BT.com", role="abuse", enabled=False)
    Network.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    resolve(registries)  # fetches and imports the same answer again

    assert not Contact.objects.filter(email__iexact="lee.bailey-hague@bt.com", source="rdap").exists()
    assert Contact.objects.filter(organisation=holder, source="rdap").exists()  # the others came back as before
    assert HostOwner.objects.get().recipient.email.lower() != "lee.bailey-hague@bt.com"


def test_a_staff_override_is_kept_across_runs(registries: Registries) -> None:
    host = make_host("62.239.237.1")
    resolve(registries)
    other = Organisation.objects.create(name="Hospital IT", kind="hospital")
    chosen = Contact.objects.create(organisation=other, email="it@hospital.example", role="technical")
    HostOwner.objects.filter(host=host).update(override_recipient=chosen, status="unknown")
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert owner.recipient == chosen and owner.override_recipient == chosen
    assert "set by staff" in owner.recipient_reason


@pytest.mark.parametrize("how", ["disabled", "inhibited", "organisation inhibited"])
def test_an_override_that_cannot_be_used_sends_nothing_to_the_recipient_staff_steered_away_from(
    registries: Registries, how: str
) -> None:
    """Staff send a host's cases to the hospital instead of its hoster. When the hospital's contact
    was disabled or inhibited, the next choice went back to the hoster's abuse desk: the party
    staff had steered the host's confidential advisories away from."""
    host = make_host("62.239.237.1")
    resolve(registries)
    hospital = Organisation.objects.create(name="Hospital IT", kind="hospital")
    chosen = Contact.objects.create(organisation=hospital, email="it@hospital.example", role="technical")
    owner_override_set(owner=HostOwner.objects.get(host=host), contact=chosen, note="not the hoster")
    if how == "disabled":
        contact_set_enabled(contact=chosen, enabled=False)
    else:
        target = {"contact": chosen} if how == "inhibited" else {"organisation": hospital}
        inhibition_create(until=timezone.localdate(), reason="on holiday", **target)
    assert [h.ip for h in hosts_needing_owner()] == ["62.239.237.1"]
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert owner.recipient is None and owner.override_recipient == chosen
    if how == "disabled":
        assert (owner.status, owner.reason) == ("unknown", "override_disabled")
        assert owner.detail.startswith("it@hospital.example, set by staff")
    else:
        assert owner.status == "inhibited" and "it@hospital.example" in owner.detail


def test_resolve_owners_command_prints_one_json_object(registries: Registries, capsys) -> None:
    make_host("62.239.237.1")
    make_host("62.239.237.2")
    make_host("8.8.8.8")
    make_host("127.0.0.1")
    call_command("resolve_owners", "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["resolved"] == 2 and result["from_cache"] == 1 and result["requests"] == 2
    assert result["failed"] == {"not_found": 1, "loopback": 1}
    call_command("resolve_owners", "--json")
    again = json.loads(capsys.readouterr().out)
    assert again["hosts"] == 1 and again["requests"] == 1  # only the not-found host is retried


def test_resolve_owners_command_prints_a_summary_line(registries: Registries, capsys) -> None:
    make_host("1.1.1.1")
    make_host("127.0.0.1")
    call_command("resolve_owners")
    out = capsys.readouterr().out
    assert "2 hosts: 1 networks found" in out and "1 RDAP requests" in out
    assert out.rstrip().endswith("owner status resolved 1, skipped 1; failed: loopback 1")


def test_an_inhibited_owner_is_released_by_the_next_run_once_the_inhibition_ends(registries: Registries) -> None:
    from disclosure.tasks import resolve_owners

    host = make_host("1.1.1.1")
    resolve(registries)
    holder = Network.objects.get().holder
    inhibition = inhibition_create(organisation=holder, reason="holiday", until=timezone.localdate())
    HostOwner.objects.filter(host=host).update(status="unknown")  # due again
    resolve(registries)
    assert HostOwner.objects.get(host=host).status == HostOwner.Status.INHIBITED
    assert [h.ip for h in hosts_needing_owner()] == ["1.1.1.1"]
    Inhibition.objects.filter(pk=inhibition.pk).update(until=timezone.localdate() - timedelta(days=1))
    result = resolve_owners()  # the scheduled task, reading the stand-ins from settings
    assert result["requests"] == 0 and result["owner_status"] == {"resolved": 1}
    assert HostOwner.objects.get(host=host).recipient.email == "helpdesk@apnic.net"


def test_inhibitions_need_one_target_and_a_reason(registries: Registries) -> None:
    from disclosure.services import OwnerError

    organisation = Organisation.objects.create(name="X")
    with pytest.raises(OwnerError):
        inhibition_create(until=timezone.localdate(), reason="r")
    with pytest.raises(OwnerError):
        inhibition_create(organisation=organisation, until=timezone.localdate(), reason="  ")


def test_an_answer_about_another_network_is_neither_used_nor_cached(registries: Registries, tmp_path) -> None:
    # A genuine 9.9.9.0/24 is in the cache already; the registry answers 62.239.237.1 with it.
    genuine = {"objectClassName": "ip network", "handle": "GENUINE", "startAddress": "9.9.9.0"}
    (tmp_path / "genuine.json").write_text(json.dumps({**genuine, "endAddress": "9.9.9.255", "name": "QUAD9"}))
    call_command("import_rdap_cache", str(tmp_path), "--json")
    answer = registries.standin.find("62.239.237.1")
    answer.response = {**answer.response, "startAddress": "9.9.9.0", "endAddress": "9.9.9.255"}
    answer.response.pop("cidr0_cidrs", None)
    host = make_host("62.239.237.1")
    summary = resolve(registries).as_dict()
    owner = HostOwner.objects.get(host=host)
    assert (owner.status, owner.reason, owner.network) == ("unknown", "malformed_answer", None)
    assert "does not hold 62.239.237.1" in owner.detail
    assert summary["failed"] == {"malformed_answer": 1}
    cached = Network.objects.get()
    assert (cached.handle, cached.name, cached.source) == ("GENUINE", "QUAD9", "import")  # not overwritten
    assert network_find_cached(ip="62.239.237.1") is None


@pytest.mark.parametrize("asn", ["99999999999999999999", "4294967296"])
def test_an_unusable_asn_from_the_dns_step_leaves_the_network_with_no_asn(registries: Registries, asn: str) -> None:
    registries.standin.find("62.239.237.1").asn = asn  # what the TXT answer says
    host = make_host("62.239.237.1")
    make_host("74.125.225.229")  # the batch goes on
    summary = resolve(registries).as_dict()
    owner = HostOwner.objects.get(host=host)
    assert owner.status == HostOwner.Status.RESOLVED and owner.network.cidrs == ["62.239.237.0/24"]
    assert owner.network.asn is None
    assert summary["resolved"] == 2 and summary["failed"] == {}


@pytest.mark.parametrize("origins", [["\u00b2"], [99999999999999999999], "8075", {"0": 8075}])
def test_an_unusable_origin_asn_in_the_answer_is_passed_over(registries: Registries, origins: object) -> None:
    network = registries.standin.find("13.64.5.5")
    network.asn = None  # the ASN step knows nothing: ARIN's bootstrap, and the ASN from the answer
    network.response = {**network.response, "arin_originas0_originautnums": origins}
    host = make_host("13.64.5.5")
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert owner.status == HostOwner.Status.RESOLVED and owner.network.cidrs[0] == "13.64.0.0/11"
    assert owner.network.asn is None


def test_nul_and_lone_surrogates_in_an_answer_are_stored_as_visible_characters(registries: Registries) -> None:
    answer = registries.standin.find("62.239.237.1")
    answer.response = {**answer.response, "name": "BT\x00CORP\ud800", "remarks": [{"description": ["x\x00y"]}]}
    host = make_host("62.239.237.1")
    resolve(registries)
    resolve(registries)  # stored once: nothing is left to retry
    owner = HostOwner.objects.get(host=host)
    assert owner.status == HostOwner.Status.RESOLVED and owner.attempts == 1
    network = Network.objects.get()
    assert network.name == "BT\u2400CORP\ufffd" and network.raw["name"] == "BT\u2400CORP\ufffd"
    assert network.raw["remarks"] == [{"description": ["x\u2400y"]}]
    assert network.raw["handle"] == answer.response["handle"]  # otherwise as sent


def test_an_answer_too_deep_to_parse_is_malformed_json(registries: Registries) -> None:
    body = '{"objectClassName": "ip network", "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    registries.standin.scripts["62.239.237.1"] = Script(body=body.encode())
    host = make_host("62.239.237.1")
    summary = resolve(registries).as_dict()
    assert HostOwner.objects.get(host=host).reason == "malformed_json"
    assert summary["failed"] == {"malformed_json": 1}


def test_contacts_kept_per_network_are_bounded_without_losing_the_best_one(registries: Registries) -> None:
    def entity(handle: str, role: str, count: int, **extra: object) -> dict:
        emails = [["email", {}, "text", f"{handle.lower()}-{i}@example.net"] for i in range(count)]
        return {"handle": handle, "roles": [role], "vcardArray": ["vcard", emails], **extra}

    answer = registries.standin.find("62.239.237.1")
    # 100 entities of ten addresses each, the abuse desk nested last under the registrant.
    registrant = entity("ORG", "registrant", 0, entities=[entity("ABUSE", "abuse", 1)])
    crowd = [entity(f"T{i}", "technical" if i % 2 else "administrative", 10) for i in range(100)]
    answer.response = {**answer.response, "entities": [*crowd, registrant]}
    host = make_host("62.239.237.1")
    resolve(registries)
    network = Network.objects.get()
    assert Contact.objects.filter(organisation=network.holder).count() == MAX_CONTACTS_PER_NETWORK == 50
    assert len(network.contact_candidates) == 50
    assert [c["role"] for c in network.contact_candidates[:2]] == ["abuse", "technical"]
    assert HostOwner.objects.get(host=host).recipient.email == "abuse-0@example.net"


@pytest.mark.django_db(transaction=True)
def test_a_clash_with_an_overlapping_run_is_retried_from_a_fresh_start(registries: Registries) -> None:
    hospital = make_host("74.125.225.229", hostnames=["pacs.erasmusmc.nl"])
    other = make_host("74.125.225.230")
    created = []

    def another_run_writes_meanwhile(execute, sql, params, many, context):  # noqa: ANN001, ANN202
        # Between our read of the owners and our write (when the services' records are read),
        # another run stores one of them.
        if not created and sql.startswith("SELECT") and '"harvest_service"."raw"' in sql:
            created.append(HostOwner.objects.create(host=other, status="unknown", reason="not_looked_up"))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(another_run_writes_meanwhile):
        summary = resolve(registries).as_dict()
    assert created and summary["owner_status"] == {"resolved": 2}
    owner = HostOwner.objects.get(host=hospital)
    assert owner.operator.name == "Erasmus MC" and Organisation.objects.filter(pk=owner.operator_id).exists()


def test_a_staff_override_on_a_skipped_host_is_saved_and_followed(registries: Registries) -> None:
    host = make_host("10.0.0.3")
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert owner.status == HostOwner.Status.SKIPPED
    chosen = Contact.objects.create(
        organisation=Organisation.objects.create(name="H"), email="it@h.example", role="security"
    )
    owner_override_set(owner=owner, contact=chosen, note="by phone")
    owner = HostOwner.objects.get(host=host)
    assert (owner.override_recipient, owner.override_note, owner.recipient) == (chosen, "by phone", chosen)
    assert owner.status == HostOwner.Status.SKIPPED and "set by staff" in owner.recipient_reason
    resolve(registries, hosts=[host])  # a later run keeps it
    assert HostOwner.objects.get(host=host).recipient == chosen
    owner_override_set(owner=owner, contact=None)  # and clearing it clears the recipient
    assert HostOwner.objects.get(host=host).recipient is None


def test_an_ipv4_mapped_host_is_resolved_as_its_ipv4_address_and_stored_once(registries: Registries) -> None:
    mapped = make_host("::ffff:62.239.237.1")
    plain = make_host("62.239.237.9")
    summary = resolve(registries).as_dict()
    assert summary["requests"] == 1 and summary["failed"] == {}
    for host in (mapped, plain):
        owner = HostOwner.objects.get(host=host)
        assert owner.status == HostOwner.Status.RESOLVED and owner.network.cidrs == ["62.239.237.0/24"]
    assert list(hosts_needing_owner()) == []  # not retried on the next run
    later = make_host("::ffff:62.239.237.2")
    again = resolve(registries).as_dict()
    assert again["requests"] == 0 and again["from_cache"] == 1
    assert HostOwner.objects.get(host=later).recipient.email == "zzdnsr@bt.com"


def test_the_operator_goes_when_its_evidence_goes(registries: Registries) -> None:
    host = make_host("74.125.225.229", hostnames=["pacs.erasmusmc.nl"])
    resolve(registries)
    assert HostOwner.objects.get(host=host).operator.name == "Erasmus MC"
    service = host.services.get()  # its current record names another host
    service.raw = json.dumps({**json.loads(service.raw), "hostnames": ["mail.example.com"]})
    service.save()
    resolve(registries, hosts=[host])
    owner = HostOwner.objects.get(host=host)
    assert (owner.operator, owner.operator_evidence) == (None, "")
    assert owner.recipient.email == "arin-contact@google.com"  # the network's contact again


def test_a_stored_record_nested_too_deep_for_json_does_not_stop_the_run(registries: Registries, tmp_path) -> None:
    # Ingest keeps what orjson reads (up to 1,024 levels); Python's json recurses once per level.
    deep = b'{"ip_str": "74.125.225.229", "port": 8084, "data": "x", "http": ' + b"[" * 990 + b"]" * 990 + b"}"
    cert = {"subject": {"CN": "pacs.erasmusmc.nl"}}
    hospital = json.dumps({"ip_str": "74.125.225.229", "port": 2762, "data": "", "ssl": {"cert": cert}}).encode()
    path = tmp_path / "deep.json"
    path.write_bytes(deep + b"\n" + hospital + b"\n")
    assert harvest_execute(run=harvest_file_start(path=path)).accepted == 2
    resolve(registries)
    owner = HostOwner.objects.get(host__ip="74.125.225.229")
    assert owner.status == HostOwner.Status.RESOLVED
    assert owner.operator.name == "Erasmus MC"  # the other service still tells the operator


@pytest.mark.parametrize("value", ["0", "-2"])
def test_the_command_refuses_a_concurrency_below_one(registries: Registries, value: str) -> None:
    """0 was quietly taken as 1, and -2 too: the number asked for was not the number used."""
    make_host("193.0.6.139")
    with pytest.raises(CommandError, match="--concurrency: must be 1 or more"):
        call_command("resolve_owners", "--concurrency", value)
    assert not HostOwner.objects.exists()


def test_an_address_in_a_cached_customer_network_is_not_given_the_wider_network_seen_in_the_run(
    registries: Registries,
) -> None:
    """A hoster's /16 fetched in a run answered from memory for an address inside its customer's
    /24 that was already cached: the customer's host went to the hoster's abuse desk."""
    from tests.standins.rdap_server import generated_answer

    hoster = ("11.0.0.0", "11.0.255.255")
    customer = ("11.0.4.0", "11.0.4.255")
    for i, (start, end) in enumerate((hoster, customer)):
        registries.standin.add(
            generated_answer(i, ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)),
            registry="ripencc",
            asn=64500,
            country="NL",
        )
    make_host("11.0.4.9")
    resolve(registries)  # the customer's /24 is cached
    assert HostOwner.objects.get(host__ip="11.0.4.9").recipient.email == "abuse1@bench1.example"
    inside = make_host("11.0.4.10")  # in the customer's /24
    make_host("11.0.0.1")  # in the hoster's /16 only: fetched in this run
    resolve(registries, concurrency=1)
    owner = HostOwner.objects.get(host=inside)
    assert owner.network.cidrs == ["11.0.4.0/24"]
    assert owner.recipient.email == "abuse1@bench1.example"
    assert HostOwner.objects.get(host__ip="11.0.0.1").recipient.email == "abuse0@bench0.example"


def test_an_expired_customer_network_is_fetched_again_not_replaced_by_the_hosters(registries: Registries) -> None:
    """When a customer's cached /24 expired before the hoster's /16 around it, the cache answered
    with the /16: the customer's host moved to the hoster's abuse desk instead of being refreshed."""
    from tests.standins.rdap_server import generated_answer

    for i, (start, end) in enumerate((("11.0.0.0", "11.0.255.255"), ("11.0.4.0", "11.0.4.255"))):
        registries.standin.add(
            generated_answer(i, ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)),
            registry="ripencc",
            asn=64500,
            country="NL",
        )
    customer = make_host("11.0.4.9")
    resolve(registries)
    make_host("11.0.0.1")
    resolve(registries)  # the hoster's /16 is cached after the customer's /24
    assert HostOwner.objects.get(host=customer).recipient.email == "abuse1@bench1.example"
    Network.objects.filter(cidrs=["11.0.4.0/24"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert [h.ip for h in hosts_needing_owner()] == ["11.0.4.9"]
    before = registries.ip_requests
    resolve(registries)
    assert registries.ip_requests == before + 1  # the customer's network is fetched again
    owner = HostOwner.objects.get(host=customer)
    assert owner.network.cidrs == ["11.0.4.0/24"] and owner.recipient.email == "abuse1@bench1.example"
    assert owner.network.expires_at > timezone.now()


def test_a_failed_refresh_of_an_expired_network_keeps_the_owner_it_had(registries: Registries) -> None:
    """The registry timing out once when a network was due again emptied a resolved host's owner:
    network and recipient gone, the host in the owner-unknown queue with 'server_error'."""
    host = make_host("62.239.237.1")
    resolve(registries)
    Network.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    registries.standin.scripts["62.239.237.1"] = Script(status=503)
    summary = resolve(registries).as_dict()
    assert summary["failed"] == {"server_error": 1}
    owner = HostOwner.objects.get(host=host)
    assert owner.status == HostOwner.Status.RESOLVED
    assert owner.network.cidrs == ["62.239.237.0/24"] and owner.recipient.email == "zzdnsr@bt.com"
    assert [h.ip for h in hosts_needing_owner()] == ["62.239.237.1"]  # and it is tried again
    del registries.standin.scripts["62.239.237.1"]
    resolve(registries)
    assert network_find_cached(ip="62.239.237.1") is not None


def test_a_network_the_registry_no_longer_has_is_not_kept(registries: Registries) -> None:
    host = make_host("62.239.237.1")
    resolve(registries)
    Network.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    registries.standin.scripts["62.239.237.1"] = Script(status=404)
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert (owner.status, owner.reason, owner.network) == ("unknown", "not_found", None)


def test_the_next_run_chooses_again_when_staff_disabled_inhibited_deleted_or_added_a_contact(
    registries: Registries,
) -> None:
    """A resolved owner was due again only when its network expired: a recipient staff disabled,
    inhibited or deleted stayed the host's recipient for up to RDAP_CACHE_DAYS (a deleted one left
    it 'resolved' with none), and a contact staff added waited as long, though the next
    resolve_owners run was said to apply such changes."""
    host = make_host("62.239.237.1")
    resolve(registries)
    first = HostOwner.objects.get(host=host).recipient
    assert first.email == "zzdnsr@bt.com" and list(hosts_needing_owner()) == []

    def next_run() -> HostOwner:
        assert [h.ip for h in hosts_needing_owner()] == ["62.239.237.1"]
        assert resolve(registries).as_dict()["requests"] == 0
        owner = HostOwner.objects.get(host=host)
        # Chosen: settled until something changes again (an owner with no contact stays due).
        assert list(hosts_needing_owner()) == ([] if owner.recipient else [host])
        return owner

    contact_set_enabled(contact=first, enabled=False)
    second = next_run().recipient
    assert second.email == "steve.a.marshall@bt.com"
    inhibition_create(contact=second, reason="bounces", until=timezone.localdate(), actor="staff")
    third = next_run().recipient
    assert third.email == "lee.bailey-hague@bt.com"
    third.delete()
    owner = next_run()  # the first is disabled, the second inhibited
    assert (owner.status, owner.recipient) == (HostOwner.Status.INHIBITED, None)
    desk = Contact.objects.create(organisation=owner.network.holder, email="desk@bt.example", role="abuse")
    owner = next_run()
    assert owner.status == HostOwner.Status.RESOLVED and owner.recipient == desk


def a_day_passes() -> None:
    """Time moves on: every stored time and day moves one day into the past."""
    day = timedelta(days=1)
    HostOwner.objects.update(updated_at=F("updated_at") - day)
    Contact.objects.update(updated_at=F("updated_at") - day)
    Network.objects.update(fetched_at=F("fetched_at") - day, expires_at=F("expires_at") - day)
    Inhibition.objects.update(until=F("until") - day)
    Inhibition.history.model.objects.update(history_date=F("history_date") - day)


def test_the_next_run_chooses_again_when_an_inhibition_ended_or_was_deleted(registries: Registries) -> None:
    """An inhibited recipient was passed over for the next contact, and that one stayed the host's
    recipient after the inhibition ended or staff deleted it: the host was settled until its
    network expired (up to RDAP_CACHE_DAYS), so the contact the rule prefers waited as long."""
    host = make_host("62.239.237.1")
    resolve(registries)
    first = HostOwner.objects.get(host=host).recipient
    assert first.email == "zzdnsr@bt.com"
    inhibition = inhibition_create(contact=first, reason="holiday", until=timezone.localdate(), actor="staff")
    resolve(registries)
    assert HostOwner.objects.get(host=host).recipient.email == "steve.a.marshall@bt.com"
    assert list(hosts_needing_owner()) == []

    a_day_passes()  # the inhibition has ended
    assert Inhibition.objects.get(pk=inhibition.pk).until < timezone.localdate()
    assert [h.ip for h in hosts_needing_owner()] == ["62.239.237.1"]
    assert resolve(registries).as_dict()["requests"] == 0
    assert HostOwner.objects.get(host=host).recipient == first
    assert list(hosts_needing_owner()) == []

    holder = first.organisation
    inhibition_create(contact=first, reason="holiday", until=timezone.localdate() + timedelta(days=9))
    resolve(registries)
    assert HostOwner.objects.get(host=host).recipient.email == "steve.a.marshall@bt.com"
    Inhibition.objects.get(contact=first, until__gt=timezone.localdate()).delete()  # staff lift it early
    assert [h.ip for h in hosts_needing_owner()] == ["62.239.237.1"]
    resolve(registries)
    assert HostOwner.objects.get(host=host).recipient == first

    inhibition_create(organisation=holder, reason="asked us to wait", until=timezone.localdate() + timedelta(days=9))
    resolve(registries)
    assert HostOwner.objects.get(host=host).status == HostOwner.Status.INHIBITED
    Inhibition.objects.filter(organisation=holder).delete()
    resolve(registries)
    owner = HostOwner.objects.get(host=host)
    assert (owner.status, owner.recipient) == (HostOwner.Status.RESOLVED, first)
    assert list(hosts_needing_owner()) == []


def test_a_run_killed_during_lookups_keeps_the_owners_of_the_addresses_it_resolved(registries: Registries) -> None:
    """Owners were written only once every address had been looked up, so a run stopped before
    its end (Ctrl-C, or the task's timeout while a registry was slow) kept no owner at all, and a
    run that always took longer than the timeout never gave any host an owner."""
    from tests.standins.rdap_server import generated_answer

    start, end = ipaddress.IPv4Address("11.0.0.0"), ipaddress.IPv4Address("11.0.255.255")
    registries.standin.add(generated_answer(0, start, end), registry="ripencc", asn=64500, country="NL")
    hosts = Host.objects.bulk_create(
        Host(ip=str(start + 1 + i), first_seen=SEEN, last_seen=SEEN) for i in range(OWNER_CHUNK + 1)
    )
    Service.objects.bulk_create(
        Service(host=h, port=104, raw="{}", banner_hash="0", first_seen=SEEN, last_seen=SEEN, banner_since=SEEN)
        for h in hosts
    )

    def killed_at_the_last_address(done: int) -> None:
        if done == OWNER_CHUNK + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        owners_resolve(options=registries.options, limiter=registries.limiter, progress=killed_at_the_last_address)
    assert HostOwner.objects.filter(status=HostOwner.Status.RESOLVED).count() == OWNER_CHUNK

    summary = resolve(registries).as_dict()  # resumed: only the host the killed run did not finish
    assert summary["hosts"] == 1 and summary["requests"] == 0
    assert HostOwner.objects.filter(status=HostOwner.Status.RESOLVED, attempts=1).count() == OWNER_CHUNK + 1
    assert list(hosts_needing_owner()) == []


def test_hosts_on_a_network_whose_answer_changed_choose_their_recipient_again(tmp_path) -> None:
    """A network imported again with another holder (a transfer) kept its hosts' recipient at the
    old holder's abuse desk until the network expired, when the new holder already had its
    contacts: nothing the hosts were chosen from had changed as far as the due-check saw."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir(), new_dir.mkdir()

    def answer(start: str, handle: str, email: str) -> str:
        entity = {
            "handle": handle,
            "roles": ["registrant", "abuse"],
            "vcardArray": ["vcard", [["fn", {}, "text", handle], ["email", {}, "text", email]]],
        }
        network = {"objectClassName": "ip network", "type": "ASSIGNED PA", "port43": "whois.ripe.net"}
        return json.dumps({**network, "startAddress": start, "endAddress": start[:-1] + "255", "entities": [entity]})

    (old_dir / "a.json").write_text(answer("81.0.0.0", "ORG-A-RIPE", "abuse@a.example"))
    (old_dir / "b.json").write_text(answer("82.0.0.0", "ORG-B-RIPE", "abuse@b.example"))
    call_command("import_rdap_cache", str(old_dir), "--json")
    host = make_host("81.0.0.9")
    owners_resolve()
    assert HostOwner.objects.get(host=host).recipient.email == "abuse@a.example"
    (new_dir / "a.json").write_text(answer("81.0.0.0", "ORG-B-RIPE", "abuse@b.example"))  # transferred to B
    call_command("import_rdap_cache", str(new_dir), "--json")
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.9"]
    assert owners_resolve().as_dict()["requests"] == 0
    owner = HostOwner.objects.get(host=host)
    assert (owner.network.holder.name, owner.recipient.email) == ("ORG-B-RIPE", "abuse@b.example")


def test_a_network_the_registry_replaced_is_no_fallback_when_a_lookup_fails(registries: Registries) -> None:
    """A customer's /24 returned to its provider was expired when the registry answered an address
    in it with the provider's allocation. A host in it whose own lookup then failed kept the /24 as
    'the expired network', and so the former customer as the recipient of its advisories."""
    from tests.standins.rdap_server import generated_answer

    provider, customer = ("11.0.0.0", "11.0.255.255"), ("11.0.4.0", "11.0.4.255")
    for i, ((start, end), kind) in enumerate(((provider, "ALLOCATED PA"), (customer, "ASSIGNED PA"))):
        registries.standin.add(
            generated_answer(i, ipaddress.IPv4Address(start), ipaddress.IPv4Address(end), network_type=kind),
            registry="ripencc",
            asn=64500,
            country="NL",
        )
    first, second = make_host("11.0.4.9"), make_host("11.0.4.10")
    resolve(registries)
    assert HostOwner.objects.get(host=second).recipient.email == "abuse1@bench1.example"
    registries.standin.remove(*customer)  # the customer gave the /24 back
    Network.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    registries.standin.scripts["11.0.4.10"] = Script(status=503)
    resolve(registries, concurrency=1)
    assert HostOwner.objects.get(host=first).recipient.email == "abuse0@bench0.example"
    owner = HostOwner.objects.get(host=second)
    assert (owner.status, owner.reason, owner.network, owner.recipient) == ("unknown", "server_error", None, None)


def test_a_server_a_redirect_led_to_adds_nothing_to_a_registrys_organisation(registries: Registries) -> None:
    """The registry of an answer was read from the answer itself (port43, links): a server that a
    redirect led to (a compromised one, or any name with a public address) that wrote
    "whois.arin.net" and ARIN's handle GOGL made its own abuse address an ARIN contact of Google
    Inc., imported as "rdap:arin:...", and its network one held by Google."""
    make_host("74.125.225.229")
    resolve(registries)
    google = Organisation.objects.get(source_key="rdap:arin:GOGL")
    answer = {
        "objectClassName": "ip network", "handle": "NET-81-2-3-0-1", "startAddress": "81.2.3.0",
        "endAddress": "81.2.3.255", "ipVersion": "v4", "type": "ASSIGNMENT", "name": "GOOGLE",
        "port43": "whois.arin.net",
        "links": [{"rel": "self", "value": "https://rdap.arin.net/registry/ip/81.2.3.4",
                   "href": "https://rdap.arin.net/registry/ip/81.2.3.0"}],
        "entities": [
            {"objectClassName": "entity", "handle": "GOGL", "roles": ["registrant"],
             "vcardArray": ["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", "Google Inc."],
                                      ["kind", {}, "text", "org"]]]},
            {"objectClassName": "entity", "handle": "ABUSE-HOSTILE", "roles": ["abuse"],
             "vcardArray": ["vcard", [["version", {}, "text", "4.0"], ["email", {}, "text", "abuse@hostile.example"]]]},
        ],
    }  # fmt: skip
    registries.dns.resolver.names["rdap.hostile.example"] = ["130.59.1.1"]
    registries.standin.scripts["81.2.3.4"] = Script(redirect="https://rdap.hostile.example/ip/81.2.3.0")
    registries.standin.scripts["81.2.3.0"] = Script(body=json.dumps(answer).encode())
    host = make_host("81.2.3.4")
    resolve(registries, hosts=[host])
    owner = HostOwner.objects.get(host=host)
    assert owner.recipient.email == "abuse@hostile.example"  # the answer it gave for its own range
    assert owner.network.registry == "rdap.hostile.example"
    assert owner.network.holder != google
    assert owner.recipient.import_source == "rdap:rdap.hostile.example:ABUSE-HOSTILE"
    assert not google.contacts.filter(email="abuse@hostile.example").exists()
    assert not google.networks.filter(pk=owner.network.pk).exists()


def import_hosters_network(tmp_path) -> None:
    """81.0.0.0/24, an assignment whose abuse desk is abuse@hoster.example, into the cache."""
    cache = tmp_path / "rdap"
    cache.mkdir()
    entity = {
        "handle": "ORG-NET-RIPE",
        "roles": ["registrant", "abuse"],
        "vcardArray": ["vcard", [["fn", {}, "text", "Hoster"], ["email", {}, "text", "abuse@hoster.example"]]],
    }
    network = {"objectClassName": "ip network", "type": "ASSIGNED PA", "port43": "whois.ripe.net"}
    (cache / "net.json").write_text(
        json.dumps({**network, "startAddress": "81.0.0.0", "endAddress": "81.0.0.255", "entities": [entity]})
    )
    call_command("import_rdap_cache", str(cache), "--json")


def test_a_host_whose_harvested_data_changed_is_attributed_again_from_the_cache(tmp_path) -> None:
    """A later harvest that named another hospital (Shodan's org, a hostname) or took the hospital's
    name out of a banner left the host with its old operator and recipient until its network
    expired (30 days): a host resolved from a cached network was settled, whatever harvest stored."""
    from tests.factories import banner, line, write_lines

    hospitals(tmp_path)

    def harvest(name: str, day: int, records: list[dict]) -> None:
        stamp = f"2026-01-0{day}T00:00:00.000000"
        path = write_lines(tmp_path / name, [line({**r, "timestamp": stamp}) for r in records])
        assert harvest_execute(run=harvest_file_start(path=path)).rejected_total == 0

    dicom = {"port": 104, "data": "DICOM"}
    http = {"port": 443, "_shodan": {"module": "https"}}

    def tls(name: str) -> dict:  # a DICOM TLS service whose banner stays the same
        cert = {"subject": {"CN": name}, "fingerprint": {"sha256": name}}
        return {"port": 2762, "data": "", "ssl": {"cert": cert}}

    first = [
        banner("81.0.0.1", **dicom, org="UMC Utrecht"),  # Shodan's org names the hospital
        banner("81.0.0.2", **dicom, hostnames=["pacs.umcutrecht.nl"]),
        banner("81.0.0.3", **http, data="HTTP/1.1 200 OK\r\nETag: 1\r\n", http={"title": "UMC Utrecht PACS"}),
        banner("81.0.0.4", **dicom, org="UMC Utrecht"),  # seen again, unchanged
        banner("81.0.0.5", **tls("pacs.umcutrecht.nl")),
    ]
    harvest("first.json", 2, first)
    assert owners_resolve().as_dict()["requests"] == 0
    assert {o.host.ip: o.recipient.email for o in HostOwner.objects.select_related("host", "recipient")} == {
        "81.0.0.1": "cert@umcutrecht.nl",
        "81.0.0.2": "cert@umcutrecht.nl",
        "81.0.0.3": "cert@umcutrecht.nl",
        "81.0.0.4": "cert@umcutrecht.nl",
        "81.0.0.5": "cert@umcutrecht.nl",
    }
    unchanged = HostOwner.objects.get(host__ip="81.0.0.4")
    second = [
        banner("81.0.0.1", **dicom, org="Erasmus MC"),
        banner("81.0.0.2", **dicom, hostnames=["pacs.erasmusmc.nl"]),
        banner("81.0.0.3", **http, data="HTTP/1.1 200 OK\r\nETag: 2\r\n", http={"title": "Login"}),
        banner("81.0.0.4", **dicom, org="UMC Utrecht"),
        banner("81.0.0.5", **tls("pacs.erasmusmc.nl")),  # another hospital's certificate
    ]
    harvest("second.json", 3, second)
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.1", "81.0.0.2", "81.0.0.3", "81.0.0.5"]
    assert owners_resolve().as_dict()["requests"] == 0  # chosen again from the cache
    owners = {o.host.ip: o for o in HostOwner.objects.select_related("host", "operator", "recipient")}
    assert (owners["81.0.0.1"].operator.name, owners["81.0.0.1"].recipient.email) == ("Erasmus MC", "cert@erasmusmc.nl")
    assert (owners["81.0.0.2"].operator.name, owners["81.0.0.2"].recipient.email) == ("Erasmus MC", "cert@erasmusmc.nl")
    assert (owners["81.0.0.3"].operator, owners["81.0.0.3"].recipient.email) == (None, "abuse@hoster.example")
    assert (owners["81.0.0.5"].operator.name, owners["81.0.0.5"].recipient.email) == ("Erasmus MC", "cert@erasmusmc.nl")
    assert (owners["81.0.0.4"].attempts, owners["81.0.0.4"].updated_at) == (1, unchanged.updated_at)
    harvest("second-again.json", 3, second)  # the same banners read again change nothing
    assert list(hosts_needing_owner()) == []


def hospitals(tmp_path) -> None:
    """The hosters' network cached (no lookup), and two hospitals of the registry, one contact each."""
    import_hosters_network(tmp_path)
    for name, email in (("UMC Utrecht", "cert@umcutrecht.nl"), ("Erasmus MC", "cert@erasmusmc.nl")):
        key = f"registry:nl_healthcare:{name}"  # as resolution finds the hospital of the registry
        hospital = Organisation.objects.create(name=name, source_key=key, source="registry")
        Contact.objects.create(organisation=hospital, email=email, role="security")


def harvest_org(tmp_path, day: int, org: str) -> None:
    from tests.factories import banner, line, write_lines

    record = banner("81.0.0.9", 104, data="DICOM", org=org, timestamp=f"2026-01-0{day}T00:00:00")
    path = write_lines(tmp_path / f"{day}-{org}.json", [line(record)])
    assert harvest_execute(run=harvest_file_start(path=path)).rejected_total == 0


def test_a_run_attributes_a_host_from_what_harvest_stored_when_it_writes_the_owner(tmp_path) -> None:
    """A run reads its hosts when it starts and may spend minutes on lookups before it writes their
    owners. A harvest that named another hospital meanwhile was passed over: the owner was chosen
    from the host as it was when the run started, and was written after the host changed, so the
    change looked seen and the host kept the old hospital until its network expired."""
    hospitals(tmp_path)
    harvest_org(tmp_path, 2, "UMC Utrecht")
    started = list(hosts_needing_owner())  # as a run reads them when it starts
    harvest_org(tmp_path, 3, "Erasmus MC")  # while its lookups go on
    assert owners_resolve(hosts=started).as_dict()["requests"] == 0
    assert HostOwner.objects.get().operator.name == "Erasmus MC"


def test_a_change_committed_after_a_run_read_the_host_is_attributed_again(tmp_path) -> None:
    """Ingest dates a host's change when it prepares the batch, which commits later. A run that read
    the host in between attributed it from the old data and dated its owner after the change, so
    the change looked seen (changed_at <= updated_at) and the host kept the old hospital."""
    hospitals(tmp_path)
    harvest_org(tmp_path, 2, "UMC Utrecht")
    prepared = timezone.now()  # a batch naming another hospital is prepared, not yet committed
    owners_resolve()  # reads the host as it was committed
    assert HostOwner.objects.get().updated_at > prepared
    Host.objects.filter(ip="81.0.0.9").update(org="Erasmus MC", changed_at=prepared)  # the batch commits
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.9"]
    owners_resolve()
    owner = HostOwner.objects.select_related("operator", "recipient").get()
    assert (owner.operator.name, owner.recipient.email) == ("Erasmus MC", "cert@erasmusmc.nl")
    assert list(hosts_needing_owner()) == []  # attributed from what is stored: settled


@pytest.mark.django_db(transaction=True)  # the ingest batch and the run on connections of their own
def test_an_ingest_batch_that_commits_after_a_run_read_the_host_is_attributed_again(tmp_path) -> None:
    """The race itself on PostgreSQL, where a writer thread commits a batch after it was prepared:
    the batch is held before its writes while a run attributes the host."""
    if connection.vendor != "postgresql":
        # No writer thread on SQLite: a batch is prepared and written in one transaction on the
        # caller's connection, so a run reads it whole or not at all.
        hospitals(tmp_path)
        harvest_org(tmp_path, 2, "UMC Utrecht")
        owners_resolve()
        harvest_org(tmp_path, 3, "Erasmus MC")
        assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.9"]
        owners_resolve()
        assert HostOwner.objects.select_related("operator").get().operator.name == "Erasmus MC"
        return
    import threading
    import time

    from django.db import connections

    from harvest.locking import PG_BATCH_KEY

    hospitals(tmp_path)
    harvest_org(tmp_path, 2, "UMC Utrecht")
    in_batch = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s "
        "AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    blocker = connection.get_new_connection(connection.get_connection_params())
    failures: list[BaseException] = []

    def harvest() -> None:
        try:
            harvest_org(tmp_path, 3, "Erasmus MC")
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failures.append(exc)
        finally:
            connections.close_all()

    try:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE harvest_host IN SHARE MODE")  # the batch's writes wait here
        thread = threading.Thread(target=harvest)
        thread.start()
        deadline = time.monotonic() + 60
        # The writer's transaction holds the batch key: the batch was prepared (changed_at dated).
        while blocker.execute(in_batch, list(PG_BATCH_KEY)).fetchone()[0] == 0:
            assert time.monotonic() < deadline and thread.is_alive(), f"no batch in flight: {failures}"
            time.sleep(0.02)
        owners_resolve()  # reads the host as committed: UMC Utrecht
        assert HostOwner.objects.select_related("operator").get().operator.name == "UMC Utrecht"
        blocker.execute("ROLLBACK")  # the batch writes and commits
        thread.join(60)
    finally:
        blocker.close()
    assert not thread.is_alive() and failures == []
    assert Host.objects.get().org == "Erasmus MC"
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.9"]
    owners_resolve()
    assert HostOwner.objects.select_related("operator").get().operator.name == "Erasmus MC"
    assert list(hosts_needing_owner()) == []


def test_choosing_the_recipient_again_does_not_hide_a_change_harvest_stored_since(tmp_path) -> None:
    """Staff choosing a host's recipient again (no lookup, no attribution) dated the owner after a
    change harvest had stored, so the next run passed the host over and it kept the old hospital."""
    hospitals(tmp_path)
    harvest_org(tmp_path, 2, "UMC Utrecht")
    owners_resolve()
    harvest_org(tmp_path, 3, "Erasmus MC")
    owner_recompute(owner=HostOwner.objects.get())
    assert HostOwner.objects.select_related("operator").get().operator.name == "UMC Utrecht"
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.9"]
    owners_resolve()
    assert HostOwner.objects.select_related("operator").get().operator.name == "Erasmus MC"
    owner_recompute(owner=HostOwner.objects.get())
    assert list(hosts_needing_owner()) == []  # nothing changed since the attribution: no churn


def test_the_upgrade_keeps_settled_what_the_ordering_rule_held_settled_and_nothing_else(tmp_path) -> None:
    """0008 gives owners the changed_at they were attributed from where the old rule (the host's
    changed_at no later than the owner's updated_at) held them settled: no host is taken up again
    for the upgrade alone, and none the old rule took up is dropped."""
    import importlib

    from django.apps import apps as django_apps

    hospitals(tmp_path)
    for ip in ("81.0.0.1", "81.0.0.2", "81.0.0.3", "81.0.0.4"):
        make_host(ip)
    owners_resolve()
    minute = timedelta(minutes=1)
    changed = {"81.0.0.1": -minute, "81.0.0.2": minute, "81.0.0.3": None, "81.0.0.4": timedelta(0)}
    for owner in HostOwner.objects.select_related("host"):
        offset = changed[owner.host.ip]
        Host.objects.filter(pk=owner.host_id).update(changed_at=None if offset is None else owner.updated_at + offset)
    HostOwner.objects.update(host_changed_at=None)  # as the field is added
    migration = importlib.import_module("disclosure.migrations.0008_hostowner_host_changed_at")
    migration.snapshot_settled_hosts(django_apps, None)
    snapshots = {o.host.ip: (o.host_changed_at, o.host.changed_at) for o in HostOwner.objects.select_related("host")}
    assert snapshots["81.0.0.1"][0] == snapshots["81.0.0.1"][1] is not None  # changed before it was attributed
    assert snapshots["81.0.0.2"][0] is None  # changed after: still to be attributed
    assert snapshots["81.0.0.3"] == (None, None)  # never changed: settled as it is
    assert snapshots["81.0.0.4"][0] == snapshots["81.0.0.4"][1] is not None  # at the same instant: settled
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.2"]


@pytest.mark.parametrize("micro", [0, 123456], ids=["whole-second", "microseconds"])
def test_a_host_unchanged_since_its_attribution_is_not_taken_up_again(tmp_path, micro: int) -> None:
    """Settled by equality of stored times: SQLite keeps them as text, a whole second without its
    fraction; the copy the owner keeps must read the same, or the host would be attributed every run."""
    hospitals(tmp_path)
    host = make_host("81.0.0.1", org="UMC Utrecht")
    Host.objects.filter(pk=host.pk).update(changed_at=SEEN.replace(microsecond=micro))
    assert [h.ip for h in hosts_needing_owner()] == ["81.0.0.1"]
    owners_resolve()
    assert list(hosts_needing_owner()) == []
    assert HostOwner.objects.get().host_changed_at == SEEN.replace(microsecond=micro)
