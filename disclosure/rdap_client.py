"""RDAP and ASN lookups through ipwhois, returned as our own small dataclasses.

One upstream call per function. The HTTP side goes through an urllib opener of ours: it can send
registry URLs to another server (a mirror or a test stand-in), spaces requests per registry, backs
off on HTTP 429, counts requests and remembers why a request failed, because ipwhois folds every
failure into one generic exception.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ipwhois import IPWhois
from ipwhois.exceptions import (
    ASNLookupError,
    ASNParseError,
    ASNRegistryError,
    HTTPLookupError,
    HTTPRateLimitError,
    IPDefinedError,
)

MAX_ANSWER_BYTES = 2_000_000  # a real ip-network answer is a few kB; refuse to hold anything huge
MAX_429_RETRIES = 3
MAX_BACKOFF_SECONDS = 60.0

# Hostnames of the registries' RDAP and bootstrap services -> our registry names.
REGISTRY_HOSTS = {
    "rdap.arin.net": "arin",
    "rdap-bootstrap.arin.net": "arin",
    "rdap.db.ripe.net": "ripencc",
    "rdap.apnic.net": "apnic",
    "rdap.lacnic.net": "lacnic",
    "rdap.afrinic.net": "afrinic",
}
PORT43_REGISTRY = {
    "whois.arin.net": "arin",
    "whois.ripe.net": "ripencc",
    "whois.apnic.net": "apnic",
    "whois.lacnic.net": "lacnic",
    "whois.afrinic.net": "afrinic",
}


class RdapError(Exception):
    """A lookup failed. `reason` is a short code for counting; `permanent` says whether to retry."""

    def __init__(self, reason: str, detail: str = "", *, permanent: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.permanent = permanent


@dataclass(frozen=True)
class RdapEntity:
    handle: str
    roles: tuple[str, ...]
    name: str
    kind: str  # vCard kind: org, individual, group or ""
    emails: tuple[str, ...]
    parent: str  # handle of the entity this one is nested in, "" at the top


@dataclass(frozen=True)
class RdapNetwork:
    start: str
    end: str
    cidrs: tuple[str, ...]
    handle: str
    name: str
    country: str
    registry: str
    asn: int | None
    asn_description: str
    entities: tuple[RdapEntity, ...]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class LookupOptions:
    base_url: str = ""  # empty: the registries' own URLs
    dns_server: str = ""  # "host:port" for the Team Cymru ASN queries; empty: the system resolver
    timeout: float = 10.0
    asn_methods: tuple[str, ...] = ("dns", "whois", "http")


@dataclass
class LookupStats:
    requests: int = 0


class RateLimiter:
    """At most `per_second` requests per registry, shared by all threads (0: no pacing), and a
    pause for everyone after a registry answered 429."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, registry: str) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(registry, 0.0))
            self._next[registry] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)

    def push_back(self, registry: str, seconds: float) -> None:
        """A registry said 429: nobody sends to it for `seconds`."""
        with self._lock:
            self._next[registry] = max(self._next.get(registry, 0.0), time.monotonic() + seconds)


class _Opener(urllib.request.OpenerDirector):
    """Rewrites, paces, counts and explains the requests ipwhois makes for one lookup."""

    def __init__(self, options: LookupOptions, limiter: RateLimiter, stats: LookupStats) -> None:
        super().__init__()
        for handler in (
            urllib.request.ProxyHandler(),
            urllib.request.HTTPHandler(),
            urllib.request.HTTPSHandler(),
            urllib.request.HTTPRedirectHandler(),  # ARIN's bootstrap answers with a redirect
        ):
            self.add_handler(handler)
        self.add_handler(urllib.request.HTTPErrorProcessor())
        self.add_handler(urllib.request.HTTPDefaultErrorHandler())
        self.options = options
        self.limiter = limiter
        self.stats = stats
        self.problem: RdapError | None = None

    def open(self, fullurl: Any, data: Any = None, timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT) -> Any:  # type: ignore[attr-defined]  # urllib's own default
        url = fullurl.full_url if isinstance(fullurl, urllib.request.Request) else str(fullurl)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise HTTPLookupError(f"refusing a non-HTTP URL: {url[:100]}")
        request = urllib.request.Request(url, headers=getattr(fullurl, "headers", {}))  # noqa: S310 - checked above
        registry = REGISTRY_HOSTS.get(urllib.parse.urlsplit(request.full_url).hostname or "", "other")
        request.full_url = self._rewrite(request.full_url)
        for attempt in range(MAX_429_RETRIES + 1):
            self.limiter.wait(registry)
            self.stats.requests += 1
            try:
                response = super().open(request, data, timeout)
                return self._checked(response)
            except urllib.error.HTTPError as exc:
                if exc.code == 429 and attempt < MAX_429_RETRIES:
                    self.limiter.push_back(registry, _retry_after(exc, attempt))
                    continue
                self.problem = _http_problem(exc.code)
                raise
            except TimeoutError as exc:
                self.problem = RdapError("timeout", str(exc))
                raise
            except urllib.error.URLError as exc:
                reason = "timeout" if isinstance(exc.reason, TimeoutError) else "connection_error"
                self.problem = RdapError(reason, str(exc.reason))
                raise
        raise AssertionError("unreachable")

    def _rewrite(self, url: str) -> str:
        if not self.options.base_url:
            return url
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return f"{self.options.base_url.rstrip('/')}/{parts.hostname}{path}"

    def _checked(self, response: Any) -> Any:
        """Read the answer here so that a huge or malformed one has a reason of its own."""
        body = response.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            self.problem = RdapError("answer_too_large", f"more than {MAX_ANSWER_BYTES} bytes", permanent=True)
            raise HTTPLookupError("answer too large")
        try:
            json.loads(body.decode("utf-8", "replace"))
        except ValueError as exc:
            self.problem = RdapError("malformed_json", str(exc)[:200])
            raise HTTPLookupError("malformed JSON") from exc
        return _Body(body)


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def read(self, *args: Any) -> bytes:
        return self._body


def _retry_after(exc: urllib.error.HTTPError, attempt: int) -> float:
    value = exc.headers.get("Retry-After", "") if exc.headers else ""
    seconds = None
    if value.strip().isdigit():
        seconds = float(value.strip())
    elif value:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is not None:
            seconds = parsed.timestamp() - time.time()
    if seconds is None:
        seconds = 2.0**attempt
    return min(max(seconds, 0.0), MAX_BACKOFF_SECONDS)


def _http_problem(code: int) -> RdapError:
    if code == 404:
        return RdapError("not_found", "HTTP 404", permanent=True)
    if code == 429:
        return RdapError("rate_limited", "HTTP 429 after retries")
    if code >= 500:
        return RdapError("server_error", f"HTTP {code}")
    return RdapError("http_error", f"HTTP {code}", permanent=True)


def address_refusal(ip: str) -> str | None:
    """Why an address must not be looked up (private, reserved...), or None when it is public."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "invalid_address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for reason, test in (
        ("loopback", address.is_loopback),
        ("multicast", address.is_multicast),
        ("link_local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved or not address.is_global),
    ):
        if test:
            return reason
    return None


def lookup_ip(ip: str, *, options: LookupOptions, limiter: RateLimiter, stats: LookupStats) -> RdapNetwork:
    """The registry network that holds `ip`, with its origin ASN and entities.

    The ASN step (Team Cymru) tells which registry to ask; when it fails, ARIN's bootstrap
    redirect finds the registry instead, and the ASN comes from the answer when it has one.
    """
    # Reference: https://ipwhois.readthedocs.io/en/latest/RDAP.html
    # Reference: https://www.rfc-editor.org/rfc/rfc9083 (RDAP JSON responses)
    refusal = address_refusal(ip)
    if refusal:
        raise RdapError(refusal, ip, permanent=True)
    opener = _Opener(options, limiter, stats)
    try:
        whois = IPWhois(ip, timeout=options.timeout, proxy_opener=opener)
    except IPDefinedError as exc:
        raise RdapError("reserved", str(exc), permanent=True)
    if options.dns_server:
        host, _, port = options.dns_server.rpartition(":")
        whois.net.dns_resolver.nameservers = [host.strip("[]")]
        whois.net.dns_resolver.port = int(port)
    common = {"inc_raw": True, "retry_count": 0, "depth": 0, "inc_nir": False, "rate_limit_timeout": 0}
    try:
        try:
            result = whois.lookup_rdap(
                **common, asn_methods=list(options.asn_methods), get_asn_description=True, root_ent_check=False
            )
        except (ASNLookupError, ASNRegistryError, ASNParseError):
            result = whois.lookup_rdap(**common, bootstrap=True, root_ent_check=False)
    except (HTTPLookupError, HTTPRateLimitError) as exc:
        raise opener.problem or RdapError("lookup_failed", str(exc)) from exc
    except RdapError:
        raise
    except Exception as exc:  # noqa: BLE001 - ipwhois raises bare errors on answers it cannot parse
        raise opener.problem or RdapError("unparseable_answer", f"{type(exc).__name__}: {exc}"[:300]) from exc
    return parse_network(result["raw"], asn=result.get("asn"), asn_description=result.get("asn_description"))


def parse_network(raw: Any, *, asn: Any = None, asn_description: Any = None, registry: str = "") -> RdapNetwork:
    """Validate a raw RDAP ip-network answer (old or current format) into an RdapNetwork."""
    if not isinstance(raw, dict):
        raise RdapError("malformed_answer", "the answer is not a JSON object", permanent=True)
    if raw.get("objectClassName", "ip network") != "ip network":
        raise RdapError("malformed_answer", f"not an ip network but {str(raw.get('objectClassName'))[:40]}")
    try:
        start = parse_address(raw["startAddress"])
        end = parse_address(raw["endAddress"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RdapError("malformed_answer", f"bad or missing start/end address: {exc}"[:300], permanent=True)
    if start.version != end.version or start > end:  # type: ignore[operator]  # same version by then
        raise RdapError("malformed_answer", f"bad range {start} - {end}", permanent=True)
    cidrs = _cidrs(raw, start, end)
    return RdapNetwork(
        start=str(start),
        end=str(end),
        cidrs=cidrs,
        handle=_text(raw.get("handle"), 100),
        name=_text(raw.get("name"), 255),
        country=_text(raw.get("country"), 2).upper(),
        registry=registry or _registry_of(raw),
        asn=_asn(asn) if _asn(asn) is not None else _origin_asn(raw),
        asn_description=_text(asn_description, 255),
        entities=tuple(iter_entities(raw.get("entities"))),
        raw=raw,
    )


def parse_address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Registries write addresses loosely: "062.239.237.0", "62.239.237.0/32", upper-case IPv6."""
    text = str(value).strip().split("/", 1)[0]
    if "." in text and ":" not in text:
        text = ".".join(str(int(part)) for part in text.split("."))
    return ipaddress.ip_address(text)


def _cidrs(raw: dict, start: Any, end: Any) -> tuple[str, ...]:
    cidrs = []
    for item in raw.get("cidr0_cidrs") or []:
        try:
            prefix = item.get("v4prefix") or item.get("v6prefix")
            cidrs.append(str(ipaddress.ip_network(f"{prefix}/{int(item['length'])}", strict=False)))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return tuple(cidrs) or tuple(str(n) for n in ipaddress.summarize_address_range(start, end))


def _registry_of(raw: dict) -> str:
    port43 = str(raw.get("port43") or "").lower()
    if port43 in PORT43_REGISTRY:
        return PORT43_REGISTRY[port43]
    for link in raw.get("links") or []:
        host = urllib.parse.urlsplit(str(link.get("href") or link.get("value") or "")).hostname or ""
        if host in REGISTRY_HOSTS:
            return REGISTRY_HOSTS[host]
    return ""


def _asn(value: Any) -> int | None:
    text = str(value or "").strip().upper().removeprefix("AS").split(" ")[0]
    return int(text) if text.isdigit() else None


def _origin_asn(raw: dict) -> int | None:
    origins = raw.get("arin_originas0_originautnums") or []
    return _asn(origins[0]) if origins else None


def _text(value: Any, limit: int) -> str:
    return str(value or "").strip()[:limit]


def iter_entities(entities: Any, parent: str = "", depth: int = 0) -> list[RdapEntity]:
    """Every entity, nested ones included, parents before their children (bounded depth)."""
    found: list[RdapEntity] = []
    if not isinstance(entities, list) or depth > 5:
        return found
    for raw in entities[:100]:
        if not isinstance(raw, dict):
            continue
        raw_roles = raw.get("roles")
        roles: list = raw_roles if isinstance(raw_roles, list) else []
        name, kind, emails = _vcard(raw.get("vcardArray"))
        entity = RdapEntity(
            handle=_text(raw.get("handle"), 100),
            roles=tuple(str(r).lower()[:30] for r in roles[:10]),
            name=name,
            kind=kind,
            emails=emails,
            parent=parent,
        )
        found.append(entity)
        found.extend(iter_entities(raw.get("entities"), entity.handle, depth + 1))
    return found


def _vcard(vcard: Any) -> tuple[str, str, tuple[str, ...]]:
    name, kind, emails = "", "", []
    if not (isinstance(vcard, list) and len(vcard) == 2 and isinstance(vcard[1], list)):
        return name, kind, ()
    for prop in vcard[1][:200]:
        if not (isinstance(prop, list) and len(prop) >= 4):
            continue
        key, value = str(prop[0]).lower(), prop[3]
        if key == "fn" and not name:
            name = _text(value, 255)
        elif key == "kind" and not kind:
            kind = _text(value, 20).lower()
        elif key == "email" and isinstance(value, str):
            address = value.strip().lower()[:254]
            if "@" in address and address not in emails:
                emails.append(address)
    return name, kind, tuple(emails[:10])
