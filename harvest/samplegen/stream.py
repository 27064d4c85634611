"""Banners of the sample mix, fast and deterministic: pools are built once, each banner only
draws a kind, a port, a network, a variant, an address and a time.

`iter_samples` yields (banner, label) pairs; `iter_banners` only the banners. Nested objects
(`location`, `http`, `ssl`) may be shared between banners: treat them as read-only.
"""

from __future__ import annotations

import gzip
import json
import random
import time
import zlib
from bisect import bisect
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import IO

from harvest.samplegen import dicom, mix
from harvest.samplegen.catalog import Kind, Variant
from harvest.samplegen.networks import PROVIDERS, Allocator, Network, hospital_networks, load_registry, reverse_name

DEFAULT_SEED = 2019
# Banners are dated in the two months before this moment (no time zone, as Shodan writes it).
EPOCH_END = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
WINDOW_DAYS = 60
WINDOW_US = WINDOW_DAYS * 86_400_000_000

# Approximate centres, as a geolocation database would give them.
CITY_COORDINATES = {
    "'s-Hertogenbosch": (51.6978, 5.3037), "Alkmaar": (52.6324, 4.7534), "Almelo": (52.3567, 6.6625),
    "Almere": (52.3508, 5.2647), "Amersfoort": (52.1561, 5.3878), "Amsterdam": (52.374, 4.8897),
    "Apeldoorn": (52.2112, 5.9699), "Arnhem": (51.9851, 5.8987), "Assen": (52.9925, 6.5649),
    "Breda": (51.5719, 4.7683), "Delft": (52.0116, 4.3571), "Den Haag": (52.0705, 4.3007),
    "Deventer": (52.2661, 6.1552), "Dordrecht": (51.8133, 4.6901), "Ede": (52.0402, 5.6649),
    "Eindhoven": (51.4416, 5.4697), "Emmen": (52.7792, 6.9069), "Enschede": (52.2215, 6.8937),
    "Groningen": (53.2194, 6.5665), "Haarlem": (52.3874, 4.6462), "Heerlen": (50.8882, 5.9795),
    "Helmond": (51.4793, 5.657), "Hengelo": (52.2658, 6.7931), "Hilversum": (52.2292, 5.1669),
    "Leiden": (52.1601, 4.497), "Maastricht": (50.8514, 5.691), "Nieuwegein": (52.0292, 5.0806),
    "Nijmegen": (51.8126, 5.8372), "Rotterdam": (51.9225, 4.4792), "Utrecht": (52.0907, 5.1214),
    "Veldhoven": (51.4186, 5.4028), "Zwolle": (52.5168, 6.083),
}  # fmt: skip

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _cumulative(weights: list[float]) -> tuple[list[float], float]:
    cum = list(accumulate(weights))
    return cum, cum[-1]


def _der_len(n: int) -> bytes:
    return bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else bytes([0x82, n >> 8, n & 255])


def _san(names: list[str]) -> str:
    """subjectAltName extension value (DER) as Shodan writes it: the text of a Python bytes
    literal, escapes and all ("0\\x1e\\x82\\x0fwww.example.nl")."""
    items = b"".join(b"\x82" + _der_len(len(n)) + n.encode("ascii", "replace") for n in names)
    return repr(b"\x30" + _der_len(len(items)) + items)[2:-1]


def _serves(v: Variant, port: int) -> bool:
    """Whether a variant fits a port: HTTPS on TLS ports, plain HTTP elsewhere, mail on mail ports."""
    if v.only_ports:
        return port in v.only_ports
    if v.http is not None:
        return v.tls == (port in mix.TLS_PORTS) and port not in mix.MAIL_PORTS
    return True


class Generator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.registry = load_registry()
        self.hospitals = hospital_networks(self.registry)
        self.providers = tuple(n for n in PROVIDERS if n.kind != "honeypot")
        self.honeypot_net = next(n for n in PROVIDERS if n.kind == "honeypot")
        self.networks = {n.key: n for n in (*PROVIDERS, *self.hospitals)}
        self.medical_ports = mix.medical_ports()
        self.kinds = mix.build_kinds(seed)
        self.kinds_by_name = {k.name: k for k in self.kinds}
        self.kind_cum, self.kind_total = _cumulative([k.weight for k in self.kinds])
        self.allocator = Allocator()
        self._port_tables = {k.name: _cumulative([w for _, _, w in k.ports]) for k in self.kinds}
        self._net_tables = {k.name: self._placement(k) for k in self.kinds}
        self._pools: dict[tuple[str, str, int], tuple[Variant, ...]] = {}
        self._locations = {n.key: self._location(n) for n in self.networks.values()}
        self._crawlers = [f"{random.Random(f'{seed}/crawler/{i}').getrandbits(160):040x}" for i in range(8)]
        self._net_fields = {
            n.key: (n.org, n.isp, f"AS{n.asn}", self._locations[n.key], n.domains[0] if n.domains else "", n.rdns)
            for n in self.networks.values()
        }
        # Formatting times is the costliest step per banner: days and clock times come from tables.
        first_day = EPOCH_END - WINDOW_DAYS * 86400
        days = [time.gmtime(first_day + d * 86400) for d in range(WINDOW_DAYS)]
        self._day_iso = [f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}" for t in days]
        self._day_http = [f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year}" for t in days]
        self._clock = [f"{h:02d}:{m:02d}:{sec:02d}" for h in range(24) for m in range(60) for sec in range(60)]

    # -- tables

    def _placement(self, kind: Kind) -> tuple[list[Network], list[float], float]:
        if kind.placement is None:
            nets = list(self.providers)
            weights = [n.weight for n in nets]
        else:
            nets, weights = [], []
            for key, weight in kind.placement:
                if key == "hospital":
                    share = weight / len(self.hospitals)
                    nets.extend(self.hospitals)
                    weights.extend([share] * len(self.hospitals))
                else:
                    nets.append(self.networks[key])
                    weights.append(weight)
        cum, total = _cumulative(weights)
        return nets, cum, total

    @staticmethod
    def _location(net: Network) -> dict:
        latitude, longitude = CITY_COORDINATES.get(net.city, CITY_COORDINATES["Amsterdam"])
        return {
            "city": net.city,
            "region_code": None,
            "area_code": None,
            "longitude": longitude,
            "latitude": latitude,
            "postal_code": None,
            "dma_code": None,
            "country_code": "NL",
            "country_name": "Netherlands",
            "country_code3": None,
        }

    def pool(self, kind: Kind, net: Network, port: int) -> tuple[Variant, ...]:
        key = (kind.name, net.key if net.is_hospital else "", port)
        cached = self._pools.get(key)
        if cached is None:
            if kind.name == "pump_server":
                base = mix.c.PUMP_SERVERS[port]
            else:
                base = kind.variants(net, self.seed)
            cached = tuple(v for v in base if _serves(v, port)) or base
            self._pools[key] = cached
        return cached

    # -- drawing

    def draw(self) -> tuple[dict, dict]:
        rng = self.rng
        kind = self.kinds[bisect(self.kind_cum, rng.random() * self.kind_total)]
        cum, total = self._port_tables[kind.name]
        port, transport, _ = kind.ports[bisect(cum, rng.random() * total)]
        nets, ncum, ntotal = self._net_tables[kind.name]
        net = nets[bisect(ncum, rng.random() * ntotal)]
        variants = self.pool(kind, net, port)
        variant = variants[int(rng.random() * len(variants))]
        return self.make(kind, variant, net, port, transport, honeypot=False)

    def make(
        self,
        kind: Kind,
        v: Variant,
        net: Network,
        port: int,
        transport: str,
        *,
        honeypot: bool,
        note: str = "",
        ip: int | None = None,
    ) -> tuple[dict, dict]:
        """One banner of variant v at a fresh (or the given) address of net, and its label."""
        if ip is None:
            ip = self.allocator.address(net, mix.port_group(port), port)
        ip_str = f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"
        org, isp, asn, location, domain, _ = self._net_fields[net.key]
        hostname, domain = self._names(net, v, ip, domain)
        timestamp, http_date = self._moment()
        data = v.data
        if v.dated:
            data = data.replace("%DATE%", http_date)
            if "%HOST%" in data:
                data = data.replace("%HOST%", hostname or ip_str)
        crc = zlib.crc32(data.encode("utf-8"))
        banner: dict = {
            "hash": crc - 4294967296 if crc >= 2147483648 else crc,
            "ip": ip,
            "hostnames": [hostname] if hostname else [],
            "org": org,
            "data": data,
            "port": port,
            "transport": transport,
            "isp": isp,
            "asn": asn,
            "location": location,
            "timestamp": timestamp,
            "domains": [domain] if domain else [],
            "ip_str": ip_str,
            "os": v.os,
            "_shodan": self._meta(v.module, bool(hostname)),
            "opts": {},
        }
        self._add_optional(banner, v, hostname)
        label = {
            "ip": ip_str,
            "port": port,
            "transport": transport,
            "class": kind.cls,
            "category": kind.category,
            "segment": self.segment(kind, net, port),
            "honeypot": honeypot,
            "note": note or v.note,
        }
        return banner, label

    def _names(self, net: Network, v: Variant, ip: int, domain: str) -> tuple[str, str]:
        """(hostname, domain): a hospital names its services by role; providers by reverse DNS.
        Shodan derives domains from hostnames, so a service without a name has no domain."""
        if net.is_hospital:
            return (f"{v.role}.{domain}", domain) if v.role else ("", "")
        if net.rdns:
            hostname = reverse_name(net, ip)
            return hostname, ".".join(hostname.rsplit(".", 2)[-2:])
        return "", ""

    def _moment(self) -> tuple[str, str]:
        """(Shodan timestamp, HTTP Date header) of one random moment in the window."""
        day, rest = divmod(int(self.rng.random() * WINDOW_US), 86_400_000_000)
        second, micro = divmod(rest, 1_000_000)
        clock = self._clock[second]
        return f"{self._day_iso[day]}T{clock}.{micro:06d}", f"{self._day_http[day]} {clock} GMT"

    def _meta(self, module: str, ptr: bool) -> dict:
        uid = f"{self.rng.getrandbits(128):032x}"
        return {
            "crawler": self._crawlers[int(uid[0], 16) & 7],
            "options": {},
            "id": f"{uid[:8]}-{uid[8:12]}-4{uid[13:16]}-a{uid[17:20]}-{uid[20:]}",
            "module": module,
            "ptr": ptr,
        }

    def _add_optional(self, banner: dict, v: Variant, hostname: str) -> None:
        if v.product:
            banner["product"] = v.product
            if v.version:
                banner["version"] = v.version
        if v.http is not None:
            banner["http"] = v.http
        if v.tls:
            banner["ssl"] = self._ssl(hostname or v.cert_cn or "localhost", self_signed=not hostname)
        if v.extra:
            banner.update(v.extra)
        if v.tags:
            banner["tags"] = list(v.tags)

    def segment(self, kind: Kind, net: Network, port: int) -> str:
        if net.is_hospital:
            return "hospital_organisation"
        if kind.software:
            return "software"
        if port in self.medical_ports:
            return "medical_port"
        return ""

    def _ssl(self, cn: str, *, self_signed: bool) -> dict:
        digest = zlib.crc32(cn.encode())
        issuer = {"CN": cn} if self_signed else {"C": "US", "O": "Let's Encrypt", "CN": "R11"}
        return {
            "cert": {
                "subject": {"CN": cn},
                "issuer": issuer,
                "issued": "20260915080000Z",
                "expires": "20261214080000Z",
                "expired": False,
                "serial": digest * 7919,
                "sig_alg": "sha256WithRSAEncryption",
                "version": 2,
                "pubkey": {"type": "rsa", "bits": 2048},
                "extensions": [{"critical": False, "data": _san([cn]), "name": "subjectAltName"}],
                "fingerprint": {"sha1": f"{digest:08x}" * 5, "sha256": f"{digest:08x}" * 8},
            },
            "cipher": {"version": "TLSv1.3", "bits": 256, "name": "TLS_AES_256_GCM_SHA384"},
            "versions": ["-TLSv1", "-SSLv2", "-SSLv3", "-TLSv1.1", "TLSv1.2", "TLSv1.3"],
            "alpn": [],
            "chain": [],
        }

    # -- the honeypot-like hosts

    def specials(self) -> list[tuple[dict, dict]]:
        # Only these hosts live on the honeypot network, so fixed addresses cannot collide.
        net = self.honeypot_net
        start = int(net.network.network_address)
        out = []
        for name, port, transport in mix.HONEYPOT_MULTI:
            kind = self.kinds_by_name[name]
            pool = self.pool(kind, net, port)
            variant = pool[int(self.rng.random() * len(pool))]
            note = f"honeypot-like host answering many protocols: {variant.note}"
            out.append(self.make(kind, variant, net, port, transport, honeypot=True, note=note, ip=start + 1234))
        # A second host answering with the probe's own (findscu) identity.
        pdu = dicom.associate_ac(dicom.SCANNER_IDENTITY)
        variant = Variant(dicom.as_banner_text(pdu), "dicom", "A-ASSOCIATE-AC echoing the scanner's own identity")
        note = "honeypot-like DICOM server: answers with the scanner's default identity (OFFIS_DCMTK_360)"
        out.append(self.make(self.kinds_by_name["dicom_ac"], variant, net, 104, "tcp", honeypot=True, note=note,
                             ip=start + 4321))  # fmt: skip
        # Every hospital whose registration lacks an abuse contact holds a host, so that the RDAP
        # answers that need a fallback (or have no contact at all) are always part of the corpus.
        infra = self.kinds_by_name["hospital_infra"]
        for hospital in self.hospitals:
            if hospital.contacts != "abuse":
                variant = self.pool(infra, hospital, 443)[0]
                out.append(self.make(infra, variant, hospital, 443, "tcp", honeypot=False))
        # The reply Shodan recorded from a Fujifilm Synapse PACS, byte for byte, on an ordinary host.
        synapse = Variant(dicom.as_banner_text(dicom.associate_ac(dicom.SYNAPSE)), "dicom", "")
        note = "A-ASSOCIATE-AC, Fujifilm Synapse (the reply Shodan recorded)"
        out.append(self.make(self.kinds_by_name["dicom_ac"], synapse, self.networks["azure-we"], 104, "tcp",
                             honeypot=False, note=note))  # fmt: skip
        return out


def iter_samples(n: int, seed: int = DEFAULT_SEED) -> Iterator[tuple[dict, dict]]:
    """n (banner, label) pairs; (ip, port, transport) never repeats (tested up to 2,000,000)."""
    if n < 0:
        raise ValueError(f"n must not be negative, not {n}")
    gen = Generator(seed)
    specials = gen.specials() if n >= 200 else []
    step = n // (len(specials) + 1) if specials else 0
    positions = {step * (i + 1): s for i, s in enumerate(specials)}
    for index in range(n):
        special = positions.get(index)
        yield special if special is not None else gen.draw()


def iter_banners(n: int, seed: int = DEFAULT_SEED) -> Iterator[dict]:
    """n Shodan-format banners of the sample mix (see iter_samples)."""
    for banner, _label in iter_samples(n, seed):
        yield banner


def dump_line(obj: dict) -> str:
    # Shodan's CLI writes with the default separators and ASCII escapes.
    return json.dumps(obj) + "\n"


def open_output(path: Path, compresslevel: int = 9) -> IO[str]:
    """A text file; gzip (mtime 0, no file name) when the name ends in .gz, so output is reproducible."""
    if path.name.endswith(".gz"):
        raw = open(path, "wb")  # noqa: SIM115 - closed with the wrapper
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel)
        return _Closing(gz, raw)  # type: ignore[return-value]  # a text stream over gzip, closed together
    return open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115


class _Closing:
    """Text writing over a GzipFile that also closes the underlying file."""

    def __init__(self, gz: gzip.GzipFile, raw: IO[bytes]) -> None:
        self._gz, self._raw = gz, raw

    def write(self, text: str) -> int:
        return self._gz.write(text.encode("utf-8"))

    def close(self) -> None:
        self._gz.close()
        self._raw.close()

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_banners(path: str | Path, n: int, seed: int = DEFAULT_SEED) -> int:
    """Write n banners as JSON lines (gzip when the path ends in .gz); returns the count."""
    path = Path(path)
    count = 0
    with open_output(path, compresslevel=6) as out:
        buffer = []
        for banner in iter_banners(n, seed):
            buffer.append(dump_line(banner))
            count += 1
            if len(buffer) >= 4096:
                out.write("".join(buffer))
                buffer.clear()
        out.write("".join(buffer))
    return count
