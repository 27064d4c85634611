"""A DNS stand-in on 127.0.0.1 for the ASN step: Team Cymru-style TXT answers.

`<reversed ip>.origin.asn.cymru.com` / `<reversed nibbles>.origin6.asn.cymru.com` answer
"ASN | CIDR | CC | registry | date"; `AS<n>.asn.cymru.com` answers
"ASN | CC | registry | date | description". Names in `names` answer A and AAAA queries with
their addresses, as a zone that hands out internal addresses would. Everything else is NXDOMAIN.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from dnslib import AAAA, QTYPE, RCODE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from tests.standins.rdap_server import AS_DESCRIPTIONS, RdapStandin


def _query_address(labels: list[str]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in a Cymru origin name, from its reversed labels."""
    if labels[-4:] == ["origin", "asn", "cymru", "com"]:
        return ipaddress.IPv4Address(".".join(reversed(labels[:-4])))
    if labels[-4:] == ["origin6", "asn", "cymru", "com"]:
        # Cymru takes a nibble prefix (ipwhois sends the first 48 bits): pad to a full address.
        nibbles = "".join(reversed(labels[:-4])).ljust(32, "0")[:32]
        return ipaddress.IPv6Address(":".join(nibbles[i : i + 4] for i in range(0, 32, 4)))
    return None


class CymruResolver(BaseResolver):
    def __init__(self, standin: RdapStandin, descriptions: dict[int, str]) -> None:
        self.standin = standin
        self.descriptions = descriptions
        self.queries: Counter = Counter()
        self.names: dict[str, list[str]] = {}  # host name -> its addresses, both versions

    def resolve(self, request, handler):  # noqa: ANN001, ANN201 - dnslib's interface
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        labels = name.split(".")
        if name in self.names:
            self.queries["address"] += 1
            return self._addresses(reply, request.q.qtype, self.names[name])
        text = None
        try:
            if labels[-3:] == ["asn", "cymru", "com"] and len(labels) == 4 and labels[0].startswith("as"):
                self.queries["verbose"] += 1
                text = self._verbose(int(labels[0][2:]))
            else:
                address = _query_address(labels)
                if address is not None:
                    self.queries["origin"] += 1
                    text = self._origin(address)
        except ValueError:
            text = None
        if text is None or request.q.qtype != QTYPE.TXT:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(text), ttl=60))
        return reply

    def _addresses(self, reply, qtype, addresses: list[str]):  # noqa: ANN001, ANN202 - dnslib's types
        for text in addresses:
            address = ipaddress.ip_address(text)
            if (qtype, address.version) in ((QTYPE.A, 4), (QTYPE.AAAA, 6)):
                rdata = A(text) if address.version == 4 else AAAA(text)
                reply.add_answer(RR(reply.q.qname, qtype, rdata=rdata, ttl=60))
        return reply

    def _origin(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        network = self.standin.find(str(address))
        if network is None or network.asn is None:
            return None
        return f"{network.asn} | {network.asn_cidr} | {network.country} | {network.registry} | {network.date}"

    def _verbose(self, asn: int) -> str | None:
        for network in self.standin.networks:
            if network.asn == asn and asn in self.descriptions:
                return f"{asn} | {network.country} | {network.registry} | {network.date} | {self.descriptions[asn]}"
        return None


class RunningDns:
    def __init__(self, standin: RdapStandin, descriptions: dict[int, str] | None = None) -> None:
        self.resolver = CymruResolver(standin, AS_DESCRIPTIONS if descriptions is None else descriptions)
        self.server = DNSServer(self.resolver, address="127.0.0.1", port=0, logger=DNSLogger(log="-request,-reply"))
        self.server.start_thread()
        self.port = self.server.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.stop()
        self.server.server.server_close()

    def __enter__(self) -> RunningDns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
