"""The address space of the sample corpus: hosters, access providers and hospitals in NL.

Every network is invented for the corpus (plausible ranges and registrations, not real
assignments). Hospitals come from the shared registry `harvest/data/nl_healthcare.toml`.
Addresses are handed out by a permutation per (network, port group), so that (ip, port) pairs
never repeat and hosts still get several ports when their groups coincide.
"""

from __future__ import annotations

import ipaddress
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path

REGISTRY = Path(__file__).resolve().parent.parent / "data" / "nl_healthcare.toml"

# kind: "hoster" (cloud and hosting), "isp" (access networks), "hospital", "honeypot"
# contacts: "abuse" (abuse role present), "technical" (only technical/administrative), "none"


@dataclass(frozen=True, slots=True)
class Network:
    key: str
    cidr: str
    name: str  # RIPE netname
    org: str  # Shodan's org field
    isp: str
    asn: int
    kind: str
    weight: float  # share of the non-hospital noise that lands here
    city: str
    rdns: str = ""  # reverse-DNS pattern with {a}..{d}, or "" for none
    email_domain: str = ""
    contacts: str = "abuse"
    org_handle: str = ""
    domains: tuple[str, ...] = ()  # hospital web domains
    aliases: tuple[str, ...] = ()
    table1: bool = False  # one of the hosters of the study's Table 1

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def is_hospital(self) -> bool:
        return self.kind == "hospital"


# The hosters of the study's Table 1 first, then a few others.
PROVIDERS: tuple[Network, ...] = (
    Network(
        "azure-we",
        "51.144.0.0/15",
        "MSFT-AZURE-WEU",
        "Microsoft Azure",
        "Microsoft Corporation",
        8075,
        "hoster",
        9,
        "Amsterdam",
        "",
        "microsoft.com",
        "abuse",
        "ORG-MA42-RIPE",
        table1=True,
    ),
    Network(
        "surfsara",
        "145.100.0.0/16",
        "SURFSARA-NET",
        "SURFsara",
        "SURF B.V.",
        1103,
        "hoster",
        3,
        "Amsterdam",
        "{d}.{c}.surfsara.nl",
        "surf.nl",
        "abuse",
        "ORG-SB1-RIPE",
        table1=True,
    ),
    Network(
        "leaseweb-95",
        "95.211.0.0/16",
        "LEASEWEB-NL-AMS-01",
        "LeaseWeb Netherlands B.V.",
        "LeaseWeb Netherlands B.V.",
        60781,
        "hoster",
        7,
        "Amsterdam",
        "hosted-by.leaseweb.com",
        "leaseweb.com",
        "abuse",
        "ORG-LNB1-RIPE",
        table1=True,
    ),
    Network(
        "leaseweb-85",
        "85.17.0.0/16",
        "LEASEWEB-NL-AMS-02",
        "LeaseWeb Netherlands B.V.",
        "LeaseWeb Netherlands B.V.",
        60781,
        "hoster",
        4,
        "Haarlem",
        "",
        "leaseweb.com",
        "abuse",
        "ORG-LNB1-RIPE",
        table1=True,
    ),
    Network(
        "transip-149",
        "149.210.0.0/16",
        "TRANSIP-NL-149",
        "TransIP B.V.",
        "TransIP B.V.",
        20857,
        "hoster",
        6,
        "Delft",
        "{a}-{b}-{c}-{d}.colo.transip.net",
        "transip.nl",
        "abuse",
        "ORG-TB12-RIPE",
        table1=True,
    ),
    Network(
        "transip-37",
        "37.97.128.0/17",
        "TRANSIP-NL-37",
        "TransIP B.V.",
        "TransIP B.V.",
        20857,
        "hoster",
        3,
        "Amsterdam",
        "{a}-{b}-{c}-{d}.colo.transip.net",
        "transip.nl",
        "technical",
        "ORG-TB12-RIPE",
        table1=True,
    ),
    Network(
        "kpn",
        "77.160.0.0/12",
        "KPN-DSL-NL",
        "KPN B.V.",
        "KPN B.V.",
        1136,
        "isp",
        26,
        "Utrecht",
        "{a}-{b}-{c}-{d}.fixed.kpn.net",
        "kpn.com",
        "abuse",
        "ORG-KB2-RIPE",
        table1=True,
    ),
    Network(
        "ziggo-84",
        "84.24.0.0/13",
        "ZIGGO-CABLE-84",
        "Ziggo B.V.",
        "Ziggo",
        6830,
        "isp",
        14,
        "Rotterdam",
        "{d}-{c}-{b}-{a}.cable.dynamic.v4.ziggo.nl",
        "ziggo.nl",
        "abuse",
        "ORG-ZB4-RIPE",
        table1=True,
    ),
    Network(
        "ziggo-94",
        "94.208.0.0/12",
        "ZIGGO-CABLE-94",
        "Ziggo B.V.",
        "Ziggo",
        6830,
        "isp",
        10,
        "Amersfoort",
        "{d}-{c}-{b}-{a}.cable.dynamic.v4.ziggo.nl",
        "ziggo.nl",
        "abuse",
        "ORG-ZB4-RIPE",
        table1=True,
    ),
    Network(
        "digitalocean",
        "188.166.0.0/16",
        "DIGITALOCEAN-AMS",
        "DigitalOcean, LLC",
        "DigitalOcean, LLC",
        14061,
        "hoster",
        5,
        "Amsterdam",
        "",
        "digitalocean.com",
        "abuse",
        "ORG-DOI2-RIPE",
    ),
    Network(
        "tele2",
        "188.88.0.0/15",
        "TELE2-NL-DSL",
        "Tele2 Nederland B.V.",
        "Tele2 Nederland B.V.",
        13127,
        "isp",
        7,
        "Amsterdam",
        "{a}-{b}-{c}-{d}.dsl.tele2.nl",
        "tele2.nl",
        "technical",
        "ORG-TNB3-RIPE",
    ),
    Network(
        "previder",
        "31.3.64.0/18",
        "PREVIDER-HOSTING",
        "Previder B.V.",
        "Previder B.V.",
        20847,
        "hoster",
        1,
        "Hengelo",
        "",
        "previder.nl",
        "abuse",
        "ORG-PB31-RIPE",
    ),
    # Kept out of the weighted draw: the honeypot hosts live here.
    Network(
        "honeypot",
        "5.79.64.0/18",
        "LEASEWEB-NL-AMS-07",
        "LeaseWeb Netherlands B.V.",
        "LeaseWeb Netherlands B.V.",
        60781,
        "honeypot",
        0,
        "Amsterdam",
        "",
        "leaseweb.com",
        "abuse",
        "ORG-LNB1-RIPE",
        table1=True,
    ),
)

TABLE1_ASNS = {8075: "Microsoft Azure", 1103: "SURFsara", 60781: "LeaseWeb Netherlands B.V.",
               20857: "TransIP B.V.", 1136: "KPN", 6830: "Ziggo"}  # fmt: skip

# Hospitals whose registrations lack an abuse role (owner lookup must fall back).
_TECHNICAL_ONLY = {"Deventer Ziekenhuis", "Treant", "Flevoziekenhuis", "Sint Maartenskliniek"}
_NO_CONTACT = {"Wilhelmina Ziekenhuis Assen"}


def load_registry(path: Path = REGISTRY) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _netname(domain: str) -> str:
    return domain.split(".")[0].upper().replace("-", "") + "-NET"


def hospital_networks(registry: dict) -> tuple[Network, ...]:
    """One /18 per organisation from SURF's 145.0.0.0/8, in registry order (stable)."""
    nets = []
    for index, org in enumerate(registry["organisation"]):
        domain = org["domains"][0]
        contacts = "none" if org["name"] in _NO_CONTACT else "technical" if org["name"] in _TECHNICAL_ONLY else "abuse"
        base = ipaddress.IPv4Address("145.10.0.0") + index * 16384
        nets.append(
            Network(
                key=f"hosp-{domain.split('.')[0]}",
                cidr=f"{base}/18",
                name=_netname(domain),
                org=org["name"],
                isp="SURF B.V.",
                asn=1103,
                kind="hospital",
                weight=0,
                city=org["city"],
                email_domain=domain,
                contacts=contacts,
                org_handle=f"ORG-{_netname(domain).split('-')[0][:4]}{index + 1}-RIPE",
                domains=tuple(org["domains"]),
                aliases=tuple(org.get("aliases", ())),
            )
        )
    return tuple(nets)


class Allocator:
    """Hands out an unused (ip, port) for a network; raises when a network's space runs out."""

    def __init__(self) -> None:
        # (network, port) -> [next count, first address, size, offset]
        self._state: dict[tuple[str, int], list[int]] = {}

    def address(self, net: Network, group: str, port: int) -> int:
        state = self._state.get((net.key, port))
        if state is None:
            network = net.network
            size = network.num_addresses
            # The group offset decides which services share a host: all ports of one group
            # start from the same address and step alike.
            offset = zlib.crc32(f"{net.key}/{group}".encode()) % size
            state = self._state[(net.key, port)] = [0, int(network.network_address), size, offset]
        count, start, size, offset = state
        while True:
            if count >= size:
                raise ValueError(f"network {net.cidr} has no free address left for port {port}")
            # An odd stride is a bijection modulo a power of two: no address comes twice.
            host = (offset + count * 40503) % size
            count += 1
            if 0 < host < size - 1:  # skip the network and broadcast addresses
                break
        state[0] = count
        return start + host


def reverse_name(net: Network, ip: int) -> str:
    if not net.rdns:
        return ""
    a, b, c, d = ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255
    return net.rdns.format(a=a, b=b, c=c, d=d)
