"""A stand-in for Shodan's REST API on 127.0.0.1, for tests of the real `shodan` client.

It serves a corpus of banners (the bundled sample, or whatever a test gives it) through the
endpoints medexpo uses:

  GET /api-info                    plan and credits left
  GET /shodan/host/count           total and facets; free
  GET /shodan/host/search          pages of 100 full banners; 1 query credit per page when the
                                   query has a filter or the page is beyond the first
  GET /shodan/host/{ip}            the host's banners

Queries are filtered crudely: `port:`, `country:`, `product:`, `org:`, `hostname:` (suffix),
`http.title:` and `http.html:`, each with a quoted or bare value or a comma list of values (any
of them matches), `-filter:` negation, and quoted or bare keywords. As on Shodan, a keyword is
looked for in the banner's main text (`data`) only, never in its metadata (org, hostnames,
product, HTTP title or HTML): "By default, Shodan only searches the data property on the banner.
To search in other properties you have to specify a filter. Query terms are always AND-ed
together whereas filter values are OR-ed together." (https://blog.shodan.io/search-engine-improvements,
and https://help.shodan.io/the-basics/search-query-fundamentals). Values match as case-blind
substrings, where Shodan matches words: close enough for the names our plans search for. Other
filters are refused with 400, as Shodan refuses unknown ones.

A test can make it fail: answer a status n times (401, 429, 503, ...; with Shodan's {"error": ...}
body or another one), answer slowly (beyond the client's timeout), cut the connection (before an answer, or in the
middle of one it charged for), send a
garbled body with an answer it charged for, or run out of credits after k pages. It counts every
page it charged, so a test can prove that no page was bought twice.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

PAGE_SIZE = 100
NO_CREDITS = "Insufficient query credits, please upgrade your API plan or wait for the monthly limit to reset"
# What a key whose plan has no search filters or paging gets, with 401 (shodan-python's 401 branch
# raises it: https://github.com/pielco11/fav-up/issues/2; "to use search filters or go past the
# 1st page you need to have the Shodan Membership", https://github.com/achillean/shodan-python/issues/31).
NO_FILTERS = "Please upgrade your API plan to use filters or paging."
# One token: a filter with a quoted or bare value, a quoted phrase, or a bare word.
TOKEN_RE = re.compile(r'(-?)([A-Za-z][A-Za-z0-9_.]*):(?:"([^"]*)"|(\S+))|"([^"]*)"|(\S+)')
FILTERS = {"port", "country", "product", "org", "hostname", "http.title", "http.html"}


class QueryError(ValueError):
    pass


@dataclass
class Fault:
    kind: str  # "status", "slow", "cut", "cut_body", "garble"
    path: str  # applies to requests whose path starts with this
    times: int
    status: int = 0
    seconds: float = 0.0
    body: object = None  # what "status" and "garble" send instead
    headers: dict[str, str] = field(default_factory=dict)  # sent with a "status" answer (Retry-After)


@dataclass
class Seen:
    path: str
    params: dict
    status: int  # -1 while being answered, 0 for a cut connection
    at: float
    key: int = 0  # which of the keys it came with (0: the stand-in's key, 1...: `other_keys`), -1 none of them


@dataclass
class StandInState:
    key: str
    credits: int
    initial_credits: int
    other_keys: tuple[str, ...] = ()  # also accepted, sharing the credits: as if two accounts
    page_delay: float = 0.0
    pages_left: int | None = None  # credits run out after this many paid pages, whatever /api-info says
    filters: bool = True  # False: the key's plan may not use filters or paging
    faults: list[Fault] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    pages: Counter = field(default_factory=Counter)  # (query, page) -> times charged
    raw_urls: list[str] = field(default_factory=list)


def load_corpus(paths: list[Path]) -> list[dict]:
    """Banners from .jsonl / .jsonl.gz files; host lookups (with data[]) are flattened."""
    banners: list[dict] = []
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    banners.extend(_flatten(json.loads(line)))
    return banners


def _flatten(obj: dict) -> list[dict]:
    if not isinstance(obj.get("data"), list):
        return [obj]
    host = {k: obj[k] for k in ("ip", "ip_str", "org", "isp", "asn", "hostnames", "os") if k in obj}
    if "country_code" in obj:
        host["location"] = {"country_code": obj["country_code"]}
    return [{**host, **item} for item in obj["data"] if isinstance(item, dict)]


def banner_ip(banner: dict) -> str:
    value = banner.get("ip_str") or banner.get("ipv6") or banner.get("ip")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return str(value)


def parse_query(query: str) -> list[tuple[bool, str, str]]:
    """(negated, filter name or "" for a keyword, lower-case value) for each token."""
    terms = []
    for m in TOKEN_RE.finditer(query):
        negated, name, quoted, bare, phrase, word = m.groups()
        if name is not None:
            if name.lower() not in FILTERS:
                raise QueryError(f"Invalid search query: unknown filter {name!r}")
            terms.append((negated == "-", name.lower(), (quoted if quoted is not None else bare).lower()))
        else:
            terms.append((False, "", (phrase if phrase is not None else word).lower()))
    return terms


def _text_of(banner: dict) -> str:
    """What a keyword is looked for in: the main text only, as on Shodan."""
    return str(banner.get("data") or "").lower()


def _term_matches(banner: dict, name: str, value: str, text: str) -> bool:
    if not name:
        return value in text
    return any(_filter_matches(banner, name, one.strip()) for one in value.split(","))


def _filter_matches(banner: dict, name: str, value: str) -> bool:
    http = banner.get("http") if isinstance(banner.get("http"), dict) else {}
    if name == "port":
        return str(banner.get("port")) == value
    if name == "country":
        location = banner.get("location") if isinstance(banner.get("location"), dict) else {}
        return str(location.get("country_code", "")).lower() == value
    if name == "hostname":
        return any(h.lower() == value or h.lower().endswith("." + value) for h in banner.get("hostnames") or [])
    field = {"product": banner.get("product"), "org": banner.get("org")}.get(name)
    if name == "http.title":
        field = http.get("title")
    elif name == "http.html":
        field = http.get("html")
    return value in str(field or "").lower()


def matches(banner: dict, terms: list[tuple[bool, str, str]], text: str | None = None) -> bool:
    text = _text_of(banner) if text is None else text
    return all(_term_matches(banner, name, value, text) != negated for negated, name, value in terms)


class ShodanStandIn:
    """A threaded HTTP server on 127.0.0.1 with a random free port. Use as a context manager."""

    def __init__(
        self, banners: list[dict], *, key: str = "standin-key", credits: int = 1000, other_keys: tuple[str, ...] = ()
    ) -> None:
        self.banners = list(banners)
        self._texts = [_text_of(b) for b in self.banners]
        self._found: dict[str, list[dict]] = {}  # the corpus never changes: each query is filtered once
        self.state = StandInState(key=key, credits=credits, initial_credits=credits, other_keys=other_keys)
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # --- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ShodanStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ShodanStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what a test can ask ------------------------------------------------------------------

    def add(self, banner: dict) -> None:
        """One more banner in the corpus."""
        with self.lock:
            self.banners.append(banner)
            self._texts.append(_text_of(banner))
            self._found.clear()

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        path: str = "/shodan/host/search",
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer `status` instead, with `body` (default: Shodan's {"error": ...}) and `headers`."""
        with self.lock:
            self.state.faults.append(Fault("status", path, times, status=status, body=body, headers=headers or {}))

    def garble(self, body: object, *, times: int = 1, path: str = "/shodan/host/search") -> None:
        """Answer as usual (a search page is charged), but send `body` with the 200."""
        with self.lock:
            self.state.faults.append(Fault("garble", path, times, body=body))

    def slow(self, seconds: float, *, times: int = 1, path: str = "/shodan/host/search") -> None:
        with self.lock:
            self.state.faults.append(Fault("slow", path, times, seconds=seconds))

    def cut(self, *, times: int = 1, path: str = "/shodan/host/search", mid_answer: bool = False) -> None:
        """Close the connection before answering, or (`mid_answer`) after the status line, the
        headers and half the body of an answer it charged for."""
        with self.lock:
            self.state.faults.append(Fault("cut_body" if mid_answer else "cut", path, times))

    def set_credits(self, credits: int) -> None:
        with self.lock:
            self.state.credits = credits

    def exhaust_after(self, pages: int | None) -> None:
        """Refuse paid pages after `pages` more, as when another user of the key spends the rest."""
        with self.lock:
            self.state.pages_left = pages

    def without_filters(self) -> None:
        """A key whose plan may not use search filters or pages beyond the first."""
        with self.lock:
            self.state.filters = False

    def set_page_delay(self, seconds: float) -> None:
        with self.lock:
            self.state.page_delay = seconds

    @property
    def credits(self) -> int:
        return self.state.credits

    @property
    def credits_spent(self) -> int:
        return sum(self.state.pages.values())

    @property
    def pages(self) -> Counter:
        """(query, page) -> how many times it was charged."""
        return Counter(self.state.pages)

    def requests_to(self, path: str) -> list[Seen]:
        return [r for r in self.state.requests if r.path.startswith(path)]

    def search(self, query: str) -> list[dict]:
        """The banners a query matches, in corpus order (QueryError for an unknown filter)."""
        found = self._found.get(query)
        if found is None:
            terms = parse_query(query)
            found = [b for b, text in zip(self.banners, self._texts, strict=True) if matches(b, terms, text)]
            self._found[query] = found
        return found

    # --- answers ---------------------------------------------------------------------------------

    def answer(self, path: str, params: dict) -> tuple[int, object]:
        if self.key_number(params.get("key")) < 0:
            return 401, {"error": "Invalid API key"}
        try:
            if path == "/api-info":
                return 200, self._api_info()
            if path == "/shodan/host/count":
                return 200, self._count(params)
            if path == "/shodan/host/search":
                return self._search(params)
            if path.startswith("/shodan/host/"):
                return self._host(unquote(path.removeprefix("/shodan/host/")))
        except QueryError as exc:
            return 400, {"error": str(exc)}
        return 404, {"error": "No such API method"}

    def _api_info(self) -> dict:
        credits = self.state.credits
        return {
            "plan": "standin",
            "query_credits": credits,
            "scan_credits": 0,
            "unlocked": True,
            "unlocked_left": credits,
            "https": False,
            "telnet": False,
            "monitored_ips": 0,
            "usage_limits": {"query_credits": self.state.initial_credits, "scan_credits": 0, "monitored_ips": 0},
        }

    def _count(self, params: dict) -> dict:
        found = self.search(params.get("query", ""))
        facets = {}
        for spec in filter(None, params.get("facets", "").split(",")):
            name, _, size = spec.partition(":")
            counter = Counter(self._facet_value(b, name) for b in found)
            counter.pop(None, None)
            top = counter.most_common(int(size) if size.isdigit() else 5)
            facets[name] = [{"value": value, "count": n} for value, n in top]
        return {"total": len(found), "matches": [], "facets": facets}

    @staticmethod
    def _facet_value(banner: dict, name: str) -> object:
        if name == "country":
            location = banner.get("location") if isinstance(banner.get("location"), dict) else {}
            return location.get("country_code")
        return banner.get(name)

    def _search(self, params: dict) -> tuple[int, dict]:
        query = params.get("query", "")
        page = int(params.get("page", "1") or 1)
        terms = parse_query(query)
        cost = 1 if page > 1 or any(name for _, name, _ in terms) else 0
        found = self.search(query)
        if self.state.page_delay:
            time.sleep(self.state.page_delay)
        with self.lock:
            if cost and not self.state.filters:
                return 401, {"error": NO_FILTERS}
            if cost > self.state.credits or (cost and self.state.pages_left == 0):
                return 401, {"error": NO_CREDITS}
            if cost and self.state.pages_left is not None:
                self.state.pages_left -= 1
            self.state.credits -= cost
            self.state.pages[(query, page)] += 1
        chunk = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        return 200, {"total": len(found), "matches": chunk, "facets": {}}

    def _host(self, ip: str) -> tuple[int, dict]:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            return 404, {"error": "No information available for that IP."}
        found = [b for b in self.banners if banner_ip(b) == ip]
        if not found:
            return 404, {"error": "No information available for that IP."}
        first = found[0]
        location = first.get("location") if isinstance(first.get("location"), dict) else {}
        # The host's fields at the top, its location flattened, as Shodan answers (see
        # ../shared/data/shodan/sner4-host-lookup.jsonl); `ip` is an integer for IPv4 only.
        address = ipaddress.ip_address(ip)  # found through banner_ip: a valid address
        answer = {"ip": int(address)} if address.version == 4 else {}
        answer |= {k: location.get(k) for k in ("city", "region_code", "area_code", "latitude", "longitude")}
        return 200, answer | {
            "ip_str": ip,
            "ports": sorted({b.get("port") for b in found}),
            "hostnames": first.get("hostnames", []),
            "domains": first.get("domains", []),
            "org": first.get("org"),
            "isp": first.get("isp"),
            "asn": first.get("asn"),
            "os": first.get("os"),
            "tags": [],
            "country_code": location.get("country_code"),
            "country_name": location.get("country_name"),
            "last_update": max(str(b.get("timestamp") or "") for b in found),
            "data": found,
        }

    def key_number(self, key: str | None) -> int:
        keys = (self.state.key, *self.state.other_keys)
        return keys.index(key) if key in keys else -1

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.state.faults:
                if fault.times > 0 and path.startswith(fault.path):
                    fault.times -= 1
                    return fault
        return None


def _handler_for(standin: ShodanStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle's algorithm and the
            # client's delayed ACK add 40 ms to every answer on a kept-alive connection.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            parts = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            # Recorded on arrival (status filled in on answering), so timings are arrival times.
            seen = Seen(
                parts.path,
                {k: v for k, v in params.items() if k != "key"},
                -1,
                time.monotonic(),
                standin.key_number(params.get("key")),
            )
            with standin.lock:
                standin.state.raw_urls.append(self.path)
                standin.state.requests.append(seen)
            fault = standin.take_fault(parts.path)
            if fault is not None and fault.kind == "cut":
                seen.status = 0
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind == "status":
                body = fault.body if fault.body is not None else {"error": f"stand-in fault {fault.status}"}
                status = fault.status
            else:
                status, body = standin.answer(parts.path, params)
                if fault is not None and fault.kind == "garble" and status == 200:
                    body = fault.body
            seen.status = status
            headers = fault.headers if fault is not None and fault.kind == "status" else {}
            self._send(status, body, cut=fault is not None and fault.kind == "cut_body", headers=headers)

        def _send(self, status: int, body: object, *, cut: bool = False, headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            try:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if cut:
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout); that is what the test wanted

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve the bundled sample corpus until Ctrl-C, to try `harvest --plan` without Shodan."""
    import argparse

    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description="A Shodan stand-in on 127.0.0.1 serving banner files.")
    parser.add_argument("files", nargs="*", type=Path, default=[root / "fixtures" / "sample" / "banners.jsonl.gz"])
    parser.add_argument("--key", default="standin-key")
    parser.add_argument("--credits", type=int, default=1000)
    args = parser.parse_args(argv)
    with ShodanStandIn(load_corpus(args.files), key=args.key, credits=args.credits) as server:
        print(f"SHODAN_API_URL={server.url} SHODAN_API_KEY={args.key}  ({len(server.banners)} banners; Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
