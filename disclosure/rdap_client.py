"""RDAP and ASN lookups through ipwhois, returned as our own small dataclasses.

One upstream call per function. The HTTP side goes through an urllib opener of ours: it can send
registry URLs to another server (a mirror or a test stand-in), spaces requests per registry, backs
off on HTTP 429, counts requests and remembers why a request failed, because ipwhois folds every
failure into one generic exception.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.resolver
from ipwhois import IPWhois
from ipwhois.exceptions import (
    ASNLookupError,
    ASNParseError,
    ASNRegistryError,
    HTTPLookupError,
    HTTPRateLimitError,
    IPDefinedError,
)

from medexpo.lib.http import retry_after_seconds

MAX_ANSWER_BYTES = 2_000_000  # a real ip-network answer is a few kB; refuse to hold anything huge
MAX_429_RETRIES = 3
MAX_BACKOFF_SECONDS = 60.0
MAX_JSON_DEPTH = 64  # real answers nest about 15 levels; deeper ones are refused as malformed_json
MAX_ASN = 2**32 - 1
# Per answer (real ones have a few dozen). More are refused before ipwhois reads the answer: it
# compares each nested entity's handle with all those before it, which took minutes for 100,000.
MAX_ENTITIES = 10_000
MAX_ENTITY_DEPTH = 5
READ_CHUNK = 64 * 1024
ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)
# No registry gives an operator a network that does not fit in one block of this prefix: IANA
# hands out IPv4 in /8s, and the widest IPv4 networks operators hold are legacy /8s (17/8,
# the DoD's); the widest IPv6 allocation is a /19, while the RIRs' own blocks from IANA are
# /12s. A wider answer (an "ASSIGNED" 0.0.0.0/0) would answer for every host inside it.
WIDEST_PREFIX = {4: 8, 6: 16}
# An IANA-level block: an RIR's IPv4 /8, or an IPv6 block as wide as IANA's narrowest to an RIR.
IANA_LEVEL_PREFIX = {4: 8, 6: 23}
# Who holds an IANA-level block that no operator holds: IANA or a registry (registrant handle or
# whole name, compared case-insensitively), a registry's own status for it, or IANA's netname.
REGISTRY_HANDLES = frozenset({"IANA", "ARIN", "APNIC", "LACNIC", "AFRINIC", "ORG-NCC1-RIPE", "ORG-IANA1-RIPE"})
REGISTRY_NAMES = frozenset(
    {
        "internet assigned numbers authority", "iana",
        "american registry for internet numbers", "arin",
        "ripe network coordination centre", "ripe ncc",
        "asia pacific network information centre", "asia pacific network information center", "apnic",
        "latin american and caribbean ip address regional registry", "lacnic",
        "african network information centre", "african network information center", "afrinic",
    }
)  # fmt: skip
REGISTRY_BLOCK_TYPES = frozenset({"ALLOCATED UNSPECIFIED"})  # RIPE NCC, AFRINIC: IANA-BLK, EU-ZZ-nn
IANA_BLOCK_NAME = re.compile(r"IANA-(?:BLK|BLOCK|NETBLOCK)(?:-[0-9]+)?", re.ASCII)
# Lone surrogates (JSON allows "\ud800") cannot be encoded as UTF-8, so no database stores them.
SURROGATES = re.compile(r"[\ud800-\udfff]")

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
        detail = storable_text(detail)  # details quote answers, and are stored on the host owner
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
    network_type: str = ""  # the registry's `type`: "ASSIGNED PA", "DIRECT ALLOCATION", ...
    # The address this answer was the registry's answer for: the one looked up, or for a recorded
    # answer the address its `self` link names (registries write the query there); else empty.
    queried: str = ""


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


class _Deadline:
    """The end of one request's time: when it passes, the request's sockets are shut down, so a
    read blocked on a server that sends a byte now and then returns at once (a socket timeout
    only bounds each read, not the whole answer)."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._sockets.clear()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # socket.socket's own shutdown, also for TLS sockets: it wakes a blocked read without
        # touching the TLS state that the reading thread is using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _watched_connection(
    http_class: Callable[..., Any],
    deadline: _Deadline | None,
    pins: dict[str, tuple[str, ...]],
    host: str,
    **kwargs: Any,
) -> Any:
    """An http.client connection whose socket is handed to `deadline` as soon as it exists, and
    that connects to the checked addresses when its host name is in `pins` (TLS still verifies
    the name)."""
    connection = http_class(host, **kwargs)
    create = connection._create_connection
    pinned = pins.get(str(connection.host).lower().rstrip("."), ())

    def create_watched(address: tuple[str, int], *args: Any, **kw: Any) -> socket.socket:
        sock = _connect_first(create, pinned, address[1], *args, **kw) if pinned else create(address, *args, **kw)
        if deadline is not None:
            deadline.watch(sock)
        return sock

    connection._create_connection = create_watched
    return connection


def _connect_first(
    create: Callable[..., socket.socket], addresses: tuple[str, ...], port: int, *args: Any, **kw: Any
) -> socket.socket:
    """A socket connected to the first of `addresses` that answers."""
    error: OSError = OSError(f"no address to connect to on port {port}")
    for address in addresses:
        try:
            return create((address, port), *args, **kw)
        except OSError as exc:
            error = exc
    raise error


class _DeadlineMixin:
    """For urllib's HTTP(S) handlers: connections are watched by the opener's current deadline."""

    parent: Any

    def do_open(self, http_class: Any, req: Any, **http_conn_args: Any) -> Any:
        deadline = getattr(self.parent, "deadline", None)
        pins = getattr(self.parent, "pins", {})
        watched = functools.partial(_watched_connection, http_class, deadline, pins)
        return super().do_open(watched, req, **http_conn_args)  # type: ignore[misc]


class _HTTPHandler(_DeadlineMixin, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineMixin, urllib.request.HTTPSHandler):
    pass


class _Opener(urllib.request.OpenerDirector):
    """Rewrites, paces, counts and explains the requests ipwhois makes for one lookup."""

    def __init__(self, options: LookupOptions, limiter: RateLimiter, stats: LookupStats) -> None:
        super().__init__()
        for handler in (
            urllib.request.ProxyHandler(),
            _HTTPHandler(),
            _HTTPSHandler(),
            urllib.request.HTTPRedirectHandler(),  # ARIN's bootstrap answers with a redirect
        ):
            self.add_handler(handler)
        self.add_handler(urllib.request.HTTPErrorProcessor())
        self.add_handler(urllib.request.HTTPDefaultErrorHandler())
        self.options = options
        self.limiter = limiter
        self.stats = stats
        self.problem: RdapError | None = None
        # Who wrote the last answer read: the registry (or, after a redirect elsewhere, the host
        # name) of the URL it came from, as asked, before any rewrite to RDAP_BASE_URL.
        self.answered_by = ""
        self.deadline: _Deadline | None = None
        # Host name -> the addresses that were checked for it: connections to it go there.
        self.pins: dict[str, tuple[str, ...]] = {}

    def open(self, fullurl: Any, data: Any = None, timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT) -> Any:  # type: ignore[attr-defined]  # urllib's own default
        url = fullurl.full_url if isinstance(fullurl, urllib.request.Request) else str(fullurl)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise HTTPLookupError(f"refusing a non-HTTP URL: {url[:100]}")
        refusal = url_refusal(url)
        if refusal:
            self.problem = RdapError("refused_url", refusal, permanent=True)
            raise HTTPLookupError(refusal)
        self._check_name(url)
        request = urllib.request.Request(url, headers=getattr(fullurl, "headers", {}))  # noqa: S310 - checked above
        source = _url_host(url).lower()
        registry = REGISTRY_HOSTS.get(source, "other")
        request.full_url = self._rewrite(request.full_url)
        for attempt in range(MAX_429_RETRIES + 1):
            self.limiter.wait(registry)
            self.stats.requests += 1
            # The whole answer (connection, headers, body) must arrive within the timeout. A
            # redirect is a request of its own, with its own deadline: keep the outer one aside.
            deadline, outer = _Deadline(self.options.timeout), self.deadline
            self.deadline = deadline
            try:
                response = super().open(request, data, timeout)
                return self._checked(response, deadline, source=source)
            except urllib.error.HTTPError as exc:
                if exc.code == 429 and attempt < MAX_429_RETRIES:
                    self.limiter.push_back(registry, _retry_after(exc, attempt))
                    continue
                self.problem = _http_problem(exc.code)
                raise
            except urllib.error.URLError as exc:
                timed_out = deadline.expired or isinstance(exc.reason, TimeoutError)
                self.problem = _transport_problem(timed_out, str(exc.reason))
                raise
            except (OSError, http.client.HTTPException) as exc:  # the answer was cut short
                timed_out = deadline.expired or isinstance(exc, TimeoutError)
                self.problem = _transport_problem(timed_out, f"{type(exc).__name__}: {exc}")
                raise HTTPLookupError("reading the answer failed") from exc
            finally:
                deadline.cancel()
                self.deadline = outer
        raise AssertionError("unreachable")

    def _check_name(self, url: str) -> None:
        """A host name that is not a registry's (a redirect may name any) must resolve to public
        addresses only. Without a base URL the connection then goes to those very addresses: a
        second look-up when connecting could answer with another one (DNS rebinding). Checked
        with a base URL too, so that tests see what a direct lookup would do; the base itself is
        the deployment's own choice and not checked."""
        host = _url_host(url).lower()
        if host in REGISTRY_HOSTS or _literal_address(host) is not None:
            return
        try:
            addresses = resolve_name(host, dns_server=self.options.dns_server, timeout=self.options.timeout)
        except RdapError as exc:
            self.problem = exc
            raise HTTPLookupError(exc.detail) from None
        refusal = name_refusal(url, addresses)
        if refusal:
            self.problem = RdapError("refused_url", refusal, permanent=True)
            raise HTTPLookupError(refusal)
        if not self.options.base_url:
            self.pins[host] = addresses

    def _rewrite(self, url: str) -> str:
        if not self.options.base_url:
            return url
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return f"{self.options.base_url.rstrip('/')}/{parts.hostname}{path}"

    def _checked(self, response: Any, deadline: _Deadline, *, source: str) -> Any:
        """Read the answer here so that a slow, huge or malformed one has a reason of its own."""
        if isinstance(response, _Body):
            return response  # a redirect, already read by the request it led to
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= MAX_ANSWER_BYTES:
                chunk = response.read1(READ_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            response.close()
        if deadline.expired:
            self.problem = RdapError("timeout", f"no complete answer within {self.options.timeout:g} s")
            raise HTTPLookupError("deadline passed")
        if size > MAX_ANSWER_BYTES:
            self.problem = RdapError("answer_too_large", f"more than {MAX_ANSWER_BYTES} bytes", permanent=True)
            raise HTTPLookupError("answer too large")
        body = b"".join(chunks)
        try:
            answer = load_json(body.decode("utf-8", "replace"))
        except RdapError as exc:
            self.problem = exc
            raise HTTPLookupError("malformed JSON") from exc
        if _entity_count(answer) > MAX_ENTITIES:
            self.problem = RdapError("answer_too_large", f"more than {MAX_ENTITIES} entities", permanent=True)
            raise HTTPLookupError("too many entities")
        self.answered_by = answering_registry(source)
        return _Body(body)


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def read(self, *args: Any) -> bytes:
        return self._body


def load_json(text: str) -> Any:
    """Parse an answer as strict JSON (no NaN or Infinity), nested at most MAX_JSON_DEPTH deep."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise RdapError("malformed_json", "nested too deep to parse") from None
    except ValueError as exc:
        raise RdapError("malformed_json", str(exc)[:200]) from None
    _storable(value)  # checks the depth and the numbers; the copy is made again when parsing
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _retry_after(exc: urllib.error.HTTPError, attempt: int) -> float:
    """Seconds to wait after a 429: Retry-After (seconds or an HTTP date), else 1, 2, 4 s..."""
    value = exc.headers.get("Retry-After", "") if exc.headers else ""
    seconds = retry_after_seconds(str(value or ""))
    if seconds is None:
        seconds = 2.0**attempt
    return min(max(seconds, 0.0), MAX_BACKOFF_SECONDS)


def _transport_problem(timed_out: bool, detail: str) -> RdapError:
    return RdapError("timeout" if timed_out else "connection_error", detail[:300])


def _http_problem(code: int) -> RdapError:
    if code == 404:
        return RdapError("not_found", "HTTP 404", permanent=True)
    if code == 429:
        return RdapError("rate_limited", "HTTP 429 after retries")
    if code >= 500:
        return RdapError("server_error", f"HTTP {code}")
    return RdapError("http_error", f"HTTP {code}", permanent=True)


def url_refusal(url: str) -> str | None:
    """Why a URL that ipwhois or a registry's redirect hands us is not fetched, or None. Registries
    serve RDAP over HTTPS and redirect to each other (and to national registries) by name: plain
    HTTP would let anyone on the path rewrite the contacts we mail, and an address literal that is
    not public would point the lookup into our own network. Checked before any rewrite to a
    configured RDAP_BASE_URL, so the stand-ins of the tests see the same URLs a registry would."""
    if urllib.parse.urlsplit(url).scheme != "https":
        return f"not HTTPS: {url[:100]}"
    host = _url_host(url)
    if not host:
        return f"no host: {url[:100]}"
    if host == "localhost" or host.endswith(".localhost"):  # loopback by definition (RFC 6761)
        return f"not a public address: {url[:100]}"
    address = _literal_address(host)
    if address is None:
        return None  # a name: see name_refusal()
    return None if address.is_global else f"not a public address: {url[:100]}"


def name_refusal(url: str, addresses: tuple[str, ...]) -> str | None:
    """Why a URL whose host name resolved to `addresses` is not fetched, or None: a name that
    leads to any address that is not public (a hospital's intranet host, a cloud metadata
    service) would send the request into a network of our own as surely as the literal would."""
    for address in addresses:
        if address_refusal(address.split("%", 1)[0]):  # a link-local IPv6 address carries its %zone
            return f"{_url_host(url)} resolves to {address}, not a public address: {url[:100]}"
    return None


def resolve_name(host: str, *, dns_server: str, timeout: float) -> tuple[str, ...]:
    """The IPv4 and IPv6 addresses of `host`, asked of `dns_server` ("address:port") when one is
    configured, else of the system resolver. RdapError("connection_error") when it has none."""
    # Reference: https://dnspython.readthedocs.io/en/stable/resolver-class.html
    addresses: list[str] = []
    try:
        if dns_server:
            resolver = dns.resolver.Resolver(configure=False)
            server, _, port = dns_server.rpartition(":")
            resolver.nameservers, resolver.port, resolver.lifetime = [server.strip("[]")], int(port), timeout
            for rdtype in ("A", "AAAA"):
                answer = resolver.resolve(host, rdtype, search=False, raise_on_no_answer=False)
                addresses.extend(record.to_text() for record in answer.rrset or ())
        else:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            addresses.extend(str(info[4][0]) for info in infos)
    except (dns.exception.DNSException, OSError, UnicodeError) as exc:
        raise RdapError("connection_error", f"cannot resolve {host}: {type(exc).__name__}: {exc}"[:300]) from None
    if not addresses:
        raise RdapError("connection_error", f"cannot resolve {host}: no addresses")
    return tuple(dict.fromkeys(addresses))


def _url_host(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "").strip("[]").rstrip(".")


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells (in any form the resolver reads), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _ipv4_in_any_form(host)


def _ipv4_in_any_form(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address that the resolver reads in `host` ("127.1", "2130706433", "0x7f000001",
    "0177.0.0.1" are all 127.0.0.1), or None for a name."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


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
    An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is looked up as the IPv4 address it holds.
    """
    # Reference: https://ipwhois.readthedocs.io/en/latest/RDAP.html
    # Reference: https://www.rfc-editor.org/rfc/rfc9083 (RDAP JSON responses)
    refusal = address_refusal(ip)
    if refusal:
        raise RdapError(refusal, ip, permanent=True)
    address = lookup_address(ip)
    opener = _Opener(options, limiter, stats)
    try:
        whois = IPWhois(str(address), timeout=options.timeout, proxy_opener=opener)
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
    except HTTPRateLimitError as exc:  # a "Rate Limit Notice" in an answer
        raise opener.problem or RdapError("rate_limited", str(exc)) from exc
    except HTTPLookupError as exc:
        raise opener.problem or RdapError("lookup_failed", str(exc)) from exc
    except RdapError:
        raise
    except Exception as exc:  # noqa: BLE001 - ipwhois raises bare errors on answers it cannot parse
        raise opener.problem or RdapError("unparseable_answer", f"{type(exc).__name__}: {exc}"[:300]) from exc
    return parse_network(
        result["raw"],
        asn=result.get("asn"),
        asn_description=result.get("asn_description"),
        # Not what the answer claims (its port43 or links): any server a redirect led to could
        # write "whois.ripe.net" and a RIPE organisation's handle, and add its contacts to it.
        registry=opener.answered_by or "other",
        query=address,
    )


def lookup_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address to look up for `ip`: itself, or the IPv4 address inside an IPv4-mapped one."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(
    raw: Any,
    *,
    asn: Any = None,
    asn_description: Any = None,
    registry: str = "",
    query: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
) -> RdapNetwork:
    """Validate a raw RDAP ip-network answer (old or current format) into an RdapNetwork.

    The range must hold `query` (the address asked for, when there is one) and every cidr0 CIDR
    must lie inside the range: a registry's answer about some other network is no answer. Values
    of the wrong type count as absent. Text is made storable: NUL becomes U+2400 (as harvest
    stores it), a lone surrogate U+FFFD, in the fields and in the raw answer kept.
    """
    if not isinstance(raw, dict):
        raise RdapError("malformed_answer", "the answer is not a JSON object", permanent=True)
    stored = _storable(raw)
    if raw.get("objectClassName", "ip network") != "ip network":
        raise RdapError("malformed_answer", f"not an ip network but {_text(raw.get('objectClassName'), 40)}")
    try:
        start = parse_address(raw.get("startAddress"))
        end = parse_address(raw.get("endAddress"))
    except ValueError as exc:
        raise RdapError("malformed_answer", f"bad or missing start/end address: {exc}"[:300], permanent=True)
    if start.version != end.version or start > end:  # type: ignore[operator]  # same version by then
        raise RdapError("malformed_answer", f"bad range {start} - {end}", permanent=True)
    queried = query if query is not None else _self_query(raw)
    if queried is not None and not (queried.version == start.version and start <= queried <= end):  # type: ignore[operator]
        raise RdapError("malformed_answer", f"the answer's range {start} - {end} does not hold {queried}")
    _check_plausible(start, end)
    answer_asn = _asn(asn)
    network = RdapNetwork(
        start=str(start),
        end=str(end),
        cidrs=_cidrs(raw, start, end),
        handle=_text(raw.get("handle"), 100),
        name=_text(raw.get("name"), 255),
        country=_country(raw.get("country")),
        registry=registry or _registry_of(raw),
        asn=answer_asn if answer_asn is not None else _origin_asn(raw),
        asn_description=_text(asn_description, 255),
        entities=tuple(iter_entities(raw.get("entities"))),
        raw=stored,
        network_type=_text(raw.get("type"), 50),
        queried=str(queried) if queried is not None else "",
    )
    block = registry_block_refusal(network.network_type, network.name, network.entities, start, end)
    if block:
        raise RdapError("registry_block", block, permanent=True)
    return network


def _check_plausible(start: Any, end: Any) -> None:
    """Refuse a range that no registry gives an operator (see WIDEST_PREFIX)."""
    refusal = range_refusal(start, end)
    if refusal:
        raise RdapError("network_too_wide", f"the answer's range {refusal}")


def range_refusal(
    start: ipaddress.IPv4Address | ipaddress.IPv6Address, end: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> str:
    """Why start..end (same version) is no network a registry gives an operator, or ""."""
    block = ipaddress.ip_network((start, WIDEST_PREFIX[start.version]), strict=False)
    if end in block:
        return ""
    return f"{start} - {end} does not fit in one /{WIDEST_PREFIX[start.version]}: no registry gives an operator that"


def registry_block_refusal(
    network_type: str, name: str, entities: tuple[RdapEntity, ...] | list[RdapEntity], start: Any, end: Any
) -> str:
    """Why start..end is a block that IANA or a registry holds itself (unallocated space), or "":
    it has no operator, and its contacts are the registry's. Registries' own networks of normal
    size still count."""
    if " ".join(network_type.upper().split()) in REGISTRY_BLOCK_TYPES:
        why = f"type {network_type}"
    elif IANA_BLOCK_NAME.fullmatch(name.upper()):
        why = f"name {name}"
    else:
        why = _registry_registrant(entities, start, end)
    return f"{start} - {end} is a registry's own block ({why}), not an operator's network" if why else ""


def stored_network_refusal(*, start: str, end: str, network_type: str, name: str, raw: Any) -> tuple[str, str] | None:
    """(reason, detail) when a network stored before answers like it were refused must answer for
    no address: too wide for any registration (`network_too_wide`), or a registry's own block
    (`registry_block`, its entities read from the stored answer); else None."""
    first, last = ipaddress.ip_address(start), ipaddress.ip_address(end)
    refusal = range_refusal(first, last)
    if refusal:
        return "network_too_wide", f"the answer's range {refusal}"
    # The registrant only counts for IANA-level blocks: read the stored answer only for those.
    entities = iter_entities(raw.get("entities") if isinstance(raw, dict) else None) if _iana_level(first, last) else []
    block = registry_block_refusal(network_type, name, entities, first, last)
    return ("registry_block", block) if block else None


def _iana_level(start: Any, end: Any) -> bool:
    """Whether start..end is as wide as a block IANA gives a registry (or wider)."""
    iana_level = ipaddress.ip_network((start, IANA_LEVEL_PREFIX[start.version]), strict=False)
    return not (iana_level[0] < start or end < iana_level[-1])


def _registry_registrant(entities: tuple[RdapEntity, ...] | list[RdapEntity], start: Any, end: Any) -> str:
    """The registrant that makes an IANA-level block a registry's own, or ""."""
    if not _iana_level(start, end):
        return ""  # narrower than any block IANA gives a registry
    for entity in entities:
        if "registrant" not in entity.roles or entity.parent:
            continue
        if entity.handle.upper() in REGISTRY_HANDLES or " ".join(entity.name.casefold().split()) in REGISTRY_NAMES:
            return f"registrant {entity.handle or entity.name}"
    return ""


def _country(value: Any) -> str:
    """The answer's country code in upper case, as at most two characters: "ß" and "ﬀ" are two
    in upper case, so text that is not ASCII is kept as it came."""
    country = _text(value, 2)
    return country.upper() if country.isascii() else country


def _self_query(raw: dict) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a recorded answer was given for, from its `self` link, whose `value` is the
    URL asked (`https://rdap.db.ripe.net/ip/62.239.237.1`); None when it names a CIDR or no address."""
    for link in _list(raw.get("links")):
        if not isinstance(link, dict) or link.get("rel") != "self" or not isinstance(link.get("value"), str):
            continue
        try:
            path = urllib.parse.urlsplit(link["value"][:2000]).path
        except ValueError:  # e.g. "http://[bad": a link that is no URL names no address
            return None
        _head, marker, tail = path.rpartition("/ip/")
        try:
            address = ipaddress.ip_address(urllib.parse.unquote(tail))  # a CIDR ("1.1.1.0/24") fails here
        except ValueError:
            return None
        return address if marker else None
    return None


def parse_address(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Registries write addresses loosely: "062.239.237.0", "62.239.237.0/32", upper-case IPv6.

    Only text with ASCII digits counts (int() would also take "٨١" or "8_1")."""
    if not isinstance(value, str):
        raise ValueError(f"not an address: {type(value).__name__}")
    text = value.strip().split("/", 1)[0]
    if "." in text and ":" not in text:
        parts = text.split(".")
        if not all(ASCII_DIGITS.fullmatch(part) for part in parts):
            raise ValueError(f"not an IPv4 address: {text[:60]!r}")
        text = ".".join(str(int(part)) for part in parts)
    return ipaddress.ip_address(text)


def _cidrs(raw: dict, start: Any, end: Any) -> tuple[str, ...]:
    cidrs = []
    for item in _list(raw.get("cidr0_cidrs"))[:100]:
        network = _cidr(item)
        if network is None:
            continue
        if network.version != start.version or not (start <= network[0] and network[-1] <= end):
            raise RdapError("malformed_answer", f"CIDR {network} lies outside the range {start} - {end}")
        cidrs.append(str(network))
    return tuple(cidrs) or tuple(str(n) for n in ipaddress.summarize_address_range(start, end))


def _cidr(item: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """One cidr0 entry ({"v4prefix" or "v6prefix", "length"}), or None when it is not usable."""
    if not isinstance(item, dict):
        return None
    prefix, length = item.get("v4prefix") or item.get("v6prefix"), item.get("length")
    # At most 3 digits (a prefix length is 0..128): int() refuses text of more than 4,300.
    if isinstance(length, str) and ASCII_DIGITS.fullmatch(length) and len(length) <= 3:
        length = int(length)
    if not isinstance(length, int) or isinstance(length, bool):
        return None
    try:
        return ipaddress.ip_network((parse_address(prefix), length), strict=False)
    except ValueError:
        return None


def _registry_of(raw: dict) -> str:
    port43 = _text(raw.get("port43"), 100).lower()
    if port43 in PORT43_REGISTRY:
        return PORT43_REGISTRY[port43]
    for link in _list(raw.get("links"))[:100]:
        if not isinstance(link, dict):
            continue
        href = link.get("href") if isinstance(link.get("href"), str) else link.get("value")
        host = _hostname(href if isinstance(href, str) else "")
        if host in REGISTRY_HOSTS:
            return REGISTRY_HOSTS[host]
    return ""


def answering_registry(host: str) -> str:
    """The registry whose RDAP server `host` is, else the host name itself: an organisation's
    handle means something only at the server that answered."""
    return REGISTRY_HOSTS.get(host, host)[:100]


def _hostname(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).hostname or ""
    except ValueError:  # e.g. "http://[bad"
        return ""


def _asn(value: Any) -> int | None:
    """An AS number (0 to 2^32-1) from an int or "AS123"/"123 ..." text; anything else is None."""
    if isinstance(value, str):
        text = value.strip().upper().removeprefix("AS").split(" ")[0]
        value = int(text) if ASCII_DIGITS.fullmatch(text) and len(text) <= 10 else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ASN:
        return value
    return None


def _origin_asn(raw: dict) -> int | None:
    """ARIN's origin AS list: the first usable number; bad values are passed over."""
    for origin in _list(raw.get("arin_originas0_originautnums"))[:20]:
        number = _asn(origin)
        if number is not None:
            return number
    return None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def storable_text(value: str) -> str:
    """`value` as every database stores it: NUL as U+2400, lone surrogates as U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\u2400")
    if not value.isascii():
        value = SURROGATES.sub("\ufffd", value)
    return value


def _text(value: Any, limit: int) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return ""
    return storable_text(value.strip()[:limit])


def _storable(value: Any) -> Any:
    """A copy of a parsed JSON value that every database stores, otherwise as it came: text as
    storable_text() makes it. Refuses values nested deeper than MAX_JSON_DEPTH and numbers that
    are not finite (json.dumps would write NaN or Infinity, which PostgreSQL rejects).
    Iterative, so that the depth is checked before any recursion could fail."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 1)]
    while stack:
        item, target, key, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise RdapError("malformed_json", f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            copy: Any = {}
            for name, child in item.items():
                name = storable_text(name) if isinstance(name, str) else name
                copy[name] = None  # keeps the order of the keys
                stack.append((child, copy, name, depth + 1))
        elif isinstance(item, list):
            copy = [None] * len(item)
            stack.extend((child, copy, position, depth + 1) for position, child in enumerate(item))
        elif isinstance(item, str):
            copy = storable_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise RdapError("malformed_json", f"a number out of range: {item}")
        else:
            copy = item
        target[key] = copy
    return root[0]


_END = object()


def _entity_count(answer: Any) -> int:
    """How many entities an answer holds, nested ones included (it is at most MAX_JSON_DEPTH deep)."""
    count, stack = 0, [answer]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            children = _list(item.get("entities"))
            count += len(children)
            stack.extend(children)
    return count


def iter_entities(entities: Any, parent: str = "") -> list[RdapEntity]:
    """Every entity, nested ones included, parents before their children: at most MAX_ENTITIES
    (real answers have a few dozen), nested at most MAX_ENTITY_DEPTH deep."""
    found: list[RdapEntity] = []
    stack = [(iter(_list(entities)), parent, 0)]
    while stack and len(found) < MAX_ENTITIES:
        items, parent, depth = stack[-1]
        raw = next(items, _END)
        if raw is _END:
            stack.pop()
            continue
        if not isinstance(raw, dict):
            continue
        entity = _entity(raw, parent)
        found.append(entity)
        if depth < MAX_ENTITY_DEPTH:
            stack.append((iter(_list(raw.get("entities"))), entity.handle, depth + 1))
    return found


def _entity(raw: dict, parent: str) -> RdapEntity:
    name, kind, emails = _vcard(raw.get("vcardArray"))
    return RdapEntity(
        handle=_text(raw.get("handle"), 100),
        roles=tuple(_text(r, 30).lower() for r in _list(raw.get("roles"))[:10] if isinstance(r, str)),
        name=name,
        kind=kind,
        emails=emails,
        parent=parent,
    )


def _vcard(vcard: Any) -> tuple[str, str, tuple[str, ...]]:
    name, kind, emails = "", "", []
    if not (isinstance(vcard, list) and len(vcard) == 2 and isinstance(vcard[1], list)):
        return name, kind, ()
    for prop in vcard[1][:200]:
        if not (isinstance(prop, list) and len(prop) >= 4 and isinstance(prop[0], str)):
            continue
        key, value = prop[0].lower(), prop[3]
        if key == "fn" and not name:
            name = _text(value, 255)
        elif key == "kind" and not kind:
            kind = _text(value, 20).lower()
        elif key == "email" and isinstance(value, str):
            # Read whole (within reason): cut to 254 it could become another, valid address.
            address = _text(value, 1000).lower()
            if "@" in address and address not in emails:
                emails.append(address)
    return name, kind, tuple(emails[:10])
