"""The bundled sample corpus and its generator (harvest.samplegen)."""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import re
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

import hl7
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ

from harvest.models import Service
from harvest.samplegen import iter_banners, iter_samples, write_banners
from harvest.samplegen.catalog import CATEGORIES, CLASSES, SEGMENTS
from harvest.samplegen.corpus import sample_generate
from harvest.samplegen.hl7_acks import unframe
from harvest.samplegen.networks import TABLE1_ASNS, Allocator, Network

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "fixtures" / "sample"
BANNERS = SAMPLE / "banners.jsonl.gz"
LABELS = SAMPLE / "labels.jsonl"
HOSTS = SAMPLE / "hosts.jsonl"
PORTS_TOML = ROOT / "harvest" / "data" / "medical_ports.toml"
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
LABEL_KEYS = {"ip", "port", "transport", "class", "category", "segment", "honeypot", "note"}


def read_banners() -> list[dict]:
    with gzip.open(BANNERS, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def read_labels() -> list[dict]:
    with LABELS.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def corpus() -> list[tuple[dict, dict]]:
    banners, labels = read_banners(), read_labels()
    assert len(banners) == len(labels)
    return list(zip(banners, labels, strict=True))


def of_category(corpus: list[tuple[dict, dict]], category: str) -> list[dict]:
    return [banner for banner, label in corpus if label["category"] == category]


def digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- determinism


def test_it_writes_byte_identical_files_on_every_run(tmp_path: Path) -> None:
    first = sample_generate(out_dir=tmp_path / "a", seed=7, count=1500)
    second = sample_generate(out_dir=tmp_path / "b", seed=7, count=1500)
    assert first["files"] == second["files"]
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    other = sample_generate(out_dir=tmp_path / "c", seed=8, count=1500)
    assert other["files"]["banners.jsonl.gz"] != first["files"]["banners.jsonl.gz"]


def test_it_bundles_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    # The committed files are regenerated output, not hand edits: default seed and count.
    sample_generate(out_dir=tmp_path)
    assert digest_tree(tmp_path) == digest_tree(SAMPLE), "stale corpus: run python manage.py generate_sample"


def test_it_removes_its_own_stale_rdap_answers_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "rdap"
    folder.mkdir()
    (folder / "recorded-by-staff.json").write_text("{}")  # e.g. answers kept for import_rdap_cache
    for key in ("previder", "hosp-wza"):
        (folder / f"{key}.json").write_text("{}")  # from an earlier, larger corpus
    summary = sample_generate(out_dir=tmp_path, count=1)
    written = {name for name in summary["files"] if name.startswith("rdap/")}
    assert "rdap/previder.json" not in written and "rdap/hosp-wza.json" not in written
    assert {f"rdap/{p.name}" for p in folder.iterdir()} == written | {"rdap/recorded-by-staff.json"}


def test_it_gzips_without_a_timestamp_or_file_name() -> None:
    header = BANNERS.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0  # FNAME flag
    assert header[4:8] == b"\x00\x00\x00\x00"  # MTIME


# -- shape and mix of the bundled banners


def test_it_bundles_at_least_5000_banners_in_shodan_shape(corpus: list[tuple[dict, dict]]) -> None:
    assert len(corpus) >= 5000
    for banner, _ in corpus:
        assert isinstance(banner["ip"], int)
        assert str(ipaddress.IPv4Address(banner["ip"])) == banner["ip_str"]
        assert banner["transport"] in ("tcp", "udp")
        assert isinstance(banner["data"], str)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", banner["timestamp"])
        assert re.fullmatch(r"AS\d+", banner["asn"])
        assert banner["location"]["country_code"] == "NL"
        assert set(banner["_shodan"]) >= {"module", "id", "crawler"}
        assert isinstance(banner["hash"], int)
        assert isinstance(banner["hostnames"], list) and isinstance(banner["domains"], list)
        if "http" in banner:
            assert banner["data"].startswith("HTTP/1.1 ")
            assert {"title", "server", "status", "html"} <= set(banner["http"])
        if "ssl" in banner:
            cert = banner["ssl"]["cert"]
            assert cert["subject"]["CN"]
            assert any(ext["name"] == "subjectAltName" for ext in cert["extensions"])


def test_domains_come_only_from_hostnames(corpus: list[tuple[dict, dict]]) -> None:
    # Shodan derives `domains` from `hostnames`: a banner without a name has no domain either.
    # (A hospital's domain on its nameless hosts would also hand the segment to a classifier.)
    for banner, _ in corpus:
        for domain in banner["domains"]:
            assert any(h == domain or h.endswith("." + domain) for h in banner["hostnames"]), banner["ip_str"]


def test_it_keeps_labels_out_of_the_banners(corpus: list[tuple[dict, dict]]) -> None:
    for banner, _ in corpus:
        assert not {"class", "category", "segment", "honeypot", "label", "note"} & set(banner)


def test_it_covers_every_class_category_and_segment(corpus: list[tuple[dict, dict]]) -> None:
    labels = [label for _, label in corpus]
    assert {lb["class"] for lb in labels} == set(CLASSES)
    assert {lb["category"] for lb in labels} == set(CATEGORIES)
    assert {lb["segment"] for lb in labels} == set(SEGMENTS)
    share = sum(lb["class"] == "medical" for lb in labels) / len(labels)
    assert 0.02 <= share <= 0.06, f"medical share {share:.3f}"
    assert sum(lb["class"] == "non_medical" for lb in labels) > len(labels) / 2


def test_it_places_every_table1_hoster_and_dicom_among_them(corpus: list[tuple[dict, dict]]) -> None:
    asns = {int(banner["asn"][2:]) for banner, _ in corpus}
    assert set(TABLE1_ASNS) <= asns
    dicom_asns = {int(banner["asn"][2:]) for banner in of_category(corpus, "dicom")}
    assert len(set(TABLE1_ASNS) & dicom_asns) >= 5
    ports = {banner["port"] for banner in of_category(corpus, "dicom")}
    assert {104, 11112, 4242} <= ports


def test_it_shows_that_a_port_is_not_evidence(corpus: list[tuple[dict, dict]]) -> None:
    on_104 = Counter(label["category"] for banner, label in corpus if banner["port"] == 104)
    assert on_104["dicom"] and on_104["known_service"] and on_104["blank"]
    assert any("http" in banner for banner in of_category(corpus, "known_service") if banner["port"] == 104)
    assert any(banner["data"] == "" and banner["port"] in (2575, 104, 11112) for banner in of_category(corpus, "blank"))


def test_it_labels_segments_from_networks_and_appendix_b(corpus: list[tuple[dict, dict]]) -> None:
    with PORTS_TOML.open("rb") as fh:
        medical_ports = {p["port"] for p in tomllib.load(fh)["port"] if not p.get("hint_only")}
    for banner, label in corpus:
        if label["segment"] == "medical_port":
            assert banner["port"] in medical_ports
        if label["category"] == "hospital_infra":
            assert label["segment"] == "hospital_organisation"
            assert label["class"] == "non_medical"
        if label["category"] == "blank":
            assert banner["data"] == "" and label["class"] == "unknown"


def test_it_includes_honeypot_like_hosts(corpus: list[tuple[dict, dict]]) -> None:
    ports: dict[str, set[int]] = defaultdict(set)
    for banner, label in corpus:
        if label["honeypot"]:
            ports[banner["ip_str"]].add(banner["port"])
    many = [ip for ip, p in ports.items() if len(p) >= 13 and {104, 11112} & p]
    assert len(many) == 1
    scanner_identity = [
        banner
        for banner, label in corpus
        if label["honeypot"] and label["category"] == "dicom" and "OFFIS_DCMTK_360" in banner["data"]
    ]
    assert any(b["ip_str"] not in many for b in scanner_identity)


# -- DICOM and HL7 decode with the real libraries


def test_every_dicom_banner_is_a_valid_association_reply(corpus: list[tuple[dict, dict]]) -> None:
    kinds = Counter()
    for banner in of_category(corpus, "dicom"):
        raw = banner["data"].encode("latin-1")  # one character per byte, as Shodan stores it
        if raw[:1] == b"\x02":
            pdu = A_ASSOCIATE_AC()
            pdu.decode(raw)
            assert pdu.encode() == raw
            assert pdu.called_ae_title == "ANY-SCP" and pdu.calling_ae_title == "FINDSCU"
            assert UID.fullmatch(pdu.user_information.implementation_class_uid)
            assert pdu.presentation_context[0].context_id == 1
            kinds["ac"] += 1
        elif raw[:1] == b"\x03":
            pdu = A_ASSOCIATE_RJ()
            pdu.decode(raw)
            assert pdu.encode() == raw
            assert pdu.result in (1, 2) and pdu.source in (1, 2, 3)
            kinds["rj"] += 1
        else:
            assert banner["data"].startswith("DICOM Server Response\n")
            assert re.search(r"^Implementation Class UID: [0-9.]+$", banner["data"], re.M)
            kinds["text"] += 1
    assert kinds["ac"] > kinds["rj"] > kinds["text"] > 0


def test_it_ships_the_recorded_synapse_reply_byte_for_byte(corpus: list[tuple[dict, dict]], shared_data: Path) -> None:
    recorded = (shared_data / "dicom" / "shodan-recorded-reply-fujifilm-synapse.bin").read_bytes()
    assert any(banner["data"].encode("latin-1") == recorded for banner in of_category(corpus, "dicom"))


def test_it_names_real_dicom_implementations(corpus: list[tuple[dict, dict]]) -> None:
    names = set()
    for banner in of_category(corpus, "dicom"):
        if banner["data"][:1] == "\x02":
            pdu = A_ASSOCIATE_AC()
            pdu.decode(banner["data"].encode("latin-1"))
            names.add(pdu.user_information.implementation_version_name or "")
    assert any(n.startswith("OFFIS_DCMTK_36") for n in names)
    assert len({n.split("_")[0].split("-")[0].split(" ")[0] for n in names}) >= 4


# What the servers really send. Conquest names its platform in the version name, and its
# build for Linux and other Unixes says OTHER (dicomlib's version.h); Orthanc accepts with its
# MaximumPduLength, 16384 unless configured.
CONQUEST_UID = "1.2.826.0.1.3680043.2.135.1066.101"
CONQUEST_VERSION = re.compile(r"\d+\.\d+\.\d+/(WIN32|OTHER|OSX|MAC|SL5|SUNOS|UMIPS)")


def test_dicom_identities_are_the_ones_real_products_send(corpus: list[tuple[dict, dict]]) -> None:
    conquest = orthanc = 0
    for banner, label in corpus:
        if label["category"] != "dicom" or banner["data"][:1] != "\x02":
            continue
        pdu = A_ASSOCIATE_AC()
        pdu.decode(banner["data"].encode("latin-1"))
        info = pdu.user_information
        if info.implementation_class_uid == CONQUEST_UID:
            assert CONQUEST_VERSION.fullmatch(info.implementation_version_name), info.implementation_version_name
            conquest += 1
        if "Orthanc" in label["note"]:
            assert info.maximum_length == 16384, label["note"]
            orthanc += 1
    assert conquest and orthanc


def test_every_hl7_banner_parses_and_its_msa_reads_back(corpus: list[tuple[dict, dict]]) -> None:
    codes = Counter()
    for banner in of_category(corpus, "hl7"):
        assert banner["port"] in (2575, 20046)
        message = hl7.parse(unframe(banner["data"]))
        assert str(message.segment("MSH")[9]).startswith("ACK")
        assert str(message.segment("MSH")[12]).startswith("2.")
        msa = message.segment("MSA")
        codes[str(msa[1])] += 1
        assert str(msa[2]).isdigit()
    assert codes["AA"] > 0 and (codes["AE"] + codes["AR"]) > 0
    assert set(codes) <= {"AA", "AE", "AR"}


# -- labels, hosts and RDAP


def test_the_labels_cover_exactly_the_banners(corpus: list[tuple[dict, dict]]) -> None:
    keys = []
    for banner, label in corpus:
        assert set(label) == LABEL_KEYS
        assert (label["ip"], label["port"], label["transport"]) == (
            banner["ip_str"],
            banner["port"],
            banner["transport"],
        )
        assert label["class"] in CLASSES and label["category"] in CATEGORIES and label["segment"] in SEGMENTS
        assert isinstance(label["honeypot"], bool) and label["note"]
        keys.append((label["ip"], label["port"], label["transport"]))
    assert len(keys) == len(set(keys))


def test_the_host_lookups_hold_corpus_banners(corpus: list[tuple[dict, dict]]) -> None:
    by_key = {(b["ip"], b["port"], b["transport"]): b for b, _ in corpus}
    hosts = [json.loads(line) for line in HOSTS.read_text(encoding="utf-8").splitlines()]
    assert 15 <= len(hosts) <= 25
    for host in hosts:
        assert host["ip_str"] == str(ipaddress.IPv4Address(host["ip"]))
        assert host["ports"] == sorted({b["port"] for b in host["data"]})
        for banner in host["data"]:
            assert by_key[(banner["ip"], banner["port"], banner["transport"])] == banner
    assert any(len(host["ports"]) >= 13 for host in hosts)


def rdap_networks() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((SAMPLE / "rdap").glob("*.json"))]


def emails(entity: dict) -> list[str]:
    card = entity.get("vcardArray", ["vcard", []])[1]
    found = [value for name, _params, _type, value in card if name == "email"]
    for child in entity.get("entities", []):
        found += emails(child)
    return found


def test_every_sample_host_falls_inside_an_rdap_network(corpus: list[tuple[dict, dict]]) -> None:
    ranges = []
    for answer in rdap_networks():
        assert answer["objectClassName"] == "ip network"
        assert answer["port43"] == "whois.ripe.net"
        start = ipaddress.IPv4Address(answer["startAddress"])
        end = ipaddress.IPv4Address(answer["endAddress"])
        cidr = answer["cidr0_cidrs"][0]
        network = ipaddress.IPv4Network(f"{cidr['v4prefix']}/{cidr['length']}")
        assert (network.network_address, network.broadcast_address) == (start, end)
        assert answer["handle"] == f"{start} - {end}"
        ranges.append((int(start), int(end)))
    ranges.sort()
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False)), "networks overlap"
    for banner, _ in corpus:
        assert any(start <= banner["ip"] <= end for start, end in ranges), banner["ip_str"]


def test_rdap_contacts_need_fallbacks_in_some_networks() -> None:
    with_abuse = without_abuse_but_contact = without_contact = 0
    for answer in rdap_networks():
        roles = {role for entity in answer["entities"] for role in entity["roles"]}
        all_emails = [e for entity in answer["entities"] for e in emails(entity)]
        if "abuse" in roles:
            abuse = next(e for e in answer["entities"] if "abuse" in e["roles"])
            assert emails(abuse)
            with_abuse += 1
        elif all_emails:
            assert roles >= {"technical", "administrative"}
            without_abuse_but_contact += 1
        else:
            without_contact += 1
    assert with_abuse > without_abuse_but_contact >= 2
    assert without_contact == 1


# -- ingest through the real harvest command


@pytest.mark.django_db
def test_the_bundled_banners_ingest_with_zero_rejections() -> None:
    out = io.StringIO()
    call_command("harvest", file=str(BANNERS), json=True, stdout=out)
    summary = json.loads(out.getvalue())
    lines = len(read_labels())
    assert summary["status"] == "completed"
    assert summary["seen"] == summary["accepted"] == lines
    assert summary["rejected"] == {}
    assert Service.objects.count() == lines


@pytest.mark.django_db
def test_the_bundled_host_lookups_ingest_with_zero_rejections() -> None:
    out = io.StringIO()
    call_command("harvest", hosts=str(HOSTS), json=True, stdout=out)
    summary = json.loads(out.getvalue())
    banners = sum(len(json.loads(line)["data"]) for line in HOSTS.read_text(encoding="utf-8").splitlines())
    assert summary["accepted"] == banners and summary["rejected"] == {}


# -- streaming API


def test_iter_banners_is_deterministic_per_seed() -> None:
    first = [json.dumps(b) for b in iter_banners(3000, seed=11)]
    assert first == [json.dumps(b) for b in iter_banners(3000, seed=11)]
    assert first != [json.dumps(b) for b in iter_banners(3000, seed=12)]


def test_iter_banners_keeps_keys_unique_and_the_mix_at_scale() -> None:
    n = 300_000
    seen: set[int] = set()
    categories: Counter = Counter()
    for banner, label in iter_samples(n):
        seen.add(banner["ip"] << 17 | banner["port"] << 1 | (banner["transport"] == "udp"))
        categories[label["category"]] += 1
    assert len(seen) == n
    assert set(categories) == set(CATEGORIES)
    medical = sum(categories[c] for c in ("dicom", "hl7", "pacs_web", "ehr_web", "pump_server", "medical_device"))
    assert 0.02 <= medical / n <= 0.06


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_banners_writes_json_lines(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert write_banners(path, 2000, seed=5) == 2000
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert lines == [json.dumps(b) for b in iter_banners(2000, seed=5)]
    again = tmp_path / ("again-" + name)
    write_banners(again, 2000, seed=5)
    assert again.read_bytes() == path.read_bytes()


def test_generate_sample_command_reports_json(tmp_path: Path) -> None:
    out = io.StringIO()
    call_command("generate_sample", out=str(tmp_path), seed=3, count=800, json=True, stdout=out)
    summary = json.loads(out.getvalue())
    assert summary["banners"] == 800
    assert sum(summary["by_class"].values()) == 800
    assert digest_tree(tmp_path) == summary["files"]


def test_generate_sample_command_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="at least one banner"):
        call_command("generate_sample", out=str(tmp_path), count=0, json=True, stdout=io.StringIO())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CommandError, match="cannot write"):
        call_command("generate_sample", out=str(blocker / "sub"), count=10, json=True, stdout=io.StringIO())
    assert list(tmp_path.iterdir()) == [blocker]


def test_iter_banners_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="negative"):
        list(iter_banners(-1))


def test_the_allocator_never_repeats_an_address_and_says_when_a_network_is_full() -> None:
    net = Network("tiny", "192.0.2.0/28", "TEST-NET", "Test", "Test", 64496, "hoster", 1, "Amsterdam")
    allocator = Allocator()
    addresses = [allocator.address(net, "web", 80) for _ in range(14)]
    assert len(set(addresses)) == 14
    assert all(int(ipaddress.IPv4Address("192.0.2.1")) <= a <= int(ipaddress.IPv4Address("192.0.2.14"))
               for a in addresses)  # fmt: skip
    with pytest.raises(ValueError, match="no free address"):
        allocator.address(net, "web", 80)
    assert allocator.address(net, "web", 443) == addresses[0]  # same group: the first host again
