"""The pure classification engine: classify(banner, rules) -> Verdict.

No I/O, no ORM, no clock. Total: any Banner gets a Verdict, decoder or rule trouble becomes an
`unknown/unparseable` verdict with evidence. Bounded: every field is cut to MAX_SCAN characters
before a rule reads it, and the rules' regular expressions are checked for linear shapes at load.

Order of decisions: protocol decoders first (a structurally valid DICOM or HL7 reply is the
strongest evidence there is), then medical signatures, then known ordinary services. The port is
never evidence of what runs on it; it only decides the `medical_port` segment.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harvest.classify.decoders import dicom, hl7, http
from harvest.classify.rules import MAX_SCAN, FieldRules, Rule, RuleSet
from harvest.classify.types import MAX_EXCERPT, Banner, Evidence, Verdict, service_name

# Rendering of bytes that are not printable text, so evidence and details are safe to store
# (PostgreSQL refuses NUL in text, and lone surrogates from broken JSON in any encoding) while
# staying recognisable.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
HONEYPOT_CONFIDENCE_FACTOR = 0.5
MAX_EVIDENCE = 16


def safe_text(text: str, limit: int = MAX_EXCERPT) -> str:
    return _UNPRINTABLE.sub(".", text[:limit])


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value, 1024)
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return value


@dataclass(slots=True)
class _Match:
    rule: Rule
    field: str
    text: str
    version: str


@dataclass(slots=True)
class _State:
    """What the engine has found so far for one banner."""

    protocol: str = "text"
    cls: str = ""
    category: str = ""
    confidence: float = 0.0
    product: str = ""
    software: bool = False
    evidence: list[Evidence] = field(default_factory=list)
    honeypot: list[Evidence] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    virtual: dict = field(default_factory=dict)


def classify(banner: Banner, rules: RuleSet) -> Verdict:
    """The verdict for one banner. Pure, total and bounded in time."""
    try:
        return _classify(banner, rules)
    except Exception as exc:  # noqa: BLE001 - totality is the contract; the reason goes into evidence
        return Verdict(
            cls="unknown",
            category="unparseable",
            segment="",
            evidence=(Evidence("engine.error", "data", safe_text(f"{type(exc).__name__}: {exc}")),),
            confidence=0.0,
            honeypot=False,
            honeypot_evidence=(),
            product="",
            details={"error": type(exc).__name__},
            rules_version=getattr(rules, "version", ""),
        )


def _str(value: object, limit: int = MAX_SCAN) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _classify(banner: Banner, rules: RuleSet) -> Verdict:
    state = _State()
    data = _str(banner.data)
    _decode(banner, data, state)
    matches = _match_rules(banner, data, rules, state)
    _decide(banner, data, rules, state, matches)
    _honeypot_checks(banner, rules, state, matches)
    segment = _segment(banner, rules, state)
    confidence = state.confidence * (HONEYPOT_CONFIDENCE_FACTOR if state.honeypot else 1.0)
    return Verdict(
        cls=state.cls,
        category=state.category,
        segment=segment,
        evidence=tuple(state.evidence[:MAX_EVIDENCE]),
        confidence=round(min(max(confidence, 0.0), 1.0), 3),
        honeypot=bool(state.honeypot),
        honeypot_evidence=tuple(state.honeypot[:MAX_EVIDENCE]),
        product=safe_text(state.product, 120),
        details=_safe(state.details),
        rules_version=rules.version,
    )


# --- protocol decoders -------------------------------------------------------------------------


def _decode(banner: Banner, data: str, state: _State) -> None:
    if dicom.looks_like_pdu(data):
        _decode_dicom(data, state)
    elif data.startswith("DICOM Server Response") or data.lstrip().startswith("DICOM Server Response"):
        _decode_dicom_summary(data, state)
    elif hl7.looks_like_hl7(data):
        _decode_hl7(data, state)
    elif http.looks_like_http(data):
        resp = http.decode_response(data, _str(banner.http_html))
        state.protocol = "http"
        if resp is not None:
            state.details["http"] = resp.as_dict()
    elif not data.strip():
        has_http = any(_str(v) for v in (banner.http_title, banner.http_server, banner.http_html))
        state.protocol = "http" if has_http else "blank"


def _decode_dicom(data: str, state: _State) -> None:
    pdu = dicom.decode_pdu(data)
    if pdu is None:
        return
    state.details["dicom"] = pdu.as_dict()
    excerpt = safe_text(data)
    if not pdu.valid:
        state.evidence.append(Evidence("dicom.malformed_pdu", "data", excerpt))
        return
    state.protocol = "dicom"
    state.virtual["dicom.implementation_version"] = pdu.implementation_version
    state.virtual["dicom.implementation_class_uid"] = pdu.implementation_class_uid
    state.virtual["dicom.ae_titles"] = f"{pdu.called_ae}\n{pdu.calling_ae}"
    if pdu.kind == "associate_rq":
        # A server never answers with a request: this is the scanner's own probe sent back.
        state.evidence.append(Evidence("dicom.associate_rq", "data", excerpt))
        state.honeypot.append(Evidence("honeypot.echoed_request", "data", excerpt))
        return
    # An A-ABORT is ten bytes with little structure to check: good evidence, but less than a reply.
    state.cls, state.category = "medical", "dicom"
    state.confidence = 0.8 if pdu.kind == "abort" else 0.95
    state.evidence.append(Evidence(f"dicom.{pdu.kind}", "data", excerpt))
    if pdu.repeated_sub_items:
        state.evidence.append(Evidence("dicom.repeated_sub_item", "data", ", ".join(pdu.repeated_sub_items)))


def _decode_dicom_summary(data: str, state: _State) -> None:
    fields = dicom.decode_summary(data.lstrip())
    if fields is None:
        return
    state.details["dicom"] = {"pdu": "summary", **fields}
    excerpt = safe_text(data.lstrip())
    if not fields.get("valid"):
        state.evidence.append(Evidence("dicom.summary_without_fields", "data", excerpt))
        return
    state.protocol = "dicom"
    state.virtual["dicom.implementation_version"] = fields.get("implementation_version", "")
    state.virtual["dicom.implementation_class_uid"] = fields.get("implementation_class_uid", "")
    state.virtual["dicom.ae_titles"] = f"{fields.get('called_ae', '')}\n{fields.get('calling_ae', '')}"
    state.cls, state.category, state.confidence = "medical", "dicom", 0.85
    state.evidence.append(Evidence("dicom.summary", "data", excerpt))


def _decode_hl7(data: str, state: _State) -> None:
    msg = hl7.decode_message(data)
    if msg is None:
        return
    state.details["hl7"] = msg.as_dict()
    excerpt = safe_text(data.lstrip("\x0b"))
    if not msg.valid:
        state.evidence.append(Evidence("hl7.malformed", "data", excerpt))
        return
    state.protocol = "hl7"
    state.virtual["hl7.sending_application"] = msg.sending_application
    state.virtual["hl7.sending_facility"] = msg.sending_facility
    state.cls, state.category = "medical", "hl7"
    state.confidence = 0.95 if msg.framing == "mllp" else 0.85
    state.evidence.append(Evidence("hl7.ack" if msg.ack_code else "hl7.message", "data", excerpt))


# --- rules -------------------------------------------------------------------------------------


def _field_value(banner: Banner, data: str, name: str, state: _State) -> str:
    if name == "data":
        return data
    if name in state.virtual:
        return state.virtual[name]
    if name.startswith(("dicom.", "hl7.")):
        return ""
    value = getattr(banner, name, "")
    if isinstance(value, tuple):
        return "\n".join(v for v in value[:64] if isinstance(v, str))[:MAX_SCAN]
    if name in _HTML_FIELDS:
        return _page_text(_str(value))
    return _str(value)


_HTML_FIELDS = ("http_title", "http_html")


def _page_text(text: str) -> str:
    """A title or page as a person reads it: pages write letters and spaces as entities
    ("Orthanc&nbsp;Explorer", "Dr&auml;ger"), and a no-break space is a space to the reader."""
    if "&" in text:
        text = html.unescape(text)
    return text.replace("\xa0", " ") if "\xa0" in text else text


def _match_rules(banner: Banner, data: str, rules: RuleSet, state: _State) -> list[_Match]:
    port = banner.port if isinstance(banner.port, int) else -1
    found: list[_Match] = []
    for group in rules.by_field:
        text = _field_value(banner, data, group.field, state)
        if not text:
            continue
        for rule in group.anchored_for(text):
            _try(rule, rule.pattern.match(text), group.field, state, port, found)
        if group.searching:
            for i in _candidates(group, text):
                rule = group.searching[i]
                _try(rule, rule.pattern.search(text), group.field, state, port, found)
    return found


def _candidates(group: FieldRules, text: str) -> list[int]:
    """Indexes of the searching rules whose needles occur in `text`, in file order."""
    hits = set(group.always)
    if group.automaton is not None:
        for _end, indexes in group.automaton.iter(_fold(text)):
            hits.update(indexes)
    return sorted(hits)


# Characters that IGNORECASE matching treats as ASCII letters but str.lower() leaves alone.
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def _fold(text: str) -> str:
    return text.lower() if text.isascii() else text.translate(_FOLD).lower()


def _try(rule: Rule, m: re.Match | None, name: str, state: _State, port: int, found: list[_Match]) -> None:
    if m is None:
        return
    if rule.protocols and state.protocol not in rule.protocols:
        return
    if rule.ports and port not in rule.ports:
        return
    found.append(_Match(rule, name, m.group(0), m.groupdict().get("version") or ""))


def _product(match: _Match) -> str:
    rule, version = match.rule, match.version
    if not rule.product:
        return ""
    if version and rule.version_format == "dotted":
        # "367" -> "3.6.7" (DCMTK, pynetdicom); "4,4,0,36" -> "4.4.0.36" (Synapse)
        version = ".".join(version) if version.isdigit() else version.replace(",", ".").replace("_", ".")
    return f"{rule.product} {version}".strip()


def _evidence(match: _Match) -> Evidence:
    return Evidence(match.rule.id, match.field, safe_text(match.text))


def _best(matches: list[_Match]) -> _Match | None:
    return max(matches, key=lambda m: m.rule.confidence, default=None)


def _decide(banner: Banner, data: str, rules: RuleSet, state: _State, matches: list[_Match]) -> None:
    medical = [m for m in matches if m.rule.cls == "medical" and not m.rule.honeypot]
    if state.cls != "medical":  # decoded fields name a product only once the protocol is proven
        medical = [m for m in medical if not m.field.startswith(("dicom.", "hl7."))]
    ordinary = [m for m in matches if m.rule.cls != "medical" and not m.rule.honeypot]
    state.honeypot.extend(_evidence(m) for m in matches if m.rule.honeypot)
    if state.cls == "medical":
        # A decoder proved the protocol and rules only name the product: such a service belongs
        # to the group of its port, not to the "software" group of web and text signatures.
        _identify(state, medical)
        return
    best = _best(medical)
    if best is not None:
        state.cls, state.category, state.confidence = "medical", best.rule.category, best.rule.confidence
        _identify(state, medical)
        state.software = best.rule.segment == "software" or any(m.rule.segment == "software" for m in medical)
        return
    best = _best(ordinary)
    if best is not None:
        state.cls, state.category, state.confidence = best.rule.cls, best.rule.category, best.rule.confidence
        state.product = _product(best)
        state.evidence.insert(0, _evidence(best))
        return
    _fallback(banner, rules, state)


def _identify(state: _State, medical: list[_Match]) -> None:
    ranked = sorted(medical, key=lambda m: -m.rule.confidence)
    named = next((m for m in ranked if m.rule.product), None)
    if named is not None:
        state.product = _product(named)
    state.evidence.extend(_evidence(m) for m in ranked)


def _fallback(banner: Banner, rules: RuleSet, state: _State) -> None:
    if state.protocol == "blank" and banner.port in rules.silent_ports:
        # Some ordinary services answer a scanner with silence by design (a BGP speaker waits
        # for an OPEN from a configured peer); Shodan records them with an empty banner.
        state.cls, state.category, state.confidence = "non_medical", "known_service", 0.4
        state.evidence.append(Evidence("service.silent_port", "port", str(banner.port)))
    elif state.protocol == "blank":
        state.cls, state.category, state.confidence = "unknown", "blank", 0.9
        state.evidence.append(Evidence("banner.blank", "data", ""))
    else:
        state.cls, state.category, state.confidence = "unknown", "unparseable", 0.5
        if not state.evidence:
            state.evidence.append(Evidence("banner.unrecognised", "data", safe_text(_str(banner.data))))


# --- honeypots and segments --------------------------------------------------------------------


def _honeypot_checks(banner: Banner, rules: RuleSet, state: _State, matches: list[_Match]) -> None:
    modules = banner.host_modules if isinstance(banner.host_modules, tuple) else ()
    # Named as its siblings name it in the host context (harvest/classify/services.py).
    own = (
        "dicom"
        if state.protocol == "dicom"
        else service_name(_str(banner.module, 64), banner.port, _str(banner.transport, 8))
    )
    protocols = {m for m in modules if isinstance(m, str) and m} | ({own} if own else set())
    others = protocols - {"dicom"}
    if (state.protocol == "dicom" or "dicom" in protocols) and len(others) >= rules.honeypot_min_host_modules:
        # A PACS does not also answer as a dozen unrelated protocols; a honeypot emulating
        # everything does, and every service of such a host is part of it.
        shown = ", ".join(sorted(protocols)[:20])
        state.honeypot.append(Evidence("honeypot.many_protocols", "host_modules", safe_text(shown)))


def _segment(banner: Banner, rules: RuleSet, state: _State) -> str:
    org_evidence = _organisation(banner, rules)
    if org_evidence is not None:
        state.evidence.append(org_evidence)
        if state.cls == "non_medical":
            state.category = "hospital_infra"
        return "hospital_organisation"
    if state.cls == "medical" and state.software:
        return "software"
    hint = rules.ports.get(banner.port)
    if hint is not None and (not hint.hint_only or state.category == "pump_server"):
        return "medical_port"
    return ""


def _organisation(banner: Banner, rules: RuleSet) -> Evidence | None:
    for name in ("org", "isp", "ssl_subject"):
        found = _cached(_organisation_in_text, _str(getattr(banner, name, ""), 1024), rules)
        if found is not None:
            return Evidence(found[0], name, found[1])
    for name in ("hostnames", "ssl_names"):
        values = getattr(banner, name, ())
        for host in values[:64] if isinstance(values, tuple) else ():
            found = _cached(_organisation_in_host, host, rules) if isinstance(host, str) else None
            if found is not None:
                return Evidence(found[0], name, found[1])
    return None


# Organisation names and hostnames repeat across thousands of banners (one provider, many
# hosts): remember the answer per rules version, kind of lookup and text. Bounded; cleared when full.
_ORG_CACHE: dict[tuple, tuple[str, str] | None] = {}
_ORG_CACHE_SIZE = 8192
_Lookup = Callable[[str, RuleSet], "tuple[str, str] | None"]


def _cached(lookup: _Lookup, text: str, rules: RuleSet) -> tuple[str, str] | None:
    if not text:
        return None
    key = (rules.version, lookup.__name__, text)
    if key in _ORG_CACHE:
        return _ORG_CACHE[key]
    found = lookup(text, rules)
    if len(_ORG_CACHE) >= _ORG_CACHE_SIZE:
        _ORG_CACHE.clear()
    _ORG_CACHE[key] = found
    return found


def _organisation_in_text(text: str, rules: RuleSet) -> tuple[str, str] | None:
    care = rules.healthcare
    if text.strip() in care.short_aliases:
        return ("organisation.alias", safe_text(text))
    m = care.name_pattern.search(text) or care.word_pattern.search(text)
    return ("organisation.name", safe_text(m.group(0))) if m else None


def _organisation_in_host(host: str, rules: RuleSet) -> tuple[str, str] | None:
    care = rules.healthcare
    if _in_domains(host.lower().rstrip("."), care.domains):
        return ("organisation.domain", safe_text(host))
    if care.word_pattern.search(host[:253]):
        return ("organisation.word", safe_text(host))
    return None


def _in_domains(host: str, domains: frozenset[str]) -> bool:
    if len(host) > 253:  # longer than any DNS name: not a hostname, and costly to split
        return False
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(max(len(labels) - 1, 0)))
