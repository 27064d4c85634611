"""The mix of the corpus: which kinds of service, how often, on which ports and in which networks.

Weights are relative: each kind is drawn in proportion to its weight (they add up to about 9,300).
The shape follows the 2019 study: mostly ordinary services and blank replies, a few percent
medical, DICOM servers at the hosters of its Table 1, hospitals publishing ordinary infrastructure.
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

from harvest.samplegen import catalog as c
from harvest.samplegen.catalog import MEDICAL, NON_MEDICAL, UNKNOWN, Kind

PORTS_FILE = Path(__file__).resolve().parent.parent / "data" / "medical_ports.toml"


def medical_ports(path: Path = PORTS_FILE) -> frozenset[int]:
    """The stand-alone medical ports of Appendix B (the web's own ports are only hints)."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return frozenset(p["port"] for p in data["port"] if not p.get("hint_only"))


TLS_PORTS = frozenset({443, 8443, 2762, 11443, 11444, 4443, 9443})
MAIL_PORTS = frozenset({25, 587})

# Ports of one group share hosts: the k-th banner on port 80 and on 443 of a network is one host.
# Every other port has its own sequence, so hosts meet on it only by chance.
PORT_GROUPS = {
    **dict.fromkeys((80, 443, 8080, 8443), "web"),
    **dict.fromkeys((25, 587), "mail"),
    **dict.fromkeys((104, 11112, 4242, 8042), "dicom"),
    **dict.fromkeys((2575, 20046), "hl7"),
}


def port_group(port: int) -> str:
    return PORT_GROUPS.get(port) or str(port)


T = "tcp"
U = "udp"
WEB_PLAIN = ((80, T, 10), (8080, T, 2), (8000, T, 0.6), (81, T, 0.3), (8888, T, 0.3))
WEB_TLS = ((443, T, 7), (8443, T, 1.5), (4443, T, 0.3), (9443, T, 0.2))
DICOM_PORTS = ((104, T, 5), (11112, T, 3), (4242, T, 2), (2761, T, 0.2), (2762, T, 0.2), (4006, T, 0.3))
HL7_PORTS = ((2575, T, 5), (20046, T, 1))
PUMP_PORTS = tuple((port, T, 1.0) for port in c.PUMP_SERVERS)
MEDICAL_PORTS_ALL = (
    *DICOM_PORTS, *HL7_PORTS, *PUMP_PORTS, (6464, T, 0.6), (10212, T, 0.6),
)  # fmt: skip

# Where medical services sit: the hosters of Table 1 above all, some hospitals.
TABLE1 = (
    ("azure-we", 3), ("surfsara", 2), ("leaseweb-95", 2), ("leaseweb-85", 1), ("transip-149", 2),
    ("transip-37", 1), ("kpn", 2.5), ("ziggo-84", 1.5), ("ziggo-94", 1), ("digitalocean", 1), ("tele2", 0.5),
    ("previder", 0.5), ("hospital", 0.6),
)  # fmt: skip
WEBAPPS = (
    ("azure-we", 3), ("leaseweb-95", 2), ("transip-149", 2), ("digitalocean", 2), ("previder", 1),
    ("surfsara", 0.5), ("kpn", 1), ("ziggo-84", 0.5), ("hospital", 1),
)  # fmt: skip
PUMPS = (("kpn", 2), ("ziggo-84", 1), ("tele2", 1), ("previder", 1), ("azure-we", 1), ("hospital", 2))
HOSPITALS = (("hospital", 1),)


def build_kinds(seed: int) -> tuple[Kind, ...]:
    rng = random.Random(f"{seed}/pools")
    ssh = c.ssh_pool(rng)
    junk = c.junk_pool(rng)
    hl7 = c.hl7_pool(rng, c.hl7_acks.OTHER_FACILITIES)
    return (
        # medical
        Kind("dicom_ac", 80, MEDICAL, "dicom", DICOM_PORTS, TABLE1, c.dicom_ac_pool()),
        Kind("dicom_rj", 40, MEDICAL, "dicom", DICOM_PORTS, TABLE1, c.dicom_rj_pool()),
        Kind("dicom_text", 8, MEDICAL, "dicom", ((104, T, 2), (11112, T, 1)), TABLE1, c.dicom_text_pool()),
        Kind("hl7_ack", 50, MEDICAL, "hl7", HL7_PORTS, TABLE1, hl7, per_hospital=c.hospital_hl7),
        Kind(
            "pacs_web",
            45,
            MEDICAL,
            "pacs_web",
            (*WEB_PLAIN, *WEB_TLS, (8042, T, 3), (104, T, 0.4)),
            WEBAPPS,
            c.PACS_WEB,
            software=True,
        ),
        Kind("ehr_web", 40, MEDICAL, "ehr_web", (*WEB_PLAIN, *WEB_TLS), WEBAPPS, c.EHR_WEB, software=True),
        Kind("clinical_web_hospital", 6, MEDICAL, "pacs_web", WEB_TLS, HOSPITALS, per_hospital=c.hospital_clinical_web),
        Kind("pump_server", 25, MEDICAL, "pump_server", PUMP_PORTS, PUMPS),
        Kind(
            "medical_device",
            20,
            MEDICAL,
            "medical_device",
            ((80, T, 3), (443, T, 2), (6464, T, 1), (10212, T, 1)),
            PUMPS,
            c.both(list(c.MEDICAL_DEVICES)),
            software=True,
        ),
        # hospitals' own infrastructure, and what else their hosts return
        Kind(
            "hospital_infra",
            250,
            NON_MEDICAL,
            "hospital_infra",
            (*WEB_PLAIN, *WEB_TLS, (25, T, 2)),
            HOSPITALS,
            per_hospital=c.hospital_infra,
        ),
        Kind(
            "hospital_blank", 35, UNKNOWN, "blank", (*WEB_PLAIN, *WEB_TLS, (22, T, 1), (3389, T, 1)), HOSPITALS, c.BLANK
        ),
        Kind("hospital_junk", 6, UNKNOWN, "unparseable", ((443, T, 1), (10443, T, 1)), HOSPITALS, junk),
        # ordinary services on medical ports: a port is not evidence
        Kind("medport_http", 300, NON_MEDICAL, "known_service", MEDICAL_PORTS_ALL, None, c.WEB),
        Kind("medport_ssh", 40, NON_MEDICAL, "known_service", ((2575, T, 1), (11112, T, 1), (4242, T, 1)), None, ssh),
        Kind("medport_blank", 500, UNKNOWN, "blank", MEDICAL_PORTS_ALL, None, c.BLANK),
        Kind("medport_junk", 60, UNKNOWN, "unparseable", MEDICAL_PORTS_ALL, None, junk),
        # the ordinary internet
        Kind("http", 3300, NON_MEDICAL, "known_service", WEB_PLAIN, None, c.WEB),
        Kind("https", 1500, NON_MEDICAL, "known_service", WEB_TLS, None, c.WEB),
        Kind("elasticsearch", 30, NON_MEDICAL, "known_service", ((9200, T, 1),), None, c.ELASTIC),
        Kind("ssh", 900, NON_MEDICAL, "known_service", ((22, T, 10), (2222, T, 1)), None, ssh),
        Kind("telnet", 150, NON_MEDICAL, "known_service", ((23, T, 5), (2323, T, 1)), None, c.TELNET),
        Kind("ftp", 200, NON_MEDICAL, "known_service", ((21, T, 1),), None, c.FTP),
        Kind("smtp", 200, NON_MEDICAL, "known_service", ((25, T, 3), (587, T, 1)), None, c.SMTP),
        Kind("rdp", 150, NON_MEDICAL, "known_service", ((3389, T, 1),), None, c.RDP),
        Kind("ntp", 80, NON_MEDICAL, "known_service", ((123, U, 1),), None, c.NTP),
        Kind("snmp", 80, NON_MEDICAL, "known_service", ((161, U, 1),), None, c.SNMP),
        Kind("dns", 100, NON_MEDICAL, "known_service", ((53, U, 1),), None, c.DNS),
        Kind("sip", 60, NON_MEDICAL, "known_service", ((5060, U, 1),), None, c.SIP),
        Kind("ike", 60, NON_MEDICAL, "known_service", ((500, U, 1),), None, c.IKE),
        Kind("mysql", 100, NON_MEDICAL, "known_service", ((3306, T, 1),), None, c.MYSQL),
        Kind("postgresql", 50, NON_MEDICAL, "known_service", ((5432, T, 1),), None, c.POSTGRES),
        Kind("redis", 40, NON_MEDICAL, "known_service", ((6379, T, 1),), None, c.REDIS),
        Kind("mongodb", 30, NON_MEDICAL, "known_service", ((27017, T, 1),), None, c.MONGODB),
        Kind("ldap", 40, NON_MEDICAL, "known_service", ((389, T, 1),), None, c.LDAP),
        Kind(
            "blank",
            600,
            UNKNOWN,
            "blank",
            (*WEB_PLAIN, *WEB_TLS, (22, T, 1), (21, T, 1), (3389, T, 1), (5900, T, 1), (7547, T, 2)),
            None,
            c.BLANK,
        ),
        Kind(
            "junk", 100, UNKNOWN, "unparseable", ((7547, T, 1), (5000, T, 1), (49152, T, 1), (10001, T, 1)), None, junk
        ),
    )


# The honeypot-like hosts: one answers DICOM and a dozen other protocols; one answers with the
# scanner's own DICOM identity. (kind name, port, transport, pool index or -1 for the special PDU)
HONEYPOT_MULTI = (
    ("dicom_ac", 104, T), ("dicom_ac", 11112, T), ("hl7_ack", 2575, T), ("ftp", 21, T), ("ssh", 22, T),
    ("telnet", 23, T), ("smtp", 25, T), ("http", 80, T), ("https", 443, T), ("snmp", 161, U), ("mysql", 3306, T),
    ("rdp", 3389, T), ("sip", 5060, U), ("redis", 6379, T), ("mongodb", 27017, T), ("ldap", 389, T),
)  # fmt: skip
