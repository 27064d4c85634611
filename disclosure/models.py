"""Who runs an exposed host: registry networks, organisations, contacts, inhibitions, host owners.

A later `Case` points at `HostOwner.recipient` (a Contact, hence an Organisation) and
`HostOwner.network`; `HostOwner.recipient_reason` says why that recipient was chosen.
"""

from __future__ import annotations

import ipaddress

from django.db import models
from django.utils import timezone
from simple_history.models import HistoricalRecords

from harvest.models import Host
from medexpo.lib.text import visible_text


def ip_key(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """A fixed-width string that sorts like the address: version digit + 32 hex digits.

    Text comparison works the same on SQLite and PostgreSQL (collation "C" is not needed: only
    digits and lower-case a-f), and one B-tree index serves IPv4 and IPv6.
    """
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    return f"{address.version}{int(address):032x}"


class Organisation(models.Model):
    class Kind(models.TextChoices):
        HOSPITAL = "hospital", "Hospital"
        UMC = "umc", "University medical centre"
        CARE_PROVIDER = "care_provider", "Care provider"
        VENDOR = "vendor", "Vendor"
        HOSTER = "hoster", "Hosting provider"
        ISP = "isp", "Internet service provider"
        OTHER = "other", "Other"

    class Source(models.TextChoices):
        STAFF = "staff", "Entered by staff"
        REGISTRY = "registry", "Dutch healthcare registry"
        RDAP = "rdap", "RDAP"

    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.OTHER)
    sector = models.CharField(max_length=50, blank=True, help_text="e.g. healthcare")
    country = models.CharField(max_length=2, blank=True)
    domains = models.JSONField(default=list, blank=True)
    sector_cert_member = models.BooleanField(default=False, help_text="Member of the sector CERT (Z-CERT).")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.STAFF)
    # Where an automatic organisation came from, so re-imports find it again instead of duplicating it.
    source_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=["hospital", "umc", "care_provider", "vendor", "hoster", "isp", "other"]),
                name="organisation_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return visible_text(self.name)  # the admin shows it in titles, history and recent actions


class Contact(models.Model):
    class Role(models.TextChoices):
        ABUSE = "abuse", "Abuse"
        SECURITY = "security", "Security"
        TECHNICAL = "technical", "Technical"
        ADMINISTRATIVE = "administrative", "Administrative"

    class Source(models.TextChoices):
        STAFF = "staff", "Entered by staff"
        RDAP = "rdap", "RDAP"

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="contacts")
    email = models.EmailField(max_length=254)
    role = models.CharField(max_length=20, choices=Role.choices)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.STAFF)
    import_source = models.CharField(max_length=200, blank=True, help_text="e.g. rdap:ripencc:AB123-RIPE")
    imported_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    pgp_fingerprint = models.CharField(max_length=64, blank=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["organisation__name", "role", "email"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "email", "role", "source"], name="contact_unique"),
            models.CheckConstraint(
                condition=models.Q(role__in=["abuse", "security", "technical", "administrative"]),
                name="contact_role_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{visible_text(self.email)} ({self.role}, {self.organisation})"

    @property
    def is_manual(self) -> bool:
        return self.source == self.Source.STAFF


class Inhibition(models.Model):
    """Do not mail this contact, or anyone at this organisation, until `until`."""

    organisation = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.CASCADE, related_name="inhibitions"
    )
    contact = models.ForeignKey(Contact, null=True, blank=True, on_delete=models.CASCADE, related_name="inhibitions")
    reason = models.TextField()
    until = models.DateField(help_text="Last day of the inhibition.")
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["-until"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(organisation__isnull=False, contact__isnull=True))
                | (models.Q(organisation__isnull=True, contact__isnull=False)),
                name="inhibition_one_target",
            ),
        ]

    def __str__(self) -> str:
        return f"inhibit {self.contact or self.organisation} until {self.until}"

    @property
    def is_active(self) -> bool:
        return self.until >= timezone.localdate()


def network_label(cidrs: list[str], start_address: str, end_address: str) -> str:
    """How a network is named to staff and in exports: its first CIDRs, else its address range."""
    return ", ".join(cidrs[:3]) or f"{start_address} - {end_address}"


# RDAP ip network `type`s of an assignment: a network no narrower one is registered inside, so
# the registry answers every address in it with it. Written as RIPE and AFRINIC (IPv4 and IPv6),
# ARIN, APNIC and LACNIC send them; compared in upper case with spaces collapsed. Any other type
# (an allocation, a sub-allocation, LEGACY) or none may hold assignments we have not seen.
ASSIGNMENT_TYPES = frozenset(
    {
        "ASSIGNED", "ASSIGNED PA", "ASSIGNED PI", "ASSIGNED ANYCAST",  # RIPE NCC, AFRINIC
        "ASSIGNMENT", "DIRECT ASSIGNMENT", "REASSIGNMENT",  # ARIN
        "ASSIGNED PORTABLE", "ASSIGNED NON-PORTABLE",  # APNIC
        "REASSIGNED", "RE-ASSIGNED",  # LACNIC (and "ASSIGNED")
    }
)  # fmt: skip


def is_assignment(network_type: str) -> bool:
    return " ".join(network_type.upper().split()) in ASSIGNMENT_TYPES


class NetworkQuerySet(models.QuerySet):
    def holding(self, first: str, last: str | None = None) -> NetworkQuerySet:
        """Networks that hold the address `first`, or any address from `first` to `last`."""
        return self.filter(start_key__lte=ip_key(last or first), end_key__gte=ip_key(first))

    def inside(self, network: Network) -> NetworkQuerySet:
        """Networks within `network`'s range, other than itself."""
        return self.filter(
            start_key__gte=network.start_key, start_key__lte=network.end_key, end_key__lte=network.end_key
        ).exclude(pk=network.pk)


class Network(models.Model):
    """One registry network (an RDAP ip-network object), the cache unit of owner lookups."""

    class Source(models.TextChoices):
        LIVE = "live", "Live RDAP lookup"
        IMPORT = "import", "Imported recorded answer"

    start_key = models.CharField(max_length=33, help_text="ip_key() of the first address.")
    end_key = models.CharField(max_length=33, help_text="ip_key() of the last address.")
    start_address = models.GenericIPAddressField()
    end_address = models.GenericIPAddressField()
    cidrs = models.JSONField(default=list)
    # The registry's type: an assignment answers for every address in it, anything else only for
    # the addresses it was the registry's answer for (NetworkAnswer).
    network_type = models.CharField(max_length=50, blank=True)
    handle = models.CharField(max_length=100, blank=True)
    name = models.CharField(max_length=255, blank=True)
    country = models.CharField(max_length=2, blank=True)
    # The registry that answered (arin, ripencc...), or the host name of the server that did.
    registry = models.CharField(max_length=100, blank=True)
    asn = models.PositiveBigIntegerField(null=True, blank=True)
    asn_description = models.CharField(max_length=255, blank=True)
    holder = models.ForeignKey(Organisation, null=True, blank=True, on_delete=models.SET_NULL, related_name="networks")
    # Contacts from the answer, best first: [{"email", "role", "handle", "parent", "why"}].
    contact_candidates = models.JSONField(default=list, blank=True)
    raw = models.JSONField(help_text="The RDAP answer as the registry sent it.")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.LIVE)
    fetched_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    # When the registry answered an address inside it with a wider network: it no longer exists.
    gone_at = models.DateTimeField(null=True, blank=True)
    history = HistoricalRecords(excluded_fields=["raw"])

    objects = NetworkQuerySet.as_manager()

    class Meta:
        ordering = ["start_key"]
        # The unique index on (start_key, end_key) is also the index that range lookups use.
        constraints = [models.UniqueConstraint(fields=["start_key", "end_key"], name="network_unique_range")]
        indexes = [models.Index(fields=["expires_at"], name="network_expires_idx")]

    def __str__(self) -> str:
        return network_label(self.cidrs, self.start_address, self.end_address)

    @property
    def cidr(self) -> str:
        return str(self)

    @property
    def is_gone(self) -> bool:
        """The registry no longer has it: it answers for nothing, not even as an expired fallback."""
        return self.gone_at is not None

    @property
    def answers_whole_range(self) -> bool:
        """An assignment holds no narrower network: the registry answers all its addresses with it."""
        return is_assignment(self.network_type)


class NetworkAnswer(models.Model):
    """An address the registry answered with this network (when it may hold narrower ones)."""

    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="answers")
    address_key = models.CharField(max_length=33, help_text="ip_key() of the address.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["network", "address_key"], name="networkanswer_unique")]

    def __str__(self) -> str:
        return f"{self.address_key} -> {self.network}"


class HostOwner(models.Model):
    """Who runs one host and who gets told: the result of owner resolution, one row per host."""

    class Status(models.TextChoices):
        RESOLVED = "resolved", "Resolved"
        UNKNOWN = "unknown", "Owner unknown"
        INHIBITED = "inhibited", "Every candidate recipient is inhibited"
        SKIPPED = "skipped", "Not looked up (non-public address)"

    host = models.OneToOneField(Host, on_delete=models.CASCADE, related_name="owner")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.UNKNOWN)
    reason = models.CharField(max_length=40, blank=True, help_text="Why the owner is unknown or skipped.")
    detail = models.CharField(max_length=500, blank=True)
    network = models.ForeignKey(Network, null=True, blank=True, on_delete=models.SET_NULL, related_name="owners")
    operator = models.ForeignKey(
        Organisation, null=True, blank=True, on_delete=models.SET_NULL, related_name="operated_hosts"
    )
    operator_evidence = models.CharField(max_length=500, blank=True)
    recipient = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="recipient_for"
    )
    recipient_reason = models.CharField(max_length=500, blank=True)
    # Set by staff; resolution never overwrites it. A contact that is one cannot be deleted: clearing
    # it unseen would send the host's cases back to the party staff steered them away from.
    override_recipient = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.PROTECT, related_name="overrides"
    )
    override_note = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    resolved_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The host's changed_at as read with the host data the operator was attributed from. Ingest
    # dates a change when it prepares a batch, which commits later: a run reading the host in
    # between dates its owner after the change, so only equality tells that the change was seen.
    host_changed_at = models.DateTimeField(null=True, blank=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["host__ip__numeric"]
        indexes = [models.Index(fields=["status", "reason"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["resolved", "unknown", "inhibited", "skipped"]),
                name="hostowner_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.host.ip}: {self.status}"


class OwnerUnknown(HostOwner):
    """The owner-unknown queue in the admin: host owners that still need a person to look."""

    class Meta:
        proxy = True
        verbose_name = "owner-unknown host"
        verbose_name_plural = "owner-unknown queue"
