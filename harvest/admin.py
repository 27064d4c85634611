"""Staff views of what the harvest stored: hosts, services, banner history, runs and rejections.

Everything here is read-only: a row says what Shodan reported, and staff cannot edit that. Banners,
hostnames, organisations, titles and rejection details are written by strangers, so every value
reaches the page through Django's escaping (`format_html`, `format_html_join`, plain strings);
nothing from the data is ever marked safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import Count, Exists, FilteredRelation, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Length, Substr
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from harvest.classify.types import CATEGORIES, CLASSES
from harvest.ingest import REJECTION_ROWS_PER_REASON
from harvest.models import Classification, HarvestRun, Host, Rejection, Service, ServiceBanner
from harvest.records import Reason
from harvest.search import QUERY_ERROR_DESCRIPTIONS
from harvest.services import (
    HarvestError,
    harvest_run_enqueue_resume,
    harvest_runs_stop_abandoned,
    harvest_writing_run,
)
from medexpo.lib.admin_search import AddressSearchMixin
from medexpo.lib.display import text_block, text_column, visible_text
from medexpo.lib.text import ascii_digits

BANNER_DISPLAY_LIMIT = 8 * 1024  # characters of a banner shown on a service page
HISTORY_DISPLAY_LIMIT = 2 * 1024  # per banner in the history inline
RAW_DISPLAY_LIMIT = 64 * 1024  # characters of the pretty-printed raw record
PREVIEW_LIMIT = 48  # banner column of the service list
HOST_SERVICES_SHOWN = 100  # services listed on a host's page; the service list has them all
BANNER_SEARCH = "banner:"  # a service search that starts so looks in banner text


def pretty_json(raw: str) -> str:
    """A JSON record indented for reading; text that is not JSON is returned as it is."""
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False, sort_keys=True)
    except (ValueError, RecursionError):  # ingest keeps records nested deeper than json can recurse
        return raw


def _short_time(value: datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")


def _is_number(value: str, digits: int) -> bool:
    return ascii_digits(value) and len(value) <= digits


def _link(viewname: str, pk: int | None, label: object) -> SafeString | str:
    if pk is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse(viewname, args=[pk]), label)


class _NoWrites:
    """Staff may look and search, never add, edit or delete: the rows are what a source said."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ReadOnlyAdmin(_NoWrites, admin.ModelAdmin):
    list_per_page = 100
    # The full count is another COUNT(*) over tables of millions of rows on every page.
    show_full_result_count = False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # A regular expression in the URL (?banner__regex=...) ran over every stored banner, and
        # one the database could not compile was a server error: refused (400) instead.
        if lookup.rsplit("__", 1)[-1] in ("regex", "iregex"):
            return False
        return super().lookup_allowed(lookup, value, request)


class ReadOnlyTabularInline(_NoWrites, admin.TabularInline):
    extra = 0
    can_delete = False


class TopValuesFilter(admin.SimpleListFilter):
    """The most common values of an integer column, most common first; any value works from the URL.

    A plain field filter lists every distinct value: thousands of ports or ASNs on a real harvest.
    """

    limit = 30
    label = "{}"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        field = self.parameter_name
        rows = (
            model_admin.model._default_manager.filter(**{f"{field}__isnull": False})
            .values_list(field)
            # COUNT(*), not COUNT(id): the column's index alone answers it, without reading the table.
            .annotate(rows=Count("*"))
            .order_by("-rows", field)[: self.limit]
        )
        return [(str(value), self.label.format(value)) for value, _ in rows]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        if not _is_number(value, 10):
            return queryset.none()
        return queryset.filter(**{str(self.parameter_name): int(value)})


class PortFilter(TopValuesFilter):
    title = "port"
    parameter_name = "port"


def _current_verdicts() -> QuerySet[Classification]:
    """The current verdict of the outer query's service, for a subquery.

    Without the model's ordering, which would join the service and its host into the subquery once
    per row. A filter asks EXISTS of this rather than comparing a per-row subquery's value: that
    would run the subquery for every service in the table, not only for the page's rows.
    """
    return Classification.objects.filter(service=OuterRef("pk"), current=True).order_by()


def _current_verdicts_prefetch() -> Prefetch:
    """The current verdict of each service in one query, as `service.current_verdicts`."""
    current = Classification.objects.filter(current=True).order_by().only("service", "cls", "category")
    return Prefetch("classifications", queryset=current, to_attr="current_verdicts")


def _verdict_text(service: Service) -> str:
    verdicts = getattr(service, "current_verdicts", [])
    return f"{verdicts[0].cls} / {verdicts[0].category}" if verdicts else "-"


class VerdictFilter(admin.SimpleListFilter):
    """Services by the class of their current verdict; "not classified" for those without one."""

    title = "verdict"
    parameter_name = "verdict"
    NONE = "none"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(c, c) for c in CLASSES] + [(self.NONE, "not classified")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == self.NONE:
            return queryset.exclude(Exists(_current_verdicts()))
        if value in CLASSES:
            return queryset.filter(Exists(_current_verdicts().filter(cls=value)))
        return queryset


class CategoryFilter(admin.SimpleListFilter):
    """Services by the category of their current verdict (dicom, hl7, pacs_web, ...)."""

    title = "verdict category"
    parameter_name = "category"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(c, c) for c in CATEGORIES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value in CATEGORIES:
            return queryset.filter(Exists(_current_verdicts().filter(category=value)))
        return queryset


class ModuleFilter(admin.SimpleListFilter):
    """Shodan's crawler modules, most common first. The names come from the records, so the
    labels show controls and bidi characters the way every other banner text is shown."""

    title = "module"
    parameter_name = "module"
    limit = 50

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        rows = Service.objects.values_list("module").annotate(rows=Count("pk")).order_by("-rows", "module")
        return [(module, visible_text(module) or "(none)") for module, _ in rows[: self.limit]]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset if value is None else queryset.filter(module=value)


class AsnFilter(TopValuesFilter):
    title = "ASN"
    parameter_name = "asn"
    label = "AS{}"


class CountryFilter(admin.SimpleListFilter):
    """Country codes, most common first, and hosts without one as "unknown" (not a blank link)."""

    title = "country"
    parameter_name = "country"
    unknown = "-"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        rows = Host.objects.values_list("country").annotate(rows=Count("pk")).order_by("-rows", "country")
        codes = [code for code, _ in rows[:300]]
        return [(code, code) for code in codes if code] + ([(self.unknown, "unknown")] if "" in codes else [])

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None:
            return queryset
        if value == self.unknown:
            return queryset.filter(country="")
        return queryset.filter(country=value.upper()) if len(value) == 2 and value.isalpha() else queryset.none()


# --- what other apps know of a host --------------------------------------------------------


@dataclass(frozen=True)
class HostSection:
    """A titled block of read-only rows about a host, shown on its page and its services' pages."""

    title: str
    rows: list[tuple[str, SafeString | str]]


# Apps that know more about a host (disclosure: its owner and recipient) add a function here that
# gives their section, or None where the user may not see it; harvest imports none of them.
HOST_SECTIONS: list[Callable[[HttpRequest, Host], HostSection | None]] = []


class _HostSectionsAdmin(ReadOnlyAdmin):
    """A change page that shows the HOST_SECTIONS of the host it is about (`host_of`)."""

    def host_of(self, obj: Any) -> Host | None:
        raise NotImplementedError

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        host = self.host_of(obj) if obj is not None else None
        if host is not None:
            sections = (section(request, host) for section in HOST_SECTIONS)
            context["host_sections"] = [section for section in sections if section is not None]
        return super().render_change_form(request, context, add, change, form_url, obj)


# --- hosts ---------------------------------------------------------------------------------


class _FirstServicesFormSet(BaseInlineFormSet):
    """The host's first services by port: a honeypot or tarpit answers on thousands of ports, and
    listing them all made its page megabytes long. The host's "services" field links to all."""

    def get_queryset(self) -> QuerySet[Service]:
        # Sliced once and kept: the formset asks again for every row it builds.
        if not hasattr(self, "_first"):
            self._first = super().get_queryset()[:HOST_SERVICES_SHOWN]
        return self._first


class ServiceInline(ReadOnlyTabularInline):
    model = Service
    formset = _FirstServicesFormSet
    # One host's services: by port, from the (host, port, transport) index. The model's order
    # would sort them by their host's address first, a function call per service on SQLite.
    ordering = ("port", "transport")
    fields = (
        "port",
        "transport",
        "product_text",
        "version_text",
        "module_text",
        "first_seen",
        "last_seen",
        "banner_since",
        "verdict",
    )
    readonly_fields = fields
    show_change_link = True
    product_text = text_column("product")
    version_text = text_column("version")
    module_text = text_column("module")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Service]:
        # Banners can be a megabyte each; the inline shows none of them. The current verdicts of
        # the listed services come in one more query.
        return super().get_queryset(request).defer("banner", "raw").prefetch_related(_current_verdicts_prefetch())

    @admin.display(description="verdict")
    def verdict(self, obj: Service) -> str:
        return _verdict_text(obj)


@admin.register(Host)
class HostAdmin(AddressSearchMixin, _HostSectionsAdmin):
    list_display = (
        "address",
        "org_text",
        "isp_text",
        "asn",
        "country",
        "hostnames_list",
        "os_text",
        "first_seen",
        "last_seen",
        "service_total",
    )
    search_fields = ("ip", "org", "hostnames")
    address_lookup = "ip"
    list_filter = (CountryFilter, AsnFilter)
    fieldsets = (
        (None, {"fields": ("ip", "org_text", "isp_text", "asn", "country", "hostnames_list", "os_text")}),
        ("Seen", {"fields": ("first_seen", "last_seen", "service_summary")}),
    )
    readonly_fields = (*list_display, "ip", "service_summary")
    inlines = (ServiceInline,)
    org_text = text_column("org")
    isp_text = text_column("isp", "ISP")
    os_text = text_column("os", "OS")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Host]:
        # Counted per listed host: a join and GROUP BY would count every service of the table
        # before the page's LIMIT. COUNT(*), not COUNT(id): the (host, port, transport) index alone
        # answers it; sorting by the count runs it for every host.
        count = Service.objects.filter(host=OuterRef("pk")).order_by().values("host").annotate(n=Count("*")).values("n")
        return super().get_queryset(request).annotate(service_count=Coalesce(Subquery(count), 0))

    def host_of(self, obj: Host) -> Host:
        return obj

    # Not the field itself: sorting by it would sort its text on SQLite (10.0.0.10 before 10.0.0.2).
    @admin.display(description="IP address", ordering="ip__numeric")
    def address(self, obj: Host) -> str:
        return obj.ip

    # Every name seen, including lost ones: owners are attributed from the services' current records.
    @admin.display(description="hostnames ever seen")
    def hostnames_list(self, obj: Host) -> str:
        names = obj.hostnames if isinstance(obj.hostnames, list) else []
        return visible_text(", ".join(str(n) for n in names))

    # Not named "services": the admin would sort by that relation (a join listing each host once per
    # service) rather than by the count.
    @admin.display(description="services", ordering="service_count")
    def service_total(self, obj: Host) -> int:
        return obj.service_count  # type: ignore[attr-defined]

    @admin.display(description="services")
    def service_summary(self, obj: Host) -> SafeString:
        count: int = obj.service_count  # type: ignore[attr-defined]
        every = reverse("admin:harvest_service_changelist") + "?" + urlencode({"q": obj.ip})
        if count <= HOST_SERVICES_SHOWN:
            return format_html('<a href="{}">{}</a>', every, count)
        return format_html(
            '<a href="{}">{}</a> (the first {} by port are listed below; the link lists them all)',
            every,
            f"{count:,}",
            HOST_SERVICES_SHOWN,
        )


# --- services ------------------------------------------------------------------------------


class ServiceBannerInline(ReadOnlyTabularInline):
    model = ServiceBanner
    verbose_name = "earlier banner"
    verbose_name_plural = "banner history"
    fields = ("first_seen", "last_seen", "run_link", "banner_text")
    # One service's banners: the model's order would join the service and its host to sort by address.
    ordering = ("-last_seen",)
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServiceBanner]:
        return (
            super()
            .get_queryset(request)
            .defer("banner", "raw")
            .annotate(banner_head=Substr("banner", 1, HISTORY_DISPLAY_LIMIT), banner_length=Length("banner"))
        )

    @admin.display(description="run")
    def run_link(self, obj: ServiceBanner) -> SafeString | str:
        return _link("admin:harvest_harvestrun_change", obj.run_id, obj.run_id)

    @admin.display(description="banner")
    def banner_text(self, obj: ServiceBanner) -> SafeString:
        return text_block(obj.banner_head, limit=HISTORY_DISPLAY_LIMIT, total=obj.banner_length)  # type: ignore[attr-defined]


class ServiceChangeList(ChangeList):
    """The list shows only the start of each banner: banners and raw records stay in the database."""

    def get_queryset(
        self, request: HttpRequest, exclude_parameters: list[str | None] | None = None
    ) -> QuerySet[Service]:
        queryset = super().get_queryset(request, exclude_parameters)
        return queryset.defer("banner", "raw").annotate(banner_head=Substr("banner", 1, PREVIEW_LIMIT + 1))


@admin.register(Service)
class ServiceAdmin(AddressSearchMixin, _HostSectionsAdmin):
    list_display = (
        "host_ip",
        "port",
        "transport",
        "product_text",
        "version_text",
        "module_text",
        "org",
        "first",
        "last",
        "banner_changed",
        "verdict",
        "banner_preview",
    )
    list_select_related = ("host",)
    # Banners are searched only when asked for (see get_search_results): on every search they
    # would make each one read every banner in the table.
    search_fields = ("host__ip", "product", "host__org")
    address_lookup = "host__ip"
    search_help_text = (
        "Address (a whole address finds that one), product or organisation. To search banner text, "
        f"start with {BANNER_SEARCH} (it reads every banner: slow on a large harvest)."
    )
    list_filter = (VerdictFilter, CategoryFilter, PortFilter, "transport", ModuleFilter)
    fieldsets = (
        (None, {"fields": ("host_link", "port", "transport", "product_text", "version_text", "module_text", "org")}),
        ("Seen", {"fields": ("first_seen", "last_seen", "banner_since", "last_run_link")}),
        ("Banner", {"fields": ("banner_text",)}),
        ("Raw record", {"fields": ("raw_record",), "classes": ("collapse",)}),
    )
    readonly_fields = (
        "host_link",
        "port",
        "transport",
        "product_text",
        "version_text",
        "module_text",
        "org",
        "first_seen",
        "last_seen",
        "banner_since",
        "last_run_link",
        "banner_text",
        "raw_record",
    )
    inlines: ClassVar[tuple[type[admin.TabularInline], ...]] = (ServiceBannerInline,)  # type: ignore[misc]
    product_text = text_column("product")
    version_text = text_column("version")
    module_text = text_column("module")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Service], search_term: str
    ) -> tuple[QuerySet[Service], bool]:
        if search_term.startswith(BANNER_SEARCH):
            phrase = search_term.removeprefix(BANNER_SEARCH).strip()
            return (queryset.filter(banner__icontains=phrase) if phrase else queryset), False
        return super().get_search_results(request, queryset, search_term)

    def get_changelist(self, request: HttpRequest, **kwargs: object) -> type[ChangeList]:
        return ServiceChangeList

    def host_of(self, obj: Service) -> Host:
        return obj.host

    def get_queryset(self, request: HttpRequest) -> QuerySet[Service]:
        # The current verdicts of the page's services in one more query, not a subquery per row:
        # PostgreSQL would run that for every row a later page skips (OFFSET), or every row of the
        # table when sorting by it. Sorting by verdict joins the current verdicts instead
        # (`current_verdict`, joined only when used); the filters ask EXISTS (see _current_verdicts).
        return (
            super()
            .get_queryset(request)
            .select_related("host")  # the change page's title names the host's address
            .annotate(current_verdict=FilteredRelation("classifications", condition=Q(classifications__current=True)))
            .prefetch_related(_current_verdicts_prefetch())
        )

    @admin.display(description="verdict", ordering="current_verdict__cls")
    def verdict(self, obj: Service) -> str:
        return _verdict_text(obj)

    @admin.display(description="host", ordering="host__ip__numeric")
    def host_ip(self, obj: Service) -> str:
        return obj.host.ip

    @admin.display(description="org", ordering="host__org")
    def org(self, obj: Service) -> str:
        return visible_text(obj.host.org)

    # Compact dates keep the list, banner column included, on one screen.
    @admin.display(description="first seen", ordering="first_seen")
    def first(self, obj: Service) -> str:
        return _short_time(obj.first_seen)

    @admin.display(description="last seen", ordering="last_seen")
    def last(self, obj: Service) -> str:
        return _short_time(obj.last_seen)

    @admin.display(description="banner changed", ordering="banner_since")
    def banner_changed(self, obj: Service) -> str:
        return _short_time(obj.banner_since)

    @admin.display(description="banner")
    def banner_preview(self, obj: Service) -> str:
        head = obj.banner_head  # type: ignore[attr-defined]
        cut = len(head) > PREVIEW_LIMIT
        # A cut between CR and LF would show a lone CR as \r.
        shown = head[:PREVIEW_LIMIT].removesuffix("\r") if cut else head
        text = visible_text(shown.replace("\r\n", "\n").replace("\n", " ↵ "))
        return text + ("…" if cut else "")

    @admin.display(description="host")
    def host_link(self, obj: Service) -> SafeString | str:
        return _link("admin:harvest_host_change", obj.host_id, obj.host.ip)

    @admin.display(description="last run")
    def last_run_link(self, obj: Service) -> SafeString | str:
        return _link("admin:harvest_harvestrun_change", obj.last_run_id, obj.last_run_id)

    @admin.display(description="banner")
    def banner_text(self, obj: Service) -> SafeString:
        return text_block(obj.banner, limit=BANNER_DISPLAY_LIMIT)

    @admin.display(description="raw record (JSON)")
    def raw_record(self, obj: Service) -> SafeString:
        return text_block(pretty_json(obj.raw), limit=RAW_DISPLAY_LIMIT)


# --- runs and rejections -------------------------------------------------------------------


class RunFilter(admin.SimpleListFilter):
    """Rejections of one run; the run page links here with ?run=<id>."""

    title = "run"
    parameter_name = "run"
    recent = 20

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        runs = HarvestRun.objects.only("id", "source", "status")[: self.recent]
        return [(str(run.pk), str(run)) for run in runs]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Rejection]) -> QuerySet[Rejection]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(run_id=int(value)) if _is_number(value, 18) else queryset.none()


@admin.register(Rejection)
class RejectionAdmin(ReadOnlyAdmin):
    list_display = ("run_link", "position", "reason", "description", "detail_text")
    # The first column is itself a link (to the run): an anchor cannot hold another one.
    list_display_links = ("position",)
    list_select_related = ("run",)
    list_filter = (RunFilter, "reason")
    search_fields = ("position", "detail")
    fields = ("run_link", "position", "reason", "description", "detail_text")
    readonly_fields = fields

    @admin.display(description="run", ordering="run")
    def run_link(self, obj: Rejection) -> SafeString | str:
        return _link("admin:harvest_harvestrun_change", obj.run_id, obj.run)

    @admin.display(description="what it means")
    def description(self, obj: Rejection) -> str:
        return Reason.DESCRIPTIONS.get(obj.reason, "")

    @admin.display(description="detail")
    def detail_text(self, obj: Rejection) -> str:
        return visible_text(obj.detail)


@admin.register(HarvestRun)
class HarvestRunAdmin(ReadOnlyAdmin):
    actions = ("resume",)
    list_display = (
        "id",
        "source",
        "plan",
        "target_short",
        "country",
        "status_now",
        "started_at",
        "finished_at",
        "seen",
        "accepted",
        "new",
        "updated",
        "unchanged",
        "rejected_count",
        "query_errors_count",
        "credits_spent",
    )
    list_filter = ("source", "status", "country")
    search_fields = ("plan", "target", "message")
    fieldsets = (
        (None, {"fields": ("source", "plan", "target_text", "country", "status_now", "message_text")}),
        ("Time", {"fields": ("started_at", "updated_at", "finished_at")}),
        ("Counts", {"fields": ("seen", "accepted", "new", "updated", "unchanged", "credits_spent")}),
        ("Rejected", {"fields": ("rejected_table", "query_errors_table")}),
        ("Resume", {"fields": ("checkpoint_json", "options_json"), "classes": ("collapse",)}),
    )

    @admin.action(description="Resume the selected runs in the background", permissions=["resume"])
    def resume(self, request: HttpRequest, queryset: QuerySet[HarvestRun]) -> None:
        for run in queryset:
            try:
                harvest_run_enqueue_resume(run=run)
            except HarvestError as exc:
                self.message_user(request, str(exc), level=messages.WARNING)
            else:
                self.message_user(request, f"Run {run.pk} will resume in the background.")

    def has_resume_permission(self, request: HttpRequest) -> bool:
        # Viewing runs is not enough: resuming a search run spends Shodan credits.
        return request.user.has_perm(f"{HarvestRun._meta.app_label}.resume_harvestrun")

    # A run whose process was killed is still marked running: both pages show it stopped instead.
    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        harvest_runs_stop_abandoned()
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        harvest_runs_stop_abandoned()
        return super().change_view(request, object_id, form_url, extra_context)

    readonly_fields = (
        "source",
        "plan",
        "target_text",
        "country",
        "status_now",
        "message_text",
        "started_at",
        "updated_at",
        "finished_at",
        "seen",
        "accepted",
        "new",
        "updated",
        "unchanged",
        "credits_spent",
        "rejected_table",
        "query_errors_table",
        "checkpoint_json",
        "options_json",
    )

    def get_list_display(self, request: HttpRequest) -> list:  # type: ignore[override]
        """The status column asks who holds the harvest lock once a page, not once a row."""
        holder: list[int | None] = []

        @admin.display(description="status", ordering="status")
        def status_now(obj: HarvestRun) -> str:
            if obj.status == HarvestRun.Status.RUNNING and not holder:
                holder.append(harvest_writing_run())
            return _run_status(obj, holder[0] if holder else None)

        return [status_now if name == "status_now" else name for name in self.list_display]

    @admin.display(description="status", ordering="status")
    def status_now(self, obj: HarvestRun) -> str:
        writing = harvest_writing_run() if obj.status == HarvestRun.Status.RUNNING else None
        return _run_status(obj, writing)

    @admin.display(description="target")
    def target_short(self, obj: HarvestRun) -> str:
        return visible_text(obj.target if len(obj.target) <= 60 else "…" + obj.target[-59:])

    # A path or a query, and a message that quotes errors (Shodan's words, file names): text from
    # outside, with its controls and invisible characters shown as escapes.
    @admin.display(description="target")
    def target_text(self, obj: HarvestRun) -> str:
        return visible_text(obj.target)

    @admin.display(description="message")
    def message_text(self, obj: HarvestRun) -> str:
        return visible_text(obj.message)

    @admin.display(description="rejected")
    def rejected_count(self, obj: HarvestRun) -> int:
        return obj.rejected_total

    @admin.display(description="query errors")
    def query_errors_count(self, obj: HarvestRun) -> int:
        return obj.query_errors_total

    @admin.display(description="rejected by reason")
    def rejected_table(self, obj: HarvestRun) -> SafeString | str:
        return self._reasons_table(obj, obj.rejected, Reason.DESCRIPTIONS, "records", "medexpo-rejected")

    @admin.display(description="query errors")
    def query_errors_table(self, obj: HarvestRun) -> SafeString | str:
        # A search's queries that failed or came back short: not records, so apart from them.
        return self._reasons_table(obj, obj.query_errors, QUERY_ERROR_DESCRIPTIONS, "queries", "medexpo-query-errors")

    def _reasons_table(
        self, obj: HarvestRun, counts: dict, descriptions: dict[str, str], unit: str, css: str
    ) -> SafeString | str:
        if not counts:
            return "none"
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td style="text-align: right">{}</td></tr>',
            (
                (self._rejections_url(obj, reason), reason, descriptions.get(reason, ""), count)
                for reason, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            ),
        )
        return format_html(
            '<table class="{}"><thead><tr><th>reason</th><th>what it means</th>'
            '<th style="text-align: right">{}</th></tr></thead><tbody>{}</tbody>'
            '<tfoot><tr><td colspan="2">total</td><td style="text-align: right">{}</td></tr></tfoot></table>'
            '<p class="help">Each reason links to its {} (the first {} per reason are kept).</p>',
            css,
            unit,
            rows,
            sum(counts.values()),
            "rejected records" if unit == "records" else "positions and details",
            f"{REJECTION_ROWS_PER_REASON:,}",
        )

    @admin.display(description="checkpoint")
    def checkpoint_json(self, obj: HarvestRun) -> SafeString:
        return text_block(json.dumps(obj.checkpoint, indent=2, ensure_ascii=False), limit=RAW_DISPLAY_LIMIT)

    @admin.display(description="options")
    def options_json(self, obj: HarvestRun) -> SafeString:
        return text_block(json.dumps(obj.options, indent=2, ensure_ascii=False), limit=RAW_DISPLAY_LIMIT)

    @staticmethod
    def _rejections_url(run: HarvestRun, reason: str) -> str:
        query = urlencode({"run": run.pk, "reason__exact": reason})
        return reverse("admin:harvest_rejection_changelist") + "?" + query


def _run_status(run: HarvestRun, writing: int | None) -> str:
    """Only the lock holder is writing; the pages marked stopped any other run no process runs."""
    if run.status != HarvestRun.Status.RUNNING:
        return run.get_status_display()
    if run.pk == writing:
        return "Running: writing now"
    if writing is None:  # the holder ended in between
        return "Running: waiting for the harvest lock"
    return f"Running: waiting for run {writing} to finish"


# --- verdicts ------------------------------------------------------------------------------


def _evidence_list(items: object) -> SafeString | str:
    """Evidence excerpts are banner text: escaped, controls made visible, one line per item."""
    if not isinstance(items, list) or not items:
        return "-"
    return format_html_join(
        "",
        "<div><code>{}</code> ({}): {}</div>",
        (
            (str(e.get("rule", "")), str(e.get("field", "")), visible_text(str(e.get("excerpt", ""))))
            for e in items
            if isinstance(e, dict)
        ),
    )


class ClassificationInline(ReadOnlyTabularInline):
    model = Classification
    verbose_name = "verdict"
    verbose_name_plural = "verdicts (one per rules version)"
    fields = (
        "current",
        "rules_version",
        "cls",
        "category",
        "segment",
        "product_text",
        "confidence",
        "honeypot",
        "evidence_list",
        "classified_at",
    )
    readonly_fields = fields
    ordering = ("-current", "-classified_at")

    @admin.display(description="product")
    def product_text(self, obj: Classification) -> str:
        return visible_text(obj.product)

    @admin.display(description="evidence")
    def evidence_list(self, obj: Classification) -> SafeString | str:
        return _evidence_list(obj.evidence)


# Declared after ServiceAdmin, which shows a service's verdicts below its banner history.
ServiceAdmin.inlines = (*ServiceAdmin.inlines, ClassificationInline)


@admin.register(Classification)
class ClassificationAdmin(AddressSearchMixin, ReadOnlyAdmin):
    list_display = (
        "service_link",
        "org",
        "cls",
        "category",
        "segment",
        "product_text",
        "confidence",
        "honeypot",
        "current",
        "rules_version",
        "classified_at",
    )
    # The first column is itself a link (to the service): an anchor cannot hold another one.
    list_display_links = ("cls",)
    list_select_related = ("service__host",)
    list_filter = ("current", "cls", "category", "segment", "honeypot", "rules_version")
    search_fields = ("service__host__ip", "product", "service__host__org")
    address_lookup = "service__host__ip"
    fieldsets = (
        (None, {"fields": ("service_link", "org", "cls", "category", "segment", "product_text", "confidence")}),
        ("Evidence", {"fields": ("evidence_list", "honeypot", "honeypot_list", "details_json")}),
        ("Version", {"fields": ("rules_version", "current", "banner_hash", "record_seen", "classified_at")}),
    )
    readonly_fields = (
        "service_link",
        "org",
        "cls",
        "category",
        "segment",
        "product_text",
        "confidence",
        "evidence_list",
        "honeypot",
        "honeypot_list",
        "details_json",
        "rules_version",
        "current",
        "banner_hash",
        "record_seen",
        "classified_at",
    )

    # The service's own order: its host's address, then its port.
    @admin.display(description="service", ordering="service")
    def service_link(self, obj: Classification) -> SafeString | str:
        service = obj.service
        return _link(
            "admin:harvest_service_change", service.pk, f"{service.host.ip}:{service.port}/{service.transport}"
        )

    @admin.display(description="org", ordering="service__host__org")
    def org(self, obj: Classification) -> str:
        return visible_text(obj.service.host.org)

    @admin.display(description="product", ordering="product")
    def product_text(self, obj: Classification) -> str:
        return visible_text(obj.product)

    @admin.display(description="evidence")
    def evidence_list(self, obj: Classification) -> SafeString | str:
        return _evidence_list(obj.evidence)

    @admin.display(description="honeypot evidence")
    def honeypot_list(self, obj: Classification) -> SafeString | str:
        return _evidence_list(obj.honeypot_evidence)

    @admin.display(description="decoded details")
    def details_json(self, obj: Classification) -> SafeString:
        return text_block(json.dumps(obj.details, indent=2, ensure_ascii=False), limit=RAW_DISPLAY_LIMIT)
