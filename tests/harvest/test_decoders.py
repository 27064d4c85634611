"""Protocol decoders against real replies: Shodan's recorded PDUs, a pynetdicom server and a
python-hl7 MLLP listener on loopback, and python-hl7's own ACKs."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.mllp import start_hl7_server
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_items import ImplementationClassUIDSubItem, ImplementationVersionNameSubItem
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from harvest.classify import Banner, classify, load_rules
from harvest.classify.decoders import dicom, http
from harvest.classify.decoders import hl7 as hl7_decoder

ORU = (
    "MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4\r"
    "PID|||555-44-4444||EVERYWOMAN^EVE^E^^^^L\r"
    "OBX|1|NM|^Body Height||1.80|m^Meter^ISO+|||||F\r"
)


def latin1(data: bytes) -> str:
    return data.decode("latin-1")


@pytest.fixture
def synapse_reply(shared_data: Path) -> str:
    return latin1((shared_data / "dicom" / "shodan-recorded-reply-fujifilm-synapse.bin").read_bytes())


@pytest.fixture
def probe(shared_data: Path) -> bytes:
    return (shared_data / "dicom" / "shodan-dicom-probe-request.bin").read_bytes()


# ---------------------------------------------------------------- DICOM, recorded by Shodan


def test_it_decodes_the_recorded_synapse_accept(synapse_reply: str) -> None:
    pdu = dicom.decode_pdu(synapse_reply)

    assert pdu is not None and pdu.valid, pdu and pdu.error
    assert pdu.kind == "associate_ac" and pdu.length == 171 and len(synapse_reply) == 177
    assert (pdu.called_ae, pdu.calling_ae) == ("ANY-SCP", "FINDSCU")
    assert pdu.application_context == dicom.APPLICATION_CONTEXT
    assert pdu.presentation_contexts == [{"id": 1, "result": "acceptance", "transfer_syntax": "1.2.840.10008.1.2"}]
    assert pdu.max_pdu_length == 65000
    assert pdu.implementation_class_uid == "1.2.840.113845.1.1"
    assert pdu.implementation_version == "Syn4,4,0,36"


def test_it_recognises_the_shodan_probe_as_a_request_not_a_reply(probe: bytes) -> None:
    pdu = dicom.decode_pdu(latin1(probe))

    assert pdu is not None and pdu.valid and pdu.kind == "associate_rq"
    assert (pdu.called_ae, pdu.calling_ae) == ("ANY-SCP", "FINDSCU")
    assert pdu.implementation_version == "OFFIS_DCMTK_360"
    assert pdu.presentation_contexts[0]["abstract_syntax"] == "1.2.840.10008.5.1.4.31"  # Modality Worklist FIND


def test_every_truncation_of_a_reply_is_refused_without_raising(synapse_reply: str) -> None:
    for end in range(len(synapse_reply)):
        pdu = dicom.decode_pdu(synapse_reply[:end])
        assert pdu is None or not pdu.valid, end


def test_it_refuses_a_length_that_does_not_match_the_items(synapse_reply: str) -> None:
    def with_length(text: str, length: int) -> str:
        return text[:2] + struct.pack(">I", length).decode("latin-1") + text[6:]

    shorter = dicom.decode_pdu(with_length(synapse_reply, 167))
    padded = dicom.decode_pdu(with_length(synapse_reply, 175) + "\x00" * 4)

    assert shorter is not None and not shorter.valid and "runs past" in shorter.error
    assert padded is not None and not padded.valid and "unexpected item 0x00" in padded.error


def test_it_refuses_a_reply_without_the_dicom_application_context(synapse_reply: str) -> None:
    other = synapse_reply.replace("1.2.840.10008.3.1.1.1", "1.2.840.10008.3.1.1.9")

    pdu = dicom.decode_pdu(other)

    assert pdu is not None and not pdu.valid and "application context" in pdu.error


def test_the_word_dicom_alone_is_not_a_pdu() -> None:
    assert dicom.decode_pdu("DICOM server ready\r\n") is None
    assert dicom.decode_summary("Welcome to our DICOM archive") is None


def test_it_reads_the_text_summary_and_requires_its_fields() -> None:
    text = (
        "DICOM Server Response\nCalled AE Title: ORTHANC\nCalling AE Title: FINDSCU\n"
        "Implementation Class UID: 1.2.276.0.7230010.3.0.3.6.7\nImplementation Version Name: OFFIS_DCMTK_367\n"
        "Association: accepted\n"
    )

    fields = dicom.decode_summary(text)

    assert fields is not None and fields["valid"] is True
    assert fields["called_ae"] == "ORTHANC" and fields["implementation_version"] == "OFFIS_DCMTK_367"
    assert dicom.decode_summary("DICOM Server Response\n")["valid"] is False


# ---------------------------------------------------------------- DICOM, a real pynetdicom server


def _exchange(port: int, payload: bytes) -> bytes:
    """Send one PDU over a plain socket and read back exactly one PDU."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        head = _read(sock, 6)
        (length,) = struct.unpack(">I", head[2:6])
        return head + _read(sock, length)


def _read(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        assert chunk, f"connection closed after {len(out)} of {size} bytes"
        out += chunk
    return out


@pytest.fixture
def scp() -> Iterator[int]:
    """A pynetdicom SCP that supports the probe's Modality Worklist FIND and Verification."""
    ae = AE(ae_title="MEDEXPO-SCP")
    ae.add_supported_context(ModalityWorklistInformationFind)
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def rejecting_scp() -> Iterator[int]:
    """A pynetdicom SCP that only talks to callers who address it by its own AE title."""
    ae = AE(ae_title="MEDEXPO-SCP")
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    server = ae.start_server(("127.0.0.1", 0), block=False)
    yield server.server_address[1]
    server.shutdown()


def test_it_decodes_a_real_pynetdicom_accept(scp: int, probe: bytes) -> None:
    reply = latin1(_exchange(scp, probe))

    pdu = dicom.decode_pdu(reply)

    assert pdu is not None and pdu.valid and pdu.kind == "associate_ac"
    assert (pdu.called_ae, pdu.calling_ae) == ("ANY-SCP", "FINDSCU")  # an AC echoes the request's titles
    assert pdu.implementation_version == "PYNETDICOM_304"
    assert pdu.implementation_class_uid.startswith("1.2.826.0.1.3680043.9.3811.")
    assert pdu.presentation_contexts[0]["result"] == "acceptance"
    verdict = classify(Banner(port=11112, data=reply, module="dicom"), load_rules())
    assert (verdict.cls, verdict.category, verdict.product) == ("medical", "dicom", "pynetdicom 3.0.4")


def test_a_repeated_implementation_sub_item_keeps_the_first_and_is_evidence(scp: int, probe: bytes) -> None:
    # A peer may send the implementation class UID (0x52) and version name (0x55) more than once,
    # which PS3.8 D.3.3.2 does not allow: read the first, as pynetdicom itself does.
    reply = A_ASSOCIATE_AC()
    reply.decode(_exchange(scp, probe))
    extra_uid, extra_name = ImplementationClassUIDSubItem(), ImplementationVersionNameSubItem()
    extra_uid.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.7"
    extra_name.implementation_version_name = "OFFIS_DCMTK_367"
    reply.user_information.user_data.extend([extra_uid, extra_name])
    doubled = reply.encode()
    theirs = A_ASSOCIATE_AC()
    theirs.decode(doubled)

    pdu = dicom.decode_pdu(latin1(doubled))
    verdict = classify(Banner(port=11112, data=latin1(doubled), module="dicom"), load_rules())

    assert pdu is not None and pdu.valid
    assert pdu.implementation_version == theirs.user_information.implementation_version_name == "PYNETDICOM_304"
    assert pdu.implementation_class_uid == theirs.user_information.implementation_class_uid
    assert pdu.repeated_sub_items == ["implementation_class_uid", "implementation_version"]
    assert verdict.product == "pynetdicom 3.0.4"
    repeated = [e for e in verdict.evidence if e.rule == "dicom.repeated_sub_item"]
    assert [e.excerpt for e in repeated] == ["implementation_class_uid, implementation_version"]


def test_it_decodes_a_real_pynetdicom_rejection(rejecting_scp: int, probe: bytes) -> None:
    reply = latin1(_exchange(rejecting_scp, probe))

    pdu = dicom.decode_pdu(reply)

    assert pdu is not None and pdu.valid and pdu.kind == "associate_rj"
    assert (pdu.result, pdu.source, pdu.reason) == ("rejected-permanent", "service-user", 7)
    verdict = classify(Banner(port=104, data=reply), load_rules())
    assert (verdict.cls, verdict.category, verdict.segment) == ("medical", "dicom", "medical_port")


def test_it_decodes_a_real_pynetdicom_rejection_of_a_wrong_protocol_version(scp: int, probe: bytes) -> None:
    reply = latin1(_exchange(scp, probe[:6] + b"\x00\x02" + probe[8:]))

    pdu = dicom.decode_pdu(reply)

    assert pdu is not None and pdu.valid and pdu.kind == "associate_rj"
    assert (pdu.result, pdu.source, pdu.reason) == ("rejected-permanent", "service-provider-acse", 2)


def test_it_decodes_a_real_pynetdicom_abort(scp: int) -> None:
    # P-DATA-TF before any association: the acceptor must answer with A-ABORT (PS3.8 table 9-10).
    reply = latin1(_exchange(scp, b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03"))

    pdu = dicom.decode_pdu(reply)

    assert pdu is not None and pdu.valid and pdu.kind == "abort"
    assert pdu.source == "service-user"
    assert classify(Banner(port=104, data=reply), load_rules()).category == "dicom"


# ---------------------------------------------------------------- HL7


def test_it_decodes_an_ack_made_by_python_hl7() -> None:
    ack = str(hl7.parse(ORU).create_ack())
    framed = "\x0b" + ack + "\x1c\r"

    msg = hl7_decoder.decode_message(framed)

    assert msg is not None and msg.valid and msg.framing == "mllp"
    assert (msg.sending_application, msg.sending_facility) == ("GHH OE", "BLDG4")
    assert msg.message_type == "ACK^R01^ACK" and msg.version == "2.4"
    assert (msg.ack_code, msg.as_dict()["ack"]) == ("AA", "accept")
    assert msg.segments == ["MSH", "MSA"]


@pytest.fixture
def mllp_listener() -> Iterator[int]:
    """A python-hl7 MLLP server on loopback that acknowledges every message, in its own loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def handle(reader, writer) -> None:  # noqa: ANN001 - hl7.mllp's stream types
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                writer.writemessage(message.create_ack(ack_code="AE"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        server = await start_hl7_server(handle, host="127.0.0.1", port=0)
        holder["server"] = server
        holder["port"] = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(_quiet(main())), daemon=True)
    thread.start()
    assert started.wait(10)
    yield holder["port"]
    loop.call_soon_threadsafe(holder["server"].close)
    thread.join(10)


async def _quiet(coro) -> None:  # noqa: ANN001
    try:
        await coro
    except asyncio.CancelledError:
        pass


def test_it_decodes_the_raw_reply_of_a_real_mllp_listener(mllp_listener: int) -> None:
    with socket.create_connection(("127.0.0.1", mllp_listener), timeout=10) as sock:
        sock.sendall(b"\x0b" + ORU.encode() + b"\x1c\r")
        raw = b""
        while not raw.endswith(b"\x1c\r"):
            chunk = sock.recv(4096)
            assert chunk, "listener closed before the end of the frame"
            raw += chunk
    reply = latin1(raw)

    msg = hl7_decoder.decode_message(reply)

    assert msg is not None and msg.valid and msg.framing == "mllp"
    assert msg.ack_code == "AE" and msg.sending_application == "GHH OE"
    verdict = classify(Banner(port=2575, data=reply, module="hl7"), load_rules())
    assert (verdict.cls, verdict.category, verdict.segment) == ("medical", "hl7", "medical_port")
    assert verdict.details["hl7"]["ack"] == "error"


def test_it_refuses_broken_hl7_without_raising() -> None:
    assert hl7_decoder.decode_message("hello") is None
    assert not hl7_decoder.decode_message("\x0bMSH").valid
    assert not hl7_decoder.decode_message("MSHa^~\\&|APP|FAC").valid  # an alphanumeric field separator
    assert not hl7_decoder.decode_message("MSH|^~\\&|APP|FAC|||20260101||").valid  # no message type
    for end in range(len(ORU)):
        hl7_decoder.decode_message("\x0b" + ORU[:end])


# ---------------------------------------------------------------- HTTP


def test_it_reads_an_http_status_line_headers_and_title() -> None:
    data = 'HTTP/1.1 401 Unauthorized\r\nServer: nginx/1.7.10\r\nWWW-Authenticate: Basic realm="x"\r\n\r\n'

    resp = http.decode_response(data, "<html><head><title>\n Orthanc  Explorer </title></head></html>")

    assert resp is not None and resp.valid
    assert (resp.version, resp.status, resp.reason) == ("1.1", 401, "Unauthorized")
    assert resp.headers == {"server": "nginx/1.7.10", "www-authenticate": 'Basic realm="x"'}
    assert resp.title == "Orthanc Explorer"


def test_header_lines_end_only_at_line_feeds() -> None:
    # Banners hold bytes as characters: 0x85 (a cp1252 ellipsis), 0x0b, 0x0c and 0x1c-0x1e are
    # line breaks to str.splitlines(), never to HTTP, so they must not cut a header in two.
    data = "HTTP/1.1 200 OK\r\nX-Powered-By: PHP\x85Server: fake\r\nServer: nginx\r\nLocation: /a\x1cb\r\n\r\n"

    resp = http.decode_response(data)

    assert resp is not None and resp.headers is not None
    assert resp.headers["server"] == "nginx"
    assert resp.headers["x-powered-by"] == "PHP\x85Server: fake"
    assert resp.headers["location"] == "/a\x1cb"


def test_it_does_not_call_other_text_http() -> None:
    assert http.decode_response("SSH-2.0-OpenSSH_9.2\r\n") is None
    assert http.decode_response("HTTP/banana") == http.HttpResponse(valid=False)


def test_rdp_s_reply_is_not_taken_for_a_malformed_rejection() -> None:
    # RDP answers with a TPKT header, 0x03 0x00 and a 16-bit length: the first bytes of an
    # A-ASSOCIATE-RJ, whose length can only be 4. It is not DICOM at all, malformed or not.
    rdp = "\x03\x00\x00\x13\x0e\xd0\x00\x00\x124\x00\x02\x1f\x08\x00\x02\x00\x00\x00"
    assert dicom.decode_pdu(rdp) is None
    verdict = classify(Banner(port=3389, data=rdp), load_rules())
    assert "dicom" not in verdict.details
    assert not [e for e in verdict.evidence if e.rule.startswith("dicom.")]
    truncated = latin1(bytes([3, 0, 0, 0, 0, 4, 0, 1]))  # a real rejection's start, cut short
    assert dicom.looks_like_pdu(truncated + "\x00\x00") and not dicom.looks_like_pdu("\x03\x00\x00\x13" * 3)


def test_it_checks_the_fields_of_rejections_and_aborts() -> None:
    def short(pdu_type: int, result: int, source: int, reason: int) -> dicom.DicomPdu | None:
        return dicom.decode_pdu(latin1(bytes([pdu_type, 0, 0, 0, 0, 4, 0, result, source, reason])))

    assert short(3, 1, 1, 7).valid  # called AE title not recognised
    assert not short(3, 1, 2, 7).valid  # the ACSE provider has no reason 7
    assert not short(3, 3, 1, 1).valid  # no result 3
    assert short(7, 0, 2, 6).valid and not short(7, 0, 2, 9).valid
    assert dicom.decode_pdu(latin1(bytes([3, 0, 0, 0, 0, 5, 0, 1, 1, 1, 0]))) is None  # no RJ has length 5


def test_an_accept_without_user_information_is_refused(synapse_reply: str) -> None:
    user_info_at = synapse_reply.index("P\x00\x00")  # item 0x50 follows the presentation context
    cut = synapse_reply[:user_info_at]
    cut = cut[:2] + struct.pack(">I", len(cut) - 6).decode("latin-1") + cut[6:]

    pdu = dicom.decode_pdu(cut)

    assert pdu is not None and not pdu.valid and "user information" in pdu.error


def test_a_status_line_of_other_digits_is_not_http() -> None:
    # Python's \d and int() both take Arabic-Indic and other digits: "٢٠٠" would read as 200.
    lines = ("HTTP/1.1 \u0662\u0660\u0660 OK\r\n\r\n", "HTTP/\u0661.1 200 OK\r\n\r\n", "HTTP/1.\u0661 200 OK\r\n\r\n")
    for line in lines:
        assert http.decode_response(line) == http.HttpResponse(valid=False), line


@pytest.mark.parametrize(
    "before, inside",
    [
        ("", "\r\n"),  # a line break between the start block and MSH
        ("", " "),
        ("", "\xef\xbb\xbf"),  # a UTF-8 byte order mark inside the frame (dcm4che issue #779)
        ("\xef\xbb\xbf", ""),  # ... or before the start block (dcm4che issue #465)
        ("\r\n", ""),  # a line break before the start block
    ],
)
def test_an_ack_framed_with_leading_blanks_or_a_byte_order_mark_is_still_hl7(before: str, inside: str) -> None:
    ack = str(hl7.parse(ORU).create_ack())
    framed = before + "\x0b" + inside + ack + "\x1c\r"

    msg = hl7_decoder.decode_message(framed)

    assert msg is not None and msg.valid, msg and msg.error
    assert msg.framing == "mllp" and msg.segments == ["MSH", "MSA"] and msg.ack_code == "AA"
    verdict = classify(Banner(port=2575, data=framed), load_rules())
    assert (verdict.cls, verdict.category, verdict.confidence) == ("medical", "hl7", 0.95)


def test_an_end_block_without_a_start_block_is_not_a_segment() -> None:
    # An MLLP sender that forgets the start byte still ends its frame: the end is not message text.
    msg = hl7_decoder.decode_message(str(hl7.parse(ORU).create_ack()) + "\x1c\r")

    assert msg is not None and msg.valid and msg.framing == "bare"
    assert msg.segments == ["MSH", "MSA"]
