"""HL7 v2 messages in a banner, framed by MLLP (0x0B ... 0x1C 0x0D) or bare.

Pure and bounded: reads at most MAX_MESSAGE characters and never raises. A message is valid when
it starts with an MSH segment whose encoding characters are sane and which names a message type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_MESSAGE = 64 * 1024
MAX_SEGMENTS = 64
START, END = "\x0b", "\x1c\r"
ACK_CODES = {
    "AA": "accept",
    "AE": "error",
    "AR": "reject",
    "CA": "commit-accept",
    "CE": "commit-error",
    "CR": "commit-reject",
}


@dataclass(slots=True)
class Hl7Message:
    valid: bool
    framing: str  # "mllp" | "mllp-unterminated" | "bare"
    error: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    control_id: str = ""
    version: str = ""
    ack_code: str = ""
    ack_text: str = ""
    segments: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {
            "valid": self.valid,
            "framing": self.framing,
            "sending_application": self.sending_application,
            "sending_facility": self.sending_facility,
            "receiving_application": self.receiving_application,
            "receiving_facility": self.receiving_facility,
            "message_type": self.message_type,
            "control_id": self.control_id,
            "version": self.version,
            "segments": self.segments,
        }
        if self.ack_code:
            out["ack_code"] = self.ack_code
            out["ack"] = ACK_CODES.get(self.ack_code, "unknown")
            out["ack_text"] = self.ack_text
        if self.error:
            out["error"] = self.error
        return out


# What real senders put before MSH, outside or inside the frame: blank lines, and a UTF-8 byte
# order mark (dcm4che issues #465 and #779), as its three bytes or decoded. Not str.lstrip(),
# which would also eat the MLLP start and end bytes (0x0b and 0x1c are whitespace to Python).
_BLANKS = " \t\r\n\x0c"
_BOMS = ("\xef\xbb\xbf", "\ufeff")
_LEAD_CHARS = "M" + START + _BLANKS + "\xef\ufeff"


def _skip_lead(text: str) -> str:
    text = text.lstrip(_BLANKS)
    for bom in _BOMS:
        if text.startswith(bom):
            return text[len(bom) :].lstrip(_BLANKS)
    return text


def looks_like_hl7(data: str) -> bool:
    """The cheap check the engine dispatches on."""
    if data[:1] not in _LEAD_CHARS:  # most banners: one comparison, no copy
        return False
    return _skip_lead(_skip_lead(data[:MAX_MESSAGE]).removeprefix(START)).startswith("MSH")


def _unframe(data: str) -> tuple[str, str]:
    head, framing = _skip_lead(data[:MAX_MESSAGE]), "bare"
    if head.startswith(START):
        head, framing = _skip_lead(head[1:]), "mllp"
    end = head.find("\x1c")  # the end block, also when the start block was left out
    if end >= 0:
        return head[:end], framing
    return head, "mllp-unterminated" if framing == "mllp" else framing


def _component(value: str, sep: str) -> str:
    return value.replace(sep, "^")[:64] if sep else value[:64]


def decode_message(data: str) -> Hl7Message | None:
    """Decode the first HL7 v2 message of `data`; None if it does not start like one."""
    if not looks_like_hl7(data):
        return None
    body, framing = _unframe(data)
    msg = Hl7Message(valid=False, framing=framing)
    if len(body) < 8 or not body.startswith("MSH"):
        msg.error = "no MSH segment at the start"
        return msg
    sep, enc = body[3], body[4:8]
    if sep.isalnum() or sep in "\r\n " or len(set(enc[:4])) < 4 or sep in enc:
        msg.error = "invalid field separator or encoding characters"
        return msg
    segments = [s for s in body.replace("\r\n", "\r").replace("\n", "\r").split("\r", MAX_SEGMENTS)[:MAX_SEGMENTS] if s]
    msg.segments = [s[:3] for s in segments]
    _msh(segments[0].split(sep), enc[0], msg)
    for seg in segments[1:]:
        if seg.startswith("MSA" + sep):
            parts = seg.split(sep)
            msg.ack_code = parts[1][:2] if len(parts) > 1 else ""
            msg.ack_text = parts[3][:200] if len(parts) > 3 else ""
            break
    msg.valid = bool(msg.message_type) and not msg.error
    if not msg.message_type:
        msg.error = "MSH-9 message type is empty"
    return msg


def _msh(parts: list[str], component_sep: str, msg: Hl7Message) -> None:
    def get(i: int) -> str:
        return _component(parts[i], component_sep) if len(parts) > i else ""

    msg.sending_application, msg.sending_facility = get(2), get(3)
    msg.receiving_application, msg.receiving_facility = get(4), get(5)
    msg.message_type, msg.control_id, msg.version = get(8), get(9), get(11)
