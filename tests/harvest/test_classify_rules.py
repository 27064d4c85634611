"""The rule files and their loader: validation at load, versions, caching, linear-time checks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from harvest.classify import RuleError, load_rules
from harvest.classify import rules as rules_module
from harvest.classify.engine import classify
from harvest.classify.rules import RULES_DIR, first_chars_of, is_anchored, needles_of
from harvest.classify.types import CATEGORIES, CLASS_OF_CATEGORY, CLASSES, Banner

GOOD = """
version = "t.1"

[[rule]]
id = "test.orthanc"
class = "medical"
category = "pacs_web"
segment = "software"
product = "Orthanc"
fields = ["http_title"]
pattern = '\\bOrthanc\\b'
"""


def rules_dir(tmp_path: Path, text: str, name: str = "test.toml") -> Path:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text)
    return directory


def test_the_shipped_rules_load_and_cover_the_study() -> None:
    rules = load_rules()

    ids = {r.id for r in rules.rules}
    assert {"software.orthanc", "software.mirth_connect", "pump.bbraun", "dicom_impl.synapse"} <= ids
    assert {r.source for r in rules.rules} >= {"software.toml", "services.toml", "dicom.toml", "devices.toml"}
    assert all(r.cls in CLASSES and r.category in CATEGORIES for r in rules.rules)
    assert all(CLASS_OF_CATEGORY[r.category] == r.cls for r in rules.rules)
    # Appendix B comes from the shared registry, the web's ports only as hints.
    assert {104, 11112, 4242, 2575, 20046, 1500, 51244} <= set(rules.ports)
    assert rules.ports[443].hint_only and not rules.ports[104].hint_only
    assert "Erasmus MC" in {o.name for o in rules.healthcare.organisations}
    assert re.fullmatch(r"[0-9a-f]{12}", rules.version)
    assert dict(rules.files)["medical_ports.toml"] == "2019.1"


def test_it_loads_once_per_directory_and_contents(tmp_path: Path) -> None:
    directory = rules_dir(tmp_path, GOOD)

    first = load_rules(directory)

    assert load_rules(directory) is first
    assert load_rules() is load_rules(RULES_DIR)


def test_the_version_changes_with_any_file(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(RULES_DIR, copy)
    before = load_rules(copy).version
    assert before == load_rules().version  # same contents, same version, wherever they live

    target = copy / "services.toml"
    target.write_text(re.sub(r'(?m)^version = "[^"]*"', 'version = "test.bumped"', target.read_text(), count=1))

    assert load_rules(copy).version != before


def test_the_version_changes_with_the_engine_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verdicts of an engine that judges differently must not pass for the old ones."""
    shutil.copytree(RULES_DIR, tmp_path / "a")
    shutil.copytree(RULES_DIR, tmp_path / "b")  # another folder: load_rules caches per folder
    before = load_rules(tmp_path / "a").version

    monkeypatch.setattr(rules_module, "ENGINE_REVISION", rules_module.ENGINE_REVISION + ".next")

    assert load_rules(tmp_path / "b").version != before


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda t: t.replace('class = "medical"', 'class = "bad"'), "class 'bad' is not one of"),
        (lambda t: t.replace('category = "pacs_web"', 'category = "xray"'), "category 'xray' is not one of"),
        (lambda t: t.replace('class = "medical"', 'class = "non_medical"'), "belongs to class medical"),
        (lambda t: t.replace('segment = "software"', 'segment = "hospital_organisation"'), "segment must be"),
        (lambda t: t + 'colour = "red"\n', "unknown keys: colour"),
        (lambda t: t.replace('version = "t.1"', 'flavour = "x"'), "unknown top-level keys: flavour"),
        (lambda t: t.replace('version = "t.1"', ""), "missing `version`"),
        (lambda t: t.replace("\\bOrthanc\\b", "(unclosed"), "pattern does not compile"),
        (lambda t: t.replace("\\bOrthanc\\b", "(a+)+$"), "quantified group containing a quantifier"),
        (lambda t: t.replace("\\bOrthanc\\b", "(.*a)*"), "quantified group containing a quantifier"),
        # The same shapes one group deeper, or with a long prefix: each takes seconds on 30 "a"s.
        (lambda t: t.replace("\\bOrthanc\\b", "(?:(?:a+))+$"), "quantified group containing a quantifier"),
        (lambda t: t.replace("\\bOrthanc\\b", "((?:a)+)+$"), "quantified group containing a quantifier"),
        (lambda t: t.replace("\\bOrthanc\\b", "(?:" + "b" * 401 + "|a+)+$"), "quantified group containing a"),
        # A repeated group that can match the same text in several ways: no quantifier inside is
        # unbounded, yet each tries every split of a few dozen characters before it fails.
        (lambda t: t.replace("\\bOrthanc\\b", "(?:a|a)*$"), "can match the same text in many ways"),
        (lambda t: t.replace("\\bOrthanc\\b", "(?:a|aa){1,60}$"), "can match the same text in many ways"),
        (lambda t: t.replace("\\bOrthanc\\b", "(?:a{1,20}){1,20}$"), "can match the same text in many ways"),
        (lambda t: t.replace("\\bOrthanc\\b", "(?:[a-z]|xy)+!"), "can match the same text in many ways"),
        (lambda t: t.replace("\\bOrthanc\\b", "(a)\\1"), "back-reference"),
        (lambda t: t.replace("\\bOrthanc\\b", "(?i)orthanc"), "global inline flags"),
        (lambda t: t.replace("\\bOrthanc\\b", "(?P<name>x)"), "only named group allowed"),
        (lambda t: t.replace('["http_title"]', '["banner"]'), "fields must be"),
        (lambda t: t.replace('id = "test.orthanc"', 'id = "Orthanc"'), "`id` must look like"),
        (lambda t: t + "confidence = 2\n", "confidence must be"),
        (lambda t: t + "ports = [70000]\n", "ports must be"),
        (lambda t: t + 'protocols = ["gopher"]\n', "protocols must be"),
        (lambda t: t.replace("[[rule]]", "rule = 3\n[x]", 1), "unknown top-level keys"),
        (lambda t: t + "= broken toml", "not valid TOML"),
        (lambda t: t.replace('version = "t.1"', 'version = "t.1"\nsettings = 3'), "`settings` must be a table"),
    ],
)
def test_it_refuses_an_invalid_rule_saying_which_file_and_rule(tmp_path: Path, change, why: str) -> None:  # noqa: ANN001
    directory = rules_dir(tmp_path, change(GOOD))

    with pytest.raises(RuleError) as caught:
        load_rules(directory)

    assert why in str(caught.value)
    assert caught.value.file == "test.toml"


@pytest.mark.parametrize(
    "pattern",
    [
        "(?:\\.\\d{1,3}){0,2}",
        "(?:ab)+c",
        "(?:ab|cd)+",
        "(?:a|b)+c",
        "(?:a|b){1,40}c",
        "(?:x[a-z]{1,3}){1,5}",
        "(?:[a-z0-9-]{1,63}\\.){1,10}nl",
        "(?:\\.[a-z]{1,5}){1,10}",
        "(?:\\d{1,3}\\.){3}\\d{1,3}",
        "[^\\r\\n]{0,200}PACS",
    ],
)
def test_it_accepts_repeats_that_match_in_few_ways(tmp_path: Path, pattern: str) -> None:
    rules = load_rules(rules_dir(tmp_path, GOOD.replace("\\bOrthanc\\b", pattern)))

    assert rules.rule("test.orthanc").pattern.pattern == pattern


def test_it_refuses_duplicate_ids_across_files(tmp_path: Path) -> None:
    rules_dir(tmp_path, GOOD, "a.toml")
    directory = rules_dir(tmp_path, GOOD, "b.toml")

    with pytest.raises(RuleError, match="b.toml: test.orthanc: duplicate rule id"):
        load_rules(directory)


def test_it_refuses_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="no \\*.toml rule files"):
        load_rules(tmp_path)


def test_it_refuses_a_setting_it_does_not_know(tmp_path: Path) -> None:
    directory = rules_dir(tmp_path, GOOD.replace('version = "t.1"', 'version = "t.1"\n[settings]\nspeed = 3\n'))

    with pytest.raises(RuleError, match="unknown setting 'speed'"):
        load_rules(directory)


def test_needles_are_literals_every_match_contains() -> None:
    def compiled(p: str, flags: int = re.IGNORECASE) -> re.Pattern:
        return re.compile(p, flags)

    assert needles_of(compiled(r"\bOrthanc(?: Explorer| Secure Area|\b)")) == ("orthanc",)
    assert needles_of(compiled(r"\bMedDream\b|\bSoftneta\b")) == ("meddream", "softneta")
    assert needles_of(compiled(r"\bHL7\b|x")) is None  # one branch has no literal of 3 characters
    assert needles_of(compiled(r"[a-z]{3,9}")) is None


def test_every_shipped_searching_rule_matches_only_texts_with_its_needles() -> None:
    # Cross-check the needle extraction on each rule's own pattern: a match always holds a needle.
    samples = [
        "Orthanc Explorer",
        "Sign in to dcm4che",
        "B. Braun Space Online Suite",
        "ICU Medical MedNet",
        "IntelliVue Information Center iX",
        "Welcome to nginx!",
        "OpenEMR Login",
        "CARESCAPE Gateway",
    ]
    for rule in load_rules().rules:
        for text in samples:
            m = rule.pattern.search(text)
            if m and rule.needles is not None:
                assert any(n in text.lower() for n in rule.needles), (rule.id, text)


def test_first_characters_of_anchored_patterns() -> None:
    assert first_chars_of(re.compile(r"\ASSH-\d")) == frozenset("S")
    assert first_chars_of(re.compile(r"\A(?:LDAP:|0\x84)")) == frozenset("L0")
    assert first_chars_of(re.compile(r"\A\* OK", re.IGNORECASE)) == frozenset("*")
    assert first_chars_of(re.compile(r"\A.")) is None
    assert "\u212a" in first_chars_of(re.compile(r"\Akey", re.IGNORECASE))  # KELVIN SIGN folds onto k


def test_a_case_sensitive_rule_with_a_case_insensitive_group_still_matches_every_case(tmp_path: Path) -> None:
    # (?i:...) is a local flag the loader allows; the index by first character must fold it too.
    text = GOOD.replace("\\bOrthanc\\b", "\\A(?i:orthanc) Explorer") + "case_sensitive = true\n"
    rules = load_rules(rules_dir(tmp_path, text))

    for title in ("orthanc Explorer", "Orthanc Explorer", "ORTHANC Explorer"):
        verdict = classify(Banner(port=8042, data="HTTP/1.1 200 OK\r\n", http_title=title), rules)
        assert (verdict.cls, verdict.product) == ("medical", "Orthanc"), title
    assert first_chars_of(re.compile(r"\A(?i:k)x")) >= {"k", "K", "\u212a"}


def test_a_pattern_is_anchored_only_when_every_alternative_starts_at_the_beginning() -> None:
    assert is_anchored(re.compile(r"\ASSH-\d"))
    assert is_anchored(re.compile(r"\Afoo|\Abar"))
    assert is_anchored(re.compile(r"(?:\Afoo|\A(?P<version>bar))x"))
    assert not is_anchored(re.compile(r"\AElastic(?:search)?[ :\n]|\"cluster_name\"\s{0,8}:"))
    assert not is_anchored(re.compile(r"(?:\Afoo)|bar"))
    assert not is_anchored(re.compile(r"foo\A"))
    assert not is_anchored(re.compile(r"^foo"))


def test_a_rule_with_an_unanchored_alternative_is_searched() -> None:
    rules = load_rules()
    elastic = next(r for r in rules.rules if r.id == "service.elasticsearch")
    assert not elastic.anchored

    verdict = classify(Banner(port=9200, data='{"name":"n1","cluster_name":"prod"}'), rules)

    assert (verdict.cls, verdict.category, verdict.product) == ("non_medical", "known_service", "Elasticsearch")
    assert [e.rule for e in verdict.evidence][:1] == ["service.elasticsearch"]


def test_a_rule_limited_to_ports_fires_only_on_them(tmp_path: Path) -> None:
    rules = load_rules(rules_dir(tmp_path, GOOD + "ports = [8042]\n"))
    web = {"data": "HTTP/1.1 200 OK\r\n\r\n", "http_title": "Orthanc Explorer"}

    on = classify(Banner(port=8042, **web), rules)
    off = classify(Banner(port=80, **web), rules)

    assert (on.cls, on.category, on.product) == ("medical", "pacs_web", "Orthanc")
    assert off.cls != "medical" and "test.orthanc" not in [e.rule for e in off.evidence]
