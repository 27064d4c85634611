"""Classification services: judge stored services with the engine, keep the verdicts, measure them.

The engine (`classify.engine.classify`) is pure; these functions feed it banners read from
`Service.raw` in primary-key batches (never all at once) and store its verdicts as
`Classification` rows, one per service and rules version, with one `current` row per service.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from django.db import transaction
from django.db.models import Count, Exists, OuterRef
from django.utils import timezone

from harvest import bulk
from harvest.classify.engine import classify
from harvest.classify.rules import RuleSet, load_rules
from harvest.classify.types import CATEGORIES, CLASSES, SEGMENTS, Banner, Verdict, banner_from_shodan, service_name
from harvest.models import Classification, Service
from harvest.records import RecordError, clean_text, parse_address
from harvest.services import ExportedService, register_export_enricher
from medexpo.lib.collector import fewer_collections

BATCH_SIZE = 1000
MAX_HOST_MODULES = 256  # a honeypot host can answer on thousands of ports; the engine needs a sample
MAX_JSON_TEXT = 2000  # bound on any string stored in evidence or details
MAX_JSON_ITEMS = 200
MAX_JSON_BYTES = 64 * 1024  # evidence or details larger than this are cut down item by item

ProgressFn = Callable[[int], None]
# Why a run judged a service, the first that applies. "unchanged": nothing of its own changed; a
# pending run judges it again because a service on its host did (its verdict depends on them).
REASONS = ("new", "banner_changed", "record_newer", "rules_changed", "unchanged")


class ClassificationError(Exception):
    """A classification job cannot run (bad rules, unreadable answer file); the message is for the user."""


# --- classifying -----------------------------------------------------------------------------


@dataclass(slots=True)
class RunSummary:
    rules_version: str
    mode: str  # "pending" or "all"
    examined: int = 0
    why: Counter = field(default_factory=Counter)  # REASONS
    by_class: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    unparseable: list[dict] = field(default_factory=list)  # first few: {service, reason}
    unparseable_count: int = 0
    honeypots: int = 0
    seconds_read: float = 0.0  # database fetch of the batch and its host context
    seconds_parse: float = 0.0  # JSON decode and banner_from_shodan
    seconds_engine: float = 0.0
    seconds_write: float = 0.0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.examined / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "rules_version": self.rules_version,
            "mode": self.mode,
            "classified": self.examined,
            "why": {r: self.why.get(r, 0) for r in REASONS},
            "by_class": {c: self.by_class.get(c, 0) for c in CLASSES},
            "by_category": dict(sorted(self.by_category.items())),
            "honeypots": self.honeypots,
            "unparseable": {"count": self.unparseable_count, "examples": self.unparseable},
            "seconds": round(self.seconds, 3),
            "rate_per_second": round(self.rate, 1),
            "time_split": {
                "read": round(self.seconds_read, 3),
                "parse": round(self.seconds_parse, 3),
                "engine": round(self.seconds_engine, 3),
                "write": round(self.seconds_write, 3),
            },
        }


def classification_rules_load(*, directory: Path | None = None) -> RuleSet:
    """The rule set, or a ClassificationError that names the bad file and rule."""
    from harvest.classify.rules import RuleError

    try:
        return load_rules(directory)
    except RuleError as exc:
        raise ClassificationError(f"invalid classification rules: {exc}") from None


def classification_pending_count(*, rules_version: str) -> int:
    """How many services a pending run judges: every service of a host with a pending one."""
    return Service.objects.filter(host_id__in=_pending_services(rules_version).values("host_id")).count()


def classification_run(
    *,
    everything: bool = False,
    rules: RuleSet | None = None,
    batch_size: int = BATCH_SIZE,
    progress: ProgressFn | None = None,
) -> RunSummary:
    """Classify services that are new, changed or unjudged under the current rules, with every
    other service of their hosts (all services with `everything`).

    Idempotent: a service has one row per rules version, rewritten in place when judged again,
    so running twice adds nothing, and a new rules version adds one row per service.
    """
    rules = rules or classification_rules_load()
    summary = RunSummary(rules_version=rules.version, mode="all" if everything else "pending")
    started = time.perf_counter()
    with fewer_collections():
        for batch in _service_batches(rules.version, everything, batch_size, summary):
            verdicts = _judge(batch, rules, summary)
            t0 = time.perf_counter()
            _store(verdicts, rules.version)
            summary.seconds_write += time.perf_counter() - t0
            if progress:
                progress(len(batch))
    summary.seconds = time.perf_counter() - started
    return summary


def classification_run_pending(
    *, rules: RuleSet | None = None, batch_size: int = BATCH_SIZE, progress: ProgressFn | None = None
) -> RunSummary:
    return classification_run(everything=False, rules=rules, batch_size=batch_size, progress=progress)


def classification_run_all(
    *, rules: RuleSet | None = None, batch_size: int = BATCH_SIZE, progress: ProgressFn | None = None
) -> RunSummary:
    return classification_run(everything=True, rules=rules, batch_size=batch_size, progress=progress)


def _pending_services(rules_version: str):  # noqa: ANN202 - a QuerySet of Service
    # Pending: no current verdict of these rules on this banner and this record (a newer record
    # with the same banner can bring another title or certificate). Going back to an earlier rules
    # version makes everything pending again, so its rows become current again.
    judged = Classification.objects.filter(
        service=OuterRef("pk"),
        current=True,
        rules_version=rules_version,
        banner_hash=OuterRef("banner_hash"),
        record_seen=OuterRef("last_seen"),
    )
    return Service.objects.filter(~Exists(judged))


@dataclass(slots=True)
class _Row:
    id: int
    host_id: int
    port: int
    transport: str
    banner_hash: str
    last_seen: datetime
    raw: str
    host_modules: tuple[str, ...] = ()
    reason: str = "unchanged"


_ROW_FIELDS = ("id", "host_id", "port", "transport", "banner_hash", "last_seen", "raw")


def _service_batches(rules_version: str, everything: bool, size: int, summary: RunSummary) -> Iterator[list[_Row]]:
    """Batches by keyset pagination (constant cost per batch, nothing held over): every service in
    primary-key order, or the pending ones host by host."""
    batches = _all_batches(size) if everything else _pending_batches(rules_version, size)
    while True:
        t0 = time.perf_counter()
        with transaction.atomic():
            bulk.tune_batch_transaction()
            rows = [_Row(*values) for values in next(batches, [])]
            if rows:
                _add_host_context(rows)
                _add_reasons(rows, rules_version)
        summary.seconds_read += time.perf_counter() - t0
        if not rows:
            return
        yield rows


def _all_batches(size: int) -> Iterator[list[tuple]]:
    last = 0
    while rows := list(Service.objects.filter(pk__gt=last).order_by("pk").values_list(*_ROW_FIELDS)[:size]):
        yield rows
        last = rows[-1][0]


def _pending_batches(rules_version: str, size: int) -> Iterator[list[tuple]]:
    """Every service of each host that has a pending one: a verdict depends on the host's other
    services (the honeypot test counts them), so a new or changed sibling changes it too. Whole
    hosts per batch, in host order: judging a host never changes what is pending on a later one."""
    pending = _pending_services(rules_version)
    last_host = 0
    while True:
        # Not DISTINCT in SQL: PostgreSQL would then compute the whole anti-join before the LIMIT
        # (360 ms a batch at 200,000 services) instead of walking the host index (10 ms).
        after = pending.filter(host_id__gt=last_host).order_by("host_id")
        hosts = list(dict.fromkeys(after.values_list("host_id", flat=True)[:size]))
        if not hosts:
            return
        # Up to `size` hosts, then cut at a host boundary once the batch holds `size` services.
        rows: list[tuple] = []
        for start in range(0, len(hosts), bulk.SQLITE_CHUNK):
            chunk = hosts[start : start + bulk.SQLITE_CHUNK]
            rows += Service.objects.filter(host_id__in=chunk).order_by("host_id", "pk").values_list(*_ROW_FIELDS)
            if len(rows) >= size:
                break
        cut = len(rows)
        if cut > size:
            last_of_batch = rows[size - 1][1]
            cut = next((i for i in range(size, len(rows)) if rows[i][1] != last_of_batch), len(rows))
        yield rows[:cut]
        last_host = rows[cut - 1][1]


def _add_host_context(rows: list[_Row]) -> None:
    """Each service learns what else its host runs: one query for the whole batch."""
    siblings: dict[int, list[tuple[int, str]]] = {}
    others = Service.objects.filter(host_id__in={r.host_id for r in rows}).order_by("host_id", "port")
    for host_id, sid, port, transport, module in others.values_list("host_id", "id", "port", "transport", "module"):
        siblings.setdefault(host_id, []).append((sid, service_name(module, port, transport)))
    for row in rows:
        # Distinct names, "dicom" first: the engine counts protocols, and a sample cut from all
        # names in port order could hold one module's many ports and no DICOM, so that services
        # of the same honeypot host were judged differently (or none of them flagged).
        names = dict.fromkeys(name for sid, name in siblings.get(row.host_id, ()) if sid != row.id)
        row.host_modules = tuple(sorted(names, key=lambda name: name != "dicom")[:MAX_HOST_MODULES])


def _add_reasons(rows: list[_Row], rules_version: str) -> None:
    """Why each service is judged, from its current verdict (one query for the whole batch)."""
    current = {
        sid: (version, banner_hash, seen)
        for sid, version, banner_hash, seen in Classification.objects.filter(
            service_id__in=[r.id for r in rows], current=True
        )
        .order_by()  # the model's order would join service and host to sort by address
        .values_list("service_id", "rules_version", "banner_hash", "record_seen")
    }
    for row in rows:
        if row.id not in current:
            row.reason = "new"
            continue
        version, banner_hash, seen = current[row.id]
        if banner_hash != row.banner_hash:
            row.reason = "banner_changed"
        elif seen != row.last_seen:
            row.reason = "record_newer"
        elif version != rules_version:
            row.reason = "rules_changed"


def _parse_raw(raw: str) -> dict:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Lone surrogate escapes in binary junk: Python's json accepts what orjson refuses.
        obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError(f"stored record is a JSON {type(obj).__name__}, not an object")
    return obj


def _judge(batch: list[_Row], rules: RuleSet, summary: RunSummary) -> list[tuple[_Row, Verdict | None, str]]:
    """(row, verdict, "") for every service, or (row, None, reason) when its stored record is unreadable."""
    t0 = time.perf_counter()
    banners: list[tuple[_Row, Banner | None, str]] = []
    for row in batch:
        try:
            banners.append((row, banner_from_shodan(_parse_raw(row.raw), row.host_modules), ""))
        except (ValueError, TypeError, RecursionError) as exc:
            banners.append((row, None, f"stored record unreadable: {type(exc).__name__}: {str(exc)[:200]}"))
    t1 = time.perf_counter()
    judged = [(row, *_classify_one(banner, rules, reason)) for row, banner, reason in banners]
    summary.seconds_parse += t1 - t0
    summary.seconds_engine += time.perf_counter() - t1
    for row, verdict, reason in judged:
        summary.examined += 1
        summary.why[row.reason] += 1
        if verdict is None:
            summary.unparseable_count += 1
            summary.by_class["unknown"] += 1
            summary.by_category["unparseable"] += 1
            if len(summary.unparseable) < 10:
                summary.unparseable.append({"service": row.id, "reason": reason})
            continue
        summary.by_class[verdict.cls] += 1
        summary.by_category[verdict.category] += 1
        summary.honeypots += verdict.honeypot
    return judged


def _classify_one(banner: Banner | None, rules: RuleSet, reason: str) -> tuple[Verdict | None, str]:
    if banner is None:
        return None, reason
    try:
        return classify(banner, rules), ""
    except Exception as exc:  # noqa: BLE001 - the engine is meant to be total; one bad banner must not stop a run
        return None, f"engine error: {type(exc).__name__}: {str(exc)[:200]}"


def _store(judged: list[tuple[_Row, Verdict | None, str]], rules_version: str) -> None:
    """One transaction per batch: retire other versions' current rows, then upsert this version's.

    Raw SQL rather than the ORM's bulk_create: compiling a 1000-row upsert costs more than the
    database spends executing it (PostgreSQL gets COPY into a stage, SQLite executemany).
    """
    dt = bulk.datetime_adapter()
    now = dt(timezone.now())
    rows = [_stored_values(row, verdict, reason, rules_version, now, dt) for row, verdict, reason in judged]
    ids = [row.id for row, _, _ in judged]
    with transaction.atomic():
        bulk.tune_batch_transaction()
        Classification.objects.filter(service_id__in=ids, current=True).exclude(rules_version=rules_version).update(
            current=False
        )
        bulk.upsert_rows(_TABLE, _COLUMNS, rows, conflict=("service_id", "rules_version"))


_TABLE = Classification._meta.db_table
_COLUMNS = (
    "service_id",
    "rules_version",
    "cls",
    "category",
    "segment",
    "evidence",
    "confidence",
    "honeypot",
    "honeypot_evidence",
    "product",
    "details",
    "banner_hash",
    "record_seen",
    "current",
    "classified_at",
)


def _stored_values(
    row: _Row, verdict: Verdict | None, reason: str, version: str, now: object, dt: Callable[[datetime], object]
) -> tuple:
    """A row in _COLUMNS order; JSON columns as JSON text."""
    if verdict is None:
        rule = "record.unreadable" if reason.startswith("stored") else "engine.error"
        evidence = [{"rule": rule, "field": "raw", "excerpt": _safe_text(reason, 200)}]
        return (row.id, version, "unknown", "unparseable", "", _json(evidence), 0.0, False, "[]", "", "{}",
                row.banner_hash, dt(row.last_seen), True, now)  # fmt: skip
    return (
        row.id,
        version,
        verdict.cls,
        verdict.category,
        verdict.segment,
        _json([_evidence(e) for e in verdict.evidence]),
        float(verdict.confidence),
        bool(verdict.honeypot),
        _json([_evidence(e) for e in verdict.honeypot_evidence]),
        _safe_text(verdict.product, 255),
        _json(verdict.details),
        row.banner_hash,
        dt(row.last_seen),
        True,
        now,
    )


def _json(value: object) -> str:
    """JSON text any database accepts; the careful walk only when the fast encoding is not safe."""
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = ""
    if not text or "\\u0000" in text or len(text) > MAX_JSON_BYTES:
        text = orjson.dumps(_json_safe(value, depth=0)).decode()
    return text


def _evidence(e: object) -> dict:
    return {
        "rule": _safe_text(getattr(e, "rule", ""), 200),
        "field": _safe_text(getattr(e, "field", ""), 64),
        "excerpt": _safe_text(getattr(e, "excerpt", ""), 200),
    }


def _safe_text(value: object, limit: int = MAX_JSON_TEXT) -> str:
    """Text any database's JSON can hold (PostgreSQL jsonb refuses NUL and lone surrogates)."""
    return clean_text(value if isinstance(value, str) else ("" if value is None else str(value)), limit)


def _json_safe(value: object, depth: int) -> object:
    if depth > 8:
        return None
    if isinstance(value, str):
        return _safe_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        items = list(value.items())[:MAX_JSON_ITEMS]
        return {_safe_text(k, 200): _json_safe(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value[:MAX_JSON_ITEMS]]
    if isinstance(value, bytes):
        return _safe_text(value.decode("latin-1"))
    return _safe_text(value)


# --- reading verdicts ------------------------------------------------------------------------


def classification_counts() -> dict:
    """Current verdicts per class and category, and how many services have none."""
    current = Classification.objects.filter(current=True)
    by_class = dict(current.values_list("cls").annotate(n=Count("id")).order_by())
    by_category = dict(current.values_list("category").annotate(n=Count("id")).order_by())
    total = Service.objects.count()
    return {
        "services": total,
        "classified": sum(by_class.values()),
        "unclassified": total - sum(by_class.values()),
        "by_class": {c: by_class.get(c, 0) for c in CLASSES},
        "by_category": dict(sorted(by_category.items())),
    }


@register_export_enricher
def classification_export_enrich(services: list[ExportedService], rows: list[dict]) -> None:
    """Export columns: class, category, segment, identified_product (the product the rules named;
    `product` is Shodan's), confidence, rules_version, evidence [{rule, excerpt}], honeypot (one
    query per batch). An unclassified service has null class, identified_product, confidence,
    rules_version and honeypot, an empty category and segment, and no evidence."""
    found = {
        values[0]: values[1:]
        for values in Classification.objects.filter(service_id__in=[s.pk for s in services], current=True)
        .order_by()  # a lookup by service: no join of service and host to sort by address
        .values_list(
            "service_id", "cls", "category", "segment", "product", "confidence", "rules_version", "evidence", "honeypot"
        )
    }
    for service, row in zip(services, rows, strict=True):
        cls, category, segment, product, confidence, version, evidence, honeypot = found.get(
            service.pk, (None, "", "", None, None, None, [], None)
        )
        row["class"] = cls
        row["category"] = category
        row["segment"] = segment
        row["identified_product"] = product
        row["confidence"] = confidence
        row["rules_version"] = version
        row["evidence"] = [{"rule": e.get("rule", ""), "excerpt": e.get("excerpt", "")} for e in evidence]
        row["honeypot"] = honeypot


# --- evaluation against an answer file -------------------------------------------------------

LABEL_FIELDS = ("class", "category", "segment", "honeypot")


@dataclass(slots=True)
class _Label:
    line: int
    key: tuple[str, int, str]
    values: dict


MAX_PROBLEMS = 1000  # answer lines reported one by one; beyond this they are only counted


class _Problems:
    def __init__(self) -> None:
        self.items: list[dict] = []
        self.count = 0

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append({"line": line, "reason": reason})


class EvaluationTally:
    """(answer, verdict) counts per field: constant memory whatever the size of the answer file."""

    def __init__(self) -> None:
        self.matched = 0
        self.pairs: dict[str, Counter] = {name: Counter() for name in LABEL_FIELDS}

    def add(self, label: dict, verdict: dict) -> None:
        self.matched += 1
        for name in LABEL_FIELDS:
            if name in label:
                self.pairs[name][(str(label[name]), str(verdict[name]))] += 1


def classification_answer_file(*, path: str | Path) -> Path:
    """The answer file's path, or a ClassificationError when there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise ClassificationError(f"no such answer file: {path}")
    return path


def classification_evaluate(*, path: str | Path, batch_size: int = 1000) -> dict:
    """Precision and recall of the current verdicts against an answer file (JSON lines).

    Each line: {"ip", "port", "transport", "class", "category", "segment", "honeypot"}. Lines that
    cannot be read or match no classified service are reported with line number and reason.
    """
    path = classification_answer_file(path=path)
    tally, problems = EvaluationTally(), _Problems()
    seen: set[tuple[str, int, str]] = set()
    batch: list[_Label] = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                label = _parse_label(number, line)
            except ValueError as exc:
                problems.add(number, str(exc))
                continue
            if label.key in seen:
                problems.add(number, f"duplicate label for {_key_text(label.key)}")
                continue
            seen.add(label.key)
            batch.append(label)
            if len(batch) >= batch_size:
                _match_labels(batch, tally, problems)
                batch = []
    _match_labels(batch, tally, problems)
    problems.items.sort(key=lambda p: p["line"])
    return evaluation_metrics(tally=tally) | {
        "answer_file": str(path),
        "unmatched": problems.items,
        "unmatched_count": problems.count,
    }


# The values a label may hold: anything else is a typo or hostile text (it is printed to a terminal).
LABEL_VALUES: dict[str, tuple[object, ...]] = {
    "class": CLASSES,
    "category": CATEGORIES,
    "segment": SEGMENTS,
    "honeypot": (True, False),
}


def _parse_label(number: int, line: bytes) -> _Label:
    if number == 1:
        line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as some editors write
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ValueError("not valid JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    try:
        ip = parse_address({"ip_str": obj.get("ip")})
    except RecordError as exc:
        raise ValueError(f"bad ip: {exc.detail}") from None
    port = obj.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"bad port: {str(port)[:40]!r}")
    transport = obj.get("transport") or "tcp"
    if transport not in ("tcp", "udp"):
        raise ValueError(f"bad transport: {str(transport)[:40]!r}")
    if obj.get("class") is None:
        raise ValueError(f"class must be one of {', '.join(CLASSES)}")
    values = {k: obj[k] for k in LABEL_FIELDS if k in obj and obj[k] is not None}
    for name, value in values.items():
        if not _known_value(value, LABEL_VALUES[name]):
            known = ", ".join(str(v) or '""' for v in LABEL_VALUES[name])
            raise ValueError(f"{name} must be one of {known}, not {str(value)[:40]!r}")
    return _Label(number, (ip, port, transport), values)


def _known_value(value: object, known: tuple[object, ...]) -> bool:
    # Compared with its type: 1 == True and a list is unhashable, neither is a label value.
    return any(type(value) is type(k) and value == k for k in known)


def _key_text(key: tuple[str, int, str]) -> str:
    ip, port, transport = key
    return f"[{ip}]:{port}/{transport}" if ":" in ip else f"{ip}:{port}/{transport}"


def _match_labels(batch: list[_Label], tally: EvaluationTally, problems: _Problems) -> None:
    if not batch:
        return
    services = {
        (ip, port, transport): sid
        for sid, ip, port, transport in Service.objects.filter(host__ip__in={b.key[0] for b in batch})
        .order_by()
        .values_list("id", "host__ip", "port", "transport")
    }
    verdicts = {
        sid: {"class": cls, "category": category, "segment": segment, "honeypot": honeypot}
        for sid, cls, category, segment, honeypot in Classification.objects.filter(
            service_id__in=services.values(), current=True
        )
        .order_by()
        .values_list("service_id", "cls", "category", "segment", "honeypot")
    }
    for label in batch:
        sid = services.get(label.key)
        if sid is None:
            problems.add(label.line, f"no stored service {_key_text(label.key)}")
        elif sid not in verdicts:
            problems.add(label.line, f"service {_key_text(label.key)} is not classified")
        else:
            tally.add(label.values, verdicts[sid])


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _per_label(pairs: Counter, always: tuple[str, ...] = ()) -> dict:
    """Precision, recall and F1 for each value of one field, from (answer, verdict) counts."""
    values = sorted({a for a, _ in pairs} | {p for _, p in pairs} | set(always))
    out = {}
    for value in values:
        tp = pairs[(value, value)]
        predicted = sum(n for (_, p), n in pairs.items() if p == value)
        actual = sum(n for (a, _), n in pairs.items() if a == value)
        precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
        # 2TP / (predicted + actual): the harmonic mean of precision and recall from the counts
        # (not their rounded values), and 0 rather than undefined when a value was labelled or
        # predicted but never right.
        f1 = _ratio(2 * tp, predicted + actual)
        out[value] = {"support": actual, "predicted": predicted, "true_positives": tp, "precision": precision}
        out[value] |= {"recall": recall, "f1": f1}
    return out


def evaluation_metrics(*, tally: EvaluationTally) -> dict:
    """Pure: metrics from the tallied (answer, verdict) pairs. Fields absent from a label are not scored."""
    classes = tally.pairs["class"]
    confusion = {a: {p: classes[(a, p)] for p in CLASSES} for a in CLASSES}
    correct = sum(confusion[c][c] for c in CLASSES)
    return {
        "matched": tally.matched,
        "accuracy": _ratio(correct, tally.matched),
        "accuracy_by_field": {
            name: _ratio(sum(n for (a, p), n in pairs.items() if a == p), sum(pairs.values()))
            for name, pairs in tally.pairs.items()
        },
        "per_class": _per_label(classes, CLASSES),
        "per_category": _per_label(tally.pairs["category"]),
        "per_segment": _per_label(tally.pairs["segment"]),
        "honeypot": _per_label(tally.pairs["honeypot"]).get("True"),
        "confusion": confusion,
    }
