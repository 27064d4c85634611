"""Staff views of owners: organisations, contacts, inhibitions, networks, host owners, and the
owner-unknown queue. Changes are kept in history (django-simple-history).

Names, handles, e-mail addresses, details and raw answers from RDAP (and evidence from hostnames,
certificates and titles) are written by strangers: they reach the page only through Django's
escaping (`format_html`, plain strings), never marked safe, and through `visible_text`, which shows
control, bidi and zero-width characters as escapes. A field staff may edit is shown as it is in its
input; wherever staff cannot edit it (view permission only, or a value that came from RDAP) it is
replaced by its visible form (see `_VisibleAdmin.locked_fields`). Actions call services, report
what happened, and need the change permission of what they act on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import widgets
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from simple_history.admin import SimpleHistoryAdmin
from simple_history.models import ModelChange, ModelChangeValue
from simple_history.template_utils import HistoricalRecordContextHelper

from disclosure.models import Contact, HostOwner, Inhibition, Network, NetworkQuerySet, Organisation, OwnerUnknown
from disclosure.owners.contacts import address_problem, unusable_addresses
from disclosure.rdap_client import iter_entities
from disclosure.services import (
    OwnerError,
    contact_set_enabled,
    owner_override_set,
    owners_recompute,
    owners_resolve,
)
from harvest.admin import HOST_SECTIONS, HostSection
from harvest.models import Host
from medexpo.lib.admin_search import AddressSearchMixin, search_address
from medexpo.lib.display import text_block, text_column, visible_text

RAW_DISPLAY_LIMIT = 64 * 1024  # characters of the indented RDAP answer shown on a network page


def json_text(value: Any, indent: int = 2) -> str:
    """`json.dumps(value, indent=2, ensure_ascii=False)` without recursion.

    An imported answer can nest deeper than the json module's indenting encoder can recurse
    (a RecursionError, a server error on the page); this walks it with a stack of its own.
    """
    out: list[str] = []
    stack: list[list[Any]] = []  # [items left, closing bracket, depth, first item?]

    def start(item: Any, depth: int) -> None:
        if isinstance(item, dict) and item:
            out.append("{")
            stack.append([iter(item.items()), "}", depth + 1, True])
        elif isinstance(item, list) and item:
            out.append("[")
            stack.append([iter(enumerate(item)), "]", depth + 1, True])
        else:  # a scalar, {} or []
            out.append(_json_scalar(item))

    start(value, 0)
    while stack:
        frame = stack[-1]
        items, closing, depth, first = frame
        entry = next(items, None)
        if entry is None:
            stack.pop()
            out.append("\n" + " " * (indent * (depth - 1)) + closing)
            continue
        key, item = entry
        out.append(("" if first else ",") + "\n" + " " * (indent * depth))
        frame[3] = False
        if closing == "}":
            out.append(_json_scalar(str(key)) + ": ")
        start(item, depth)
    return "".join(out)


def _json_scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _link(viewname: str, obj: Any) -> SafeString | str:
    """A link to a related row (its __str__ shows stranger text visibly); "-" when there is none."""
    if obj is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse(viewname, args=[obj.pk]), str(obj))


def _name_column(relation: str, description: str) -> Callable[[admin.ModelAdmin, Any], str]:
    """A list column naming a related row, sorted by its name."""

    @admin.display(description=description, ordering=f"{relation}__name")
    def column(self: admin.ModelAdmin, obj: Any) -> str:
        related = getattr(obj, relation)
        return str(related) if related is not None else "-"

    column.__name__ = f"{relation}_name"
    return column


class VisibleEmailInput(widgets.AdminEmailInputWidget):
    """An address in an input box with its controls made visible: an input shows a bidi override
    or a zero-width space as it is. Saved back unchanged, such an address is refused (see
    ContactForm), so staff see and fix what would not have been mailed anyway.

    A text input, not type=email: browsers rewrite an email input's domain through IDNA before
    sending it (`straße` becomes `strasse`, a zero-width space is dropped), so another address than
    the one typed would be saved without the form ever seeing, or refusing, what was typed."""

    input_type = "text"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__({"inputmode": "email", "autocomplete": "email", **(attrs or {})})

    def format_value(self, value: Any) -> str | None:
        shown = super().format_value(value)
        return None if shown is None else visible_text(shown)


class ContactForm(forms.ModelForm):
    """Staff type addresses that can be mailed; an address from RDAP stays as the registry sent it
    (a wrong one is disabled instead, so a re-import does not bring it back)."""

    class Meta:
        model = Contact
        fields = "__all__"
        widgets = {"email": VisibleEmailInput}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "email" in self.fields and self.instance.pk and self.instance.source == Contact.Source.RDAP:
            self.fields["email"].disabled = True

    def _get_validation_exclusions(self) -> set[str]:
        # The source is no field of the form (staff do not choose it) but is part of the unique
        # constraint, which Django then skips: a contact entered twice reached the database and
        # was a server error. The model (and the formset, across its rows) check it with it.
        return super()._get_validation_exclusions() - {"source"}  # type: ignore[misc]

    def clean_email(self) -> str:
        email = self.cleaned_data["email"]
        if not self.fields["email"].disabled:
            problem = address_problem(email)
            if problem:
                raise ValidationError(f"This address cannot be mailed: {problem}.")
        return email


def _holds_nul(value: Any) -> bool:
    """Whether a parsed JSON value has a NUL in any string or key (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class OrganisationForm(forms.ModelForm):
    """Text fields refuse NUL (Django's own check); the JSON of `domains` needs the same: JSON
    writes it as \\u0000, which PostgreSQL's jsonb cannot hold (the save was a server error)."""

    class Meta:
        model = Organisation
        fields = "__all__"

    def clean_domains(self) -> Any:
        domains = self.cleaned_data["domains"]
        if _holds_nul(domains):
            raise ValidationError("Null characters are not allowed.", code="null_characters_not_allowed")
        return domains


class _VisibleHistoryHelper(HistoricalRecordContextHelper):
    """The history page's list of changes shows old and new values: stranger text among them."""

    def prepare_delta_change_value(self, change: ModelChange, value: ModelChangeValue) -> Any:
        value = super().prepare_delta_change_value(change, value)
        if isinstance(value, str):
            return visible_text(value)
        if isinstance(value, list):
            return [visible_text(v) if isinstance(v, str) else v for v in value]
        return value


class _VisibleAdmin:
    """Show stranger text visibly wherever staff do not edit it.

    `locked_fields` maps an editable field to the read-only display that replaces it on a page
    where staff cannot edit it: without the change permission, or for the fields that
    `source_locked` names for this row (they came from RDAP and stay as the registry sent them).
    """

    locked_fields: ClassVar[dict[str, str]] = {}

    def source_locked(self, obj: Any) -> set[str]:
        return set()

    def _locked(self, request: HttpRequest, obj: Any) -> set[str]:
        if obj is None:
            return set()
        if not self.has_change_permission(request, obj):  # type: ignore[attr-defined]
            return set(self.locked_fields)
        return self.source_locked(obj) & set(self.locked_fields)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list:
        fields = super().get_fields(request, obj)  # type: ignore[misc]
        locked = self._locked(request, obj)
        return [self.locked_fields[f] if f in locked else f for f in fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list:
        readonly = list(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        return readonly + [self.locked_fields[f] for f in self._locked(request, obj)]

    def history_form_view(
        self, request: HttpRequest, object_id: str, version_id: str, extra_context: dict | None = None
    ) -> Any:
        # simple_history asks only for the view permission, also when the revert form is posted,
        # and builds that form editable for viewers too: a viewer could write an old version back.
        if request.method == "POST" and not self.has_change_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)  # type: ignore[misc]

    def get_historical_record_context_helper(self, request: HttpRequest, historical_record: Any) -> Any:
        return _VisibleHistoryHelper(self.model, historical_record)  # type: ignore[attr-defined]

    # A history page names each version by its object's __str__ and each changed foreign key by the
    # related row's, and both can follow a foreign key further (a host owner's host, a contact's
    # organisation): loaded with the versions, not once per version.
    history_select_related: ClassVar[tuple[str, ...]] = ()

    def get_history_queryset(self, request: HttpRequest, history_manager: Any, pk_name: str, object_id: Any) -> Any:
        queryset = super().get_history_queryset(request, history_manager, pk_name, object_id)  # type: ignore[misc]
        # Not select_related() with no names: that would drop the library's list of related rows.
        return queryset.select_related(*self.history_select_related) if self.history_select_related else queryset

    def set_history_delta_changes(self, request: HttpRequest, historical_records: Any, **kwargs: Any) -> None:
        relations = {f.name for f in self.model._meta.concrete_fields if f.is_relation}  # type: ignore[attr-defined]
        for record in historical_records:
            # history_object builds a new object on every access, without the rows the record loaded.
            obj = record.history_object
            obj._state.fields_cache.update({k: v for k, v in record._state.fields_cache.items() if k in relations})
            record.history_object = obj
        super().set_history_delta_changes(request, historical_records, **kwargs)  # type: ignore[misc]


class VisibleValuesFilter(admin.AllValuesFieldListFilter):
    """A field's values as filter links, shown with their controls made visible."""

    def choices(self, changelist: Any) -> Any:
        for choice in super().choices(changelist):
            yield {**choice, "display": visible_text(str(choice["display"]))}


class ContactInline(_VisibleAdmin, admin.StackedInline):
    # Stacked: eight columns of addresses, fingerprints and notes made a table twice as wide as
    # a laptop screen, with the right-hand fields out of sight.
    model = Contact
    form = ContactForm
    extra = 0
    fields = ["email", "role", "source", "enabled", "import_source_text", "imported_at", "pgp_fingerprint", "note"]
    readonly_fields = ["source", "import_source_text", "imported_at"]
    locked_fields = {"email": "email_text"}
    email_text = text_column("email", "email")
    import_source_text = text_column("import_source", "import source")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Each row is titled with the contact, whose __str__ names its organisation.
        return super().get_queryset(request).select_related("organisation")


@admin.register(Organisation)
class OrganisationAdmin(_VisibleAdmin, SimpleHistoryAdmin):
    form = OrganisationForm
    list_display = ["name_text", "kind", "sector", "country_text", "sector_cert_member", "source", "contact_count"]
    list_filter = ["kind", "sector_cert_member", "source", ("country", VisibleValuesFilter)]
    search_fields = ["name", "source_key", "contacts__email"]
    fields = [
        "name", "kind", "sector", "country", "domains", "sector_cert_member", "note", "source", "source_key_text",
        "created_at", "updated_at",
    ]  # fmt: skip
    readonly_fields = ["source", "source_key_text", "created_at", "updated_at"]
    locked_fields = {"name": "name_text", "country": "country_text"}
    inlines = [ContactInline]
    name_text = text_column("name")
    country_text = text_column("country")
    source_key_text = text_column("source_key", "source key")

    def source_locked(self, obj: Organisation) -> set[str]:
        # A registrant's name and country are what the registry said; staff-made rows stay editable.
        return set() if obj.source == Organisation.Source.STAFF else {"name", "country"}

    @admin.display(description="contacts")
    def contact_count(self, obj: Organisation) -> int:
        return obj.contacts.count()

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("contacts")


@admin.register(Contact)
class ContactAdmin(_VisibleAdmin, SimpleHistoryAdmin):
    form = ContactForm
    list_display = ["email_text", "role", "organisation_name", "source", "enabled", "usable", "imported_at"]
    list_filter = ["role", "source", "enabled"]
    list_select_related = ["organisation"]
    search_fields = ["email", "organisation__name", "import_source"]
    raw_id_fields = ["organisation"]
    fields = [
        "organisation", "email", "role", "source", "enabled", "usable", "import_source_text", "imported_at",
        "pgp_fingerprint", "note", "created_at", "updated_at",
    ]  # fmt: skip
    readonly_fields = ["source", "usable", "import_source_text", "imported_at", "created_at", "updated_at"]
    locked_fields = {"email": "email_text", "organisation": "organisation_link"}
    actions = ["disable", "enable"]
    email_text = text_column("email", "email")
    import_source_text = text_column("import_source", "import source")
    organisation_name = _name_column("organisation", "organisation")

    def source_locked(self, obj: Contact) -> set[str]:
        return {"email"} if obj.source == Contact.Source.RDAP else set()

    @admin.display(description="can be mailed")
    def usable(self, obj: Contact) -> str:
        problem = address_problem(obj.email)
        return f"no: {problem}" if problem else "yes"

    @admin.display(description="organisation")
    def organisation_link(self, obj: Contact) -> SafeString | str:
        return _link("admin:disclosure_organisation_change", obj.organisation)

    @admin.action(description="Disable the selected contacts (never mailed)", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, enabled=False, done="disabled")

    @admin.action(description="Enable the selected contacts", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, enabled=True, done="enabled")

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet, *, enabled: bool, done: str) -> None:
        changed = already = 0
        for contact in queryset:
            if contact.enabled == enabled:
                already += 1  # counted apart, and no history entry that changes nothing
                continue
            contact_set_enabled(contact=contact, enabled=enabled)
            changed += 1
        self.message_user(request, f"{changed} contacts {done}" + (f", {already} already {done}." if already else "."))


@admin.register(Inhibition)
class InhibitionAdmin(_VisibleAdmin, SimpleHistoryAdmin):
    list_display = ["target", "until", "reason", "created_by", "created_at"]
    list_select_related = ["organisation", "contact", "contact__organisation"]
    raw_id_fields = ["organisation", "contact"]
    fields = ["organisation", "contact", "reason", "until", "created_by", "created_at"]
    readonly_fields = ["created_by", "created_at"]
    locked_fields = {"organisation": "organisation_link", "contact": "contact_link"}
    history_select_related = ("contact__organisation",)

    @admin.display(description="inhibition")
    def target(self, obj: Inhibition) -> str:
        return str(obj)

    @admin.display(description="organisation")
    def organisation_link(self, obj: Inhibition) -> SafeString | str:
        return _link("admin:disclosure_organisation_change", obj.organisation)

    @admin.display(description="contact")
    def contact_link(self, obj: Inhibition) -> SafeString | str:
        return _link("admin:disclosure_contact_change", obj.contact)

    def save_model(self, request: HttpRequest, obj: Inhibition, form: object, change: bool) -> None:
        if not change:
            obj.created_by = request.user.get_username()[:150]
        super().save_model(request, obj, form, change)


@admin.register(Network)
class NetworkAdmin(_VisibleAdmin, SimpleHistoryAdmin):
    list_display = ["cidr_list", "handle_text", "name_text", "registry", "asn", "holder_name", "source", "expires_at"]
    list_filter = ["registry", "source"]
    list_select_related = ["holder"]
    search_fields = ["handle", "name", "start_address", "asn_description", "holder__name"]
    search_help_text = "Handle, name, holder or ASN description; a whole address finds the networks that hold it."
    raw_id_fields = ["holder"]
    fields = [
        "start_key", "end_key", "start_address", "end_address", "cidrs", "handle_text", "name_text", "country_text",
        "registry", "asn", "asn_description_text", "holder", "source", "fetched_at", "expires_at", "candidates",
        "raw_answer",
    ]  # fmt: skip
    readonly_fields = [
        "start_key", "end_key", "start_address", "end_address", "cidrs", "handle_text", "name_text", "country_text",
        "registry", "asn", "asn_description_text", "source", "fetched_at", "candidates", "raw_answer",
    ]  # fmt: skip
    locked_fields = {"holder": "holder_link"}
    handle_text = text_column("handle")
    name_text = text_column("name")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Network], search_term: str
    ) -> tuple[QuerySet[Network], bool]:
        address = search_address(search_term)
        if address is not None:
            return cast(NetworkQuerySet, queryset).holding(address), False
        return super().get_search_results(request, queryset, search_term)

    country_text = text_column("country")
    asn_description_text = text_column("asn_description", "ASN description")
    holder_name = _name_column("holder", "holder")

    @admin.display(description="CIDR")
    def cidr_list(self, obj: Network) -> str:
        return obj.cidr

    @admin.display(description="holder")
    def holder_link(self, obj: Network) -> SafeString | str:
        return _link("admin:disclosure_organisation_change", obj.holder)

    @admin.display(description="contacts in the answer, best first")
    def candidates(self, obj: Network) -> SafeString:
        lines = [f"{c.get('email')} ({c.get('role')}): {c.get('why')}" for c in obj.contact_candidates]
        raw_entities = obj.raw.get("entities") if isinstance(obj.raw, dict) else None
        lines += [f"not used: {a['email']} (RDAP entity {a['handle']}): {a['why']}" for a in
                  unusable_addresses(iter_entities(raw_entities))]  # fmt: skip
        return text_block("\n".join(lines) or "none", limit=RAW_DISPLAY_LIMIT)

    @admin.display(description="RDAP answer")
    def raw_answer(self, obj: Network) -> SafeString:
        return text_block(json_text(obj.raw), limit=RAW_DISPLAY_LIMIT)


class HostOwnerAdminBase(AddressSearchMixin, _VisibleAdmin, admin.ModelAdmin):
    list_display = ["host", "status", "reason", "network", "operator_name", "recipient_email", "attempts", "updated_at"]
    list_filter = ["status", "reason"]
    list_select_related = ["host", "network", "operator", "recipient"]
    search_fields = ["host__ip", "operator__name", "recipient__email", "reason"]
    address_lookup = "host__ip"
    raw_id_fields = ["override_recipient"]
    fields = [
        "host", "status", "reason", "detail_text", "network", "operator_link", "operator_evidence_text",
        "recipient_link", "recipient_reason_text", "override_recipient", "override_note", "attempts", "resolved_at",
    ]  # fmt: skip
    readonly_fields = [
        "host", "status", "reason", "detail_text", "network", "operator_link", "operator_evidence_text",
        "recipient_link", "recipient_reason_text", "attempts", "resolved_at",
    ]  # fmt: skip
    locked_fields = {"override_recipient": "override_recipient_link"}
    history_select_related = ("recipient__organisation", "override_recipient__organisation")
    actions = ["resolve_again", "choose_recipient_again"]
    detail_text = text_column("detail", "detail")
    operator_evidence_text = text_column("operator_evidence", "operator evidence")
    recipient_reason_text = text_column("recipient_reason", "recipient reason")
    operator_name = _name_column("operator", "operator")

    @admin.display(description="recipient", ordering="recipient__email")
    def recipient_email(self, obj: HostOwner) -> str:
        return visible_text(obj.recipient.email) if obj.recipient else "—"

    @admin.display(description="operator")
    def operator_link(self, obj: HostOwner) -> SafeString | str:
        return _link("admin:disclosure_organisation_change", obj.operator)

    @admin.display(description="recipient")
    def recipient_link(self, obj: HostOwner) -> SafeString | str:
        return _link("admin:disclosure_contact_change", obj.recipient)

    @admin.display(description="override recipient")
    def override_recipient_link(self, obj: HostOwner) -> SafeString | str:
        return _link("admin:disclosure_contact_change", obj.override_recipient)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from resolution; staff correct them through the override

    def save_model(self, request: HttpRequest, obj: HostOwner, form: object, change: bool) -> None:
        owner_override_set(owner=obj, contact=obj.override_recipient, note=obj.override_note)

    # Both actions write owners (and a lookup writes networks, organisations and contacts):
    # looking at owners is not enough to run them.
    @admin.action(description="Look the owners up again (RDAP)", permissions=["change"])
    def resolve_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        hosts = [owner.host for owner in queryset.select_related("host")]
        try:
            # Staff ask because the registry changed: a network still cached is asked for again.
            summary = owners_resolve(hosts=hosts, fresh=True)
        except OwnerError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        # How the owners ended, too: a network found may still name no usable contact.
        self.message_user(request, summary.describe() + ".")

    @admin.action(description="Choose the recipient again (no lookup)", permissions=["change"])
    def choose_recipient_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        # Counted as they are chosen, not queryset.count(): on the queue, owners that got a
        # recipient have left it by now.
        summary = owners_recompute(owners=queryset.select_related("network", "operator", "override_recipient"))
        self.message_user(request, summary.describe())


@admin.register(HostOwner)
class HostOwnerAdmin(HostOwnerAdminBase, SimpleHistoryAdmin):
    pass


@admin.register(OwnerUnknown)
class OwnerUnknownAdmin(HostOwnerAdminBase):
    # A proxy has no history table of its own: the change history is on the host owner's page.
    list_display = ["host", "reason", "detail_text", "network", "attempts", "updated_at"]
    list_filter = ["reason"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(status=HostOwner.Status.UNKNOWN)


def host_owner_section(request: HttpRequest, host: Host) -> HostSection | None:
    """The host's owner on its page and its services' pages: whom an exposure there goes to, and
    why; the override is set on the host owner's page, which the first row links to."""
    if not request.user.has_perm("disclosure.view_hostowner"):
        return None
    related = ("network", "operator", "recipient__organisation", "override_recipient__organisation")
    # One at most (one per host): unsorted, not by the model's address order.
    owner = HostOwner.objects.select_related(*related).filter(host=host).order_by().first()
    if owner is None:
        return HostSection("Owner", [("status", "not looked up yet (resolve_owners does it, or its schedule)")])

    def link(model: str, obj: Any) -> SafeString | str:
        # Named for everyone who may see owners; a link only for those who may open it (not a 403).
        if obj is not None and not request.user.has_perm(f"disclosure.view_{model}"):
            return str(obj)
        return _link(f"admin:disclosure_{model}_change", obj)

    rows: list[tuple[str, SafeString | str]] = [
        ("host owner", link("hostowner", owner)),
        ("status", owner.get_status_display()),
    ]
    if owner.reason or owner.detail:
        rows.append(("reason", visible_text(f"{owner.reason}: {owner.detail}".strip(": "))))
    rows += [
        ("network", link("network", owner.network)),
        ("operator", link("organisation", owner.operator)),
        ("recipient", link("contact", owner.recipient)),
        ("recipient reason", visible_text(owner.recipient_reason) or "-"),
    ]
    if owner.override_recipient is not None:
        rows.append(("override recipient", link("contact", owner.override_recipient)))
    return HostSection("Owner", rows)


HOST_SECTIONS.append(host_owner_section)
