"""bench_classify writes services and verdicts: only into an empty database of its own."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from disclosure.models import Organisation
from harvest.models import HarvestRun, Service

pytestmark = pytest.mark.django_db


def bench(*args: str) -> None:
    call_command("bench_classify", *args, "--json", stdout=StringIO(), stderr=StringIO())


def test_it_refuses_a_database_that_holds_work_even_without_services() -> None:
    Organisation.objects.create(name="Ziekenhuis Amstelland")
    HarvestRun.objects.create(source=HarvestRun.Source.FILE, target="x.json")
    with pytest.raises(CommandError, match="1 harvest runs, 1 organisations"):
        bench("--services", "5")
    assert not Service.objects.exists() and HarvestRun.objects.count() == 1


def test_it_refuses_before_the_engine_loops_run() -> None:
    Organisation.objects.create(name="UMC Utrecht")
    # The engine step, seconds of loops, would stop at this corpus with another message.
    with pytest.raises(CommandError, match="already holds 1 organisations"):
        bench("--services", "5", "--corpus", "/nonexistent/corpus.jsonl")


def test_with_engine_only_it_writes_nothing_and_needs_no_empty_database(tmp_path) -> None:
    Organisation.objects.create(name="OLVG")
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"ip_str": "192.0.2.1", "port": 104, "data": "x"}\n')
    out = StringIO()
    call_command("bench_classify", "--engine-only", "--corpus", str(corpus), "--json", stdout=out)
    assert '"corpus_banners": 1' in out.getvalue()
    assert not Service.objects.exists()
