"""DICOM upper-layer PDUs (PS3.8 section 9.3) as they appear in a banner: one character per byte.

Pure and bounded: reads at most MAX_PDU characters, never raises on any input, and only calls a
reply valid when its structure checks out (type, lengths, items that tile the PDU exactly). The
string "DICOM" alone proves nothing; a well-formed A-ASSOCIATE-AC, -RJ or A-ABORT does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_PDU = 64 * 1024
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
ABORT = 0x07
PDU_NAMES = {ASSOCIATE_RQ: "associate_rq", ASSOCIATE_AC: "associate_ac", ASSOCIATE_RJ: "associate_rj", ABORT: "abort"}

PC_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason",
    3: "abstract-syntax-not-supported",
    4: "transfer-syntaxes-not-supported",
}
RJ_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}
RJ_SOURCES = {1: "service-user", 2: "service-provider-acse", 3: "service-provider-presentation"}
RJ_REASONS = {1: (1, 2, 3, 7), 2: (1, 2), 3: (1, 2)}  # the diagnostics each source may give (PS3.8 9.3.4)
ABORT_SOURCES = {0: "service-user", 1: "reserved", 2: "service-provider"}
MAX_ABORT_REASON = 6

_UID = re.compile(r"[0-9]{1,64}(?:\.[0-9]{1,64}){0,63}")


@dataclass(slots=True)
class DicomPdu:
    """What a DICOM PDU says. `valid` is the structural verdict; `error` says why not."""

    pdu_type: int
    kind: str  # associate_ac | associate_rj | abort | associate_rq
    valid: bool
    error: str = ""
    length: int = 0
    called_ae: str = ""
    calling_ae: str = ""
    application_context: str = ""
    presentation_contexts: list[dict] = field(default_factory=list)
    max_pdu_length: int | None = None
    implementation_class_uid: str = ""
    implementation_version: str = ""
    result: str = ""
    source: str = ""
    reason: int | None = None
    trailing: int = 0
    # User-information sub-items sent more than once (PS3.8 allows one of each): the first counts,
    # as in pynetdicom; a real toolkit does not repeat them, a fake or broken peer may.
    repeated_sub_items: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"pdu": self.kind, "valid": self.valid, "length": self.length}
        if self.error:
            out["error"] = self.error
        if self.kind in ("associate_ac", "associate_rq"):
            out.update(
                called_ae=self.called_ae,
                calling_ae=self.calling_ae,
                application_context=self.application_context,
                presentation_contexts=self.presentation_contexts,
                max_pdu_length=self.max_pdu_length,
                implementation_class_uid=self.implementation_class_uid,
                implementation_version=self.implementation_version,
            )
        else:
            out.update(result=self.result, source=self.source, reason=self.reason)
        if self.trailing:
            out["trailing_bytes"] = self.trailing
        if self.repeated_sub_items:
            out["repeated_sub_items"] = self.repeated_sub_items
        return out


def looks_like_pdu(data: str) -> bool:
    """The cheap check the engine dispatches on: a PDU type byte and a zero reserved byte, and for
    an A-ASSOCIATE-RJ or A-ABORT the only length they can have (4). Other protocols start with
    0x03 0x00 too (RDP's TPKT header): their replies are not malformed DICOM."""
    if len(data) < 10 or data[1] != "\x00":
        return False
    first = data[0]
    if first in "\x03\x07":
        return data[2:6] == "\x00\x00\x00\x04"
    return first in "\x01\x02"


def _u16(data: str, pos: int) -> int:
    return (ord(data[pos]) << 8) | ord(data[pos + 1])


def _u32(data: str, pos: int) -> int:
    return (_u16(data, pos) << 16) | _u16(data, pos + 2)


def _is_bytes(data: str) -> bool:
    try:
        data.encode("latin-1")  # C speed; fails on any character above U+00FF
    except UnicodeEncodeError:
        return False
    return True


def _uid(value: str) -> str:
    # UIDs may be padded with one NUL to an even length (PS3.5 9.1).
    value = value.rstrip("\x00 ")
    return value if _UID.fullmatch(value) else ""


def _text(value: str) -> str:
    return "".join(c if " " <= c <= "~" else "." for c in value.rstrip("\x00 ")).strip()


def decode_pdu(data: str) -> DicomPdu | None:
    """Decode the first PDU of `data`; None if it does not even start like one. Never raises."""
    if not looks_like_pdu(data):
        return None
    head = data[:MAX_PDU]
    if not _is_bytes(head[:6]):
        return None
    kind = PDU_NAMES[ord(head[0])]
    pdu = DicomPdu(pdu_type=ord(head[0]), kind=kind, valid=False, length=_u32(head, 2))
    try:
        _decode_body(head, pdu)
    except (IndexError, ValueError) as exc:  # a truncated item: report it, never raise
        pdu.valid = False
        pdu.error = pdu.error or f"truncated or malformed: {exc.__class__.__name__}"
    if pdu.valid and len(data) > 6 + pdu.length:
        pdu.trailing = len(data) - 6 - pdu.length
    return pdu


def _decode_body(head: str, pdu: DicomPdu) -> None:
    end = 6 + pdu.length
    if end > len(head):
        pdu.error = f"PDU length {pdu.length} exceeds the {len(head) - 6} bytes present"
        return
    if not _is_bytes(head[:end]):
        pdu.error = "characters above U+00FF: not a byte string"
        return
    if pdu.pdu_type in (ASSOCIATE_RJ, ABORT):
        _decode_short(head, pdu)
    else:
        _decode_associate(head, end, pdu)


def _decode_short(head: str, pdu: DicomPdu) -> None:
    if pdu.length != 4:
        pdu.error = f"length {pdu.length}, expected 4"
        return
    result, source, reason = ord(head[7]), ord(head[8]), ord(head[9])
    if pdu.pdu_type == ASSOCIATE_RJ:
        if result not in RJ_RESULTS or source not in RJ_SOURCES or reason not in RJ_REASONS[source]:
            pdu.error = f"result {result}, source {source} or reason {reason} out of range"
            return
        pdu.result, pdu.source = RJ_RESULTS[result], RJ_SOURCES[source]
    else:
        if source not in ABORT_SOURCES or reason > MAX_ABORT_REASON:
            pdu.error = f"source {source} or reason {reason} out of range"
            return
        pdu.result, pdu.source = "abort", ABORT_SOURCES[source]
    pdu.reason = reason
    pdu.valid = True


def _decode_associate(head: str, end: int, pdu: DicomPdu) -> None:
    if pdu.length < 68:
        pdu.error = f"length {pdu.length} shorter than the fixed 68-byte header"
        return
    if not _u16(head, 6) & 1:
        pdu.error = "protocol version bit 1 not set"
        return
    pdu.called_ae, pdu.calling_ae = _text(head[10:26]), _text(head[26:42])
    seen_user_info = [False]
    pos = 74
    while pos < end:
        item_type, length = ord(head[pos]), _u16(head, pos + 2)
        value_end = pos + 4 + length
        if value_end > end:
            pdu.error = f"item 0x{item_type:02x} at byte {pos} runs past the PDU end"
            return
        _item(head, item_type, pos + 4, value_end, pdu)
        seen_user_info[0] = seen_user_info[0] or item_type == 0x50
        if pdu.error:
            return
        pos = value_end
    if pdu.application_context != APPLICATION_CONTEXT:
        pdu.error = f"application context {pdu.application_context!r} is not the DICOM one"
        return
    if not pdu.presentation_contexts or not seen_user_info[0]:
        # PS3.8 9.3.2/9.3.3: an association always carries presentation contexts and user information.
        pdu.error = "no presentation context or no user information item"
        return
    pdu.valid = True


def _item(head: str, item_type: int, start: int, end: int, pdu: DicomPdu) -> None:
    if item_type == 0x10:
        pdu.application_context = _uid(head[start:end])
    elif item_type == 0x21 and pdu.pdu_type == ASSOCIATE_AC:
        _ac_context(head, start, end, pdu)
    elif item_type == 0x20 and pdu.pdu_type == ASSOCIATE_RQ:
        _rq_context(head, start, end, pdu)
    elif item_type == 0x50:
        _user_info(head, start, end, pdu)
    else:
        pdu.error = f"unexpected item 0x{item_type:02x} at byte {start - 4}"


def _sub_items(head: str, start: int, end: int, pdu: DicomPdu) -> Iterator[tuple[int, str]]:
    pos = start
    while pos < end:
        sub_type, length = ord(head[pos]), _u16(head, pos + 2)
        if pos + 4 + length > end:
            pdu.error = f"sub-item 0x{sub_type:02x} at byte {pos} runs past its item"
            return
        yield sub_type, head[pos + 4 : pos + 4 + length]
        pos += 4 + length


def _ac_context(head: str, start: int, end: int, pdu: DicomPdu) -> None:
    if end - start < 4:
        pdu.error = "presentation context item too short"
        return
    result = ord(head[start + 2])
    syntaxes = [_uid(v) for t, v in _sub_items(head, start + 4, end, pdu) if t == 0x40]
    if len(pdu.presentation_contexts) < 128:
        pdu.presentation_contexts.append(
            {
                "id": ord(head[start]),
                "result": PC_RESULTS.get(result, f"reserved-{result}"),
                "transfer_syntax": syntaxes[0] if syntaxes else "",
            }
        )


def _rq_context(head: str, start: int, end: int, pdu: DicomPdu) -> None:
    if end - start < 4:
        pdu.error = "presentation context item too short"
        return
    abstract, transfer = "", []
    for sub_type, value in _sub_items(head, start + 4, end, pdu):
        if sub_type == 0x30:
            abstract = _uid(value)
        elif sub_type == 0x40:
            transfer.append(_uid(value))
    if len(pdu.presentation_contexts) < 128:
        pdu.presentation_contexts.append(
            {"id": ord(head[start]), "abstract_syntax": abstract, "transfer_syntaxes": transfer[:16]}
        )


_USER_SUB_ITEMS = {0x51: "max_pdu_length", 0x52: "implementation_class_uid", 0x55: "implementation_version"}


def _user_info(head: str, start: int, end: int, pdu: DicomPdu) -> None:
    seen: set[int] = set()
    for sub_type, value in _sub_items(head, start, end, pdu):
        if sub_type in seen:
            name = _USER_SUB_ITEMS[sub_type]
            if name not in pdu.repeated_sub_items:
                pdu.repeated_sub_items.append(name)
            continue
        if sub_type == 0x51 and len(value) == 4:
            pdu.max_pdu_length = _u32(value, 0)
        elif sub_type == 0x52:
            pdu.implementation_class_uid = _uid(value)
        elif sub_type == 0x55:
            pdu.implementation_version = _text(value)[:16]
        if sub_type in _USER_SUB_ITEMS:
            seen.add(sub_type)


# Shodan also shows DICOM as a text summary. Its exact layout is not published, so read it as
# "key: value" lines after the "DICOM Server Response" heading and require the fields a real
# association answer carries, never the heading alone.
_SUMMARY_HEAD = re.compile(r"\A\s{0,8}DICOM Server Response\b")
_SUMMARY_LINE = re.compile(r"(?m)^[ \t]{0,8}([A-Za-z][A-Za-z /_-]{0,40}?)[ \t]{0,8}:[ \t]{0,8}([^\r\n]{0,200})")
_SUMMARY_KEYS = {
    "ae title": "called_ae",
    "called ae title": "called_ae",
    "called ae": "called_ae",
    "calling ae title": "calling_ae",
    "calling ae": "calling_ae",
    "implementation class uid": "implementation_class_uid",
    "implementation uid": "implementation_class_uid",
    "implementation version": "implementation_version",
    "implementation version name": "implementation_version",
    "result": "result",
    "association": "result",
    "status": "result",
    "maximum pdu length": "max_pdu_length",
    "max pdu length": "max_pdu_length",
}


def decode_summary(data: str) -> dict | None:
    """The text form: None unless it starts with the heading; otherwise the fields found."""
    head = data[:8192]
    if not _SUMMARY_HEAD.match(head):
        return None
    fields: dict = {}
    for m in _SUMMARY_LINE.finditer(head):
        key = _SUMMARY_KEYS.get(m.group(1).strip().lower())
        if key and key not in fields:
            fields[key] = m.group(2).strip()
    uid = fields.get("implementation_class_uid", "")
    if uid and not _UID.fullmatch(uid):
        fields.pop("implementation_class_uid")
    fields["valid"] = bool(
        fields.get("implementation_class_uid") or fields.get("implementation_version") or fields.get("called_ae")
    )
    return fields
