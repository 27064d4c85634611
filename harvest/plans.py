"""Query plans: named lists of Shodan queries, kept as reviewed data files in harvest/queries/.

A plan file holds explicit queries, queries generated from the shared registries (the medical
ports of harvest/data/medical_ports.toml, the Dutch healthcare organisations and words of
harvest/data/nl_healthcare.toml), and other plans it includes. Files are checked when loaded:
an unknown key, a bad query or an include loop is an error that names the file and the entry.

Queries carry no country: every run adds `country:XX` itself, so one plan serves any country.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medexpo.lib.text import shorten

QUERIES_DIR = Path(__file__).resolve().parent / "queries"
DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_QUERY_CHARS = 400
MAX_LABEL_CHARS = 100
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,49}")
COUNTRY_RE = re.compile(r"[A-Z]{2}")
# A query's tokens: a double-quoted phrase, or a run of anything else. A token that starts with a
# name and a colon is a filter: `port:104`, `-product:nginx`, `http.title:"a b"` (two tokens).
_TOKEN_RE = re.compile(r'"[^"]*"|[^\s"]+')
_FILTER_RE = re.compile(r"-?([A-Za-z][A-Za-z0-9_.]*):")

FILE_KEYS = {"name", "description", "version", "include", "query", "generate"}
QUERY_KEYS = {"query", "label", "category"}
GENERATE_KEYS = {"registry", "category", "include_hint_only"}


class PlanError(Exception):
    """A plan cannot be loaded; the message names the file and the entry at fault."""


@dataclass(frozen=True, slots=True)
class PlanQuery:
    query: str  # without the country filter
    label: str
    category: str
    origin: str  # the plan file (and registry) it came from

    def with_country(self, country: str) -> str:
        return f"{self.query} country:{country}"


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    description: str
    queries: tuple[PlanQuery, ...]


def plan_names() -> list[str]:
    """The plans in harvest/queries/, by name."""
    return sorted(path.stem for path in QUERIES_DIR.glob("*.toml"))


def plan_load(*, name: str) -> Plan:
    """A plan by name (harvest/queries/NAME.toml) or by the path of a .toml file."""
    path = _path_for(name)
    plan = _load(path, stack=())
    # Refused here, not when run: a run of nothing would be left behind as failed, and a
    # schedule of it would fail every week. An included plan may be empty.
    if not plan.queries:
        raise PlanError(f"{path.name}: the plan has no queries")
    return plan


def country_filter(country: str) -> str:
    """The country code for `country:` filters, or PlanError."""
    code = country.strip().upper()
    if not COUNTRY_RE.fullmatch(code):
        raise PlanError(f"country must be a two-letter code like NL, got {country!r}")
    return code


def query_filters(query: str) -> list[str]:
    """The names of the filters in a Shodan query, in lower case and without a leading `-`. The
    credit rule and the plan checks both read queries this way."""
    return [m.group(1).lower() for token in _TOKEN_RE.findall(query) if (m := _FILTER_RE.match(token))]


def _path_for(name: str, *, beside: Path | None = None) -> Path:
    """The file of a plan name or .toml path; a relative path is taken from `beside` (the
    including file's directory) when given, else from the current directory."""
    if name.endswith(".toml"):
        path = Path(name) if beside is None else beside / name
        if not path.is_file():
            raise PlanError(f"no such plan file: {path}")
        return path.resolve()
    if not NAME_RE.fullmatch(name):
        raise PlanError(f"invalid plan name {name!r}; plans: {', '.join(plan_names())}")
    path = QUERIES_DIR / f"{name}.toml"
    if not path.is_file():
        raise PlanError(f"there is no plan {name!r}; plans: {', '.join(plan_names())}")
    return path


def _load(path: Path, *, stack: tuple[Path, ...]) -> Plan:
    if path in stack:
        chain = " -> ".join(p.stem for p in (*stack, path))
        raise PlanError(f"{path.name}: plans include each other ({chain})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PlanError(f"{path.name}: cannot read the plan: {exc}") from None
    _refuse_unknown(data, FILE_KEYS, path.name)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PlanError(f"{path.name}: name must be a short lower-case word, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PlanError(f"{path.name}: description must be text")
    queries: list[PlanQuery] = []
    for included in _list_of(data, "include", str, path.name):
        try:
            included_path = _path_for(included, beside=path.parent)
        except PlanError as exc:
            raise PlanError(f"{path.name} include: {exc}") from None
        queries.extend(_load(included_path, stack=(*stack, path)).queries)
    for index, entry in enumerate(_list_of(data, "generate", dict, path.name), 1):
        queries.extend(_generated(entry, f"{path.name} generate #{index}"))
    for index, entry in enumerate(_list_of(data, "query", dict, path.name), 1):
        queries.append(_query(entry, f"{path.name} query #{index}", origin=path.stem))
    return Plan(name=name, description=description, queries=_unique(queries))


def _refuse_unknown(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _list_of(data: dict, key: str, kind: type, where: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, kind) for item in value):
        raise PlanError(f"{where}: {key} must be a list of {'tables' if kind is dict else 'names'}")
    return value


def _query(entry: dict, where: str, *, origin: str) -> PlanQuery:
    _refuse_unknown(entry, QUERY_KEYS, where)
    query = entry.get("query")
    if not isinstance(query, str):
        raise PlanError(f"{where}: query must be text")
    query = _check_query(query, where)
    # A query may be longer than a label: one without a label is named by its beginning.
    label = entry.get("label", shorten(query, MAX_LABEL_CHARS))
    category = entry.get("category", "")
    if (
        not isinstance(label, str)
        or not isinstance(category, str)
        or len(label) > MAX_LABEL_CHARS
        or len(category) > 40
    ):
        raise PlanError(f"{where}: label and category must be short text")
    if not (label.isprintable() and category.isprintable()):
        raise PlanError(f"{where}: label and category must not contain a control character")
    return PlanQuery(query=query, label=label, category=category, origin=origin)


def _check_query(query: str, where: str) -> str:
    query = " ".join(query.split())
    if not query:
        raise PlanError(f"{where}: the query is empty")
    # A NUL cannot be stored in PostgreSQL, and escape sequences would reach terminals.
    if not query.isprintable():
        raise PlanError(f"{where}: the query contains a control character: {query!r}")
    if len(query) > MAX_QUERY_CHARS:
        raise PlanError(f"{where}: the query is longer than {MAX_QUERY_CHARS} characters")
    if query.count('"') % 2:
        raise PlanError(f"{where}: unbalanced double quote in {query!r}")
    # A filter that the run sets itself, or that would make the plan depend on one country.
    if "country" in query_filters(query):
        raise PlanError(f"{where}: {query!r} has a country filter; runs add country:XX themselves")
    return query


def _unique(queries: list[PlanQuery]) -> tuple[PlanQuery, ...]:
    """Each query once, in first-seen order: an included plan may repeat another's queries."""
    seen: set[str] = set()
    unique = []
    for item in queries:
        key = item.query.lower()
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return tuple(unique)


# --- queries generated from the shared registries -------------------------------------------


def _generated(entry: dict, where: str) -> list[PlanQuery]:
    _refuse_unknown(entry, GENERATE_KEYS, where)
    registry = entry.get("registry")
    if registry not in GENERATORS:
        raise PlanError(f"{where}: registry must be one of {', '.join(sorted(GENERATORS))}, got {registry!r}")
    category = entry.get("category", "")
    hint_only = entry.get("include_hint_only", False)
    if not isinstance(category, str) or not isinstance(hint_only, bool):
        raise PlanError(f"{where}: category must be text and include_hint_only true or false")
    origin = f"{registry}"
    return [
        PlanQuery(query=_check_query(query, where), label=label, category=category, origin=origin)
        for query, label in GENERATORS[registry](include_hint_only=hint_only)
    ]


def _read_registry(filename: str) -> dict:
    path = DATA_DIR / filename
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PlanError(f"cannot read the shared registry {path}: {exc}") from None


def _quoted(text: str) -> str:
    # Shodan has no escape for a double quote inside a phrase; drop it.
    return '"' + text.replace('"', "") + '"'


def _medical_ports(*, include_hint_only: bool) -> list[tuple[str, str]]:
    """port:N for each Appendix B port; the web's own ports (80, 443, 8443) only when asked, since
    alone they match most of the internet."""
    ports = _read_registry("medical_ports.toml").get("port", [])
    out = []
    for item in ports:
        if item.get("hint_only") and not include_hint_only:
            continue
        out.append((f"port:{int(item['port'])}", f"port {item['port']} ({item.get('label', '')})"))
    return out


def _nl_healthcare_words(*, include_hint_only: bool) -> list[tuple[str, str]]:
    words = _read_registry("nl_healthcare.toml").get("words", [])
    return [(_quoted(word), f"word {word}") for word in words]


def _nl_healthcare_domains(*, include_hint_only: bool) -> list[tuple[str, str]]:
    out = []
    for org in _read_registry("nl_healthcare.toml").get("organisation", []):
        for domain in org.get("domains", []):
            out.append((f"hostname:{domain}", f"{org['name']} ({domain})"))
    return out


def _nl_healthcare_names(*, include_hint_only: bool) -> list[tuple[str, str]]:
    out = []
    for org in _read_registry("nl_healthcare.toml").get("organisation", []):
        # Short aliases (AMC, azM) match unrelated organisations; the official name always counts.
        aliases = [alias for alias in org.get("aliases", []) if len(alias) >= 5]
        for name in [org["name"], *aliases]:
            out.append((f"org:{_quoted(name)}", f"org {name}"))
    return out


GENERATORS: dict[str, Callable[..., list[tuple[str, str]]]] = {
    "medical_ports": _medical_ports,
    "nl_healthcare_words": _nl_healthcare_words,
    "nl_healthcare_domains": _nl_healthcare_domains,
    "nl_healthcare_names": _nl_healthcare_names,
}
