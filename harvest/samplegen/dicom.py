"""DICOM association replies as Shodan records them, built with pynetdicom's own PDU classes.

Shodan's scanner sends one A-ASSOCIATE-RQ (called AE `ANY-SCP`, calling AE `FINDSCU`, one
presentation context: Modality Worklist FIND, see /work/shared/data/SOURCES.md). A server answers
with an A-ASSOCIATE-AC that echoes both AE titles and names its implementation, or with an
A-ASSOCIATE-RJ. Shodan stores the reply bytes as a string, one character per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PROBE_CALLED_AE = "ANY-SCP"
PROBE_CALLING_AE = "FINDSCU"
PROBE_CONTEXT_ID = 1


@dataclass(frozen=True, slots=True)
class Implementation:
    product: str  # what the corpus label says the software is
    class_uid: str
    version_name: str  # "" when the product sends no version name item
    max_pdu: int = 16384


# Real implementation identities. DCMTK-based servers (dcmqrscp, storescp, Orthanc, Horos)
# report DCMTK's own UID and version name. DCMTK 3.6.0 is left out of the genuine servers: its
# identity is the one Shodan's probe sends, which the corpus gives its honeypot-like server, and
# a label must not differ between byte-identical replies.
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    *(
        Implementation(f"DCMTK 3.6.{minor}", f"1.2.276.0.7230010.3.0.3.6.{minor}", f"OFFIS_DCMTK_36{minor}")
        for minor in range(1, 9)
    ),  # fmt: skip
    # Orthanc accepts with its MaximumPduLength (default 16384): byte for byte DCMTK's reply.
    Implementation("Orthanc (DCMTK 3.6.7)", "1.2.276.0.7230010.3.0.3.6.7", "OFFIS_DCMTK_367"),
    Implementation("Orthanc (DCMTK 3.6.8)", "1.2.276.0.7230010.3.0.3.6.8", "OFFIS_DCMTK_368"),
    Implementation("Horos (DCMTK 3.6.2)", "1.2.276.0.7230010.3.0.3.6.2", "OFFIS_DCMTK_362", 0),
    Implementation("pynetdicom 2.0.2", "1.2.826.0.1.3680043.9.3811.2.0.2", "PYNETDICOM_202"),
    Implementation("pynetdicom 3.0.4", "1.2.826.0.1.3680043.9.3811.3.0.4", "PYNETDICOM_304"),
    Implementation("dcm4che 5.29", "1.2.40.0.13.1.3", "dcm4che-5.29.2", 16384),
    Implementation("dcm4che 5.31", "1.2.40.0.13.1.3", "dcm4che-5.31.0", 16384),
    Implementation("dcm4che 2", "1.2.40.0.13.1.1", "dcm4che-2.0", 16384),
    Implementation("Conquest DICOM 1.5.0", "1.2.826.0.1.3680043.2.135.1066.101", "1.5.0/WIN32", 16384),
    # Conquest's version name names the build platform; Linux builds say OTHER (version.h).
    Implementation("Conquest DICOM 1.4.19", "1.2.826.0.1.3680043.2.135.1066.101", "1.4.19/OTHER", 16384),
    Implementation("ClearCanvas", "1.3.6.1.4.1.25403.1.1.1", "Dicom 0.1", 116794),
    Implementation("fo-dicom 4.0.8", "1.3.6.1.4.1.30071.8", "fo-dicom 4.0.8", 262144),
    Implementation("fo-dicom 5.1.2", "1.3.6.1.4.1.30071.8", "fo-dicom 5.1.2", 262144),
    Implementation("MergeCOM-3 (vendor modality/PACS)", "2.16.840.1.113669.2.1.1", "MergeCOM3_340", 28672),
    Implementation("Fujifilm Synapse", "1.2.840.113845.1.1", "Syn4,4,0,36", 65000),
)

# The corpus ships the recorded Synapse reply byte for byte.
SYNAPSE = IMPLEMENTATIONS[-1]

# A honeypot or lab tool that answers with the probe's own identity (findscu's defaults).
SCANNER_IDENTITY = Implementation("findscu defaults (honeypot)", "1.2.276.0.7230010.3.0.3.6.0", "OFFIS_DCMTK_360")

# (result, source, diagnostic) of A-ASSOCIATE-RJ replies: the usual answers to an unknown AE title.
REJECTIONS: tuple[tuple[int, int, int, str], ...] = (
    (1, 1, 7, "rejected-permanent, called AE title not recognised"),
    (1, 1, 3, "rejected-permanent, calling AE title not recognised"),
    (1, 1, 1, "rejected-permanent, no reason given"),
    (2, 3, 2, "rejected-transient, local limit exceeded"),
    (1, 2, 2, "rejected-permanent, protocol version not supported"),
)


def associate_ac(impl: Implementation, *, context_result: int = 0, transfer_syntax: str = IMPLICIT_LE) -> bytes:
    """An A-ASSOCIATE-AC answering Shodan's probe; context_result 3 rejects Modality Worklist."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.called_ae_title = PROBE_CALLED_AE
    primitive.calling_ae_title = PROBE_CALLING_AE
    primitive.result = 0x00
    context = PresentationContext()
    context.context_id = PROBE_CONTEXT_ID
    context.result = context_result
    context.transfer_syntax = [transfer_syntax]
    primitive.presentation_context_definition_results_list = [context]
    items: list = []
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = impl.max_pdu
    items.append(max_length)
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = impl.class_uid
    items.append(class_uid)
    if impl.version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = impl.version_name
        items.append(version)
    primitive.user_information = items
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return pdu.encode()


def associate_rj(result: int, source: int, diagnostic: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def as_banner_text(pdu: bytes) -> str:
    """Shodan's representation of a binary reply: each byte one character U+0000..U+00FF."""
    return pdu.decode("latin-1")


def text_summary(impl: Implementation, ae_title: str) -> str:
    """The text form some Shodan banners of DICOM servers take instead of the raw PDU."""
    lines = [
        "DICOM Server Response",
        f"Called AE Title: {ae_title}",
        f"Calling AE Title: {PROBE_CALLING_AE}",
        f"Implementation Class UID: {impl.class_uid}",
    ]
    if impl.version_name:
        lines.append(f"Implementation Version Name: {impl.version_name}")
    lines.append("Association: accepted")
    return "\n".join(lines) + "\n"
