"""What a harvest stores: hosts, their services, banner history and the runs that saw them."""

from django.db import models

# Registers `__numeric`, the address sort that is numeric on SQLite too (see the module).
from medexpo.lib import address_order  # noqa: F401


class HarvestRun(models.Model):
    class Source(models.TextChoices):
        SEARCH = "search", "Shodan search (query plan)"
        FILE = "file", "Shodan download file"
        HOSTS = "hosts", "Host lookups file"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        STOPPED = "stopped", "Stopped (can be resumed)"
        FAILED = "failed", "Failed"

    source = models.CharField(max_length=16, choices=Source.choices)
    plan = models.CharField(max_length=100, blank=True, help_text="Query plan name for search runs.")
    target = models.TextField(blank=True, help_text="The file path, or the plan's queries.")
    country = models.CharField(max_length=2, blank=True)
    options = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    message = models.TextField(blank=True, help_text="Why the run stopped or failed.")
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Where to resume: written in the same transaction as the batch it follows.
    checkpoint = models.JSONField(default=dict, blank=True)
    seen = models.PositiveBigIntegerField(default=0, help_text="Records read, valid or not.")
    accepted = models.PositiveBigIntegerField(default=0)
    new = models.PositiveBigIntegerField(default=0)
    updated = models.PositiveBigIntegerField(default=0)
    unchanged = models.PositiveBigIntegerField(default=0)
    rejected = models.JSONField(default=dict, blank=True, help_text="Rejected records by reason.")
    # Not records: a search's query Shodan refused, or served short of its total. Kept apart so
    # that `seen` is always `accepted` plus the rejected records.
    query_errors = models.JSONField(
        default=dict, blank=True, help_text="Search queries that failed or came back short, by reason."
    )
    credits_spent = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]
        # Resuming a search run spends Shodan credits: more than looking at runs.
        permissions = [("resume_harvestrun", "Can resume a harvest run")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["running", "completed", "stopped", "failed"]),
                name="harvestrun_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.source}, {self.status})"

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def query_errors_total(self) -> int:
        return sum(self.query_errors.values())

    @property
    def is_resumable(self) -> bool:
        return self.status != self.Status.COMPLETED


class Rejection(models.Model):
    """One rejected input record: why, and where it was. Only the first few per reason keep a row."""

    run = models.ForeignKey(HarvestRun, on_delete=models.CASCADE, related_name="rejections")
    position = models.CharField(max_length=100, help_text="Line number, or query/page/item.")
    reason = models.CharField(max_length=40)
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["run", "id"]
        indexes = [models.Index(fields=["run", "reason"])]

    def __str__(self) -> str:
        return f"{self.position}: {self.reason}"


class ShodanPace(models.Model):
    """When the next request with one Shodan API key may be sent, shared by every process that uses
    this PostgreSQL database (harvest/pacing.py; SQLite keeps it in a file beside the database).
    Shodan allows each key one request per second, whichever process or machine sends it."""

    # A hash of the key and the API's URL: the key itself is a secret and is never stored.
    key_id = models.CharField(max_length=64, primary_key=True)
    next_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.key_id[:12]}: {self.next_at}"


class Host(models.Model):
    ip = models.GenericIPAddressField("IP address", unique=True, unpack_ipv4=False)
    org = models.CharField(max_length=255, blank=True)
    isp = models.CharField("ISP", max_length=255, blank=True)
    asn = models.PositiveBigIntegerField("ASN", null=True, blank=True)
    country = models.CharField(max_length=2, blank=True)
    # Every name the host was seen with (at most 64): for display and export. A name the address
    # has lost stays here; owner attribution reads the names of the services' current records.
    hostnames = models.JSONField(
        default=list,
        blank=True,
        help_text="Every hostname the host was seen with, including names it no longer has.",
    )
    os = models.CharField("OS", max_length=255, blank=True)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    # When ingest last stored something new about the host: a field (org, hostnames...) that
    # changed, a service added, or a service's banner replaced by another. Not a sighting: a banner
    # seen again, or a file read again, leaves it. Owner resolution attributes the host again after it.
    changed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # Numeric address order on both databases. The bare ip after it is the same column on
        # PostgreSQL (written once); to the admin it is a unique field, so it adds no id to the sort.
        ordering = ["ip__numeric", "ip"]
        indexes = [models.Index(fields=["asn"]), models.Index(fields=["last_seen"])]

    def __str__(self) -> str:
        return self.ip


class Service(models.Model):
    """A listening service: the same address, port and transport is always the same service."""

    class Transport(models.TextChoices):
        TCP = "tcp", "TCP"
        UDP = "udp", "UDP"

    # No index of its own: the unique (host, port, transport) constraint serves lookups by host.
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="services", db_index=False)
    port = models.PositiveIntegerField()
    transport = models.CharField(max_length=3, choices=Transport.choices, default=Transport.TCP)
    product = models.CharField(max_length=255, blank=True)
    version = models.CharField(max_length=255, blank=True)
    module = models.CharField(max_length=64, blank=True, help_text="Shodan's crawler module.")
    # The banner for display and search; NUL characters are shown as U+2400 because PostgreSQL
    # text cannot hold them. The exact bytes are in `raw`, the record kept verbatim.
    banner = models.TextField(blank=True)
    raw = models.TextField(help_text="The latest Shodan record, verbatim JSON.")
    banner_hash = models.CharField(max_length=32)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    banner_since = models.DateTimeField(help_text="When the current banner was first seen.")
    # A hash of the current record's TLS certificate, HTTP title, hostnames and domains
    # (harvest.records.record_identity), which can change while the banner stays the same. NULL:
    # not known (stored before it was kept, or before it covered hostnames and domains).
    identity_hash = models.CharField(max_length=32, null=True, blank=True)
    # The run that saw the current banner at last_seen, to tell a duplicate line within a run from a
    # re-sighting.
    # Written for every banner seen, so it has no index and no constraint: that keeps the update narrow.
    last_run = models.ForeignKey(
        HarvestRun,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )

    class Meta:
        ordering = ["host__ip__numeric", "port"]
        constraints = [
            models.UniqueConstraint(fields=["host", "port", "transport"], name="service_unique_endpoint"),
            models.CheckConstraint(condition=models.Q(port__gte=0, port__lte=65535), name="service_port_range"),
        ]
        indexes = [models.Index(fields=["port"]), models.Index(fields=["last_seen"])]

    def __str__(self) -> str:
        # host is usually select_related; the id stands in when it was not loaded
        host = self.host.ip if "host" in self._state.fields_cache else f"host {self.host_id}"
        return f"{host}:{self.port}/{self.transport}"


class ServiceBanner(models.Model):
    """A banner that a service showed before it changed (the current one lives on Service)."""

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="history")
    banner = models.TextField(blank=True)
    raw = models.TextField()
    banner_hash = models.CharField(max_length=32)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    # The run that saw this banner at last_seen: a line it reads twice is then a duplicate.
    run = models.ForeignKey(HarvestRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["service", "-last_seen"]

    def __str__(self) -> str:
        return f"{self.service_id} until {self.last_seen:%Y-%m-%d}"


class Classification(models.Model):
    """One verdict of the classification engine on a service's banner, under one rules version.

    Verdicts are kept per rules version so any of them can be reproduced; `current` marks the
    one that counts (at most one per service, enforced by a partial unique constraint).
    """

    class Cls(models.TextChoices):
        MEDICAL = "medical", "Medical"
        NON_MEDICAL = "non_medical", "Non-medical"
        UNKNOWN = "unknown", "Unknown"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="classifications")
    rules_version = models.CharField(max_length=64)
    cls = models.CharField("class", max_length=16, choices=Cls.choices)
    category = models.CharField(max_length=32, blank=True)
    segment = models.CharField(max_length=32, blank=True)
    evidence = models.JSONField(default=list, blank=True, help_text="[{rule, field, excerpt}, ...]")
    confidence = models.FloatField(default=0.0)
    honeypot = models.BooleanField(default=False)
    honeypot_evidence = models.JSONField(default=list, blank=True)
    product = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    # The banner that was judged, and the service's last_seen then: a service whose banner changed
    # since, or that a newer record (another title, certificate, organisation) updated, is classified again.
    banner_hash = models.CharField(max_length=32)
    record_seen = models.DateTimeField(null=True, blank=True)
    current = models.BooleanField(default=True)
    classified_at = models.DateTimeField()

    class Meta:
        ordering = ["service", "-classified_at"]
        constraints = [
            models.UniqueConstraint(fields=["service", "rules_version"], name="classification_unique_version"),
            models.UniqueConstraint(
                fields=["service"], condition=models.Q(current=True), name="classification_one_current"
            ),
            models.CheckConstraint(
                condition=models.Q(cls__in=["medical", "non_medical", "unknown"]), name="classification_cls_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["cls", "category"], condition=models.Q(current=True), name="classification_current"),
        ]

    def __str__(self) -> str:
        return f"{self.service_id}: {self.cls}/{self.category} ({self.rules_version})"
