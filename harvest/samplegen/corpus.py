"""Write the bundled sample corpus: banners, labels, host lookups, RDAP answers and a README."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from harvest.samplegen import rdap
from harvest.samplegen.networks import PROVIDERS, Network, hospital_networks, load_registry
from harvest.samplegen.stream import DEFAULT_SEED, dump_line, iter_samples, open_output

DEFAULT_COUNT = 6000
MEDICAL_CATEGORIES = ("dicom", "hl7", "pacs_web", "ehr_web", "pump_server", "medical_device")
HOST_LOOKUPS = 20
FILES = ("banners.jsonl.gz", "labels.jsonl", "hosts.jsonl", "README.md")

ProgressFn = Callable[[int], None]


class SampleError(Exception):
    """The corpus cannot be written; the message is for the user."""


def sample_generate(
    *, out_dir: Path, seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT, progress: ProgressFn | None = None
) -> dict:
    """Regenerate every file of the corpus in out_dir; returns counts and the files' sha256."""
    if count < 1:
        raise SampleError(f"the corpus needs at least one banner, not {count}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SampleError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    banners: list[dict] = []
    labels: list[dict] = []
    for index, (banner, label) in enumerate(iter_samples(count, seed), 1):
        banners.append(banner)
        labels.append(label)
        if progress is not None and index % 500 == 0:
            progress(index)
    if progress is not None:
        progress(count)
    _write_lines(out_dir / "banners.jsonl.gz", banners)
    _write_lines(out_dir / "labels.jsonl", labels)
    hosts = host_lookups(banners, labels, HOST_LOOKUPS)
    _write_lines(out_dir / "hosts.jsonl", hosts)
    networks = (*PROVIDERS, *hospital_networks(load_registry()))
    rdap_files = _write_rdap(out_dir / "rdap", networks, banners)
    answers = [p for p in rdap_files if p.suffix == ".json"]
    summary = corpus_summary(labels=labels, seed=seed, hosts=len(hosts), rdap_files=len(answers))
    (out_dir / "README.md").write_text(readme(summary), encoding="utf-8")
    summary["files"] = {
        str(p.relative_to(out_dir)): _sha256(p)
        for p in [*(out_dir / name for name in FILES), *rdap_files]  # fmt: skip
    }
    return summary


def _write_lines(path: Path, rows: list[dict]) -> None:
    with open_output(path) as out:
        out.write("".join(dump_line(row) for row in rows))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def host_lookups(banners: list[dict], labels: list[dict], limit: int) -> list[dict]:
    """`/shodan/host/{ip}` answers: the busiest hosts of each medical category and of the
    hospitals' infrastructure first (so lookups show every kind of finding), then the busiest others."""
    by_ip: dict[int, list[dict]] = defaultdict(list)
    categories: dict[str, set[int]] = defaultdict(set)
    for banner, label in zip(banners, labels, strict=True):
        by_ip[banner["ip"]].append(banner)
        categories[label["category"]].add(banner["ip"])
    busiest = sorted(by_ip, key=lambda ip: (-len(by_ip[ip]), ip))
    chosen: list[int] = []
    for category in (*MEDICAL_CATEGORIES, "hospital_infra", *MEDICAL_CATEGORIES, "hospital_infra"):
        pick = next((ip for ip in busiest if ip in categories[category] and ip not in chosen), None)
        if pick is not None and len(chosen) < limit:
            chosen.append(pick)
    chosen += [ip for ip in busiest if ip not in chosen][: limit - len(chosen)]
    return [_host(by_ip[ip]) for ip in sorted(chosen)]


def _host(banners: list[dict]) -> dict:
    first = banners[0]
    location = first["location"]
    hostnames = sorted({h for b in banners for h in b["hostnames"]})
    domains = sorted({d for b in banners for d in b["domains"]})
    last = max(b["timestamp"] for b in banners)
    data = sorted(banners, key=lambda b: (b["port"], b["transport"]))
    return {
        "region_code": location["region_code"],
        "tags": [],
        "ip": first["ip"],
        "area_code": None,
        "domains": domains,
        "hostnames": hostnames,
        "country_code": location["country_code"],
        "org": first["org"],
        "data": data,
        "asn": first["asn"],
        "city": location["city"],
        "latitude": location["latitude"],
        "isp": first["isp"],
        "longitude": location["longitude"],
        "last_update": last,
        "country_name": location["country_name"],
        "ip_str": first["ip_str"],
        "os": next((b["os"] for b in banners if b["os"]), None),
        "ports": sorted({b["port"] for b in banners}),
    }


def _write_rdap(folder: Path, networks: tuple[Network, ...], banners: list[dict]) -> list[Path]:
    """One RDAP answer per network that holds a sample host, and beside each allocation's the
    sample addresses it answers for (`NAME.addresses`: an allocation answers only for those);
    its stale files are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for net in networks:
        inside = sorted({b["ip"] for b in banners if _inside(b["ip"], net)})
        if not inside:
            continue
        answer = rdap.network_answer(net)
        path = folder / f"{net.key}.json"
        path.write_text(json.dumps(answer, indent=2) + "\n", encoding="utf-8")
        written.append(path)
        if answer["type"] != "ASSIGNED PA":
            listed = folder / f"{net.key}.addresses"
            header = f"# The sample addresses the registry answers with {answer['name']} ({answer['type']}).\n"
            listed.write_text(header + "".join(f"{ipaddress.IPv4Address(ip)}\n" for ip in inside), encoding="utf-8")
            written.append(listed)
    # Only files named after a network are the generator's: other answers in --out stay.
    ours = {folder / f"{net.key}{suffix}" for net in networks for suffix in (".json", ".addresses")}
    for stale in ours - set(written):
        stale.unlink(missing_ok=True)
    return written


def _inside(ip: int, net: Network) -> bool:
    network = net.network
    return int(network.network_address) <= ip <= int(network.broadcast_address)


def corpus_summary(*, labels: list[dict], seed: int, hosts: int, rdap_files: int) -> dict:
    return {
        "seed": seed,
        "banners": len(labels),
        "hosts": hosts,
        "rdap_networks": rdap_files,
        "by_class": dict(sorted(Counter(lb["class"] for lb in labels).items())),
        "by_category": dict(sorted(Counter(lb["category"] for lb in labels).items())),
        "by_segment": dict(sorted(Counter(lb["segment"] or "(none)" for lb in labels).items())),
        "by_port": {str(p): n for p, n in sorted(Counter(lb["port"] for lb in labels).items())},
        "medical_by_port": {
            str(p): n for p, n in sorted(Counter(lb["port"] for lb in labels if lb["class"] == "medical").items())
        },
        "honeypot_banners": sum(1 for lb in labels if lb["honeypot"]),
    }


def _table(title: str, counts: dict, total: int) -> str:
    rows = [f"| {title} | banners | share |", "|---|---:|---:|"]
    rows += [f"| {key} | {n} | {100 * n / total:.1f}% |" for key, n in counts.items()]
    return "\n".join(rows)


def readme(s: dict) -> str:
    total = s["banners"]
    ports = ", ".join(f"{p}: {n}" for p, n in s["by_port"].items())
    medical_ports = ", ".join(f"{p}: {n}" for p, n in s["medical_by_port"].items())
    return f"""# The bundled sample corpus (synthetic)

Every file here is **synthetic**, written by the generator in `harvest/samplegen/` (into this
folder unless `--out DIR` says otherwise):

    DEBUG=1 .venv/bin/python manage.py generate_sample --seed {s["seed"]} --count {total}

Running it again gives byte-identical files (fixed seed, gzip with mtime 0). Do not edit the
files by hand: change the generator and regenerate.

Addresses, hostnames and registrations are invented for the corpus: the ranges are plausible for
the hosters, access providers and hospitals named, but they are not real assignments, and no
banner was ever seen on the internet. Two replies are real in shape: the Fujifilm Synapse
A-ASSOCIATE-AC (byte-identical to the one Shodan recorded, see `../shared/data/SOURCES.md`) and
the LDAP BER answer quoted by the 2019 study.

## Files

- `banners.jsonl.gz`: {total} banners, one JSON object per line, in the shape `shodan download`
  writes. Binary replies (DICOM PDUs, MySQL handshakes, junk) are strings with one character per
  byte (U+0000..U+00FF); certificate extensions are, as in Shodan's data, the text of a Python
  bytes literal (`0\\x0b\\x82\\tlocalhost`).
- `labels.jsonl`: the answer file, one object per banner, in the same order: `ip`, `port`,
  `transport`, `class`, `category`, `segment`, `honeypot`, `note`. Labels come from how each
  banner was generated, never from reading it.
- `hosts.jsonl`: {s["hosts"]} host lookups in the `/shodan/host/{{ip}}` shape (host fields plus
  `data[]`): the busiest host of each medical category and of the hospitals' infrastructure,
  then the busiest others.
- `rdap/*.json`: {s["rdap_networks"]} raw RDAP ip-network answers (RIPE NCC style), one per network
  that holds a sample host. Some lack an `abuse` role (contacts only through `technical` and
  `administrative`); `hosp-wza.json` has no contact at all. Beside each provider's allocation
  (`ALLOCATED PA`), `NAME.addresses` lists the sample addresses it is the answer for: an
  allocation may hold assignments, so `import_rdap_cache` lets it answer for those only.

Vocabulary of `labels.jsonl`: class `medical` / `non_medical` / `unknown`; category `dicom`, `hl7`,
`pacs_web`, `ehr_web`, `pump_server`, `medical_device`, `hospital_infra`, `known_service`, `blank`,
`unparseable`; segment `hospital_organisation` (the host belongs to a healthcare organisation),
`software` (medical open-source or vendor software), `medical_port` (found only through a
stand-alone medical port of Appendix B) or empty.

## Counts

{_table("class", s["by_class"], total)}

{_table("category", s["by_category"], total)}

{_table("segment", s["by_segment"], total)}

Honeypot-like banners: {s["honeypot_banners"]} (one host answering DICOM and a dozen other
protocols, one DICOM server answering with the scanner's own identity).

Banners by port: {ports}.

Medical banners by port: {medical_ports}.

## Streaming for benchmarks

`harvest.samplegen.iter_banners(n, seed)` yields any number of banners of the same mix (unique
`(ip, port, transport)` up to 2,000,000) and `harvest.samplegen.write_banners(path, n, seed)`
writes them as JSON lines (gzip when the path ends in `.gz`).
"""
