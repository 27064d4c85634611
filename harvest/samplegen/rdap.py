"""Raw RDAP ip-network answers in the style of the RIPE NCC server (rdap.db.ripe.net)."""

from __future__ import annotations

from harvest.samplegen.networks import Network

CONFORMANCE = ["cidr0", "rdap_level_0", "nro_rdap_profile_0", "redacted"]


def _vcard(fn: str, kind: str, *, email: str = "", abuse: bool = False, address: str = "") -> list:
    card: list = [["version", {}, "text", "4.0"], ["fn", {}, "text", fn], ["kind", {}, "text", kind]]
    if address:
        card.append(["adr", {"label": address}, "text", ["", "", "", "", "", "", ""]])
    if email:
        card.append(["email", {"type": "email"}, "text", email])
        if abuse:
            card.append(["email", {"type": "abuse"}, "text", email])
    return ["vcard", card]


def _entity(handle: str, roles: list[str], vcard: list | None = None, entities: list | None = None) -> dict:
    entity: dict = {"handle": handle}
    if vcard is not None:
        entity["vcardArray"] = vcard
    entity["roles"] = roles
    if entities:
        entity["entities"] = entities
    entity["links"] = [_link(f"https://rdap.db.ripe.net/entity/{handle}", "self")]
    entity["objectClassName"] = "entity"
    return entity


def _link(href: str, rel: str, value: str = "") -> dict:
    return {"value": value or href, "rel": rel, "href": href}


def _maintainer(net: Network) -> str:
    return f"{net.name.split('-')[0]}-MNT"


def _contacts(net: Network) -> list[dict]:
    prefix = net.name.split("-")[0][:4]
    maintainer = _entity(_maintainer(net), ["registrant"])
    if net.contacts == "none":
        return [maintainer]
    owner = net.org
    address = f"{owner}\n{net.city}\nNetherlands"
    registrant = _entity(net.org_handle, ["registrant"], _vcard(owner, "org", address=address))
    noc = _entity(
        f"{prefix}NOC-RIPE",
        ["technical", "administrative"],
        _vcard(f"{owner} NOC", "group", email=f"noc@{net.email_domain}", address=address),
        [_entity(_maintainer(net), ["registrant"])],
    )
    entities = [registrant, maintainer, noc]
    if net.contacts == "abuse":
        abuse_box = f"abuse@{net.email_domain}" if not net.is_hospital else f"security@{net.email_domain}"
        entities.append(
            _entity(
                f"{prefix}AB-RIPE",
                ["abuse"],
                _vcard("Abuse-C Role", "group", email=abuse_box, abuse=True, address=address),
                [_entity(_maintainer(net), ["registrant"])],
            )
        )
    return entities


def network_answer(net: Network) -> dict:
    network = net.network
    start, end = str(network.network_address), str(network.broadcast_address)
    handle = f"{start} - {end}"
    self_url = f"https://rdap.db.ripe.net/ip/{network}"
    return {
        "handle": handle,
        "name": net.name,
        "country": "NL",
        "type": "ASSIGNED PA" if net.is_hospital else "ALLOCATED PA",
        "startAddress": start,
        "endAddress": end,
        "ipVersion": "v4",
        "parentHandle": "145.0.0.0 - 145.127.255.255"
        if net.is_hospital
        else f"{network.supernet(2).network_address} - {network.supernet(2).broadcast_address}",
        "cidr0_cidrs": [{"v4prefix": start, "length": network.prefixlen}],
        "entities": _contacts(net),
        "remarks": [{"description": [f"{net.org}, {net.city}"]}],
        "links": [
            _link(self_url, "self"),
            _link("http://www.ripe.net/data-tools/support/documentation/terms", "copyright"),
        ],
        "events": [
            {"eventAction": "registration", "eventDate": "2011-03-14T09:21:07Z"},
            {"eventAction": "last changed", "eventDate": "2024-06-03T12:40:18Z"},
        ],
        "rdapConformance": CONFORMANCE,
        "notices": [
            {"title": "Filtered", "description": ["This output has been filtered."]},
            {"title": "Source", "description": ["Objects returned came from source", "RIPE"]},
            {
                "title": "Terms and Conditions",
                "description": ["This is the RIPE Database query service. The objects are in RDAP format."],
                "links": [
                    {
                        "value": self_url,
                        "rel": "terms-of-service",
                        "href": "http://www.ripe.net/db/support/db-terms-conditions.pdf",
                        "type": "application/pdf",
                    }
                ],
            },
        ],
        "port43": "whois.ripe.net",
        "objectClassName": "ip network",
    }
