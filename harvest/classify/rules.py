"""Classification rules: reviewed TOML files loaded once into frozen dataclasses.

Every file in `harvest/rules/*.toml` declares a `version` and a list of `[[rule]]` tables. The
loader refuses unknown keys, duplicate ids, values outside the fixed vocabulary and regular
expressions that do not compile or that could backtrack badly, and says which file and which rule.
The Appendix B ports and the Dutch healthcare registry are read from `harvest/data/`, the single
source both for query plans and for these rules. `RuleSet.version` changes whenever any of them
do, and with the engine's ENGINE_REVISION.
"""

from __future__ import annotations

import hashlib
import math
import re
import re._parser as sre_parse  # the stdlib's own regex parser, to find a rule's literal needles
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import ahocorasick

from harvest.classify.types import CATEGORIES, CLASS_OF_CATEGORY, CLASSES

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
PORTS_FILE = "medical_ports.toml"
HEALTHCARE_FILE = "nl_healthcare.toml"

# Fields a rule may read: Banner fields plus what the decoders found.
FIELDS = (
    "data",
    "module",
    "product",
    "version",
    "org",
    "isp",
    "hostnames",
    "http_title",
    "http_server",
    "http_html",
    "ssl_subject",
    "ssl_names",
    "dicom.implementation_version",
    "dicom.implementation_class_uid",
    "dicom.ae_titles",
    "hl7.sending_application",
    "hl7.sending_facility",
)
PROTOCOLS = ("dicom", "hl7", "http", "text", "blank")
VERSION_FORMATS = ("", "dotted")
MAX_SCAN = 64 * 1024  # no rule reads more of a field than this

_ID = re.compile(r"[a-z0-9_]{1,40}(?:\.[a-z0-9_]{1,40}){1,4}")
# Refuse the shapes that make a backtracking engine go exponential: a repeated group that itself
# contains an unbounded quantifier ("(a+)+", "(.*a)*"), and back-references. Bounded inner
# repetition ("(?:\.\d{1,3}){0,2}") is fine. Checked on the parsed pattern, at any depth of groups.
_REPEATS = (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT)
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")

FILE_KEYS = {"version", "description", "rule", "settings"}
RULE_KEYS = {
    "id",
    "class",
    "category",
    "segment",
    "product",
    "fields",
    "pattern",
    "case_sensitive",
    "confidence",
    "protocols",
    "ports",
    "honeypot",
    "version_format",
    "note",
}
SETTINGS = {"honeypot_min_host_modules": int, "silent_ports": list}


class RuleError(Exception):
    """An invalid rule file: which file, which rule, why."""

    def __init__(self, file: str, rule: str, why: str) -> None:
        super().__init__(f"{file}: {rule + ': ' if rule else ''}{why}")
        self.file, self.rule, self.why = file, rule, why


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    cls: str
    category: str
    segment: str  # "software" when the rule identifies medical software or a vendor, else ""
    product: str
    fields: tuple[str, ...]
    pattern: re.Pattern
    anchored: bool  # pattern starts with \A: match at the start, do not search
    confidence: float
    protocols: tuple[str, ...]
    ports: frozenset[int]
    honeypot: bool
    version_format: str
    source: str  # file name, for messages
    # Lowercase strings one of which occurs in any text the pattern matches (None: no such
    # guarantee). A substring test is ~100 times cheaper than a search, so most rules never run.
    needles: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class FieldRules:
    """The rules that read one field, split for speed: anchored ones cost one comparison at the
    start; searching ones run only when one of their needles occurs in the lowercased text."""

    field: str
    anchored: tuple[Rule, ...]
    searching: tuple[Rule, ...]
    # All needles of `searching` in one Aho-Corasick automaton (value: indexes into `searching`),
    # so one pass over the text finds which rules can match; `always` lists rules without needles.
    automaton: Any
    always: frozenset[int]
    # Anchored rules by the first character a match can start with; `any_start` can start anywhere.
    by_start: dict  # str -> tuple[Rule, ...]
    any_start: tuple[Rule, ...]

    def anchored_for(self, text: str) -> tuple[Rule, ...]:
        return self.by_start.get(text[0], self.any_start) if text else ()


@dataclass(frozen=True, slots=True)
class PortHint:
    port: int
    protocol: str
    label: str
    vendor: str
    hint_only: bool


@dataclass(frozen=True, slots=True)
class Organisation:
    name: str
    domains: tuple[str, ...]
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Healthcare:
    words: tuple[str, ...]
    organisations: tuple[Organisation, ...]
    name_pattern: re.Pattern  # names and distinctive aliases, word-bounded
    word_pattern: re.Pattern  # healthcare words
    domains: frozenset[str]
    short_aliases: frozenset[str]  # aliases too short to find inside text; matched as a whole org


@dataclass(frozen=True, slots=True, eq=False)  # identity: one loaded rule set, usable as a dict key
class RuleSet:
    version: str
    files: tuple[tuple[str, str], ...]  # (file name, declared version)
    rules: tuple[Rule, ...]
    by_field: tuple[FieldRules, ...]
    ports: Mapping[int, PortHint]  # read-only
    healthcare: Healthcare
    honeypot_min_host_modules: int
    silent_ports: frozenset[int]

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


_CACHE: dict[tuple[Path, tuple], RuleSet] = {}


def load_rules(directory: Path | None = None) -> RuleSet:
    """The rules in `directory` (default harvest/rules), validated; cached per directory and contents."""
    directory = Path(directory or RULES_DIR).resolve()
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise RuleError(str(directory), "", "no *.toml rule files")
    registries = [DATA_DIR / PORTS_FILE, DATA_DIR / HEALTHCARE_FILE]
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in [*paths, *registries])
    key = (directory, stamp)
    if key not in _CACHE:
        _CACHE[key] = _build(paths)
    return _CACHE[key]


def _read(path: Path) -> tuple[bytes, dict]:
    raw = path.read_bytes()
    try:
        return raw, tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RuleError(path.name, "", f"not valid TOML: {exc}") from None


# Bump when the engine judges the same rules differently (not for speed-ups): it is part of the
# rules version, so `classify` judges every stored service again after such a release.
ENGINE_REVISION = "6"  # 2: a service without a Shodan module counts itself in the honeypot test
# 3: HL7 after blank lines or a byte order mark, inside or outside the MLLP frame
# 4: titles and pages read with HTML entities decoded and no-break spaces as spaces
# 5: patterns match with ASCII word boundaries, digits and spaces
# 6: a repeated DICOM implementation UID or version name: the first counts, the repeat is evidence


def _build(paths: list[Path]) -> RuleSet:
    digest = hashlib.sha256(b"engine " + ENGINE_REVISION.encode() + b"\0")
    files: list = []
    rules: list = []
    settings: dict[str, Any] = {}
    seen: set = set()
    for path in paths:
        raw, doc = _read(path)
        digest.update(path.name.encode() + b"\0" + raw + b"\0")
        declared = _file_header(path.name, doc)
        files.append((path.name, declared))
        for key, value in (doc.get("settings") or {}).items():
            _setting(path.name, key, value, settings)
        for index, table in enumerate(doc.get("rule") or []):
            rule = _rule(path.name, index, table)
            if rule.id in seen:
                raise RuleError(path.name, rule.id, "duplicate rule id")
            seen.add(rule.id)
            rules.append(rule)
    ports_raw, ports_doc = _read(DATA_DIR / PORTS_FILE)
    care_raw, care_doc = _read(DATA_DIR / HEALTHCARE_FILE)
    for name, raw, doc in ((PORTS_FILE, ports_raw, ports_doc), (HEALTHCARE_FILE, care_raw, care_doc)):
        digest.update(name.encode() + b"\0" + raw + b"\0")
        files.append((name, str(doc.get("version", ""))))
    return RuleSet(
        # The declared versions are inside the hashed contents, so bumping one changes this too.
        version=digest.hexdigest()[:12],
        files=tuple(files),
        rules=tuple(rules),
        by_field=_index(rules),
        ports=_ports(ports_doc),
        healthcare=_healthcare(care_doc),
        honeypot_min_host_modules=settings.get("honeypot_min_host_modules", 12),
        silent_ports=frozenset(settings.get("silent_ports", ())),
    )


def _file_header(name: str, doc: dict) -> str:
    unknown = set(doc) - FILE_KEYS
    if unknown:
        raise RuleError(name, "", f"unknown top-level keys: {', '.join(sorted(unknown))}")
    version = doc.get("version")
    if not isinstance(version, str) or not version:
        raise RuleError(name, "", "missing `version` (a non-empty string)")
    if not isinstance(doc.get("rule", []), list):
        raise RuleError(name, "", "`rule` must be an array of tables ([[rule]])")
    if not isinstance(doc.get("settings", {}), dict):
        raise RuleError(name, "", "`settings` must be a table ([settings])")
    return version


def _setting(name: str, key: str, value: Any, settings: dict) -> None:
    if key not in SETTINGS:
        raise RuleError(name, "settings", f"unknown setting {key!r}")
    if not isinstance(value, SETTINGS[key]) or isinstance(value, bool):
        raise RuleError(name, "settings", f"{key} must be {SETTINGS[key].__name__}")
    if key in settings:
        raise RuleError(name, "settings", f"{key} is set in two files")
    if key == "silent_ports" and not all(isinstance(p, int) and 0 < p < 65536 for p in cast(list, value)):
        raise RuleError(name, "settings", "silent_ports must be port numbers")
    settings[key] = value


def _rule(name: str, index: int, table: object) -> Rule:
    if not isinstance(table, dict):
        raise RuleError(name, f"rule #{index + 1}", "not a table")
    rid = table.get("id")
    label = rid if isinstance(rid, str) else f"rule #{index + 1}"
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        raise RuleError(name, label, "`id` must look like 'group.name' (lowercase, digits, _)")
    unknown = set(table) - RULE_KEYS
    if unknown:
        raise RuleError(name, rid, f"unknown keys: {', '.join(sorted(unknown))}")

    def fail(why: str) -> RuleError:
        return RuleError(name, rid, why)

    cls, category = table.get("class"), table.get("category")
    if cls not in CLASSES:
        raise fail(f"class {cls!r} is not one of {', '.join(CLASSES)}")
    if category not in CATEGORIES:
        raise fail(f"category {category!r} is not one of {', '.join(CATEGORIES)}")
    if CLASS_OF_CATEGORY[category] != cls:
        raise fail(f"category {category} belongs to class {CLASS_OF_CATEGORY[category]}, not {cls}")
    segment = table.get("segment", "")
    if segment not in ("software", ""):
        raise fail("segment must be 'software' or absent (the other segments are derived)")
    fields = table.get("fields")
    if not isinstance(fields, list) or not fields or any(f not in FIELDS for f in fields):
        raise fail(f"fields must be a non-empty list drawn from: {', '.join(FIELDS)}")
    protocols = table.get("protocols", [])
    if not isinstance(protocols, list) or any(p not in PROTOCOLS for p in protocols):
        raise fail(f"protocols must be a list drawn from: {', '.join(PROTOCOLS)}")
    ports = table.get("ports", [])
    if not isinstance(ports, list) or any(not isinstance(p, int) or not 0 <= p <= 65535 for p in ports):
        raise fail("ports must be a list of port numbers")
    confidence = table.get("confidence", 0.8)
    if not isinstance(confidence, int | float) or isinstance(confidence, bool) or not 0 <= confidence <= 1:
        raise fail("confidence must be a number from 0 to 1")
    for key in ("product", "note"):
        if not isinstance(table.get(key, ""), str):
            raise fail(f"{key} must be a string")
    for key in ("case_sensitive", "honeypot"):
        if not isinstance(table.get(key, False), bool):
            raise fail(f"{key} must be true or false")
    version_format = table.get("version_format", "")
    if version_format not in VERSION_FORMATS:
        raise fail(f"version_format must be one of {VERSION_FORMATS}")
    pattern = _compile(table.get("pattern"), bool(table.get("case_sensitive", False)), fail)
    return Rule(
        id=rid,
        cls=cls,
        category=category,
        segment=segment,
        product=table.get("product", ""),
        fields=tuple(fields),
        pattern=pattern,
        anchored=is_anchored(pattern),
        confidence=float(confidence),
        protocols=tuple(protocols),
        ports=frozenset(ports),
        honeypot=bool(table.get("honeypot", False)),
        version_format=version_format,
        source=name,
        needles=needles_of(pattern),
    )


def _compile(source: object, case_sensitive: bool, fail: Callable[[str], RuleError]) -> re.Pattern:
    if not isinstance(source, str) or not source:
        raise fail("pattern must be a non-empty string")
    if len(source) > 4000:
        raise fail("pattern longer than 4000 characters")
    if _BACKREF.search(source):
        raise fail("pattern uses a back-reference (not linear-time)")
    if re.search(r"(?<!\\)\(\?[aiLmsux]+\)", source):
        raise fail("pattern sets global inline flags; use case_sensitive instead")
    try:
        # ASCII: in Unicode mode \b takes a Chinese or Japanese character for part of a word, and
        # those languages write no space between words ("OpenEMR登录"); \d and \s keep to ASCII too.
        compiled = re.compile(source, re.ASCII | (0 if case_sensitive else re.IGNORECASE))
        parsed = sre_parse.parse(source, compiled.flags)
        nested = _unbounded_inside_repeat(parsed, inside=False)
        ambiguous = not nested and _too_many_ways(parsed, compiled.flags)
    except re.error as exc:
        raise fail(f"pattern does not compile: {exc}") from None
    except RecursionError:
        raise fail("pattern nests too deeply") from None
    if nested:
        raise fail("pattern has a quantified group containing a quantifier (can backtrack exponentially)")
    if ambiguous:
        raise fail("pattern repeats a group that can match the same text in many ways (can backtrack exponentially)")
    if set(compiled.groupindex) - {"version"}:
        raise fail("the only named group allowed is (?P<version>...)")
    return compiled


def _unbounded_inside_repeat(ops: Iterable[tuple], inside: bool) -> bool:
    """True when an unbounded quantifier sits inside a repeat that can run more than once."""
    for op, av in ops:
        if op in _REPEATS:
            _low, high, body = av
            if inside and high == sre_parse.MAXREPEAT:
                return True
            if _unbounded_inside_repeat(body, inside or high > 1):
                return True
            continue
        if op is sre_parse.BRANCH:
            children = av[1]
        elif op is sre_parse.SUBPATTERN:
            children = [av[-1]]
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            children = [av[1]]
        elif op is sre_parse.ATOMIC_GROUP:
            children = [av]
        elif op is sre_parse.GROUPREF_EXISTS:
            children = [c for c in av[1:] if c is not None]
        else:
            continue
        if any(_unbounded_inside_repeat(child, inside) for child in children):
            return True
    return False


# How many ways a repeated group may split one text between its repetitions and alternatives.
# Without any unbounded quantifier inside, "(?:a|a)*", "(?:a|aa){1,60}" and "(?:a{1,20}){1,20}"
# still try every split of a run of "a"s before they fail; "(?:\.\d{1,3}){0,2}" has 13 at most.
MAX_WAYS = 1000


class _Ambiguous(Exception):
    pass


def _too_many_ways(ops: Iterable[tuple], flags: int) -> bool:
    try:
        _ways(ops, flags)
    except _Ambiguous:
        return True
    return False


def _ways(ops: Iterable[tuple], flags: int, follow: list | None = None) -> float:
    """An upper bound on the ways `ops` can match one given text (math.inf: no bound).

    Raises _Ambiguous at a repeat, at any depth, whose body can match in more than one way and
    whose repetitions multiply that past MAX_WAYS. Alternatives that cannot start with the same
    character count as one way: the first character decides between them. So does a run of one
    character class that what follows cannot start with ("[a-z]{1,63}\\."): it ends where it
    must. `follow` is what comes after `ops` (for a repeated body, the body again).
    """
    ops = list(ops)
    total = 1.0
    for index, (op, av) in enumerate(ops):
        after = ops[index + 1 :] or follow or []
        if op is sre_parse.POSSESSIVE_REPEAT:
            _ways(av[2], flags, list(av[2]))  # never backtracks into itself; only its inside can
        elif op in _REPEATS:
            low, high, body = av
            inner = _ways(body, flags, list(body))
            if not _run_ends_where_it_must(list(body), after, flags):
                total *= _repeat_ways(low, high, inner)
        elif op is sre_parse.BRANCH:
            branches = [list(branch) for branch in av[1]]
            counts = [_ways(branch, flags, after) for branch in branches]
            total *= max(counts) if _distinct_starts(branches, flags) else sum(counts)
        elif op is sre_parse.SUBPATTERN:
            total *= _ways(av[-1], flags | av[1], after)
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            _ways(av[1], flags)  # lookarounds are atomic: one way, whatever is inside
        elif op is sre_parse.ATOMIC_GROUP:
            _ways(av, flags)
        elif op is sre_parse.GROUPREF_EXISTS:
            total *= sum(_ways(c, flags, after) for c in av[1:] if c is not None)
    return total


def _repeat_ways(low: int, high: int, inner: float) -> float:
    if inner <= 1:
        return math.inf if high == sre_parse.MAXREPEAT else float(high - low + 1)
    if high <= 1:
        return inner * (high - low + 1)
    if high == sre_parse.MAXREPEAT:
        raise _Ambiguous
    ways = 0.0
    for times in range(low, high + 1):
        ways += inner**times
        if ways > MAX_WAYS:
            raise _Ambiguous
    return ways


def _run_ends_where_it_must(body: list, rest: list, flags: int) -> bool:
    if len(body) != 1 or body[0][0] not in (sre_parse.LITERAL, sre_parse.IN):
        return False
    return _distinct_starts([body, rest], flags)


def _distinct_starts(branches: list[list], flags: int) -> bool:
    seen: set[str] = set()
    for branch in branches:
        chars = _first_chars(branch)
        if chars is None:
            return False
        if flags & re.IGNORECASE:
            chars = _case_variants(chars)
        if seen & chars:
            return False
        seen |= chars
    return True


def _index(rules: list[Rule]) -> tuple[FieldRules, ...]:
    out = []
    for name in FIELDS:
        mine = [r for r in rules if name in r.fields]
        if not mine:
            continue
        anchored = tuple(r for r in mine if r.anchored)
        starts = {r.id: first_chars_of(r.pattern) for r in anchored}
        any_start = tuple(r for r in anchored if starts[r.id] is None)
        chars = {c for r in anchored for c in (starts[r.id] or ())}
        # Each list keeps the file order of the rules, whichever way it was reached.
        by_start = {c: tuple(r for r in anchored if starts[r.id] is None or c in (starts[r.id] or ())) for c in chars}
        searching = tuple(r for r in mine if not r.anchored)
        always = frozenset(i for i, r in enumerate(searching) if r.needles is None)
        out.append(FieldRules(name, anchored, searching, _automaton(searching), always, by_start, any_start))
    return tuple(out)


def _automaton(rules: tuple[Rule, ...]) -> object | None:
    index: dict[str, set[int]] = {}
    for i, rule in enumerate(rules):
        for needle in rule.needles or ():
            index.setdefault(needle, set()).add(i)
    if not index:
        return None
    automaton = ahocorasick.Automaton()
    for needle, rule_indexes in index.items():
        automaton.add_word(needle, tuple(sorted(rule_indexes)))
    automaton.make_automaton()
    return automaton


MAX_START_CHARS = 512


def is_anchored(pattern: re.Pattern) -> bool:
    """True when every way to match starts with \\A, so .match() at the start finds all matches.

    `\\Afoo|bar` starts with \\A but its second branch matches anywhere: it must be searched.
    """
    try:
        ops = list(sre_parse.parse(pattern.pattern, pattern.flags))
    except (re.error, RecursionError, TypeError, ValueError):
        return False
    return _starts_at_beginning(ops)


def _starts_at_beginning(ops: list) -> bool:
    if not ops:
        return False
    op, av = ops[0]
    if op is sre_parse.AT:
        return av is sre_parse.AT_BEGINNING_STRING
    if op is sre_parse.BRANCH:
        return all(_starts_at_beginning(list(branch)) for branch in av[1])
    if op is sre_parse.SUBPATTERN:
        return _starts_at_beginning(list(av[-1]))
    return False


def first_chars_of(pattern: re.Pattern) -> frozenset[str] | None:
    """The characters a match of an anchored pattern can start with; None when not known."""
    try:
        ops = list(sre_parse.parse(pattern.pattern, pattern.flags))
    except (re.error, RecursionError, TypeError, ValueError):
        return None
    chars = _first_chars(ops)
    if chars is None or len(chars) > MAX_START_CHARS:
        return None
    if pattern.flags & re.IGNORECASE:
        chars = _case_variants(chars)
    return frozenset(chars)


def _case_variants(chars: set[str]) -> set[str]:
    # Every case variant, including the non-ASCII letters IGNORECASE folds onto i, s and k.
    return chars | {c.upper() for c in chars} | {c.lower() for c in chars} | _special_folds(chars)


_SPECIAL = {"i": "\u0130\u0131", "s": "\u017f", "k": "\u212a"}


def _special_folds(chars: set[str]) -> set[str]:
    return {x for c in chars for x in _SPECIAL.get(c.lower(), "")}


def _first_chars(ops: list) -> set[str] | None:
    for op, av in ops:
        if op is sre_parse.AT:
            continue
        if op is sre_parse.LITERAL:
            return {chr(av)}
        if op is sre_parse.IN:
            return _class_chars(av)
        if op is sre_parse.BRANCH:
            sets = [_first_chars(list(branch)) for branch in av[1]]
            found: set[str] = set()
            for chars in sets:
                if chars is None:
                    return None
                found |= chars
            return found
        if op is sre_parse.SUBPATTERN:
            chars = _first_chars(list(av[-1]))
            # A local (?i:...) group in a case-sensitive pattern matches every case of its start.
            return _case_variants(chars) if chars is not None and av[1] & re.IGNORECASE else chars
        if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT) and av[0] >= 1:
            return _first_chars(list(av[2]))
        return None
    return None


def _class_chars(items: list) -> set[str] | None:
    out: set[str] = set()
    for op, av in items:
        if op is sre_parse.LITERAL:
            out.add(chr(av))
        elif op is sre_parse.RANGE and av[1] - av[0] < MAX_START_CHARS:
            out.update(chr(c) for c in range(av[0], av[1] + 1))
        else:
            return None
    return out


MIN_NEEDLE = 3
_ZERO_WIDTH = (sre_parse.AT, sre_parse.ASSERT, sre_parse.ASSERT_NOT)


def needles_of(pattern: re.Pattern) -> tuple[str, ...] | None:
    """Literal strings, lowercased, at least one of which any match of `pattern` contains."""
    try:
        found = _needles(sre_parse.parse(pattern.pattern, pattern.flags))
    except (re.error, RecursionError, TypeError, ValueError):
        return None
    return tuple(sorted({n.lower() for n in found})) if found else None


def _needles(ops: Iterable[tuple]) -> list[str] | None:
    best: list[str] | None = None
    run: list[str] = []

    def consider(candidates: list[str] | None) -> None:
        nonlocal best
        if not candidates or min(len(c) for c in candidates) < MIN_NEEDLE:
            return
        if best is None or min(map(len, candidates)) > min(map(len, best)):
            best = candidates

    for op, av in ops:
        if op is sre_parse.LITERAL:
            run.append(chr(av))
            continue
        if op in _ZERO_WIDTH:  # consumes nothing: the literals around it are adjacent in the match
            continue
        consider(["".join(run)])
        run = []
        if op is sre_parse.BRANCH:
            branches = [_needles(branch) for branch in av[1]]
            if all(branches):
                consider([n for b in branches for n in b or ()])
        elif op is sre_parse.SUBPATTERN:
            consider(_needles(av[-1]))
        elif op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT) and av[0] >= 1:
            consider(_needles(av[2]))
    consider(["".join(run)])
    return best


def _ports(doc: dict) -> Mapping[int, PortHint]:
    out: dict[int, PortHint] = {}
    for item in doc.get("port") or []:
        port = item.get("port")
        if isinstance(port, int) and port not in out:
            out[port] = PortHint(
                port=port,
                protocol=str(item.get("protocol", "")),
                label=str(item.get("label", "")),
                vendor=str(item.get("vendor", "")),
                hint_only=bool(item.get("hint_only", False)),
            )
    return MappingProxyType(out)


SHORT_ALIAS = 4  # aliases this short ("AMC", "MST") are too ambiguous to look for inside text


def _healthcare(doc: dict) -> Healthcare:
    words = tuple(w.lower() for w in doc.get("words") or [] if isinstance(w, str) and w)
    orgs: list = []
    names: set[str] = set()
    short: set[str] = set()
    domains: set[str] = set()
    for item in doc.get("organisation") or []:
        org = Organisation(
            name=str(item.get("name", "")),
            domains=tuple(str(d).lower() for d in item.get("domains") or []),
            aliases=tuple(str(a) for a in item.get("aliases") or []),
        )
        orgs.append(org)
        domains.update(org.domains)
        for text in (org.name, *org.aliases):
            (short if len(text) <= SHORT_ALIAS else names).add(text.lower() if len(text) > SHORT_ALIAS else text)
    return Healthcare(
        words=words,
        organisations=tuple(orgs),
        name_pattern=_literal_alternation(names),
        word_pattern=_word_alternation(words),
        domains=frozenset(domains),
        short_aliases=frozenset(short),
    )


def _literal_alternation(texts: set[str] | tuple[str, ...]) -> re.Pattern:
    # Longest first so "medisch centrum" wins over "umc"; literals only, so matching is linear.
    ordered = sorted({t for t in texts if t}, key=lambda t: (-len(t), t))
    body = "|".join(re.escape(t) for t in ordered) or "(?!)"
    return re.compile(rf"(?<![a-z0-9])(?:{body})(?![a-z0-9])", re.IGNORECASE)


def _word_alternation(words: tuple[str, ...]) -> re.Pattern:
    # Dutch compounds ("ziekenhuisgroep", "Jansgasthuis") hide long words inside others; short
    # ones ("umc", "ggz", "zorg") only count as words of their own.
    long = sorted({w for w in words if len(w) >= 6}, key=lambda t: (-len(t), t))
    short = sorted({w for w in words if len(w) < 6}, key=lambda t: (-len(t), t))
    parts = [f"(?:{'|'.join(re.escape(w) for w in long)})"] if long else []
    if short:
        parts.append(f"(?<![a-z0-9])(?:{'|'.join(re.escape(w) for w in short)})(?![a-z0-9])")
    return re.compile("|".join(parts) or "(?!)", re.IGNORECASE)
