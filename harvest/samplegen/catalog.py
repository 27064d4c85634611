"""What the corpus's banners say: pools of prebuilt replies per kind of service.

A `Kind` is one line of the mix: what a service answers (a pool of `Variant`s), on which ports,
in which networks, and the label every banner of that kind gets. Labels come from how a banner is
made, never from reading it back.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harvest.samplegen import dicom, hl7_acks
from harvest.samplegen.networks import Network

MEDICAL = "medical"
NON_MEDICAL = "non_medical"
UNKNOWN = "unknown"

CLASSES = (MEDICAL, NON_MEDICAL, UNKNOWN)
CATEGORIES = (
    "dicom", "hl7", "pacs_web", "ehr_web", "pump_server", "medical_device",
    "hospital_infra", "known_service", "blank", "unparseable",
)  # fmt: skip
SEGMENTS = ("hospital_organisation", "software", "medical_port", "")


@dataclass(frozen=True, slots=True)
class Variant:
    data: str
    module: str
    note: str
    product: str = ""
    version: str = ""
    http: dict | None = None
    tls: bool = False
    cert_cn: str = ""  # certificate name when the host has no hostname of its own
    role: str = ""  # hostname label on a hospital's network ("vpn", "mail", ...)
    os: str | None = None
    dated: bool = False  # data carries an HTTP Date header to fill in
    extra: dict | None = None  # module-specific fields (ssh, snmp, ...)
    tags: tuple[str, ...] = ()
    only_ports: tuple[int, ...] = ()  # a service that answers on these ports only (mail on 25)


Placement = tuple[tuple[str, float], ...]  # (network key, or "hospital" for any hospital; weight)


@dataclass(slots=True)
class Kind:
    name: str
    weight: float
    cls: str
    category: str
    ports: tuple[tuple[int, str, float], ...]  # (port, transport, weight)
    placement: Placement | None  # None: the providers' own noise weights
    pool: tuple[Variant, ...] = ()
    per_hospital: Callable[[Network, random.Random], tuple[Variant, ...]] | None = None
    group: str = ""  # services of one group share hosts; default: the kind's name
    software: bool = False  # segment "software" when not on a hospital's network
    _hospital_pools: dict[str, tuple[Variant, ...]] = field(default_factory=dict)

    def variants(self, net: Network, seed: int) -> tuple[Variant, ...]:
        if self.per_hospital is None or not net.is_hospital:
            return self.pool
        cached = self._hospital_pools.get(net.key)
        if cached is None:
            cached = self.per_hospital(net, random.Random(f"{seed}/{self.name}/{net.key}"))
            self._hospital_pools[net.key] = cached
        return cached


# ---------------------------------------------------------------- HTTP helpers


def _html(title: str, body: str = "") -> str:
    return f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>{body}</body></html>\n"


_REASONS = {200: "OK", 301: "Moved Permanently", 302: "Found", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}


def http(
    note: str,
    *,
    status: int = 200,
    server: str = "",
    title: str | None = None,
    body: str = "",
    headers: tuple[str, ...] = (),
    product: str = "",
    version: str = "",
    tls: bool = False,
    cert_cn: str = "",
    role: str = "",
    content_type: str = "text/html; charset=utf-8",
    html: str | None = None,
) -> Variant:
    """An HTTP(S) banner: the response head as `data`, the page in `http`."""
    page = html if html is not None else (_html(title, body) if title is not None else "")
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}"]
    if server:
        lines.append(f"Server: {server}")
    lines.append("Date: %DATE%")
    lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(page.encode())}")
    lines.extend(headers)
    data = "\r\n".join(lines) + "\r\n\r\n"
    info: dict[str, Any] = {
        "status": status,
        "title": title,
        "server": server or None,
        "html": page or None,
        "html_hash": _java_hash(page) if page else None,
        "location": "/",
        "redirects": [],
        "robots": None,
        "robots_hash": None,
        "securitytxt": None,
        "securitytxt_hash": None,
        "sitemap": None,
        "sitemap_hash": None,
        "components": {},
    }
    return Variant(
        data=data,
        module="https" if tls else "http",
        note=note,
        product=product,
        version=version,
        http=info,
        tls=tls,
        cert_cn=cert_cn,
        role=role,
        dated=True,
    )


def _java_hash(text: str) -> int:
    """A signed 32-bit hash, as Shodan's numeric hash fields look."""
    value = int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogatepass")).digest()[:4], "little")  # noqa: S324
    return value - 2**32 if value >= 2**31 else value


def with_tls(v: Variant, cert_cn: str = "") -> Variant:
    return Variant(
        data=v.data, module="https", note=v.note, product=v.product, version=v.version, http=v.http, tls=True,
        cert_cn=cert_cn or v.cert_cn, role=v.role, dated=v.dated,
    )  # fmt: skip


def both(variants: list[Variant], cert_cn: str = "") -> tuple[Variant, ...]:
    """Each variant served over HTTP and over HTTPS."""
    return tuple(variants) + tuple(with_tls(v, cert_cn) for v in variants)


# ---------------------------------------------------------------- medical kinds


def dicom_ac_pool() -> tuple[Variant, ...]:
    pool = []
    for impl in dicom.IMPLEMENTATIONS:
        for context_result, ts in ((0, dicom.IMPLICIT_LE), (3, dicom.IMPLICIT_LE), (0, dicom.EXPLICIT_LE)):
            pdu = dicom.associate_ac(impl, context_result=context_result, transfer_syntax=ts)
            accepted = "worklist accepted" if context_result == 0 else "worklist context rejected"
            pool.append(Variant(dicom.as_banner_text(pdu), "dicom", f"A-ASSOCIATE-AC, {impl.product}, {accepted}"))
    return tuple(pool)


def dicom_rj_pool() -> tuple[Variant, ...]:
    return tuple(
        Variant(dicom.as_banner_text(dicom.associate_rj(r, s, d)), "dicom", f"A-ASSOCIATE-RJ, {text}")
        for r, s, d, text in dicom.REJECTIONS
    )


def dicom_text_pool() -> tuple[Variant, ...]:
    # (product, the AE title such servers are usually configured with)
    pairs = (
        ("DCMTK 3.6.4", "ANY-SCP"), ("Orthanc (DCMTK 3.6.7)", "ORTHANC"), ("dcm4che 5.31", "DCM4CHEE"),
        ("Conquest DICOM 1.5.0", "CONQUESTSRV1"), ("DCMTK 3.6.7", "STORESCP"), ("fo-dicom 5.1.2", "PACS"),
    )  # fmt: skip
    by_product = {impl.product: impl for impl in dicom.IMPLEMENTATIONS}
    return tuple(
        Variant(dicom.text_summary(by_product[product], ae), "dicom", f"DICOM text summary, {product}")
        for product, ae in pairs
    )


def hl7_pool(rng: random.Random, facilities: tuple[str, ...], size: int = 96) -> tuple[Variant, ...]:
    pool = []
    for _ in range(size):
        app, vendor = rng.choice(hl7_acks.APPLICATIONS)
        code, text, err = rng.choices(hl7_acks.OUTCOMES, weights=(6, 2, 1, 1))[0]
        ack = hl7_acks.Ack(
            application=app,
            facility=rng.choice(facilities),
            version=rng.choice(hl7_acks.VERSIONS),
            trigger=rng.choice(hl7_acks.TRIGGERS),
            control_id=f"{rng.randrange(10**9, 10**10)}",
            probe_id=f"{rng.randrange(10**5, 10**6)}",
            code=code,
            text=text,
            err=err,
            when=f"2026{rng.randrange(9, 12):02d}{rng.randrange(1, 29):02d}{rng.randrange(24):02d}"
            f"{rng.randrange(60):02d}{rng.randrange(60):02d}",
        )
        pool.append(Variant(ack.framed(), "hl7", f"HL7 v{ack.version} ACK MSA|{code}, {vendor}"))
    return tuple(pool)


def hospital_hl7(net: Network, rng: random.Random) -> tuple[Variant, ...]:
    short = (net.aliases[0] if net.aliases else net.domains[0].split(".")[0]).upper().replace(" ", "")
    return hl7_pool(rng, (short[:20],), size=8)


PACS_WEB = both(
    [
        http("Orthanc Explorer", title="Orthanc Explorer", product="Orthanc", html=_html(
            "Orthanc Explorer", '<div data-role="page" id="lookup"><h1>Orthanc Explorer</h1></div>'
            '<script src="app/explorer.js"></script>')),
        http("Orthanc with authentication", status=401, title=None, product="Orthanc",
             headers=('WWW-Authenticate: Basic realm="Orthanc Secure Area"',)),
        http("dcm4chee-arc UI", server="WildFly/30", title="dcm4chee-arc", product="dcm4chee-arc",
             body='<dcm4chee-arc-root></dcm4chee-arc-root><script src="main.js"></script>'),
        http("dcm4chee-arc Keycloak login", server="WildFly/30", title="Sign in to dcm4che",
             body='<form id="kc-form-login" action="/realms/dcm4che/login-actions/authenticate"></form>'),
        http("OHIF Viewer", server="nginx/1.25.3", title="OHIF Viewer", product="nginx", version="1.25.3",
             body='<div id="root"></div><script>window.config={routerBasename:"/"}</script>'),
        http("Softneta MedDream DICOM viewer", server="Apache", title="MedDream - Login",
             body="<div>MedDream DICOM Viewer by Softneta</div><form action='login.php'></form>"),
        http("Philips IntelliSpace PACS", server="Microsoft-IIS/10.0", title="IntelliSpace PACS Enterprise",
             body="<div>Philips IntelliSpace PACS - Login</div>"),
        http("Sectra UniView", server="Microsoft-IIS/10.0", title="Sectra UniView",
             body="<div>Sectra UniView - log in</div>"),
        http("Agfa Enterprise Imaging", server="Microsoft-IIS/8.5", title="Enterprise Imaging",
             body="<div>Agfa HealthCare Enterprise Imaging - Login</div>"),
        http("VISUS JiveX web", server="Apache-Coyote/1.1", title="JiveX Web",
             body="<div>JiveX Enterprise PACS - VISUS Health IT</div>"),
    ]
)  # fmt: skip

EHR_WEB = both(
    [
        http("OpenEMR login", server="Apache/2.4.57 (Debian)", title="OpenEMR Login", product="Apache httpd",
             version="2.4.57", body="<form method='POST' action='../main/main_screen.php?auth=login'></form>"),
        http("OpenMRS login", server="Apache-Coyote/1.1", title="OpenMRS - Login",
             body="<div id='openmrsLogo'></div><form action='/openmrs/loginServlet'></form>"),
        http("GNU Health (Tryton web client)", server="Werkzeug/2.2.2 Python/3.11.2", title="GNU Health",
             body="<div>GNU Health Hospital Management Information System</div>"),
        http("Mirth Connect Administrator", server="Jetty(9.4.53.v20231009)", title="Mirth Connect Administrator",
             body="<a href='webstart.jnlp'>Launch Mirth Connect Administrator</a>"),
        http("NextGen Connect (Mirth) Administrator", server="Jetty(9.4.44.v20210927)",
             title="NextGen Connect Administrator", body="<a href='webstart.jnlp'>Launch Administrator</a>"),
        http("OpenClinic GA", server="Apache-Coyote/1.1", title="OpenClinic GA",
             body="<div>OpenClinic GA - open source hospital information management</div>"),
        http("Bahmni", server="Apache/2.4.6 (CentOS)", title="Bahmni Home", body="<div>Bahmni EMR</div>"),
    ],
    cert_cn="localhost",
)  # fmt: skip


def hospital_clinical_web(net: Network, rng: random.Random) -> tuple[Variant, ...]:
    """Clinical web logins published under a hospital's own name (rare, but the study saw one)."""
    domain = net.domains[0]
    return (
        with_tls(http("Philips IntelliSite Pathology Solution", server="Microsoft-IIS/10.0",
                      title="IntelliSite Pathology Solution", role="pathologie",
                      body=f"<div>Philips IntelliSite - {net.org}</div>"), f"pathologie.{domain}"),
        with_tls(http("ChipSoft HiX web", server="Microsoft-IIS/10.0", title="HiX - Inloggen", role="hix",
                      body=f"<div>ChipSoft HiX {net.org}</div>"), f"hix.{domain}"),
        with_tls(http("Sectra UniView", server="Microsoft-IIS/10.0", title="Sectra UniView", role="pacs",
                      body="<div>Sectra UniView - log in</div>"), f"pacs.{domain}"),
    )  # fmt: skip


PUMP_SERVERS: dict[int, tuple[Variant, ...]] = {
    1500: (http("B. Braun SpaceOnline", server="Microsoft-IIS/8.5", title="B. Braun Space Online Suite",
                body="<div>SpaceOnline - B. Braun Melsungen AG</div>"),),
    4080: (http("B. Braun SpaceOnline", server="Apache-Coyote/1.1", title="B. Braun OnlineSuite",
                body="<div>B. Braun OnlineSuite - Space pumps</div>"),),
    8100: (http("Hospira MedNet", server="Apache-Coyote/1.1", title="Hospira MedNet",
                body="<div>Hospira MedNet Meds - Login</div>"),),
    9292: (http("ICU Medical MedNet", server="Apache-Coyote/1.1", title="ICU Medical MedNet",
                body="<div>ICU Medical MedNet Safety Software</div>"),),
    11443: (http("Hospira MedNet (TLS)", server="Apache-Coyote/1.1", title="Hospira MedNet", tls=True,
                 cert_cn="MedNet", body="<div>Hospira MedNet - Login</div>"),),
    11444: (http("Hospira MedNet Connect (TLS)", server="Apache-Coyote/1.1", title="MedNet Connect", tls=True,
                 cert_cn="MedNet", body="<div>Hospira MedNet Connect</div>"),),
    51244: (http("Baxter Dose IQ", server="Microsoft-IIS/10.0", title="Dose IQ Safety Software",
                 body="<div>Baxter Dose IQ Safety Software - Sign in</div>"),),
    3613: (http("BD Alaris Systems Manager", server="Microsoft-IIS/8.5", title="Alaris Systems Manager",
                body="<div>BD Alaris(TM) Systems Manager - CareFusion</div>"),),
    1588: (http("Smiths Medical PharmGuard Server", server="Apache-Coyote/1.1", title="PharmGuard Server",
                body="<div>Smiths Medical PharmGuard Server - Medfusion 4000</div>"),),
    51243: (http("pump server (other vendor)", server="Jetty(9.2.z-SNAPSHOT)", title="Infusion Management",
                 body="<div>Infusion pump management server</div>"),),
}  # fmt: skip

MEDICAL_DEVICES = (
    http("GE CARESCAPE Gateway", server="GoAhead-Webs", title="CARESCAPE Gateway",
         body="<div>GE Healthcare CARESCAPE Gateway - patient monitoring</div>"),
    http("Philips IntelliVue Information Center iX", server="Microsoft-IIS/8.5",
         title="IntelliVue Information Center iX", body="<div>Philips PIIC iX - Login</div>"),
    http("Draeger Infinity Gateway", server="Microsoft-IIS/7.5", title="Infinity Gateway",
         body="<div>Draeger Infinity Gateway Suite</div>"),
    http("Siemens syngo modality web", server="Microsoft-IIS/7.5", title="syngo Web Access",
         body="<div>Siemens Healthineers syngo - modality remote service</div>"),
)  # fmt: skip

# ---------------------------------------------------------------- hospital infrastructure


def hospital_infra(net: Network, rng: random.Random) -> tuple[Variant, ...]:
    domain = net.domains[0]
    alias = net.aliases[0] if net.aliases else net.org
    variants = [
        http("hospital website", server="Microsoft-IIS/10.0", title=f"Home | {net.org}", role="www",
             body=f"<h1>{net.org}</h1><p>Ziekenhuis in {net.city}</p>"),
        http("patient portal", server="nginx", title=f"Mijn {alias} | Patiëntportaal", role="mijn",
             body="<a href='/login'>Inloggen met DigiD</a>"),
        http("VPN gateway (Ivanti Connect Secure)", title="Ivanti Connect Secure", role="vpn",
             body="<form name='frmLogin' action='login.cgi'></form>"),
        http("VPN gateway (GlobalProtect)", title="GlobalProtect Portal", role="remote",
             body="<div id='login-form'>GlobalProtect Portal</div>"),
        http("VPN gateway (FortiGate SSL VPN)", title="Please Login", role="sslvpn",
             body="<div>FortiGate SSL-VPN</div>", headers=("X-Frame-Options: SAMEORIGIN",)),
        http("Citrix Gateway", title="Citrix Gateway", role="citrix",
             body="<div id='logonbox-container'>NetScaler Gateway</div>"),
        http("Outlook Web App", server="Microsoft-IIS/10.0", title="Outlook", role="webmail",
             headers=("X-OWA-Version: 15.2.1544.4",), body="<div>Outlook Web App</div>"),
        http("hospital intranet server, default page", server="Microsoft-IIS/10.0", title="IIS Windows Server",
             role="", body="<img src='iisstart.png' alt='IIS'>"),
    ]  # fmt: skip
    tls = [with_tls(v, f"{v.role}.{domain}" if v.role else domain) for v in variants]
    mail = Variant(
        f"220 mail.{domain} Microsoft ESMTP MAIL Service ready at Tue, 3 Nov 2026 09:12:44 +0100\r\n"
        "250-mail Hello [192.0.2.1]\r\n250-SIZE 37748736\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 CHUNKING\r\n",
        "smtp",
        "hospital mail gateway (Exchange)",
        product="Microsoft Exchange smtpd",
        role="mail",
        only_ports=(25, 587),
    )
    return tuple(variants[:2] + tls + [mail])


# ---------------------------------------------------------------- ordinary internet noise

WEB = both(
    [
        http("nginx default page", server="nginx/1.18.0 (Ubuntu)", title="Welcome to nginx!", product="nginx",
             version="1.18.0", body="<h1>Welcome to nginx!</h1>"),
        http("nginx default page", server="nginx/1.24.0", title="Welcome to nginx!", product="nginx",
             version="1.24.0", body="<h1>Welcome to nginx!</h1>"),
        http("nginx redirect", status=301, server="nginx", title="301 Moved Permanently", product="nginx",
             headers=("Location: https://%HOST%/",), body="<center><h1>301 Moved Permanently</h1></center>"),
        http("nginx 404", status=404, server="nginx/1.22.1", title="404 Not Found", product="nginx",
             version="1.22.1", body="<center><h1>404 Not Found</h1></center>"),
        http("nginx 403", status=403, server="nginx", title="403 Forbidden", product="nginx"),
        http("Apache default page", server="Apache/2.4.52 (Ubuntu)", title="Apache2 Ubuntu Default Page: It works",
             product="Apache httpd", version="2.4.52", body="<div class='page_header'>It works!</div>"),
        http("Apache 403", status=403, server="Apache", title="403 Forbidden", product="Apache httpd"),
        http("Apache directory listing", server="Apache/2.4.41 (Ubuntu)", title="Index of /", product="Apache httpd",
             version="2.4.41", body="<h1>Index of /</h1><table></table>"),
        http("IIS default page", server="Microsoft-IIS/10.0", title="IIS Windows Server", product="Microsoft IIS httpd",
             version="10.0", body="<img src='iisstart.png' alt='IIS'>"),
        http("IIS 404", status=404, server="Microsoft-HTTPAPI/2.0", title="Not Found",
             product="Microsoft HTTPAPI httpd", version="2.0"),
        http("lighttpd 404", status=404, server="lighttpd/1.4.59", title="404 Not Found", product="lighttpd",
             version="1.4.59"),
        http("MikroTik RouterOS login", title="RouterOS router configuration page", product="MikroTik http proxy",
             body="<h1>RouterOS v7.12</h1>"),
        http("AVM FRITZ!Box", title="FRITZ!Box", body="<div id='uiLogin'>FRITZ!Box</div>"),
        http("Synology DiskStation", server="nginx", title="Synology DiskStation", product="nginx",
             body="<div>DSM 7.2</div>"),
        http("Plesk", server="nginx", title="Plesk Obsidian 18.0.56", product="nginx"),
        http("Home Assistant", server="Python/3.12 aiohttp/3.9.3", title="Home Assistant"),
        http("WordPress site", server="Apache", title="Bakkerij de Vries | Ambachtelijk brood",
             headers=("Link: <https://%HOST%/wp-json/>; rel=\"https://api.w.org/\"",), product="Apache httpd"),
        http("Hikvision camera", server="App-webs/", title="", product="Hikvision IP camera httpd",
             body="<script>window.location.href='/doc/page/login.asp'</script>"),
        http("DrayTek Vigor", server="DWS", title="Vigor Login Page", body="<div>DrayTek Vigor</div>"),
        http("Tomcat default page", server="", title="Apache Tomcat/9.0.83", product="Apache Tomcat",
             version="9.0.83"),
    ]
)  # fmt: skip

ELASTIC = (
    http(
        "Elasticsearch",
        title=None,
        product="Elastic",
        version="7.17.9",
        content_type="application/json; charset=UTF-8",
        html='{\n  "name" : "es01",\n  "cluster_name" : "docker-cluster",\n  "version" : {\n    "number" : "7.17.9"'
        '\n  },\n  "tagline" : "You Know, for Search"\n}\n',
    ),
)


def _fingerprint(rng: random.Random) -> str:
    return ":".join(f"{rng.randrange(256):02x}" for _ in range(16))


def ssh_pool(rng: random.Random) -> tuple[Variant, ...]:
    versions = (
        ("OpenSSH_8.9p1 Ubuntu-3ubuntu0.10", "OpenSSH", "8.9p1 Ubuntu-3ubuntu0.10", "Linux"),
        ("OpenSSH_9.2p1 Debian-2+deb12u3", "OpenSSH", "9.2p1 Debian-2+deb12u3", "Linux"),
        ("OpenSSH_7.4", "OpenSSH", "7.4", "Linux"),
        ("OpenSSH_8.0", "OpenSSH", "8.0", "Linux"),
        ("OpenSSH_for_Windows_8.1", "OpenSSH", "for_Windows_8.1", "Windows"),
        ("dropbear_2020.81", "Dropbear sshd", "2020.81", None),
        ("ROSSSH", "MikroTik RouterOS sshd", "", None),
        ("Cisco-1.25", "Cisco SSH", "1.25", None),
    )
    pool = []
    for ident, product, version, os_name in versions:
        for _ in range(4):
            key = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 " + rng.randbytes(32)).decode()
            fp = _fingerprint(rng)
            data = (
                f"SSH-2.0-{ident}\nKey type: ssh-ed25519\nKey: {key}\nFingerprint: {fp}\n\n"
                "Kex Algorithms:\n\tcurve25519-sha256\n\tecdh-sha2-nistp256\n\tdiffie-hellman-group14-sha256\n"
            )
            extra = {"ssh": {"type": "ssh-ed25519", "fingerprint": fp, "key": key}}
            pool.append(Variant(data, "ssh", f"SSH {product}", product, version, os=os_name, extra=extra))
    return tuple(pool)


TELNET = (
    Variant("\xff\xfd\x18\xff\xfd \xff\xfd#\xff\xfd'\r\nUbuntu 20.04.6 LTS\r\nlogin: ", "telnet", "Telnet login"),
    Variant(
        "\xff\xfb\x01\xff\xfb\x03\xff\xfd\x18\xff\xfd\x1f\r\n\r\nUser Access Verification\r\n\r\nUsername: ",
        "telnet",
        "Telnet, Cisco IOS",
    ),  # fmt: skip
    Variant(
        "\xff\xfb\x01\xff\xfb\x03\r\nBusyBox v1.31.1 () built-in shell (ash)\r\n\r\n(none) login: ",
        "telnet",
        "Telnet, BusyBox device",
    ),  # fmt: skip
    Variant(
        "\xff\xfd\x01\xff\xfd\x1f\xff\xfb\x01\xff\xfb\x03\r\nMikroTik v6.49.10 (long-term)\r\nLogin: ",
        "telnet",
        "Telnet, MikroTik",
    ),  # fmt: skip
)

FTP = (
    Variant("220 (vsFTPd 3.0.3)\r\n530 Please login with USER and PASS.\r\n", "ftp", "FTP vsftpd", "vsftpd", "3.0.3"),
    Variant(
        "220 ProFTPD Server (Debian) [::ffff:10.0.0.2]\r\n530 Login incorrect.\r\n", "ftp", "FTP ProFTPD", "ProFTPD"
    ),  # fmt: skip
    Variant(
        "220-FileZilla Server 1.8.0\r\n220 Please visit https://filezilla-project.org/\r\n",
        "ftp",
        "FTP FileZilla Server",
        "FileZilla ftpd",
        "1.8.0",
    ),  # fmt: skip
    Variant(
        "220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\r\n220-You are user number 1 of 50 "
        "allowed.\r\n220 This is a private system - No anonymous login\r\n",
        "ftp",
        "FTP Pure-FTPd",
        "Pure-FTPd",
    ),  # fmt: skip
    Variant("220 Microsoft FTP Service\r\n", "ftp", "FTP Microsoft", "Microsoft ftpd"),
)

SMTP = (
    Variant("220 mail.bakkerijdevries.nl ESMTP Postfix (Debian/GNU)\r\n250-mail.bakkerijdevries.nl\r\n250-PIPELINING"
            "\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n", "smtp", "SMTP Postfix", "Postfix smtpd"),
    Variant("220 mx1.webhosting.nl ESMTP Exim 4.96 Tue, 03 Nov 2026 09:12:44 +0100\r\n250-mx1.webhosting.nl Hello "
            "[192.0.2.1]\r\n250-SIZE 52428800\r\n250 HELP\r\n", "smtp", "SMTP Exim", "Exim smtpd", "4.96"),
    Variant("220 EXCH01.kantoor.local Microsoft ESMTP MAIL Service ready at Tue, 3 Nov 2026 09:12:44 +0100\r\n"
            "250-EXCH01.kantoor.local Hello [192.0.2.1]\r\n250 CHUNKING\r\n", "smtp", "SMTP Exchange",
            "Microsoft Exchange smtpd"),
)  # fmt: skip

RDP = (
    Variant("Remote Desktop Protocol\n\\x03\\x00\\x00\\x13\\x0e\\xd0\\x00\\x00\\x124\\x00\\x02\\x1f\\x08\\x00\\x02"
            "\\x00\\x00\\x00\nRemote Desktop Protocol NTLM Info:\n  OS: Windows 10/Windows Server\n  OS Build: "
            "10.0.17763\n  Target Name: WORKGROUP\n  NetBIOS Domain Name: WORKGROUP\n  NetBIOS Computer Name: "
            "SRV-APP01\n  DNS Domain Name: SRV-APP01\n  FQDN: SRV-APP01\n", "rdp", "RDP with NTLM info",
            os="Windows"),
    Variant("Remote Desktop Protocol\n\\x03\\x00\\x00\\x13\\x0e\\xd0\\x00\\x00\\x124\\x00\\x02\\x01\\x08\\x00\\x02"
            "\\x00\\x00\\x00", "rdp", "RDP", os="Windows"),
)  # fmt: skip

NTP = (
    Variant("NTP\nprotocolversion: 3\nstratum: 2\nleap: 0\nprecision: -23\nrootdelay: 0.0123\nrootdispersion: 0.034"
            "\nreftime: 3970000000.12\npoll: 10\nrefid: 0xC1000001\n", "ntp", "NTP server"),
    Variant("NTP\nprotocolversion: 4\nstratum: 3\nleap: 0\nprecision: -20\nsystem: UNIX\nversion: ntpd 4.2.8p15\n",
            "ntp", "NTP server (ntpd)", "NTP"),
)  # fmt: skip

SNMP = (
    Variant("SNMP:\n  Versions:\n    1\n    2\n  Engineid Format: mac\n  Engine Boots: 17\n  Engineid Data: "
            "00:1a:2b:3c:4d:5e\n  Enterprise: 9\n  Engine Time: 112d\n", "snmp", "SNMP, Cisco agent"),
    Variant("SNMP:\n  Versions:\n    3\n  Engineid Format: octets\n  Engine Boots: 3\n  Enterprise: 14988\n",
            "snmp", "SNMP v3, MikroTik"),
    Variant("Linux gateway 5.4.0-150-generic #167-Ubuntu SMP x86_64\n", "snmp", "SNMP sysDescr", os="Linux"),
)  # fmt: skip

DNS = (
    Variant("\nRecursion: enabled\nResolver name: resolver1.provider.nl\n", "dns-udp", "DNS open resolver"),
    Variant("\nRecursion: disabled\n", "dns-udp", "DNS authoritative"),
    Variant("\nRecursion: enabled\nResolver ID: unbound 1.17.1\n", "dns-udp", "DNS resolver (Unbound)", "Unbound"),
)

SIP = (
    Variant("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP nm;branch=foo;rport\r\nFrom: <sip:nm@nm>;tag=root\r\nTo: <sip:nm2@nm2>"
            "\r\nCall-ID: 50000\r\nCSeq: 42 OPTIONS\r\nUser-Agent: FPBX-16.0.40(16.28.0)\r\nAllow: INVITE, ACK, CANCEL,"
            " OPTIONS, BYE\r\nContent-Length: 0\r\n\r\n", "sip", "SIP, FreePBX/Asterisk", "Asterisk"),
    Variant("SIP/2.0 404 Not Found\r\nVia: SIP/2.0/UDP nm;branch=foo\r\nCall-ID: 50000\r\nCSeq: 42 OPTIONS\r\n"
            "Server: AVM FRITZ!Box 7590 154.07.57\r\nContent-Length: 0\r\n\r\n", "sip", "SIP, FRITZ!Box"),
)  # fmt: skip

IKE = (
    Variant("VPN (IKE)\n\nInitiator SPI: 1ae0f2c93b4d0e1f\nResponder SPI: 9a8b7c6d5e4f3a2b\nNext Payload: Notification"
            " (N)\nVersion: 2.0\nExchange Type: IKE_SA_INIT\nFlags:\n    Initiator: False\n    Response: True\n"
            "Message ID: 0\nLength: 36\n", "ike", "IKE v2"),
    Variant("VPN (IKE)\n\nInitiator SPI: 8890defa029c11aa\nResponder SPI: 4098340248029309\nNext Payload: Security "
            "Association (SA)\nVersion: 1.0\nExchange Type: Identity Protection (Main Mode)\n", "ike", "IKE v1"),
)  # fmt: skip

MYSQL = (
    Variant("J\x00\x00\x00\n5.7.42-0ubuntu0.18.04.1\x00\x1a\x0e\x00\x00\x1bR=\x07L:+\x0c\x00\xff\xf7\x08\x02\x00\xff"
            "\x81\x15\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00;5\x0eA@\x1c\x03N!m6\x00mysql_native_password\x00",
            "mysql", "MySQL 5.7 handshake", "MySQL", "5.7.42-0ubuntu0.18.04.1"),
    Variant("I\x00\x00\x00\xffj\x04Host '192.0.2.1' is not allowed to connect to this MariaDB server", "mysql",
            "MariaDB, host not allowed", "MariaDB"),
)  # fmt: skip

POSTGRES = (
    Variant("\x45\x00\x00\x00\x8bSFATAL\x00VFATAL\x00C0A000\x00Munsupported frontend protocol 65363.19778: server "
            "supports 3.0 to 3.0\x00Fpostmaster.c\x00L2188\x00RProcessStartupPacket\x00\x00", "postgresql",
            "PostgreSQL error reply", "PostgreSQL"),
)  # fmt: skip

REDIS = (
    Variant("-NOAUTH Authentication required.\r\n", "redis", "Redis with auth", "Redis key-value store"),
    Variant("$1204\r\n# Server\r\nredis_version:6.0.16\r\nredis_mode:standalone\r\nos:Linux 5.15.0-91-generic x86_64"
            "\r\narch_bits:64\r\ntcp_port:6379\r\n", "redis", "Redis INFO", "Redis key-value store", "6.0.16"),
)  # fmt: skip

MONGODB = (
    Variant('MongoDB Server Information\n{\n    "version": "4.4.18",\n    "gitVersion": "8ed32b5c2c68ebe7f8ae2ebe8d'
            '23f36037a17dea",\n    "ok": 1.0\n}\n', "mongodb", "MongoDB build info", "MongoDB", "4.4.18"),
)  # fmt: skip

LDAP = (Variant("0\x0c\x02\x01\x01a\x07\n\x01\x00\x04\x00\x04\x00", "ldap-tcp", "LDAP bind response (BER)"),)

BLANK = (Variant("", "auto", "no response"),)


def junk_pool(rng: random.Random, size: int = 64) -> tuple[Variant, ...]:
    """Bytes nobody can interpret; the first byte avoids the PDU types and frames of known protocols."""
    pool = []
    for _ in range(size):
        length = rng.randrange(3, 48)
        first = bytes([rng.randrange(0x80, 0xFF)])
        body = rng.randbytes(length)
        pool.append(Variant((first + body).decode("latin-1"), "auto", "binary reply, not interpretable"))
    return tuple(pool)
