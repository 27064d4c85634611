"""Turn one Shodan banner (a JSON object written by strangers) into a validated BannerRecord.

Pure functions, no I/O and no ORM. Ingest is lenient about everything except what it needs to
identify a service (address, port, transport); every other field is cleaned and bounded.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from medexpo.lib.text import ascii_digits, shorten

_SURROGATES = re.compile("[\ud800-\udfff]")
UTF8_BOM = b"\xef\xbb\xbf"

MAX_RECORD_BYTES = 1024 * 1024  # a longer record (line, or banner of a host lookup) is rejected, not read into memory
# A host lookup carries every banner of a host (with history, for busy hosts many megabytes) on
# one line: it is read banner by banner, each held to MAX_RECORD_BYTES, up to this size.
MAX_HOST_LINE_BYTES = 64 * 1024 * 1024
MAX_HOSTNAMES = 64
MAX_FIELD = 255


class Reason:
    """Why a record was rejected. Stable codes: they are shown to users and counted per run."""

    TOO_LARGE = "too_large"
    NUL_BYTE = "nul_byte"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    TOO_DEEP = "too_deep"
    MISSING_ADDRESS = "missing_address"
    INVALID_ADDRESS = "invalid_address"
    MISSING_PORT = "missing_port"
    INVALID_PORT = "invalid_port"
    INVALID_TRANSPORT = "invalid_transport"
    DUPLICATE = "duplicate"
    FUTURE_TIMESTAMP = "future_timestamp"
    NO_BANNERS = "no_banners"
    TRUNCATED_FILE = "truncated_file"
    CORRUPT_FILE = "corrupt_file"

    DESCRIPTIONS = {
        TOO_LARGE: f"record larger than {MAX_RECORD_BYTES // 1024} KiB",
        NUL_BYTE: "raw NUL byte in the line (not valid JSON text)",
        NOT_UTF8: "line is not valid UTF-8",
        NOT_JSON: "line is not valid JSON",
        NOT_OBJECT: "JSON value is not an object",
        TOO_DEEP: "JSON nested too deeply to be encoded again for storage",
        MISSING_ADDRESS: "no ip, ip_str or ipv6 field",
        INVALID_ADDRESS: "address is not a valid IPv4 or IPv6 address",
        MISSING_PORT: "no port field",
        INVALID_PORT: "port is not an integer from 0 to 65535",
        INVALID_TRANSPORT: "transport is not tcp or udp",
        DUPLICATE: "the same banner was already read in this run",
        FUTURE_TIMESTAMP: "timestamp more than a day after the run started",
        NO_BANNERS: "host lookup without a data[] list of banners",
        TRUNCATED_FILE: "the file ends in the middle of compressed data",
        CORRUPT_FILE: "the compressed data is corrupt",
    }


class RecordError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or Reason.DESCRIPTIONS.get(reason, reason)


@dataclass(slots=True)  # not frozen: frozen construction costs 1 µs a banner
class BannerRecord:
    ip: str
    port: int
    transport: str
    timestamp: datetime | None
    banner: str  # display form: NUL shown as U+2400, invalid surrogates replaced
    banner_hash: str
    raw: str  # the record as JSON text, verbatim when it came as a line of its own
    product: str
    version: str
    module: str
    org: str
    isp: str
    asn: int | None
    country: str
    hostnames: tuple[str, ...]
    os: str
    identity_hash: str  # see record_identity

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.ip, self.port, self.transport)


def clean_text(value: object, limit: int = MAX_FIELD) -> str:
    """A string safe for any database: no NUL, no lone surrogates, at most `limit` characters."""
    if type(value) is not str:
        if value is None:
            return ""
        value = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""
    if len(value) > limit:
        value = value[:limit]
    if "\x00" in value:
        value = value.replace("\x00", "\u2400")
    if value.isascii():  # no surrogates possible; avoids an encode per field
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATES.sub("\ufffd", value)
    return value


def banner_hash(data: str) -> str:
    return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def record_size(line: bytes) -> int:
    """The size a limit applies to: the line without its ending, so that the last line of a file
    (often without one) is held to the same rule as the others."""
    size = len(line)
    if line.endswith(b"\n"):
        size -= 1
    if size and line[size - 1] == 13:  # "\r" of a "\r\n" ending
        size -= 1
    return size


def parse_line(line: bytes) -> dict:
    """Decode one line of a download file into a JSON object, or raise RecordError."""
    if len(line) > MAX_RECORD_BYTES and record_size(line) > MAX_RECORD_BYTES:
        raise RecordError(Reason.TOO_LARGE, f"record of {record_size(line)} bytes, limit {MAX_RECORD_BYTES}")
    obj = parse_json(line)
    if not isinstance(obj, dict):
        raise RecordError(Reason.NOT_OBJECT, f"JSON {type(obj).__name__}, expected an object")
    return obj


def parse_json(text: bytes) -> object:
    """Any JSON value, as parse_line() reads a line: strictly with orjson, leniently if need be."""
    if b"\x00" in text:
        raise RecordError(Reason.NUL_BYTE)
    if text.startswith(UTF8_BOM):
        # orjson refuses a BOM that editors put in front of a file, and the lenient parser would
        # keep it in the stored record; it is not part of the record.
        text = text[len(UTF8_BOM) :]
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise RecordError(Reason.NOT_UTF8, f"invalid UTF-8 at byte {uexc.start}") from None
        return _parse_lenient(text, exc)


def _parse_lenient(line: bytes, first_error: Exception) -> object:
    # orjson refuses lone surrogate escapes ("\ud800") that real banners of binary junk contain
    # and that Python's json accepts; clean_text() makes them safe afterwards.
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # json recurses once per level; orjson stops at 1,024 levels
        raise RecordError(Reason.NOT_JSON, shorten(str(first_error), 200)) from None


def parse_address(obj: dict) -> str:
    value = obj.get("ip_str")
    if type(value) is str and "." in value and ":" not in value:
        # Fast path for the common dotted quad: inet_pton is strict (no octal, no short forms)
        # and inet_ntop gives the canonical text.
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value))
        except (OSError, ValueError):
            pass  # the general path below reports it, or accepts odd spacing
    candidates = [obj.get("ip_str"), obj.get("ipv6"), obj.get("ip")]
    present = [c for c in candidates if c not in (None, "")]
    if not present:
        raise RecordError(Reason.MISSING_ADDRESS)
    value = present[0]
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            # Shodan's integer `ip` is IPv4; ip_address() would read a larger number as IPv6.
            address = ipaddress.IPv4Address(value)
        elif isinstance(value, str) and len(value) <= 64:
            address = ipaddress.ip_address(value.strip())
        else:
            raise ValueError
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError  # "fe80::1%eth0": a zone means something only on the scanning host
    except ValueError:
        raise RecordError(Reason.INVALID_ADDRESS, f"address {shorten(repr(value), 80)}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.compressed


def parse_port(obj: dict) -> int:
    if "port" not in obj or obj["port"] is None:
        raise RecordError(Reason.MISSING_PORT)
    value = obj["port"]
    if isinstance(value, str) and len(value) < 7:
        digits = value.strip()
        if ascii_digits(digits):
            value = int(digits)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise RecordError(Reason.INVALID_PORT, f"port {shorten(repr(value), 80)}")
    return value


def parse_transport(obj: dict) -> str:
    value = obj.get("transport") or "tcp"
    if not isinstance(value, str) or value.lower() not in ("tcp", "udp"):
        raise RecordError(Reason.INVALID_TRANSPORT, f"transport {shorten(repr(value), 40)}")
    return value.lower()


def parse_timestamp(value: object) -> datetime | None:
    """Shodan writes UTC without an offset ("2019-04-25T06:58:31.583720"); others may add one."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    if len(value) == 26 and value[10] == "T":
        try:  # the common form: naming the offset is 8x cheaper than replace(tzinfo=...) after
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            pass
    try:
        ts = datetime.fromisoformat(value)
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except (ValueError, OverflowError):  # overflow: an offset moved 0001-01-01 or 9999-12-31 out of range
        return None


def parse_asn(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 2**32 else None
    if isinstance(value, str):
        digits = value.strip().upper().removeprefix("AS")
        if ascii_digits(digits) and len(digits) <= 10:
            number = int(digits)
            return number if number < 2**32 else None
    return None


def _hostnames(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    names = []
    for item in value[:MAX_HOSTNAMES]:
        if isinstance(item, str) and item:
            names.append(clean_text(item, 253))
    return tuple(names)


def _country(obj: dict) -> str:
    location = obj.get("location")
    code = location.get("country_code") if isinstance(location, dict) else None
    if code in (None, ""):
        code = obj.get("country_code")  # where a host lookup (/shodan/host/{ip}) names it
    # ASCII only: "ß".upper() is "SS", and the column holds two characters.
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
        return code.upper()
    return ""


def record_from_object(obj: dict, raw: str) -> BannerRecord:
    """Validate a banner object (one of a host lookup with what it inherits from the host)."""
    ip = parse_address(obj)
    port = parse_port(obj)
    transport = parse_transport(obj)
    data = obj.get("data")
    if not isinstance(data, str):
        data = "" if data is None else _json_text(data)[:MAX_RECORD_BYTES]
    shodan_meta = obj.get("_shodan")
    module = shodan_meta.get("module") if isinstance(shodan_meta, dict) else ""
    return BannerRecord(  # positional: keyword arguments cost 0.5 µs a banner here
        ip,
        port,
        transport,
        parse_timestamp(obj.get("timestamp")),
        clean_text(data, MAX_RECORD_BYTES),
        banner_hash(data),
        raw,
        clean_text(obj.get("product")),
        clean_text(obj.get("version")),
        clean_text(module, 64),
        clean_text(obj.get("org")),
        clean_text(obj.get("isp")),
        parse_asn(obj.get("asn")),
        _country(obj),
        _hostnames(obj.get("hostnames")),
        clean_text(obj.get("os")),
        record_identity(obj),
    )


def record_identity(obj: dict) -> str:
    """A hash of what tells a service's record apart besides its banner (`data`) and names its
    operator: its TLS certificate, its HTTP title, its hostnames and domains (owner attribution
    reads them from the current record). Empty when it has none of them: banners without a name,
    which then pay four look-ups."""
    ssl, http, names, domains = obj.get("ssl"), obj.get("http"), obj.get("hostnames"), obj.get("domains")
    if ssl is None and http is None and not names and not domains:
        return ""
    cert = ssl.get("cert") if type(ssl) is dict else None
    title = http.get("title") if type(http) is dict else None
    if cert is None and title is None and not names and not domains:
        return ""
    fingerprint = cert.get("fingerprint") if type(cert) is dict else None
    sha256 = fingerprint.get("sha256") if type(fingerprint) is dict else None
    # Lists as written: another order of the same names counts too (attribution takes the first
    # name that matches a hospital). [] and null are one: no name.
    names, domains = names or None, domains or None
    try:
        # Shodan's fingerprint stands for the whole certificate; without one, the certificate.
        key = orjson.dumps([sha256 if type(sha256) is str else cert, title, names, domains])
    except (TypeError, orjson.JSONEncodeError):  # nested deeper than orjson writes, or a huge int
        key = repr([sha256, title, names, domains]).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16).hexdigest()


_NO_VALUE: tuple = (None, "", [], {})


def _inherit(obj: dict, host: dict) -> dict:
    """A banner of a host lookup with the host's fields where it has no value of its own: Shodan
    writes null, "" or [] in a banner (its hostnames, org, os) where the host has the value. A
    banner that names another address than its host's is about another host: it takes nothing."""
    own = _address_or_none(obj)
    if own is not None:
        theirs = _address_or_none(host)
        if theirs is not None and theirs != own:
            return obj
    merged = dict(obj)
    for key, value in host.items():
        if merged.get(key, None) in _NO_VALUE:
            merged[key] = value
    return merged


def _address_or_none(obj: dict) -> str | None:
    try:
        return parse_address(obj)
    except RecordError:
        return None


def _json_text(value: object) -> str:
    """JSON text of a parsed value. Python's encoder recurses once per level, and orjson reads up
    to 1,024 levels: what it cannot encode again is rejected (a cut-off text would hash and show
    like no real banner)."""
    try:
        return json.dumps(value, ensure_ascii=True)
    except RecursionError:
        raise RecordError(Reason.TOO_DEEP) from None


def record_from_line(line: bytes) -> BannerRecord:
    """One line of a `shodan download` file: the raw record is the line itself, verbatim (a BOM
    in front of it aside)."""
    obj = parse_line(line)
    try:
        return record_from_object(obj, line.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n"))
    except RecordError as exc:
        if exc.reason == Reason.MISSING_PORT and isinstance(obj.get("data"), list):
            exc.detail = "no port field: a host lookup, its banners in data[]; read the file with --hosts"
        raise


BANNER_NOT_HOST = "a banner, not a host lookup: its data is text, not a list of banners; read the file with --file"
HOST_FIELDS = ("ip", "ip_str", "ipv6", "org", "isp", "asn", "hostnames", "os", "location", "country_code")


def host_from_line(line: bytes) -> tuple[dict, list]:
    """One host lookup (`/shodan/host/{ip}` shape): the fields its banners inherit, and its data[]
    list of banners. Lines over MAX_RECORD_BYTES are read banner by banner (harvest/readers.py)."""
    obj = parse_line(line)
    banners = obj.get("data")
    if not isinstance(banners, list):
        if isinstance(banners, str) and "port" in obj:
            raise RecordError(Reason.NO_BANNERS, BANNER_NOT_HOST)
        raise RecordError(Reason.NO_BANNERS)
    return {k: obj[k] for k in HOST_FIELDS if k in obj}, banners


def record_from_host_item(item: object, index: int, inherited: dict) -> BannerRecord:
    """Banner `index` of a host lookup's data[], with the host's fields where it has none. Its raw
    record holds what it inherited: owner attribution and classification read a service's names
    and organisation from the stored record, and a banner Shodan wrote with `"hostnames": []`
    under a host with names has those names."""
    if not isinstance(item, dict):
        raise RecordError(Reason.NOT_OBJECT, f"data[{index}] is {type(item).__name__}")
    obj = _inherit(item, inherited) if inherited else item
    return record_from_object(obj, _json_text(obj))


def records_from_host_line(line: bytes) -> tuple[list[BannerRecord], list[tuple[int, RecordError]]]:
    """One host lookup: its banners, and the ones that failed by index."""
    inherited, banners = host_from_line(line)
    good: list[BannerRecord] = []
    bad: list[tuple[int, RecordError]] = []
    for index, item in enumerate(banners):
        try:
            good.append(record_from_host_item(item, index, inherited))
        except RecordError as exc:
            bad.append((index, exc))
    return good, bad
