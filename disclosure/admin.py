"""Staff views of owners: organisations, contacts, inhibitions, networks, host owners, and the
owner-unknown queue. Changes are kept in history (django-simple-history).

Names, e-mail addresses and raw answers from RDAP are written by strangers: they reach the page
only through Django's escaping (`format_html`, plain strings), never marked safe. Actions call
services and report what happened.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from disclosure.models import Contact, HostOwner, Inhibition, Network, Organisation, OwnerUnknown
from disclosure.services import (
    OwnerError,
    contact_set_enabled,
    owner_override_set,
    owner_recompute,
    owners_resolve,
)

RAW_DISPLAY_LIMIT = 64 * 1024
PRE_STYLE = "white-space: pre-wrap; overflow-wrap: anywhere; max-height: 40em; overflow: auto; margin: 0"


def _pre(text: str) -> str:
    if len(text) > RAW_DISPLAY_LIMIT:
        text = text[:RAW_DISPLAY_LIMIT] + f"\n… ({len(text) - RAW_DISPLAY_LIMIT} more characters)"
    return format_html('<pre style="{}">{}</pre>', PRE_STYLE, text)


class ContactInline(admin.TabularInline):
    model = Contact
    extra = 0
    fields = ["email", "role", "source", "enabled", "import_source", "imported_at", "pgp_fingerprint", "note"]
    readonly_fields = ["source", "import_source", "imported_at"]


@admin.register(Organisation)
class OrganisationAdmin(SimpleHistoryAdmin):
    list_display = ["name", "kind", "sector", "country", "sector_cert_member", "source", "contact_count"]
    list_filter = ["kind", "sector_cert_member", "source", "country"]
    search_fields = ["name", "source_key", "contacts__email"]
    readonly_fields = ["source", "source_key", "created_at", "updated_at"]
    inlines = [ContactInline]

    @admin.display(description="contacts")
    def contact_count(self, obj: Organisation) -> int:
        return obj.contacts.count()

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("contacts")


@admin.register(Contact)
class ContactAdmin(SimpleHistoryAdmin):
    list_display = ["email", "role", "organisation", "source", "enabled", "imported_at"]
    list_filter = ["role", "source", "enabled"]
    list_select_related = ["organisation"]
    search_fields = ["email", "organisation__name", "import_source"]
    raw_id_fields = ["organisation"]
    readonly_fields = ["source", "import_source", "imported_at", "created_at", "updated_at"]
    actions = ["disable", "enable"]

    @admin.action(description="Disable the selected contacts (never mailed)")
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        for contact in queryset:
            contact_set_enabled(contact=contact, enabled=False)
        self.message_user(request, f"{queryset.count()} contacts disabled.")

    @admin.action(description="Enable the selected contacts")
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        for contact in queryset:
            contact_set_enabled(contact=contact, enabled=True)
        self.message_user(request, f"{queryset.count()} contacts enabled.")


@admin.register(Inhibition)
class InhibitionAdmin(SimpleHistoryAdmin):
    list_display = ["__str__", "until", "reason", "created_by", "created_at"]
    list_select_related = ["organisation", "contact", "contact__organisation"]
    raw_id_fields = ["organisation", "contact"]
    readonly_fields = ["created_by", "created_at"]

    def save_model(self, request: HttpRequest, obj: Inhibition, form: object, change: bool) -> None:
        if not change:
            obj.created_by = request.user.get_username()[:150]
        super().save_model(request, obj, form, change)


@admin.register(Network)
class NetworkAdmin(SimpleHistoryAdmin):
    list_display = ["cidr_list", "handle", "name", "registry", "asn", "holder", "source", "expires_at"]
    list_filter = ["registry", "source"]
    list_select_related = ["holder"]
    search_fields = ["handle", "name", "start_address", "asn_description", "holder__name"]
    raw_id_fields = ["holder"]
    exclude = ["raw", "contact_candidates"]
    readonly_fields = [
        "start_key", "end_key", "start_address", "end_address", "cidrs", "handle", "name", "country",
        "registry", "asn", "asn_description", "source", "fetched_at", "candidates", "raw_answer",
    ]  # fmt: skip

    @admin.display(description="CIDR")
    def cidr_list(self, obj: Network) -> str:
        return obj.cidr

    @admin.display(description="contacts in the answer, best first")
    def candidates(self, obj: Network) -> str:
        lines = "\n".join(f"{c.get('email')} ({c.get('role')}): {c.get('why')}" for c in obj.contact_candidates)
        return _pre(lines or "none")

    @admin.display(description="RDAP answer")
    def raw_answer(self, obj: Network) -> str:
        return _pre(json.dumps(obj.raw, indent=2, ensure_ascii=False))


class HostOwnerAdminBase(admin.ModelAdmin):
    list_display = ["host", "status", "reason", "network", "operator", "recipient_email", "attempts", "updated_at"]
    list_filter = ["status", "reason"]
    list_select_related = ["host", "network", "operator", "recipient"]
    search_fields = ["host__ip", "operator__name", "recipient__email", "reason"]
    raw_id_fields = ["override_recipient"]
    fields = [
        "host", "status", "reason", "detail_text", "network", "operator", "operator_evidence", "recipient",
        "recipient_reason", "override_recipient", "override_note", "attempts", "resolved_at",
    ]  # fmt: skip
    readonly_fields = [
        "host", "status", "reason", "detail_text", "network", "operator", "operator_evidence", "recipient",
        "recipient_reason", "attempts", "resolved_at",
    ]  # fmt: skip
    actions = ["resolve_again", "choose_recipient_again"]

    @admin.display(description="recipient")
    def recipient_email(self, obj: HostOwner) -> str:
        return obj.recipient.email if obj.recipient else "—"

    @admin.display(description="detail")
    def detail_text(self, obj: HostOwner) -> str:
        return format_html("{}", obj.detail)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from resolution; staff correct them through the override

    def save_model(self, request: HttpRequest, obj: HostOwner, form: object, change: bool) -> None:
        owner_override_set(owner=obj, contact=obj.override_recipient, note=obj.override_note)

    @admin.action(description="Look the owners up again (RDAP)")
    def resolve_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        hosts = [owner.host for owner in queryset.select_related("host")]
        try:
            summary = owners_resolve(hosts=hosts).as_dict()
        except OwnerError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(
            request,
            f"{summary['hosts']} hosts: {summary['resolved']} networks found, {summary['requests']} requests, "
            f"failed: {summary['failed'] or 'none'}.",
        )

    @admin.action(description="Choose the recipient again (no lookup)")
    def choose_recipient_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        for owner in queryset.select_related("network", "operator", "override_recipient"):
            owner_recompute(owner=owner)
        self.message_user(request, f"{queryset.count()} recipients chosen again.")


@admin.register(HostOwner)
class HostOwnerAdmin(HostOwnerAdminBase, SimpleHistoryAdmin):
    pass


@admin.register(OwnerUnknown)
class OwnerUnknownAdmin(HostOwnerAdminBase):
    # A proxy has no history table of its own: the change history is on the host owner's page.
    list_display = ["host", "reason", "detail", "network", "attempts", "updated_at"]
    list_filter = ["reason"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(status=HostOwner.Status.UNKNOWN)
