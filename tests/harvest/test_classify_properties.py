"""Robustness: any banner gets a valid verdict, quickly, and huge or hostile input stays bounded."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvest.classify import Banner, Verdict, classify, load_rules
from harvest.classify.types import CATEGORIES, CLASS_OF_CATEGORY, CLASSES, SEGMENTS

RULES = load_rules()
FIELDS = ("data", "module", "product", "org", "isp", "http_title", "http_server", "http_html", "ssl_subject")


def latin1(data: bytes) -> str:
    return data.decode("latin-1")


def assert_valid(verdict: Verdict) -> None:
    assert isinstance(verdict, Verdict)
    assert verdict.cls in CLASSES and verdict.category in CATEGORIES
    assert CLASS_OF_CATEGORY[verdict.category] == verdict.cls
    assert verdict.segment in SEGMENTS
    assert 0.0 <= verdict.confidence <= 1.0
    assert verdict.honeypot == bool(verdict.honeypot_evidence)
    assert verdict.evidence, "every verdict says why"
    for item in (*verdict.evidence, *verdict.honeypot_evidence):
        assert item.rule and item.field and len(item.excerpt) <= 200
    stored = json.dumps([verdict.details, verdict.product, [e.excerpt for e in verdict.evidence]], ensure_ascii=False)
    assert "\x00" not in stored
    stored.encode("utf-8")  # no lone surrogates: PostgreSQL and every encoder refuse them
    assert verdict.rules_version == RULES.version


# Real Shodan JSON can carry lone surrogates ("\ud800"), which st.text() leaves out by default.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=400)
texts = st.one_of(st.text(max_size=400), any_text, st.binary(max_size=400).map(latin1))
# Prefixes that send the engine down each decoder's path, so the decoders see hostile bytes too.
prefixes = st.sampled_from(
    ["", "\x02\x00", "\x01\x00", "\x03\x00\x00\x00\x00\x04", "\x07\x00", "\x0bMSH|^~\\&|", "MSH|^~\\&|",
     "HTTP/1.1 200 ", "DICOM Server Response\n", "SSH-2.0-", "220 ", "\x00\x00\x00"]
)  # fmt: skip
datas = st.builds(lambda p, t: p + t, prefixes, texts)
names = st.lists(st.text(max_size=60), max_size=6).map(tuple)

banners = st.builds(
    Banner,
    port=st.integers(0, 65535),
    transport=st.sampled_from(["tcp", "udp", ""]),
    data=datas,
    module=st.text(max_size=20),
    product=texts,
    version=st.text(max_size=20),
    org=st.one_of(texts, st.sampled_from(["Erasmus MC", "Ziekenhuis Amstelland", "AMC"])),
    isp=st.text(max_size=40),
    asn=st.one_of(st.none(), st.integers(0, 2**32)),
    hostnames=names,
    http_title=texts,
    http_server=texts,
    http_html=texts,
    ssl_subject=texts,
    ssl_names=names,
    host_modules=st.lists(st.sampled_from(["dicom", "ssh", "http", "ftp", "x"]) | st.text(max_size=8), max_size=20).map(
        tuple
    ),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(banners)
def test_any_banner_gets_a_valid_verdict(banner: Banner) -> None:
    assert_valid(classify(banner, RULES))


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_any_bytes_on_a_dicom_port_get_a_valid_verdict(raw: bytes) -> None:
    verdict = classify(Banner(port=104, data=latin1(raw), module="dicom"), RULES)

    assert_valid(verdict)
    if verdict.category == "dicom":  # only a structurally valid reply may be called DICOM
        assert verdict.details["dicom"]["valid"] is True


def timed(banner: Banner) -> float:
    start = time.perf_counter()
    assert_valid(classify(banner, RULES))
    return time.perf_counter() - start


HUGE = 5 * 1024 * 1024


@pytest.mark.parametrize(
    "data",
    [
        "a" * HUGE,
        "\x00" * HUGE,
        "HTTP/1.1 200 OK\r\n" + "X-A: b\r\n" * (HUGE // 8),
        "\x0bMSH|^~\\&|" + "|" * HUGE,
        "DICOM Server Response\n" + "Called AE Title:" * (HUGE // 16),
        "\x02\x00\x00\x50\x00\x00" + "\x00\x01" * (HUGE // 2),
        latin1(bytes(range(256)) * (HUGE // 256)),
    ],
    ids=["letters", "nuls", "http-headers", "hl7-separators", "dicom-summary", "pdu-claiming-5mb", "all-bytes"],
)
def test_a_5_mb_banner_is_classified_within_a_second(data: str) -> None:
    assert timed(Banner(port=104, data=data, http_html=data, http_title=data[:4096])) < 1.0


# Runs of the characters the rules' patterns repeat or stop at, placed in every field at once.
RUNS = [" ", "a", "0", ".", "-", ":", "|", "<title", "\r\n", "\t", "B. ", "Orthanc ", "220-", "\xff", "x" * 63 + "\n"]


@pytest.mark.parametrize("run", RUNS, ids=[repr(r)[:12] for r in RUNS])
def test_inputs_built_to_make_patterns_backtrack_stay_fast(run: str) -> None:
    text = run * (1024 * 1024 // len(run))
    banner = Banner(
        port=443,
        **{name: text for name in FIELDS},
        hostnames=(text[:4096],) * 64,
        ssl_names=(text[:4096],) * 64,
        host_modules=tuple(text[:100] for _ in range(1000)),
    )
    assert timed(banner) < 1.0


def test_every_pattern_scanned_over_its_own_repeated_alphabet_stays_fast() -> None:
    # For each rule, a megabyte made of the characters of its own pattern: the input most likely
    # to find a backtracking path, if the loader had let one through.
    for rule in RULES.rules:
        alphabet = "".join(sorted({c for c in rule.pattern.pattern if c.isprintable()}))
        text = (alphabet * (1024 * 1024 // max(len(alphabet), 1)))[: 1024 * 1024]
        start = time.perf_counter()
        rule.pattern.search(text[: 64 * 1024])
        assert time.perf_counter() - start < 0.5, rule.id
