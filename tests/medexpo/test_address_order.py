"""The SQLite sort key of addresses: numeric, IPv4 before IPv6, never an error."""

from __future__ import annotations

import ipaddress

from medexpo.lib.address_order import address_key


def test_the_key_sorts_addresses_by_version_then_number() -> None:
    addresses = ["10.0.0.10", "9.1.1.1", "2001:db8::10", "255.255.255.255", "::ffff:1.2.3.4", "::1", "10.0.0.2"]
    # What PostgreSQL's inet does for host addresses: the family first, then the number.
    expected = sorted(addresses, key=lambda a: (ipaddress.ip_address(a).version, int(ipaddress.ip_address(a))))
    assert sorted(addresses, key=address_key) == expected
    assert expected[:4] == ["9.1.1.1", "10.0.0.2", "10.0.0.10", "255.255.255.255"]


def test_a_value_that_is_no_address_goes_last_and_null_stays_null() -> None:
    # An exception inside an SQLite function fails the whole query: every value gets a key.
    odd = ["", "x", "1.2.3", "10.0.0.1 ", "a\x00b", "\ud800", 7]
    highest = address_key("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    assert highest is not None
    for value in odd:
        key = address_key(value)
        assert key is not None and key > highest, value
    assert address_key(None) is None
