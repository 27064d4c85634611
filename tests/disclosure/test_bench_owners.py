"""bench_owners: its cold run starts from an empty cache for its networks, and it leaves nothing behind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from disclosure.models import Network

pytestmark = pytest.mark.django_db

# A registration that holds the first networks the benchmark generates (11.0.0.0/24 onwards).
HOLDER = {
    "objectClassName": "ip network",
    "handle": "11.0.0.0 - 11.255.255.255",
    "startAddress": "11.0.0.0",
    "endAddress": "11.255.255.255",
    "name": "CACHED-BEFORE",
    "port43": "whois.arin.net",
    "entities": [],
}


def bench(*args: str) -> dict:
    out = io.StringIO()
    call_command("bench_owners", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def test_it_makes_one_request_per_network_and_rolls_everything_back() -> None:
    report = bench("--addresses", "40", "--networks", "4")
    assert report["runs"]["cold"]["requests"] == 4 and report["requests_per_network"] == 1.0
    assert report["runs"]["cached"]["hit_rate"] == 1.0
    assert not Network.objects.exists()


def test_it_refuses_a_cache_that_already_holds_its_networks(tmp_path: Path) -> None:
    (tmp_path / "holder.json").write_text(json.dumps(HOLDER))
    call_command("import_rdap_cache", str(tmp_path), "--json", stdout=io.StringIO())
    # Otherwise the "cold" run answers every address from this network: 0 requests a network.
    with pytest.raises(CommandError, match="already holds"):
        bench("--addresses", "40", "--networks", "4")
    assert list(Network.objects.values_list("name", flat=True)) == ["CACHED-BEFORE"]


def test_it_refuses_more_addresses_than_its_networks_hold() -> None:
    # Two /24 networks hold 508 addresses: more would repeat some and skew every rate and hit rate.
    with pytest.raises(CommandError, match="at most 508"):
        bench("--addresses", "600", "--networks", "2")
    report = bench("--addresses", "508", "--networks", "2")
    assert report["runs"]["cached"]["hit_rate"] == 1.0


def test_it_refuses_a_run_without_networks() -> None:
    with pytest.raises(CommandError, match="at least one network"):
        bench("--networks", "0")
