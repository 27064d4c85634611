"""HL7 v2 acknowledgements as an MLLP listener returns them to a scanner's probe message."""

from __future__ import annotations

from dataclasses import dataclass

MLLP_START = "\x0b"
MLLP_END = "\x1c\r"

# (sending application, vendor note): interface engines and HIS/EPD systems used in Dutch care.
APPLICATIONS: tuple[tuple[str, str], ...] = (
    ("HiX", "ChipSoft HiX"),
    ("CS-EZIS", "ChipSoft EZIS"),
    ("EPIC", "Epic"),
    ("SAP-ISH", "SAP IS-H"),
    ("MIRTH", "Mirth Connect"),
    ("NEXTGEN_CONNECT", "NextGen Connect (Mirth)"),
    ("CLOVERLEAF", "Infor Cloverleaf"),
    ("ENSEMBLE", "InterSystems Ensemble"),
    ("HEALTHSHARE", "InterSystems HealthShare"),
    ("GLIMS", "MIPS GLIMS laboratory"),
    ("RIS", "radiology information system"),
)

# Facilities that are not a hospital of the registry (labs, practices, regional services).
OTHER_FACILITIES: tuple[str, ...] = ("LAB", "RADIOLOGIE", "HUISARTSENPOST", "TROMBOSEDIENST", "APOTHEEK", "SALTRO")

VERSIONS: tuple[str, ...] = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
TRIGGERS: tuple[str, ...] = ("A01", "A04", "A08", "O01", "R01")

# (acknowledgement code, text, ERR segment or "")
OUTCOMES: tuple[tuple[str, str, str], ...] = (
    ("AA", "", ""),
    ("AA", "Message accepted", ""),
    ("AE", "Unsupported message type", "ERR|^^^200&Unsupported message type&HL70357"),
    ("AR", "Unknown sending facility", "ERR|^^^204&Unknown key identifier&HL70357"),
)


@dataclass(frozen=True, slots=True)
class Ack:
    application: str
    facility: str
    version: str
    trigger: str
    control_id: str
    probe_id: str
    code: str
    text: str
    err: str
    when: str  # YYYYMMDDHHMMSS

    def message(self) -> str:
        """The unframed message, segments separated by carriage returns."""
        msh = (
            f"MSH|^~\\&|{self.application}|{self.facility}|||{self.when}||ACK^{self.trigger}^ACK"
            f"|{self.control_id}|P|{self.version}"
        )
        segments = [msh, f"MSA|{self.code}|{self.probe_id}" + (f"|{self.text}" if self.text else "")]
        if self.err:
            segments.append(self.err)
        return "\r".join(segments) + "\r"

    def framed(self) -> str:
        return MLLP_START + self.message() + MLLP_END


def unframe(data: str) -> str:
    """The message inside one MLLP frame."""
    if not data.startswith(MLLP_START) or not data.endswith(MLLP_END):
        raise ValueError("not an MLLP frame")
    return data[len(MLLP_START) : -len(MLLP_END)]
